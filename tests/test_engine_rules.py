"""The rules past per-address counting, with a fake clock: exemption scope, trusted
senders, password spraying, prefix aggregation, escalation that heals."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import pytest
from test_engine import T0, Clock, blocks, config, engine, postfix_fail, sasl_ok

from dynscreen.control.aggregate import PrefixCounter
from dynscreen.control.config import ConfigError, parse_config
from dynscreen.control.decisions import Block, Protect, Spare
from dynscreen.control.events import Event
from dynscreen.control.spray import DistinctSources

IP = "203.0.113.7"
GMAIL = "209.85.128.45"


def rcpt(ip: str, host: str | None = "unknown", pid: int = 100) -> Event:
    """``NOQUEUE: reject: RCPT from host[ip]: 550 5.1.1 <x>: Recipient address rejected: ...``."""
    return Event("rcpt_unknown", ip, 0.0, "smtp", "stale@example.com", origin="postfix",
                 session=f"mx/smtpd[{pid}]", host=host)


def rset(ip: str, count: int, host: str | None = "unknown") -> Event:
    return Event("rset", ip, 0.0, "smtp", count=count, origin="postfix",
                 session="mx/smtpd[100]", host=host)


def fail(ip: str, user: str | None, pid: int = 100) -> Event:
    return postfix_fail(ip, user, pid)


# --- 1. exemptions that can't be abused -------------------------------------------------------


def test_one_valid_login_no_longer_exempts_guessing_on_other_accounts() -> None:
    c = Clock(engine(config(limits={"auth_failures": 5})))
    c.at(0, sasl_ok(IP, "mallory@example.com"))  # the attacker's own account
    for i in range(4):
        c.at(1 + i, fail(IP, f"victim{i}@example.com", pid=i))
    assert c.of(Block) == []
    out = blocks(c.at(5, fail(IP, "victim9@example.com", pid=9)))
    assert [(b.ip, b.reason, b.count) for b in out] == [(IP, "auth_failures", 5)]


def test_failures_on_the_exempting_account_itself_stay_exempt() -> None:
    c = Clock(engine(config(limits={"auth_failures": 2})))
    c.at(0, sasl_ok(IP, "alice@example.com"))
    for i in range(20):  # a phone with the old password, behind the same NAT
        c.at(1 + i, fail(IP, "Alice@example.com", pid=i))
    assert c.of(Block) == []


def test_exempt_scope_all_is_the_old_behaviour() -> None:
    cfg = config(screening={"exempt_scope": "all"}, limits={"auth_failures": 2})
    c = Clock(engine(cfg))
    c.at(0, sasl_ok(IP, "mallory@example.com"))
    for i in range(20):
        c.at(1 + i, fail(IP, f"victim{i}@example.com", pid=i))
    assert c.of(Block) == []


def test_exemption_still_covers_the_other_limits() -> None:
    c = Clock(engine(config(limits={"failed_rcpts": 2, "rsets": 2})))
    c.at(0, sasl_ok(IP, "mallory@example.com"))
    for i in range(10):
        c.at(1 + i, rcpt(IP), rset(IP, 5))
    assert c.of(Block) == []


# --- 2. trusted senders -------------------------------------------------------------------------


def test_a_verified_gmail_relay_is_spared_and_an_unverified_source_is_not() -> None:
    c = Clock(engine(config(limits={"failed_rcpts": 10})))
    for i in range(10):  # one mail to ten stale addresses, from Gmail
        c.at(i, rcpt(GMAIL, "mail-wm1-f45.google.com"))
    assert c.of(Block) == []
    spared = c.of(Spare)
    assert [(s.ip, s.reason, s.count) for s in spared] == [(GMAIL, "failed_rcpts", 10)]
    assert "mail-wm1-f45.google.com" in spared[0].trusted
    assert spared[0].to_json() == {
        "type": "decision", "action": "spare", "ip": GMAIL, "reason": "failed_rcpts",
        "trusted": spared[0].trusted,
    }
    # The same pattern from a source whose name did not verify, or claims Google
    # without the DNS agreeing (Postfix logs "unknown" then): blocked.
    for i in range(10):
        c.at(20 + i, rcpt(IP, "unknown"))
    assert [(b.ip, b.reason) for b in c.of(Block)] == [(IP, "failed_rcpts")]


def test_trusted_senders_spare_rsets_too_and_the_pattern_is_a_suffix() -> None:
    c = Clock(engine(config(limits={"rsets": 4})))
    c.at(0, rset(GMAIL, 5, "MAIL-YW1-F1.GOOGLE.COM"))
    c.at(1, rset(IP, 5, "google.com.attacker.example"))
    c.at(2, rset("198.51.100.3", 5, "notgoogle.com"))
    assert [s.ip for s in c.of(Spare)] == [GMAIL]
    assert sorted(b.ip for b in c.of(Block)) == ["198.51.100.3", IP]


def test_trusted_senders_are_still_blocked_for_auth_failures() -> None:
    c = Clock(engine(config(limits={"auth_failures": 2})))
    ev = Event("auth_failure", GMAIL, 0.0, "smtp", "x@example.com", origin="postfix",
               session="mx/smtpd[1]", host="mail-wm1-f45.google.com")
    c.at(0, ev)
    c.at(1, ev._replace(session="mx/smtpd[2]"))
    assert [b.ip for b in c.of(Block)] == [GMAIL]


def test_trusted_networks() -> None:
    cfg = config(screening={"trusted_networks": ["40.92.0.0/15"]}, limits={"failed_rcpts": 3})
    c = Clock(engine(cfg))
    for i in range(3):
        c.at(i, rcpt("40.93.1.2", "unknown"), rcpt("40.94.1.2", "unknown"))
    assert [(s.ip, s.trusted) for s in c.of(Spare)] == [("40.93.1.2", "40.92.0.0/15")]
    assert [b.ip for b in c.of(Block)] == ["40.94.1.2"]


def test_no_trusted_senders_means_none() -> None:
    c = Clock(engine(config(screening={"trusted_senders": []}, limits={"failed_rcpts": 2})))
    c.at(0, rcpt(GMAIL, "mail-wm1-f45.google.com"), rcpt(GMAIL, "mail-wm1-f45.google.com"))
    assert [b.ip for b in c.of(Block)] == [GMAIL]


def test_trusted_senders_config_is_checked() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config('[screening]\ntrusted_senders = ["*google"]\n', "/etc/d.toml")
    assert "/etc/d.toml" in str(e.value) and "screening.trusted_senders[0]" in str(e.value)
    assert '"*google"' in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config('[screening]\ntrusted_networks = ["10.0.0.1/8"]\n', "/etc/d.toml")
    assert "screening.trusted_networks[0]" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config('[screening]\nexempt_scope = "some"\n', "/etc/d.toml")
    assert "screening.exempt_scope" in str(e.value) and '"limits"' in str(e.value)


# --- 3. password spraying -----------------------------------------------------------------------


def spray_sources(n: int) -> list[str]:
    return [f"10.{i // 250}.{i % 250}.{1 + i % 7}" for i in range(n)]


def test_spraying_from_200_sources_protects_and_blocks_strangers_not_a_familiar_one() -> None:
    cfg = config(limits={"auth_failures": 5})
    c = Clock(engine(cfg))
    home = "192.0.2.55"
    c.at(0, sasl_ok(home, "ceo@example.com"))  # the CEO's phone, a week ago
    t = 7 * 86400.0
    ips = spray_sources(200)
    for round_ in range(2):  # each source fails twice within minutes
        for i, ip in enumerate(ips):
            c.at(t + round_ * 250 + i, fail(ip, "ceo@example.com", pid=i))
    protect = c.of(Protect)
    assert len(protect) == 1  # once per window
    p = protect[0]
    assert p.to_json() == {
        "type": "decision", "action": "protect", "user": "ceo@example.com", "minutes": 60,
        "sources": 10,
    }
    assert p.sample[:3] == tuple(ips[:3])
    spray = [b for b in c.of(Block) if b.reason == "spray"]
    # the 10th source made the protection and every stranger from then on is blocked at
    # its first failure; the first nine at their second
    assert len(spray) == 200 and len({b.ip for b in spray}) == 200
    assert all(b.reason == "spray" for b in c.of(Block))
    # the familiar source fails (stale password): neither blocked nor counted
    for i in range(4):
        c.at(t + 2400 + i, fail(home, "ceo@example.com", pid=900 + i))
    assert home not in {b.ip for b in c.of(Block)}
    # ... until its own per-address limit, as for anyone
    assert [b.reason for b in blocks(c.at(t + 2405, fail(home, "ceo@example.com", pid=99)))] == [
        "auth_failures"
    ]


def test_below_spray_sources_nothing_happens_and_the_window_slides() -> None:
    c = Clock(engine(config(accounts={"spray_sources": 10, "spray_minutes": 60})))
    ips = spray_sources(15)
    for i, ip in enumerate(ips[:9]):
        c.at(i, fail(ip, "bob@example.com", pid=i))
    for i, ip in enumerate(ips[9:]):  # an hour after the first nine: they are out
        c.at(3600 + i, fail(ip, "bob@example.com", pid=50 + i))
    assert c.of(Protect) == [] and c.of(Block) == []


def test_protection_ends_and_familiarity_expires() -> None:
    cfg = config(accounts={"spray_sources": 3, "protect_minutes": 10, "familiar_days": 1})
    c = Clock(engine(cfg))
    c.at(0, sasl_ok("192.0.2.1", "bob@example.com"))
    c.at(86400, *(fail(ip, "bob@example.com", pid=i) for i, ip in enumerate(spray_sources(3))))
    assert len(c.of(Protect)) == 1
    # a day and more after its login: no longer familiar
    assert [b.reason for b in blocks(c.at(86401, fail("192.0.2.1", "bob@example.com")))] == [
        "spray"
    ]
    # the protection is over after 10 minutes, the sources left the window after 60
    c.at(86400 + 3601 + 600, fail("192.0.2.9", "bob@example.com"))
    assert len(c.of(Protect)) == 1 and "192.0.2.9" not in {b.ip for b in c.of(Block)}


def test_spraying_off() -> None:
    c = Clock(engine(config(accounts={"spray_sources": 0})))
    for i, ip in enumerate(spray_sources(50)):
        c.at(i, fail(ip, "bob@example.com", pid=i))
    assert c.decisions == []


def test_distinct_sources_are_exact_up_to_the_cap_then_estimated() -> None:
    d = DistinctSources(3600.0, cap=100)
    for i in range(100):
        assert d.add(f"10.0.{i}.1", T0 + i) == i + 1
    assert d.add("10.0.0.1", T0 + 100) == 100  # a source seen again is not a new one
    assert d.exact is not None
    n = 0
    for i in range(100, 5000):
        n = d.add(f"10.1.{i // 250}.{i % 250}", T0 + 100 + i * 0.5)
    assert d.exact is None  # beyond the cap: the estimate, in bounded memory
    assert 5000 * 0.93 <= n <= 5000 * 1.07, n
    for i in range(100, 2000):  # sources seen again do not raise the estimate
        n2 = d.add(f"10.1.{i // 250}.{i % 250}", T0 + 2700)
    assert abs(n2 - n) <= 0.02 * n
    assert d.count(T0 + 2700 + 3600 * 1.25 + 1) == 0  # the window passed: forgotten
    assert d.exact is not None


def test_spray_threshold_beyond_the_cap_uses_the_estimate() -> None:
    cfg = config(accounts={"spray_sources": 3000})
    eng = engine(cfg)
    protect: list[Protect] = []
    at = None
    for i in range(4000):
        ip = f"10.{i // 250}.{i % 250}.9"
        for d in eng.feed(fail(ip, "bob@example.com", pid=i), T0 + i * 0.2):
            if isinstance(d, Protect):
                protect.append(d)
                at = i + 1
    assert len(protect) == 1 and at is not None
    assert 3000 * 0.93 <= at <= 3000 * 1.07, at


# --- 4. prefix aggregation ----------------------------------------------------------------------


def agg_engine(**screening: Any) -> Clock:
    return Clock(engine(config(screening={"aggregate_sources": 8, **screening},
                               limits={"auth_failures": 1})))


def test_aggregation_at_exactly_the_threshold_and_not_below() -> None:
    c = agg_engine()
    for i in range(7):
        c.at(i, fail(f"198.51.100.{10 + i}", f"u{i}"))
    assert all(b.reason == "auth_failures" for b in c.of(Block)) and len(c.of(Block)) == 7
    out = blocks(c.at(7, fail("198.51.100.200", "u7")))
    assert [(b.ip, b.reason) for b in out] == [
        ("198.51.100.200", "auth_failures"), ("198.51.100.0/24", "prefix")
    ]
    assert out[1].count == 8 and out[1].minutes == 10
    assert out[1].to_json()["ip"] == "198.51.100.0/24"
    # inside the prefix nothing more is blocked one by one while it stands
    assert blocks(c.at(8, fail("198.51.100.99", "u9"))) == []


def test_aggregation_needs_the_blocks_within_the_window() -> None:
    c = agg_engine()
    for i in range(7):
        c.at(i, fail(f"198.51.100.{10 + i}", f"u{i}"))
    c.at(600, fail("198.51.100.200", "u7"))  # window_minutes (10) after the first
    assert [b.reason for b in c.of(Block)].count("prefix") == 0


def test_prefix_time_is_the_longest_remaining_of_its_members() -> None:
    cfg = config(screening={"aggregate_sources": 2},
                 limits={"auth_failures": 1}, escalation={"escalate": True})
    c = Clock(engine(cfg))
    c.at(0, fail("198.51.100.1", "a"))
    c.at(601, fail("198.51.100.1", "a"))  # escalated: 20 minutes, until 1801
    out = blocks(c.at(700, fail("198.51.100.2", "b")))
    assert out[-1].reason == "prefix" and out[-1].minutes == 19  # ceil((1801 - 700) / 60)


def test_aggregation_off_and_ipv6() -> None:
    c = agg_engine(aggregate_sources=0)
    for i in range(20):
        c.at(i, fail(f"198.51.100.{10 + i}", f"u{i}"))
    assert "prefix" not in {b.reason for b in c.of(Block)}
    c6 = agg_engine()
    for i in range(8):
        c6.at(i, fail(f"2001:db8:7:{i}::1", f"u{i}"))
    assert [b.ip for b in c6.of(Block) if b.reason == "prefix"] == ["2001:db8:7::/48"]


def test_aggregation_never_covers_a_trusted_or_familiar_address() -> None:
    c = agg_engine()
    c.at(0, sasl_ok("198.51.100.77", "alice@example.com"))  # familiar to alice
    for i in range(8):
        c.at(10 + i, fail(f"198.51.100.{10 + i}", f"u{i}"))
    assert "prefix" not in {b.reason for b in c.of(Block)}
    c = agg_engine(trusted_networks=["198.51.100.128/25"])
    for i in range(8):
        c.at(i, fail(f"198.51.100.{10 + i}", f"u{i}"))
    assert "prefix" not in {b.reason for b in c.of(Block)}
    c = agg_engine()
    c.at(0, *(rcpt("198.51.100.90", "mx.google.com") for _ in range(10)))  # spared once
    for i in range(8):
        c.at(10 + i, fail(f"198.51.100.{10 + i}", f"u{i}"))
    assert "prefix" not in {b.reason for b in c.of(Block)}


def test_a_whitelisted_address_inside_a_prefix_block_is_still_never_blocked() -> None:
    c = agg_engine(whitelist=["127.0.0.0/8", "198.51.100.5/32"])
    for i in range(8):
        c.at(i, fail(f"198.51.100.{10 + i}", f"u{i}"))
    assert [b.ip for b in c.of(Block) if b.reason == "prefix"] == ["198.51.100.0/24"]
    for i in range(10):
        c.at(20 + i, fail("198.51.100.5", "u"), rcpt("198.51.100.5"))
    assert "198.51.100.5" not in {b.ip for b in c.of(Block)}
    # (in the kernel, a CIDR block's hit checks the whitelist: tests/test_netns_rules.py)


def test_prefix_counter_bounds_its_memory() -> None:
    pc = PrefixCounter(3, 24, 48, 600.0, limit=2)
    pc.add("10.0.0.1", T0, T0 + 60)
    pc.add("10.0.1.1", T0, T0 + 60)
    pc.add("10.0.2.1", T0, T0 + 60)
    assert list(pc.groups) == ["10.0.1.0/24", "10.0.2.0/24"]
    pc.expire(T0 + 600)
    assert not pc.groups


# --- 5. escalation that heals -------------------------------------------------------------------


def test_escalation_doubles_per_reblock_then_heals_after_the_clean_period() -> None:
    cfg = config(
        screening={"block_minutes": 10},
        limits={"auth_failures": 1},
        escalation={"escalate": True, "max_block_minutes": 1000, "escalation_reset_hours": 2},
    )
    c = Clock(engine(cfg))
    t = 0.0
    minutes = []
    for _ in range(4):
        b = blocks(c.at(t, fail(IP, "x")))[0]
        minutes.append(b.minutes)
        t += b.minutes * 60 + 3600  # back an hour after each block ended: within 2 h
    assert minutes == [10, 20, 40, 80]
    t += 3600 + 1  # clean for two hours after the last block ended
    assert blocks(c.at(t, fail(IP, "x")))[0].minutes == 10


def test_escalation_reset_hours_is_checked() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("[screening.escalation]\nescalation_reset_hours = 0\n", "/etc/d.toml")
    assert "screening.escalation.escalation_reset_hours" in str(e.value)


def test_runtime_whitelist_of_a_range_still_applies_inside_a_prefix() -> None:
    eng = engine(config(screening={"aggregate_sources": 2}, limits={"auth_failures": 1}))
    eng.set_whitelist([ip_network("198.51.100.64/26")])
    eng.feed(fail("198.51.100.1", "a"), T0)
    assert [b.reason for b in blocks(eng.feed(fail("198.51.100.2", "b"), T0 + 1))] == [
        "auth_failures", "prefix"
    ]
    assert eng.feed(fail("198.51.100.65", "c"), T0 + 2) == []


# --- the verified host name, as the parsers hand it over ------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
def test_postfix_lines_carry_the_verified_host_name(fast: bool) -> None:
    from dynscreen.control.logs.parse import LogParser

    stamp = "Mar  1 10:00:00 mx1 " if fast else "2026-03-01T10:00:00.123456+00:00 mx1 "
    lines = [
        "postfix/smtpd[7]: connect from mail-ej1-f45.google.com[209.85.218.45]",
        "postfix/smtpd[7]: NOQUEUE: reject: RCPT from mail-ej1-f45.google.com[209.85.218.45]: "
        "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown in virtual "
        "mailbox table; from=<a@gmail.com> to=<gone@example.com> proto=ESMTP "
        "helo=<mail-ej1-f45.google.com>",
        "postfix/smtpd[7]: disconnect from mail-ej1-f45.google.com[209.85.218.45] ehlo=1 "
        "mail=1 rcpt=0/1 rset=3 quit=1 commands=3/4",
        "postfix/smtpd[8]: warning: unknown[203.0.113.9]: SASL LOGIN authentication failed: "
        "UGFzc3dvcmQ6, sasl_username=bob",
    ]
    parser = LogParser("/var/log/mail.log")
    events = [ev for i, text in enumerate(lines, 1) for ev in parser.parse(stamp + text, i)]
    assert [(ev.kind, ev.host) for ev in events] == [
        ("connect", "mail-ej1-f45.google.com"),
        ("rcpt_unknown", "mail-ej1-f45.google.com"),
        ("disconnect", "mail-ej1-f45.google.com"),
        ("rset", "mail-ej1-f45.google.com"),
        ("auth_failure", "unknown"),
    ]
    dovecot = parser.parse(stamp + "dovecot: auth: passwd-file(bob,203.0.113.9): Password "
                           "mismatch", 9)
    assert [ev.host for ev in dovecot] == [None]
