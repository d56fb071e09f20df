"""Dovecot's auth policy reports in the engine: one attempt however it is told, and
a password already tried counts once (ignore_repeated_passwords)."""

from __future__ import annotations

from test_engine import IP, OTHER, T0, blocks, config, detail, engine, pam, postfix_fail, summary

from dynscreen.control.decisions import Decision
from dynscreen.control.engine import Engine
from dynscreen.control.events import Event


def report(ip: str = IP, user: str | None = "alice@example.com", session: str | None = None,
           service: str | None = "imap", success: bool = False) -> Event:
    """What control/dovecotpolicy.py makes of a ``command=report``."""
    return Event("auth_success" if success else "auth_failure", ip, 0.0, service, user,
                 file="dovecot-policy", origin="dovecot-policy", session=session)


def fails(eng: Engine, ip: str = IP) -> int:
    return eng.counters(ip)["auth_failures"]


def test_report_then_the_log_lines_of_one_attempt_count_once() -> None:
    eng = engine(config(limits={"auth_failures": 100}))
    eng.feed_report(report(session="S1"), "a01", T0)
    eng.feed(detail(session="S1", service="imap"), T0 + 0.01)  # auth_verbose = yes
    eng.feed(summary(1, session="S1"), T0 + 2.5)  # the login process, after the delay
    assert fails(eng) == 1
    eng.feed_report(report(session="S2"), "a02", T0 + 10)  # auth_verbose = no: summary only
    eng.feed(summary(1, session="S2"), T0 + 12)
    assert fails(eng) == 2
    eng.feed_report(report(session="S3"), "a03", T0 + 20)
    eng.feed_report(report(session="S3"), "a04", T0 + 22)
    eng.feed(pam(user="alice@example.com"), T0 + 22)
    eng.feed(summary(2, session="S3"), T0 + 25)  # one session, two attempts
    assert fails(eng) == 4


def test_report_without_a_session_attribute_is_claimed_by_the_summary() -> None:
    """The default auth_policy_request_attributes name no session: the login summary
    (which has one) takes the sessionless report of an IMAP attempt as its own."""
    eng = engine(config(limits={"auth_failures": 100}))
    eng.feed_report(report(), "a01", T0)
    eng.feed(summary(1, session="S1"), T0 + 2)
    assert fails(eng) == 1


def test_smtp_auth_through_dovecot_sasl_counts_once() -> None:
    """Postfix asks Dovecot's auth: the report comes at once (no session id, Postfix sends
    none), Postfix's own line after auth_failure_delay; an IMAP summary never takes it."""
    eng = engine(config(limits={"auth_failures": 100}))
    eng.feed_report(report(service="smtp"), "a01", T0)
    eng.feed(summary(1, session="S7"), T0 + 1)  # another, IMAP, attempt from the address
    assert fails(eng) == 2
    eng.feed(postfix_fail(), T0 + 2)
    assert fails(eng) == 2


def test_report_pairs_with_the_logs_only_within_the_window() -> None:
    eng = engine(config(limits={"auth_failures": 100}))
    eng.feed_report(report(service="smtp"), "a01", T0)
    eng.feed(postfix_fail(), T0 + 30)
    assert fails(eng) == 2


def test_policy_reports_block_before_any_log_line() -> None:
    eng = engine(config(limits={"auth_failures": 5}))
    out: list[Decision] = []
    for i in range(5):
        out += eng.feed_report(report(session=f"S{i}"), f"b{i:02}", T0 + i)
    [block] = blocks(out)
    assert block.ip == IP and block.reason == "auth_failures"
    for i in range(5):  # then the login summaries: nothing new
        assert blocks(eng.feed(summary(1, session=f"S{i}"), T0 + 6 + i)) == []


def test_a_stale_password_counts_once_new_passwords_each() -> None:
    eng = engine(config(limits={"auth_failures": 5}))
    for i in range(50):  # a phone retrying its old password every 20 s, a session each
        t = T0 + 20 * i
        assert blocks(eng.feed_report(report(session=f"P{i}"), "5e1", t)) == []
        assert blocks(eng.feed(summary(1, session=f"P{i}"), t + 2)) == []
        eng.tick(t + 3)
        assert fails(eng) <= 1
    assert fails(eng) == 0  # (its one count left the window long ago)
    out: list[Decision] = []
    for i in range(5):  # a guesser from the same address: each new password counts
        out += eng.feed_report(report(session=f"G{i}"), f"9{i:02}", T0 + 1000 + i)
    assert [b.reason for b in blocks(out)] == ["auth_failures"]


def test_the_same_password_counts_per_source_account_and_window() -> None:
    eng = engine(config(limits={"auth_failures": 100, "window_minutes": 10}))
    eng.feed_report(report(), "5e1", T0)
    eng.feed_report(report(), "5e1", T0 + 1)
    eng.feed_report(report(user="bob"), "5e1", T0 + 2)  # another account
    eng.feed_report(report(ip=OTHER), "5e1", T0 + 3)  # another source
    assert (fails(eng), fails(eng, OTHER)) == (2, 1)
    eng.feed_report(report(), "5e1", T0 + 500)  # a repeat: the window starts again
    eng.feed_report(report(), "5e1", T0 + 1099)
    assert fails(eng) == 2
    eng.feed_report(report(), "5e1", T0 + 1099 + 600)  # a full window later: counted
    assert fails(eng) == 1  # (the first two left the window)


def test_repeats_count_when_ignore_repeated_passwords_is_off() -> None:
    eng = engine(config(limits={"auth_failures": 5},
                        accounts={"ignore_repeated_passwords": False}))
    out: list[Decision] = []
    for i in range(5):
        out += eng.feed_report(report(session=f"P{i}"), "5e1", T0 + i)
    assert [b.reason for b in blocks(out)] == ["auth_failures"]


def test_a_repeated_password_is_still_one_attempt_with_its_log_lines() -> None:
    """A repeat is not counted, and its log lines must not count it either."""
    eng = engine(config(limits={"auth_failures": 100}))
    eng.feed_report(report(service="smtp"), "5e1", T0)
    eng.feed(postfix_fail(pid=1), T0 + 2)
    eng.feed_report(report(service="smtp"), "5e1", T0 + 60)
    eng.feed(postfix_fail(pid=2), T0 + 62)
    eng.feed_report(report(session="S1"), "5e1", T0 + 120)
    eng.feed(detail(session="S1"), T0 + 120)
    eng.feed(summary(1, session="S1"), T0 + 122)
    assert fails(eng) == 1


def test_success_report_makes_the_source_familiar() -> None:
    eng = engine(config(accounts={"spray_sources": 2}))
    eng.feed_report(report(success=True), "", T0)
    # the account's own source failing on it is not counted for spraying
    eng.feed_report(report(), "5e1", T0 + 10)
    out = eng.feed_report(report(ip=OTHER), "5e1", T0 + 11)
    assert not [d for d in out if type(d).__name__ == "Protect"]


def test_is_blocked_knows_its_own_and_told_blocks() -> None:
    from ipaddress import ip_network

    eng = engine(config(limits={"auth_failures": 1}))
    eng.feed_report(report(), "5e1", T0)
    assert eng.is_blocked(IP, T0 + 1) and not eng.is_blocked(OTHER, T0 + 1)
    assert not eng.is_blocked(IP, T0 + 601)  # (block_minutes = 10)
    eng.note_block(ip_network("198.51.100.0/24"), T0 + 60, now=T0)  # a manual range
    assert eng.is_blocked(OTHER, T0 + 1) and not eng.is_blocked(OTHER, T0 + 61)
    assert not eng.is_blocked("not an address", T0)


def test_a_repeat_reported_after_its_log_line_is_taken_back() -> None:
    """The log line may reach the engine before the report: counted, then uncounted."""
    eng = engine(config(limits={"auth_failures": 5}))
    for i in range(20):
        t = T0 + 20 * i
        assert blocks(eng.feed(detail(session=f"P{i}", service="imap"), t)) == []
        assert blocks(eng.feed_report(report(session=f"P{i}"), "5e1", t + 0.01)) == []
        assert blocks(eng.feed(summary(1, session=f"P{i}"), t + 2)) == []
    assert fails(eng) == 1
