"""End to end, SMTP abuse and connection limits: harvest, RSET, rate, concurrency, whitelist.

Real clients against Debian's Postfix and Dovecot in the lab's gateway namespace.
The rate and concurrency limits are the kernel's (XDP + the socket tracepoint);
failed RCPTs and RSETs come from Postfix's log. Lab limits: 12 connections a
minute, 4 at once, 4 unknown recipients, 5 RSETs (see dynscreen.control.lab).
"""

from __future__ import annotations

import imaplib

import pytest
from conftest_lab import (
    IMAP,
    SMTP,
    SUBMISSION,
    Watch,
    assert_dropped,
    block_of,
    connects,
    counters,
    lab_fixture,  # noqa: F401  (provides the `lab` fixture)
    not_blocked,
    quietly_close,
    session_closed,
)

from dynscreen.control.lab import MailLab
from dynscreen.control.lab.netns import wait_for

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]


def test_directory_harvest_is_blocked(lab: MailLab) -> None:
    """Row 5: RCPT TO unknown users of example.test until the limit."""
    src = lab.attacker()
    s = lab.smtp(src, SMTP)
    session = Watch(s)
    s.ehlo()
    assert s.mail("spammer@elsewhere.test")[0] == 250
    for name in ("webmaster", "jobs", "hr", "billing"):
        code, text = s.rcpt(f"{name}@example.test")
        assert code == 550 and b"User unknown" in text
    b = block_of(lab, src)
    assert (b["reason"], b["source"]) == ("failed_rcpts", "logs")
    assert session_closed(lab, session), "the session was closed"
    assert_dropped(lab, src, SMTP)
    assert block_of(lab, src)["drops"] >= 1
    # Mail from elsewhere for a real user still flows.
    lab.send_mail(lab.attacker(), "alice", subject="after the harvest")
    quietly_close(s)


def test_rset_abuse_is_blocked(lab: MailLab) -> None:
    """Row 6: Postfix counts RSETs in its disconnect line (rset=N)."""
    src = lab.attacker()
    s = lab.smtp(src, SMTP)
    s.ehlo()
    for _ in range(lab.limits["rsets"]):
        assert s.rset()[0] == 250
    s.quit()
    b = block_of(lab, src)
    assert (b["reason"], b["source"]) == ("rsets", "logs")
    assert lab.log_lines(f"disconnect from unknown[{src}] ehlo=1 rset={lab.limits['rsets']}")
    assert_dropped(lab, src, SMTP)


def test_connection_flood_is_blocked_by_the_kernel(lab: MailLab) -> None:
    """Row 2: more than X connections in Y minutes; the X+1st is dropped in XDP."""
    src = lab.attacker()
    limit = lab.limits["connections"]
    before = counters(lab)
    ok = [connects(lab, src, SMTP) for _ in range(limit)]
    assert all(ok), f"the first {limit} connections pass ({ok.count(False)} did not)"
    assert_dropped(lab, src, SMTP)  # connection X+1
    b = block_of(lab, src)
    assert (b["reason"], b["source"]) == ("connections", "kernel")
    assert_dropped(lab, src, IMAP)  # and every screened port
    after = counters(lab)
    assert after["drop_rate"] > before["drop_rate"]
    assert after["blocks_made"] > before["blocks_made"]
    assert connects(lab, lab.attacker(), SMTP), "another source is not affected"


def test_too_many_simultaneous_sessions_block_and_close_them(lab: MailLab) -> None:
    """Rows 4 and 8: a fifth session at once is dropped, the four open ones are closed."""
    src = lab.attacker()
    limit = lab.limits["simultaneous"]
    held = [lab.smtp(src, SMTP) for _ in range(limit)]
    sessions = [Watch(s) for s in held]
    for s in held:
        assert s.ehlo()[0] == 250
    assert_dropped(lab, src, SMTP)  # session X+1
    b = block_of(lab, src)
    assert (b["reason"], b["source"]) == ("simultaneous", "kernel")
    closed = [session_closed(lab, w) for w in sessions]
    assert all(closed), f"the open sessions were closed: {closed}"
    assert counters(lab)["drop_simultaneous"] >= 1
    quietly_close(*held)


def test_a_whitelisted_range_is_never_screened(lab: MailLab) -> None:
    """Row 10: `dynscreen allow add` a CIDR range; its hosts flood, guess passwords and
    hold many sessions without a block; removed from the list, they are screened again."""
    rng = lab.partner_range
    src, other = lab.partner[0], lab.partner[1]
    assert lab.cli("allow", "add", rng).returncode == 0
    rows = lab.cli_json("allow", "list")["whitelist"]
    assert {"cidr": rng, "source": "runtime"} in rows
    before = counters(lab)["exempt_pass"]  # limits reached by exempt or whitelisted sources

    conns = [connects(lab, src, SMTP) for _ in range(2 * lab.limits["connections"])]
    assert all(conns), "no rate limit"
    held = [lab.smtp(src, SMTP) for _ in range(lab.limits["simultaneous"] + 2)]
    m = lab.imap(src)
    for i in range(lab.limits["auth_failures"] + 2):
        with pytest.raises(imaplib.IMAP4.error):
            m.login(f"nobody{i}@example.test", "wrong")
    assert m.noop()[0] == "OK", "the session stays open"
    for s in held:
        assert s.noop()[0] == 250
    not_blocked(lab, src)
    assert counters(lab)["exempt_pass"] > before, "the kernel reached a limit and let it pass"
    quietly_close(m, *held)

    assert lab.cli("allow", "remove", rng).returncode == 0
    ok = [connects(lab, other, SUBMISSION) for _ in range(lab.limits["connections"])]
    assert all(ok)
    assert_dropped(lab, other, SUBMISSION)  # screened again once off the list
    assert block_of(lab, other)["reason"] == "connections"


def test_blocked_sources_cannot_send_mail_but_others_can(lab: MailLab) -> None:
    """The gateway keeps working for everyone else while attackers are blocked."""
    blocked = [b["ip"] for b in lab.status()["blocks"]]
    assert blocked, "earlier scenarios left blocks"
    assert_dropped(lab, blocked[0], SMTP)
    lab.send_mail(lab.honest[0], "carol", subject="business as usual")
    assert wait_for(lambda: any("business as usual" in x for x in lab.mailbox("carol")),
                    timeout=5)
