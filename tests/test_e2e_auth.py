"""End to end, logins: brute force on IMAP, POP3 and SMTP AUTH; the honest user; frozen accounts.

Real clients (imaplib, poplib, smtplib) in a client namespace talk to Debian's
Dovecot and Postfix in the gateway namespace; dynscreen reads their logs and
blocks in the kernel. Each test checks what the client lives through and what
`dynscreen status --json` / `accounts list --json` say. Lab limits: 4 failed
logins per source, 3 per account in one session (see dynscreen.control.lab).
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import time
from collections.abc import Callable

import pytest
from conftest_lab import (
    IMAP,
    POP3,
    SUBMISSION,
    Watch,
    assert_dropped,
    block_of,
    connects,
    counters,
    frozen_account,
    lab_fixture,  # noqa: F401  (provides the `lab` fixture)
    not_blocked,
    quietly_close,
    report,
    session_closed,
)

from dynscreen.control.lab import MailLab, auth_plain
from dynscreen.control.lab.mail import USERS
from dynscreen.control.lab.netns import wait_for

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]

BAD_USERS = ["admin", "test", "info", "sales", "office", "root"]


def _imap_fails(m: imaplib.IMAP4, user: str, password: str = "wrong") -> None:
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(f"{user}@example.test", password)


def _last_attempt(attempt: Callable[[], object], refused: type[Exception]) -> None:
    """The attempt that reaches the limit: refused, or the session is closed under it
    (dynscreen may act on the log line before the client reads the answer)."""
    with pytest.raises((refused, OSError, EOFError, imaplib.IMAP4.abort,
                        smtplib.SMTPServerDisconnected)):
        attempt()


def test_imap_brute_force_blocks_the_source_and_closes_its_session(lab: MailLab) -> None:
    src = lab.attacker()
    m = lab.imap(src)
    session = Watch(m)
    for user in BAD_USERS[:3]:
        _imap_fails(m, user)
    _last_attempt(lambda: m.login(f"{BAD_USERS[3]}@example.test", "wrong"), imaplib.IMAP4.error)
    b = block_of(lab, src)
    assert (b["reason"], b["source"]) == ("auth_failures", "logs")
    assert 9.5 <= b["minutes_left"] <= 10
    assert session_closed(lab, session), "the open IMAP session was closed"
    assert_dropped(lab, src, IMAP)  # a new connection is dropped
    assert_dropped(lab, src, SUBMISSION)  # on every screened port
    assert connects(lab, lab.attacker(), IMAP), "another source is not affected"
    b = block_of(lab, src)
    assert b["drops"] >= 2 and counters(lab)["drop_blocked"] >= 2
    quietly_close(m)


def test_pop3_brute_force_blocks_the_source_and_closes_its_session(lab: MailLab) -> None:
    src = lab.attacker()
    p = lab.pop(src)
    session = Watch(p)
    for user in BAD_USERS[:3]:
        p.user(f"{user}@example.test")
        with pytest.raises(poplib.error_proto, match="Authentication failed"):
            p.pass_("wrong")
    p.user(f"{BAD_USERS[3]}@example.test")
    _last_attempt(lambda: p.pass_("wrong"), poplib.error_proto)
    b = block_of(lab, src)
    assert (b["reason"], b["source"]) == ("auth_failures", "logs")
    assert session_closed(lab, session), "the open POP3 session was closed"
    assert_dropped(lab, src, POP3)
    assert block_of(lab, src)["drops"] >= 1
    quietly_close(p)


def test_smtp_auth_brute_force_on_submission_is_blocked(lab: MailLab) -> None:
    src = lab.attacker()
    s = lab.smtp(src, SUBMISSION)
    session = Watch(s)
    s.ehlo()
    for user in BAD_USERS[:3]:
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            auth_plain(s, f"{user}@example.test", "wrong")
        assert e.value.smtp_code == 535
    _last_attempt(lambda: auth_plain(s, f"{BAD_USERS[3]}@example.test", "wrong"),
                  smtplib.SMTPAuthenticationError)
    b = block_of(lab, src)
    assert (b["reason"], b["source"]) == ("auth_failures", "logs")
    # Postfix and Dovecot's auth process both describe each attempt (Postfix may not get
    # to log the last one: its session is gone); each attempt counts once.
    assert len(lab.log_lines(f"unknown[{src}]: SASL PLAIN authentication failed")) >= 3
    assert len(lab.log_lines(f"@example.test,{src}): unknown user")) == 4
    assert f"blocked {src} for 10 min: auth_failures, 4 " in lab.daemon_log.read_text()
    assert session_closed(lab, session), "the SMTP session was closed"
    assert_dropped(lab, src, SUBMISSION)
    quietly_close(s)


def test_an_authenticated_client_is_never_blocked(lab: MailLab) -> None:
    """Row 9: after a successful SMTP AUTH, neither its connection rate, nor its
    typos, nor its sessions get its address blocked."""
    src = lab.honest[0]
    lab.send_mail(src, "alice", subject="from dave", login=("dave", USERS["dave"]))
    assert wait_for(lambda: f"exempt {src} " in lab.daemon_log.read_text(), timeout=5), \
        report(lab)
    before = counters(lab)["exempt_pass"]
    # Three times the connection limit, on SMTP, submission and IMAP.
    limit = lab.limits["connections"]
    ports = [25, SUBMISSION, IMAP]
    ok = [connects(lab, src, ports[i % 3]) for i in range(3 * limit)]
    assert all(ok), f"connections refused: {ok.count(False)} of {len(ok)}"
    # More mistyped passwords than the per-source limit (in sessions of two each, so
    # that the per-session account rule is not reached).
    for _ in range(3):
        m = lab.imap(src)
        _imap_fails(m, "dave")
        _imap_fails(m, "dave")
        m.logout()
    m = lab.imap(src)
    m.login("dave@example.test", USERS["dave"])
    assert m.noop()[0] == "OK"
    m.logout()
    lab.send_mail(src, "alice", subject="still from dave", login=("dave", USERS["dave"]))
    not_blocked(lab, src)
    assert counters(lab)["exempt_pass"] > before, "the kernel let it pass as exempt"
    assert wait_for(lambda: any("still from dave" in x for x in lab.mailbox("alice")))
    assert not [a for a in lab.frozen() if a["user"].startswith("dave")]


def test_session_failures_freeze_the_account_which_still_receives_mail(lab: MailLab) -> None:
    """Row 12: three failed logins for one account in one session freeze it: it cannot
    send (Postfix asks dynscreen's policy service), mail to it is still delivered."""
    src = lab.attacker()
    s = lab.smtp(src, SUBMISSION)
    s.ehlo()
    for _ in range(3):
        with pytest.raises(smtplib.SMTPAuthenticationError):
            auth_plain(s, "bob@example.test", "guess")
    acc = frozen_account(lab, "bob@example.test")
    assert (acc["ip"], acc["service"], acc["failures"]) == (src, "smtp", 3)
    quietly_close(s)
    not_blocked(lab, src)  # 3 failures: under the per-source limit (4)

    # Mail TO bob still arrives, into his Maildir.
    lab.send_mail(lab.honest[1], "bob", subject="for frozen bob")
    assert wait_for(lambda: any("for frozen bob" in x for x in lab.mailbox("bob")), timeout=5)
    # Bob, with the right password, logs in but cannot send.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        lab.send_mail(lab.honest[1], "alice", subject="bob sends", login=("bob", USERS["bob"]))
    code, text = e.value.recipients["alice@example.test"]
    assert code == 554 and b"5.7.1" in text and b"frozen" in text
    assert lab.log_lines("account temporarily frozen")
    # He still reads his mail.
    m = lab.imap(lab.honest[1])
    m.login("bob@example.test", USERS["bob"])
    typ, data = m.select("INBOX")
    assert typ == "OK" and int(data[0]) >= 1
    m.logout()
    # The administrator unfreezes him: he sends again.
    r = lab.cli("accounts", "unfreeze", "bob@example.test")
    assert r.returncode == 0, r.stderr
    assert not [a for a in lab.frozen() if a["user"] == "bob@example.test"]
    lab.send_mail(lab.honest[1], "alice", subject="bob again", login=("bob", USERS["bob"]))
    assert wait_for(lambda: any("bob again" in x for x in lab.mailbox("alice")), timeout=5)


def test_the_postmaster_is_told_for_each_protocol(lab: MailLab) -> None:
    """Row 12: notify_postmaster = smtp, pop, imap: a notice per account lands in the
    postmaster's mailbox, naming the account, the protocol and the address."""
    cases = {"carol": ("imap", lab.attacker()), "erin": ("pop", lab.attacker()),
             "frank": ("smtp", lab.attacker())}
    m = lab.imap(cases["carol"][1])
    for _ in range(3):
        _imap_fails(m, "carol", "guess")
    m.logout()  # Dovecot names the protocol in its summary when the session ends
    p = lab.pop(cases["erin"][1])
    for _ in range(3):
        p.user("erin@example.test")
        with pytest.raises(poplib.error_proto):
            p.pass_("guess")
    p.quit()
    s = lab.smtp(cases["frank"][1], SUBMISSION)
    s.ehlo()
    for _ in range(3):
        with pytest.raises(smtplib.SMTPAuthenticationError):
            auth_plain(s, "frank@example.test", "guess")
    s.quit()

    def notices() -> dict[str, str]:
        found = {}
        for text in lab.mailbox("postmaster"):
            for user in cases:
                if f"account {user}@example.test frozen" in text:
                    found[user] = text
        return found

    got = wait_for(lambda: len(notices()) == 3 and notices(), timeout=20, step=0.25)
    assert got, f"postmaster got {sorted(notices())}\n{report(lab)}"
    names = {"imap": "IMAP", "pop": "POP3", "smtp": "SMTP"}
    for user, (service, src) in cases.items():
        text = got[user]
        assert f"after 3 failed logins ({service})" in text
        assert src in text and names[service] in text
        acc = frozen_account(lab, f"{user}@example.test")
        assert (acc["service"], acc["ip"]) == (service, src)
        assert lab.cli("accounts", "unfreeze", f"{user}@example.test").returncode == 0
    for _, src in cases.values():
        not_blocked(lab, src)


def test_a_notice_waits_for_the_relay_and_is_delivered_when_it_returns(lab: MailLab) -> None:
    """Issue 5: with the relay (the lab Postfix) down, the notice is retried with
    backoff and lands in the postmaster's mailbox once Postfix is back."""
    import subprocess

    assert lab.mail is not None
    conf = str(lab.mail.paths.postfix_conf)
    ns = lab.mail.netns

    def postfix(cmd: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "postfix", "-c", conf, cmd],
                       capture_output=True, check=True, timeout=60)

    def notices() -> int:
        return sum("account grace@example.test frozen" in t for t in lab.mailbox("postmaster"))

    before = notices()
    src = lab.attacker()
    postfix("stop")
    try:
        m = lab.imap(src)
        for _ in range(3):
            _imap_fails(m, "grace", "guess")
        m.logout()
        assert frozen_account(lab, "grace@example.test")["service"] == "imap"
        time.sleep(3)  # the first delivery attempt fails: nothing may be lost meanwhile
        assert notices() == before
    finally:
        postfix("start")
    assert wait_for(lambda: notices() == before + 1, timeout=40, step=0.5), report(lab)
    assert lab.cli("accounts", "unfreeze", "grace@example.test").returncode == 0
    not_blocked(lab, src)
