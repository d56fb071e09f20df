"""The rule engine with a fake clock: every rule, its edges, and the de-duplication."""

from __future__ import annotations

import asyncio
import time
from ipaddress import ip_network
from typing import Any

import pytest

from dynscreen.control.config import Config, from_dict
from dynscreen.control.decisions import Block, Decision, Exempt, Freeze, Notify
from dynscreen.control.engine import (
    PAIR_WINDOW,
    SERVICE_WAIT,
    SESSION_IDLE,
    Engine,
)
from dynscreen.control.events import Event

T0 = 1_700_000_000.0
IP = "203.0.113.7"
OTHER = "198.51.100.9"


def config(**sections: dict[str, Any]) -> Config:
    """A config from TOML-like tables: config(screening={"block_minutes": 5})."""
    data: dict[str, Any] = {}
    limits = sections.pop("limits", None)
    escalation = sections.pop("escalation", None)
    for name, table in sections.items():
        data[name] = dict(table)
    if limits is not None:
        data.setdefault("screening", {})["limits"] = limits
    if escalation is not None:
        data.setdefault("screening", {})["escalation"] = escalation
    return from_dict(data)


def engine(cfg: Config | None = None, *, simulate: bool = False) -> Engine:
    return Engine(cfg or config(), now=T0, simulate_connections=simulate)


def postfix_fail(
    ip: str = IP, user: str | None = "alice@example.com", pid: int = 100, **kw: Any
) -> Event:
    """``warning: unknown[ip]: SASL LOGIN authentication failed: ..., sasl_username=user``."""
    return Event("auth_failure", ip, 0.0, "smtp", user, origin="postfix",
                 session=f"mx/smtpd[{pid}]", **kw)


def detail(ip: str = IP, user: str | None = "alice@example.com", session: str | None = None,
           **kw: Any) -> Event:
    """``auth: passwd-file(user,ip[,<session>]): Password mismatch``."""
    return Event("auth_failure", ip, 0.0, kw.pop("service", None), user, origin="dovecot-auth",
                 session=session, **kw)


def pam(ip: str = IP, user: str | None = "alice") -> Event:
    """``pam_unix(dovecot:auth): authentication failure; ... ruser=user rhost=ip``."""
    return Event("auth_failure", ip, 0.0, None, user, origin="pam")


def summary(n: int, ip: str = IP, user: str | None = "alice@example.com",
            session: str | None = None, service: str = "imap") -> Event:
    """``imap-login: Disconnected (auth failed, n attempts ...): user=<user>, rip=ip``."""
    return Event("auth_failure", ip, 0.0, service, user, count=n, origin="dovecot-login",
                 session=session)


def login(ip: str = IP, user: str = "alice@example.com", session: str | None = None,
          service: str = "imap") -> Event:
    return Event("auth_success", ip, 0.0, service, user, origin="dovecot-login", session=session)


def sasl_ok(ip: str = IP, user: str | None = "alice@example.com", pid: int = 100) -> Event:
    """``QUEUEID: client=unknown[ip], sasl_method=PLAIN, sasl_username=user``."""
    return Event("auth_success", ip, 0.0, "smtp", user, origin="postfix",
                 session=f"mx/smtpd[{pid}]")


def connect(ip: str = IP, pid: int = 100) -> Event:
    return Event("connect", ip, 0.0, "smtp", origin="postfix", session=f"mx/smtpd[{pid}]")


def disconnect(ip: str = IP, pid: int = 100) -> Event:
    return Event("disconnect", ip, 0.0, "smtp", origin="postfix", session=f"mx/smtpd[{pid}]")


def rcpt(ip: str = IP, count: int = 1) -> Event:
    return Event("rcpt_unknown", ip, 0.0, "smtp", "nobody@example.com", count=count,
                 origin="postfix", session="mx/smtpd[100]")


def rset(ip: str = IP, count: int = 1) -> Event:
    return Event("rset", ip, 0.0, "smtp", count=count, origin="postfix", session="mx/smtpd[100]")


def blocks(decisions: list[Decision]) -> list[Block]:
    return [d for d in decisions if isinstance(d, Block)]


class Clock:
    """Feeds events at chosen times and collects every decision."""

    def __init__(self, eng: Engine, start: float = T0) -> None:
        self.engine = eng
        self.now = start
        self.decisions: list[Decision] = []

    def at(self, offset: float, *events: Event) -> list[Decision]:
        self.now = T0 + offset
        out = self.engine.tick(self.now)
        for ev in events:
            out += self.engine.feed(ev, self.now)
        self.decisions += out
        return out

    def of(self, kind: type) -> list[Any]:
        return [d for d in self.decisions if isinstance(d, kind)]


# --- decisions ---------------------------------------------------------------------------


def test_decisions_print_the_contract_shapes() -> None:
    assert Block(ip_network("203.0.113.7"), "auth_failures", 10, T0, 5).to_json() == {
        "type": "decision", "action": "block", "ip": "203.0.113.7",
        "reason": "auth_failures", "minutes": 10,
    }
    assert Freeze("alice", "imap").to_json() == {
        "type": "decision", "action": "freeze", "user": "alice", "service": "imap",
    }
    assert Notify("alice", "pop").to_json() == {
        "type": "decision", "action": "notify", "user": "alice", "service": "pop",
    }
    assert Exempt(ip_network("2001:db8:1:2::/64"), 60).to_json() == {
        "type": "decision", "action": "exempt", "ip": "2001:db8:1:2::/64", "minutes": 60,
    }
    b = Block(ip_network(IP), "rsets", 10, T0, 20, T0 - 5, "mail.log", 7)
    assert b.until == T0 + 600 and (b.file, b.line, b.count) == ("mail.log", 7, 20)


# --- per-source windows ------------------------------------------------------------------


def test_auth_failures_block_at_the_limit() -> None:
    c = Clock(engine())
    for i in range(4):
        assert c.at(i * 20, postfix_fail(pid=100 + i)) == []
    out = c.at(100, postfix_fail(pid=200))
    assert [d.to_json() for d in out] == [
        {"type": "decision", "action": "block", "ip": IP, "reason": "auth_failures", "minutes": 10}
    ]
    assert out[0].count == 5 and out[0].first_ts == T0 and out[0].ts == T0 + 100


def test_window_edge_is_exclusive() -> None:
    cfg = config(limits={"auth_failures": 2, "window_minutes": 10})
    c = Clock(engine(cfg))
    c.at(0, postfix_fail(pid=1))
    assert c.at(600, postfix_fail(pid=2)) == []  # exactly one window later: the first is out
    assert blocks(c.at(1199.9, postfix_fail(pid=3)))  # the second is still in


def test_failed_rcpts_and_rsets_are_count_weighted() -> None:
    c = Clock(engine())
    for i in range(9):
        assert c.at(i, rcpt()) == []
    assert blocks(c.at(9, rcpt()))[0].reason == "failed_rcpts"
    c2 = Clock(engine())
    assert c2.at(0, rset(OTHER, count=19)) == []
    out = blocks(c2.at(1, rset(OTHER, count=1)))
    assert out[0].reason == "rsets" and out[0].count == 20


@pytest.mark.parametrize(
    ("limit", "event"),
    [("auth_failures", postfix_fail), ("failed_rcpts", rcpt), ("rsets", rset)],
)
def test_limit_zero_is_off(limit: str, event: Any) -> None:
    c = Clock(engine(config(limits={limit: 0})))
    for i in range(200):
        c.at(i, event(pid=i) if event is postfix_fail else event())
    assert c.decisions == []


def test_no_new_block_while_blocked_and_counters_restart_after() -> None:
    c = Clock(engine(config(limits={"auth_failures": 3})))
    for i in range(3):
        c.at(i, postfix_fail(pid=i))
    assert len(c.of(Block)) == 1
    for i in range(10):  # in-flight lines while blocked: counted nowhere
        c.at(10 + i, postfix_fail(pid=50 + i))
    assert len(c.of(Block)) == 1
    c.at(601, postfix_fail(pid=89))  # blocked until 602
    c.at(602, postfix_fail(pid=90))
    c.at(603, postfix_fail(pid=91))
    assert len(c.of(Block)) == 1  # afresh after the block: 2 < 3
    c.at(604, postfix_fail(pid=92))
    assert len(c.of(Block)) == 2


def test_sources_are_separate_and_ipv6_counts_per_prefix() -> None:
    c = Clock(engine(config(limits={"auth_failures": 3})))
    c.at(0, postfix_fail("2001:db8:1:2::1", pid=1))
    c.at(1, postfix_fail("2001:db8:1:2:ffff::9", pid=2))
    c.at(2, postfix_fail("2001:db8:1:3::1", pid=3))  # another /64
    c.at(3, postfix_fail(OTHER, pid=4))
    assert c.of(Block) == []
    out = blocks(c.at(4, postfix_fail("2001:db8:1:2::abcd", pid=5)))
    assert out[0].ip == "2001:db8:1:2::/64"


def test_ipv6_prefix_is_configurable() -> None:
    c = Clock(engine(config(screening={"ipv6_prefix": 48}, limits={"auth_failures": 2})))
    c.at(0, postfix_fail("2001:db8:1:2::1", pid=1))
    out = blocks(c.at(1, postfix_fail("2001:db8:1:ff::1", pid=2)))
    assert out[0].ip == "2001:db8:1::/48"


def test_ipv4_mapped_ipv6_is_the_ipv4_source() -> None:
    c = Clock(engine(config(limits={"auth_failures": 2})))
    c.at(0, postfix_fail("::ffff:203.0.113.7", pid=1))
    assert blocks(c.at(1, postfix_fail(IP, pid=2)))[0].ip == IP


# --- de-duplication -----------------------------------------------------------------------


def test_postfix_then_dovecot_is_one_attempt() -> None:
    eng = engine()
    eng.feed(postfix_fail(), T0)
    eng.feed(detail(), T0 + 1)
    assert eng.counters(IP)["auth_failures"] == 1


def test_dovecot_then_postfix_after_the_failure_delay_is_one_attempt() -> None:
    eng = engine()
    eng.feed(detail(), T0)
    eng.feed(postfix_fail(), T0 + 2)  # auth_failure_delay: Postfix hears the verdict later
    assert eng.counters(IP)["auth_failures"] == 1


def test_pairs_only_within_ten_seconds() -> None:
    eng = engine()
    eng.feed(detail(), T0)
    eng.feed(postfix_fail(), T0 + PAIR_WINDOW + 0.5)
    assert eng.counters(IP)["auth_failures"] == 2
    eng2 = engine()
    eng2.feed(postfix_fail(), T0)
    eng2.feed(detail(), T0 + PAIR_WINDOW)  # the edge still pairs
    assert eng2.counters(IP)["auth_failures"] == 1


def test_pairs_need_the_same_address_and_user() -> None:
    eng = engine()
    eng.feed(detail(user="bob"), T0)
    eng.feed(postfix_fail(user="alice"), T0 + 1)
    eng.feed(detail(OTHER, user="carol"), T0 + 1)
    eng.feed(postfix_fail(user="carol"), T0 + 2)  # carol's detail came from OTHER
    assert eng.counters(IP)["auth_failures"] == 3
    assert eng.counters(OTHER)["auth_failures"] == 1


def test_user_names_compare_case_insensitively() -> None:
    eng = engine()
    eng.feed(detail(user="Alice@Example.COM"), T0)
    eng.feed(postfix_fail(user="alice@example.com"), T0 + 2)
    assert eng.counters(IP)["auth_failures"] == 1


def test_postfix_without_user_pairs_with_a_detail() -> None:
    eng = engine()
    eng.feed(detail(user="alice"), T0)
    eng.feed(postfix_fail(user=None), T0 + 2)  # PLAIN: Postfix logs no sasl_username
    assert eng.counters(IP)["auth_failures"] == 1


def test_a_burst_pairs_one_to_one() -> None:
    eng = engine(config(limits={"auth_failures": 100}))
    for i in range(6):
        eng.feed(detail(user=f"user{i}"), T0 + i * 0.1)
    for i in range(6):
        eng.feed(postfix_fail(user=f"USER{i}", pid=i), T0 + 2 + i * 0.1)
    assert eng.counters(IP)["auth_failures"] == 6
    for i in range(4):  # then four more Postfix lines nothing else described
        eng.feed(postfix_fail(user=f"user{i}", pid=i), T0 + 3)
    assert eng.counters(IP)["auth_failures"] == 10


def test_pam_is_a_third_description() -> None:
    eng = engine()
    eng.feed(pam(user="alice"), T0)
    eng.feed(detail(user="alice"), T0)
    eng.feed(postfix_fail(user="alice"), T0 + 2)
    assert eng.counters(IP)["auth_failures"] == 1
    eng.feed(pam(user="alice"), T0 + 3)  # the next attempt
    assert eng.counters(IP)["auth_failures"] == 2


def test_pam_without_user_pairs_too() -> None:
    eng = engine()
    eng.feed(detail(user="alice"), T0)
    eng.feed(pam(user=None), T0 + 0.1)
    assert eng.counters(IP)["auth_failures"] == 1


def test_summary_counts_what_the_session_details_did_not() -> None:
    eng = engine(config(limits={"auth_failures": 100}))
    eng.feed(detail(session="S1"), T0)
    eng.feed(detail(session="S1"), T0 + 3)
    eng.feed(summary(3, session="S1"), T0 + 6)  # 3 attempts, 2 told by details
    assert eng.counters(IP)["auth_failures"] == 3
    eng.feed(summary(2, session="S2"), T0 + 7)  # auth_verbose off: nothing told
    assert eng.counters(IP)["auth_failures"] == 5
    eng.feed(detail(session="S3"), T0 + 8)
    eng.feed(detail(session="S3"), T0 + 9)
    eng.feed(summary(1, session="S3"), T0 + 10)  # never less than nothing
    assert eng.counters(IP)["auth_failures"] == 7


def test_summary_without_session_ids_claims_recent_details() -> None:
    """Dovecot 2.2: neither the details nor the summary carry a session id."""
    eng = engine(config(limits={"auth_failures": 100}))
    eng.feed(detail(user="alice"), T0)
    eng.feed(detail(user="alice"), T0 + 30)
    eng.feed(summary(3, user="alice"), T0 + 60)
    assert eng.counters(IP)["auth_failures"] == 3
    eng.feed(summary(1, user="alice"), T0 + 61)  # the details are taken: a new attempt
    assert eng.counters(IP)["auth_failures"] == 4


def test_summary_claims_pam_lines_when_auth_verbose_is_off() -> None:
    eng = engine(config(limits={"auth_failures": 100}))
    eng.feed(pam(user="alice"), T0)
    eng.feed(pam(user="alice"), T0 + 4)
    eng.feed(summary(2, user="alice", session="S9"), T0 + 8)
    assert eng.counters(IP)["auth_failures"] == 2


def test_summary_does_not_claim_smtp_attempts() -> None:
    eng = engine(config(limits={"auth_failures": 100}))
    eng.feed(detail(user="alice"), T0)  # Postfix's attempt via Dovecot SASL: no session id
    eng.feed(postfix_fail(user="alice"), T0 + 2)
    eng.feed(summary(1, user="alice", session="S1"), T0 + 3)
    assert eng.counters(IP)["auth_failures"] == 2
    eng.feed(detail(user="bob"), T0 + 4)  # sessionless detail, Postfix's line still to come
    eng.feed(summary(1, user="bob", session="S2"), T0 + 5)  # 2.3 details carry ids: not ours
    eng.feed(postfix_fail(user="bob"), T0 + 6)
    assert eng.counters(IP)["auth_failures"] == 4


def test_session_details_never_pair_with_postfix() -> None:
    eng = engine()
    eng.feed(detail(user="alice", session="IMAP1"), T0)
    eng.feed(postfix_fail(user="alice"), T0 + 1)
    assert eng.counters(IP)["auth_failures"] == 2


def test_a_count_above_one_counts_n() -> None:
    """A server-written count (Dovecot's auth failed, N attempts) counts N."""
    eng = engine(config(limits={"auth_failures": 100}))
    eng.feed(detail(user="alice", count=3), T0)
    assert eng.counters(IP)["auth_failures"] == 3
    eng.feed(postfix_fail(user="alice"), T0 + 2)
    assert eng.counters(IP)["auth_failures"] == 3


# --- per-session account rule --------------------------------------------------------------


def accounts(**kw: Any) -> Config:
    table = {"max_session_auth_failures": 3, "freeze": True, **kw}
    return config(accounts=table, limits={"auth_failures": 0})


def test_postfix_session_freezes_as_soon_as_the_count_is_reached() -> None:
    c = Clock(engine(accounts(notify_postmaster=["smtp"])))
    c.at(0, connect())
    c.at(1, postfix_fail(user="Alice"))
    c.at(2, postfix_fail(user="alice"))
    out = c.at(3, postfix_fail(user="ALICE"))
    assert [d.to_json() for d in out] == [
        {"type": "decision", "action": "freeze", "user": "alice", "service": "smtp"},
        {"type": "decision", "action": "notify", "user": "alice", "service": "smtp"},
    ]
    assert out[0].count == 3 and out[0].source == IP
    assert c.at(4, postfix_fail(user="alice")) == []  # once per session


def test_failures_count_per_session_and_per_account() -> None:
    c = Clock(engine(accounts()))
    c.at(0, connect(pid=1), connect(pid=2))
    c.at(1, postfix_fail(user="alice", pid=1), postfix_fail(user="alice", pid=2))
    c.at(2, postfix_fail(user="alice", pid=1), postfix_fail(user="bob", pid=1))
    assert c.of(Freeze) == []
    c.at(3, disconnect(pid=1), connect(pid=1))  # a new session on the same process
    c.at(4, postfix_fail(user="alice", pid=1))
    assert c.of(Freeze) == []


def test_dovecot_session_freeze_learns_its_service_from_the_summary() -> None:
    c = Clock(engine(accounts(notify_postmaster=["imap"])))
    for i in range(3):
        c.at(i, detail(user="carol", session="sess1"))
    assert c.decisions == []  # the protocol is not known yet
    out = c.at(5, summary(3, user="carol", session="sess1", service="imap"))
    assert [d.to_json() for d in out] == [
        {"type": "decision", "action": "freeze", "user": "carol", "service": "imap"},
        {"type": "decision", "action": "notify", "user": "carol", "service": "imap"},
    ]


def test_notify_only_for_the_listed_protocols() -> None:
    c = Clock(engine(accounts(notify_postmaster=["imap"])))
    c.at(0, summary(3, user="dave", session="p1", service="pop"))
    assert [d.action for d in c.decisions] == ["freeze"]
    c2 = Clock(engine(accounts(freeze=False, notify_postmaster=["pop"])))
    c2.at(0, summary(3, user="dave", session="p1", service="pop"))
    assert [d.to_json() for d in c2.decisions] == [
        {"type": "decision", "action": "notify", "user": "dave", "service": "pop"}
    ]


def test_summary_alone_reaches_the_count() -> None:
    c = Clock(engine(accounts()))
    c.at(0, summary(2, user="erin", session="a"))
    assert c.decisions == []
    c.at(1, summary(5, user="erin", session="b"))
    assert [d.to_json() for d in c.decisions] == [
        {"type": "decision", "action": "freeze", "user": "erin", "service": "imap"}
    ]


def test_successful_login_also_names_the_protocol() -> None:
    c = Clock(engine(accounts()))
    for i in range(3):
        c.at(i, detail(user="frank", session="s7"))
    out = c.at(4, login(user="frank", session="s7", service="pop"))
    assert [(d.action, d.service) for d in out] == [("freeze", "pop")]


def test_a_detail_naming_its_protocol_settles_the_freeze() -> None:
    c = Clock(engine(accounts()))
    c.at(0, detail(user="lee", session="s9"), detail(user="lee", session="s9"))
    out = c.at(1, detail(user="lee", session="s9", service="pop"))
    assert [(d.action, d.service) for d in out] == [("freeze", "pop")]


def test_freeze_without_a_protocol_goes_out_after_waiting() -> None:
    c = Clock(engine(accounts(notify_postmaster=["imap"])))
    for i in range(3):
        c.at(i, detail(user="gina", session="s8"))
    assert c.at(SERVICE_WAIT - 1) == []
    out = c.at(SERVICE_WAIT + 3)
    assert [d.to_json() for d in out] == [
        {"type": "decision", "action": "freeze", "user": "gina", "service": None}
    ]
    out = c.at(SERVICE_WAIT + 10, summary(3, user="gina", session="s8"))
    assert [(d.action, d.service) for d in out] == [("notify", "imap")]  # notify waited


def test_a_freeze_is_not_repeated_while_it_stands() -> None:
    eng = engine(accounts(freeze_minutes=30))
    c = Clock(eng)
    c.at(0, summary(3, user="hank", session="1"))
    c.at(10, summary(3, user="HANK", session="2"))
    assert len(c.of(Freeze)) == 1
    c.at(1801, summary(3, user="hank", session="3"))  # the freeze expired
    assert len(c.of(Freeze)) == 2
    eng.note_unfreeze("Hank")
    c.at(1802, summary(3, user="hank", session="4"))
    assert len(c.of(Freeze)) == 3
    eng.note_freeze("ivy")
    c.at(1803, summary(3, user="ivy", session="5"))
    assert len(c.of(Freeze)) == 3


def test_max_session_auth_failures_zero_is_off() -> None:
    c = Clock(engine(accounts(max_session_auth_failures=0)))
    c.at(0, summary(50, user="jo", session="1"))
    assert c.decisions == []


def test_paired_descriptions_count_once_per_session() -> None:
    """Postfix without sasl_username plus Dovecot's detail: the pair names the account."""
    c = Clock(engine(accounts()))
    c.at(0, connect())
    for i in range(3):
        c.at(10 * i + 1, detail(user="kim"))
        c.at(10 * i + 3, postfix_fail(user=None))
    assert [(d.action, d.user, d.service) for d in c.decisions] == [("freeze", "kim", "smtp")]
    assert c.decisions[0].count == 3


# --- exemption and whitelist -----------------------------------------------------------------


def test_smtp_auth_exempts_once_per_period_and_blocks_nothing() -> None:
    c = Clock(engine(config(limits={"auth_failures": 2})))
    out = c.at(0, sasl_ok())
    assert [d.to_json() for d in out] == [
        {"type": "decision", "action": "exempt", "ip": IP, "minutes": 60}
    ]
    assert c.at(1, sasl_ok()) == []  # once per exemption period
    for i in range(10):
        c.at(2 + i, postfix_fail(pid=i), rcpt(count=5), rset(count=10))
    assert c.of(Block) == []
    assert len(c.at(3601, sasl_ok())) == 1  # a new period


def test_only_smtp_auth_exempts() -> None:
    c = Clock(engine())
    c.at(0, login(service="imap", session="x"))
    assert c.decisions == []


def test_exemption_is_per_ipv6_prefix_and_can_be_off() -> None:
    c = Clock(engine())
    out = c.at(0, sasl_ok("2001:db8:5:6::1"))
    assert out[0].ip == "2001:db8:5:6::/64"
    c2 = Clock(engine(config(screening={"exempt_authenticated": False})))
    assert c2.at(0, sasl_ok()) == []


def test_config_whitelist_is_never_blocked() -> None:
    c = Clock(engine(config(limits={"auth_failures": 1, "failed_rcpts": 1})))
    c.at(0, postfix_fail("127.0.0.1"), rcpt("127.0.0.1"), sasl_ok("127.0.0.1"))
    c.at(1, postfix_fail("::1"))
    assert c.decisions == []


def test_ipv6_whitelist_is_checked_against_the_logged_address() -> None:
    cfg = config(screening={"whitelist": ["2001:db8:1:2::5/128"]}, limits={"auth_failures": 2})
    c = Clock(engine(cfg))
    for i in range(5):
        c.at(i, postfix_fail("2001:db8:1:2::5", pid=i))
    assert c.decisions == []  # the whitelisted address counts nowhere
    c.at(10, postfix_fail("2001:db8:1:2::6", pid=10))
    out = blocks(c.at(11, postfix_fail("2001:db8:1:2::7", pid=11)))
    assert out[0].ip == "2001:db8:1:2::/64"  # its neighbours are blocked, per prefix


def test_runtime_whitelist() -> None:
    eng = engine(config(limits={"auth_failures": 1}))
    eng.set_whitelist([ip_network("203.0.113.0/24")])
    assert eng.feed(postfix_fail(), T0) == []
    eng.set_whitelist([])
    assert blocks(eng.feed(postfix_fail(), T0 + 1))


# --- escalation --------------------------------------------------------------------------------


def test_escalation_doubles_within_a_day_up_to_the_cap() -> None:
    cfg = config(
        screening={"block_minutes": 10},
        limits={"auth_failures": 1},
        escalation={"escalate": True, "max_block_minutes": 30},
    )
    c = Clock(engine(cfg))
    minutes = []
    t = 0.0
    for _ in range(4):
        out = blocks(c.at(t, postfix_fail()))
        minutes.append(out[0].minutes)
        t += out[0].minutes * 60 + 1
    assert minutes == [10, 20, 30, 30]
    t += 86400 + 1  # a day after the last block ended: back to the start
    assert blocks(c.at(t, postfix_fail()))[0].minutes == 10


def test_no_escalation_by_default() -> None:
    c = Clock(engine(config(limits={"auth_failures": 1})))
    assert blocks(c.at(0, postfix_fail()))[0].minutes == 10
    assert blocks(c.at(601, postfix_fail()))[0].minutes == 10


# --- blocks made elsewhere ------------------------------------------------------------------------


def test_note_block_resets_and_holds_the_source() -> None:
    eng = engine(config(limits={"auth_failures": 3}))
    eng.feed(postfix_fail(pid=1), T0)
    eng.feed(postfix_fail(pid=2), T0 + 1)
    eng.note_block(ip_network(IP), T0 + 300, now=T0 + 2)
    assert eng.counters(IP)["auth_failures"] == 0
    assert eng.blocked_until(IP) == T0 + 300
    for i in range(5):
        assert eng.feed(postfix_fail(pid=10 + i), T0 + 3 + i) == []
    eng.note_unblock(ip_network(IP))
    assert eng.blocked_until(IP) == 0.0
    eng.feed(postfix_fail(pid=20), T0 + 10)
    eng.feed(postfix_fail(pid=21), T0 + 11)
    assert eng.counters(IP)["auth_failures"] == 2  # afresh after the unblock
    assert blocks(eng.feed(postfix_fail(pid=22), T0 + 12))


def test_note_block_of_a_range_holds_every_source_in_it() -> None:
    eng = engine(config(limits={"auth_failures": 1}))
    eng.note_block(ip_network("203.0.113.0/24"), T0 + 600, now=T0)
    assert eng.feed(postfix_fail(), T0 + 1) == []  # a source first seen after the block
    assert blocks(eng.feed(postfix_fail(OTHER), T0 + 2))
    eng.note_unblock(ip_network("203.0.113.0/24"))
    assert blocks(eng.feed(postfix_fail(), T0 + 3))


def test_note_block_of_an_ipv6_prefix_and_of_one_address() -> None:
    eng = engine(config(limits={"auth_failures": 2}))
    eng.feed(postfix_fail("2001:db8::1"), T0)
    # one address: the prefix is not held
    eng.note_block(ip_network("2001:db8::5"), T0 + 600, now=T0 + 1)
    assert eng.counters("2001:db8::1")["auth_failures"] == 0
    eng.feed(postfix_fail("2001:db8::1"), T0 + 2)
    assert blocks(eng.feed(postfix_fail("2001:db8::2"), T0 + 3))
    eng.note_unblock(ip_network("2001:db8::/64"))
    eng.note_block(ip_network("2001:db8::/64"), T0 + 600, now=T0 + 4)
    assert eng.blocked_until("2001:db8::77") == T0 + 600


def test_manual_block_counts_for_escalation() -> None:
    cfg = config(limits={"auth_failures": 1}, escalation={"escalate": True})
    eng = engine(cfg)
    eng.note_block(ip_network(IP), T0 + 600, now=T0)
    assert blocks(eng.feed(postfix_fail(), T0 + 601))[0].minutes == 20


# --- simulated connection limits ---------------------------------------------------------------


def test_simulated_connection_rate() -> None:
    cfg = config(limits={"connections": 3, "connections_minutes": 1, "simultaneous": 0})
    c = Clock(engine(cfg, simulate=True))
    for i in range(3):
        c.at(i, connect(pid=i), disconnect(pid=i))
    assert c.decisions == []
    out = blocks(c.at(3, connect(pid=9)))
    assert (out[0].reason, out[0].count) == ("connections", 4)
    c2 = Clock(engine(cfg, simulate=True))
    for i in range(10):  # 3 a minute is fine
        c2.at(i * 20.5, connect(pid=i), disconnect(pid=i))
    assert c2.decisions == []


def test_simulated_simultaneous_sessions() -> None:
    cfg = config(limits={"connections": 0, "simultaneous": 2})
    c = Clock(engine(cfg, simulate=True))
    c.at(0, connect(pid=1), connect(pid=2), disconnect(pid=1), connect(pid=3))
    assert c.decisions == []
    out = blocks(c.at(1, connect(pid=4)))
    assert (out[0].reason, out[0].count) == ("simultaneous", 3)


def test_connections_are_not_counted_without_simulation() -> None:
    cfg = config(limits={"connections": 1, "simultaneous": 1})
    c = Clock(engine(cfg))
    for i in range(10):
        c.at(0, connect(pid=i))
    assert c.decisions == []


def test_unfinished_sessions_expire() -> None:
    cfg = config(limits={"connections": 0, "simultaneous": 2})
    eng = engine(cfg, simulate=True)
    eng.feed(connect(pid=1), T0)
    eng.feed(connect(pid=2), T0)
    eng.tick(T0 + SESSION_IDLE + 1)  # their disconnect lines were never seen
    assert eng.counters(IP)["open"] == 0


# --- memory bounds, master switch, reconfigure -------------------------------------------------


def test_oldest_source_is_evicted_at_max_tracked() -> None:
    eng = engine(config(screening={"max_tracked": 2}, limits={"auth_failures": 3}))
    eng.feed(postfix_fail("192.0.2.1"), T0)
    eng.feed(postfix_fail("192.0.2.2"), T0 + 1)
    eng.feed(postfix_fail("192.0.2.1", user="x", pid=7), T0 + 20)  # .1 recently seen again
    assert eng.tracked() == 2
    eng.feed(postfix_fail("192.0.2.3"), T0 + 21)
    assert eng.tracked() == 2
    assert eng.counters("192.0.2.2")["auth_failures"] == 0  # the least recent went
    assert eng.counters("192.0.2.1")["auth_failures"] == 2
    assert eng.counters("192.0.2.3")["auth_failures"] == 1


def test_idle_sources_expire() -> None:
    eng = engine(config(limits={"auth_failures": 5, "window_minutes": 10}))
    for i in range(100):
        eng.feed(postfix_fail(f"192.0.2.{i}"), T0)
    assert eng.tracked() == 100
    eng.tick(T0 + 601)
    assert eng.tracked() == 0


def test_blocked_sources_outlive_idleness() -> None:
    eng = engine(config(limits={"auth_failures": 1}, screening={"block_minutes": 60}))
    assert blocks(eng.feed(postfix_fail(), T0))
    eng.tick(T0 + 1200)
    assert eng.blocked_until(IP) == T0 + 3600
    eng.tick(T0 + 3601)
    assert eng.tracked() == 0


def test_disabled_screening_decides_nothing() -> None:
    c = Clock(engine(config(screening={"enabled": False}, limits={"auth_failures": 1})))
    c.at(0, postfix_fail(), sasl_ok(OTHER))
    assert c.decisions == []


def test_reconfigure_takes_new_limits_and_keeps_counts() -> None:
    eng = engine(config(limits={"auth_failures": 10}))
    for i in range(3):
        eng.feed(postfix_fail(pid=i), T0 + i)
    eng.reconfigure(config(limits={"auth_failures": 4}))
    assert blocks(eng.feed(postfix_fail(pid=9), T0 + 5))


def test_unparsable_address_is_ignored() -> None:
    eng = engine()
    assert eng.feed(postfix_fail("not-an-address"), T0) == []
    assert eng.feed(postfix_fail("not-an-address"), T0) == []


# --- decisions flow one way ---------------------------------------------------------------------


class HeardBlocks:
    """The engine, with what the daemon tells it of blocks written down."""

    def __init__(self, real: Engine) -> None:
        self.real = real
        self.heard: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def note_block(self, net: Any, until: float, *, now: float | None = None) -> None:
        self.heard.append(("block", net))
        self.real.note_block(net, until, now=now)

    def note_unblock(self, net: Any) -> None:
        self.heard.append(("unblock", net))
        self.real.note_unblock(net)


def test_the_engine_hears_of_blocks_it_did_not_make_and_never_of_its_own() -> None:
    """Its own decision goes to the kernel typed (no text in between) and is not echoed
    back; a kernel-made block, a manual one and an expiry are told to it."""
    from fakeplane import FakePlane

    from dynscreen.control.daemon import Daemon, Options
    from dynscreen.control.dataplane.loader import KernelEvent

    cfg = config(screening={"close_session": False}, limits={"auth_failures": 3})
    dp = FakePlane()
    d = Daemon(Options(None), cfg, dp, ["fake0"], [])  # type: ignore[arg-type]
    spy = HeardBlocks(d.engine)
    d.engine = spy  # type: ignore[assignment]
    for pid in (1, 2, 3):
        d.feed(postfix_fail(pid=pid))
    mine = ip_network(IP)
    assert mine in dp.blocks and dp.blocks[mine].origin == "logs"
    assert spy.heard == [], "the engine's own block came back to it"
    assert spy.real.blocked_until(IP) > T0
    dp.events.append(KernelEvent(ip_network(OTHER), time.time() + 86400, "connections", 30,
                                 False, False, False))

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(d._kernel_events())
        for _ in range(100):
            if spy.heard:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        await d.commands.block({"addr": "192.0.2.77", "minutes": 1})
        await d.keeper.stop()

    asyncio.run(main())
    assert spy.heard == [("block", ip_network(OTHER)), ("block", ip_network("192.0.2.77"))]
    b = d.blocks.find(mine)
    assert b is not None
    d.blocks.sweep(now=b.expires)  # the index's expiry wheel: mine is due, the others not yet
    assert spy.heard[-1] == ("unblock", mine) and mine not in dp.blocks
