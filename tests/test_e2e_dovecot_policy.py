"""End to end with Dovecot's auth policy: the real Dovecot asks dynscreen about each login.

The lab's Dovecot has ``auth_policy_server_url`` pointing at dynscreen's listener
(with an API key and a fresh hash nonce), Dovecot's default failure delay (2 s),
and trusts the partner network as a webmail that names its user's address (the
IMAP ``ID x-originating-ip``). What is shown: a guesser is blocked from the policy
reports (and how long each path takes from the attempt to the block); a stale
password retried 50 times blocks nothing while 5 different ones block; a blocked
address is refused by Dovecot whatever the password; a frozen account with
``freeze_scope = "login"`` cannot log in over IMAP while mail to it is delivered;
with dynscreen's listener gone, Dovecot logs in as before (fail open).
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest_lab import (
    block_of,
    frozen_account,
    lab_fixture,  # noqa: F401  (provides the `lab` fixture)
    not_blocked,
)

from dynscreen.control.lab import MailLab, auth_plain
from dynscreen.control.lab.lab import DOVECOT_POLICY_LISTEN
from dynscreen.control.lab.mail import USERS
from dynscreen.control.lab.netns import wait_for

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]

LAB = {
    "dovecot_policy": True,
    "mail_failure_delay": "2 secs",  # Dovecot's default
    # many connections from one source are the point here, not what is screened
    "limits": {"connections": 0, "simultaneous": 20, "auth_failures": 5},
    "accounts": {"freeze_scope": "login", "max_session_auth_failures": 3},
}


def _login(lab: MailLab, src: str, user: str, password: str) -> bool:
    """One IMAP login on a connection of its own: True if it succeeded."""
    m = lab.imap(src, timeout=10)
    try:
        m.login(f"{user}@example.test", password)
    except (imaplib.IMAP4.error, OSError):  # (a block may close the session under it)
        return False
    finally:
        with contextlib.suppress(Exception):
            m.shutdown()
    return True


def _time_to_block(lab: MailLab, src: str, user: str, n: int) -> float:
    """n failed logins with new passwords; seconds from sending the last to the block."""
    for i in range(n - 1):
        assert not _login(lab, src, user, f"guess-{i}")
    m = lab.imap(src, timeout=10)
    sent = time.monotonic()
    try:
        m.send(b"a1 LOGIN " + f"{user}@example.test guess-last".encode() + b"\r\n")
        assert wait_for(lambda: src in lab.blocks(), timeout=15, step=0.005)
        return time.monotonic() - sent
    finally:
        with contextlib.suppress(Exception):
            m.shutdown()


def test_guesser_is_blocked_from_the_policy_reports(lab: MailLab) -> None:
    src = lab.attacker()
    took = _time_to_block(lab, src, "carol", 5)
    b = block_of(lab, src)
    assert b["reason"] == "auth_failures"
    # the block comes before Dovecot even answers the last attempt (its 2 s failure delay)
    assert took < 1.5, took
    print(f"\npolicy path: {took * 1000:.0f} ms from the 5th wrong password to the block")


def test_a_stale_password_blocks_nothing_five_new_ones_block(lab: MailLab) -> None:
    phone = lab.attacker()
    with ThreadPoolExecutor(10) as pool:  # 50 retries, 10 at a time (2 s failure delay each)
        results = list(pool.map(lambda _: _login(lab, phone, "dave", "dave-old-secret"),
                                range(50)))
    assert results == [False] * 50
    time.sleep(1)  # the log lines of the last ones reach dynscreen too
    not_blocked(lab, phone)
    assert lab.frozen() == []  # one failure per session: no account frozen
    assert _login(lab, phone, "dave", USERS["dave"]), "the phone, fixed, logs in"
    guesser = lab.attacker()
    for i in range(4):
        assert not _login(lab, guesser, "dave", f"guess-{i}")
    not_blocked(lab, guesser)
    assert not _login(lab, guesser, "dave", "guess-4")
    assert block_of(lab, guesser)["reason"] == "auth_failures"


def _pop_fails(lab: MailLab, src: str, user: str, password: str) -> None:
    p = lab.pop(src, timeout=10)
    try:
        p.user(f"{user}@example.test")
        with pytest.raises((poplib.error_proto, OSError)):
            p.pass_(password)
    finally:
        with contextlib.suppress(Exception):
            p.close()


def _smtp_auth_fails(lab: MailLab, src: str, user: str, password: str) -> None:
    """SMTP AUTH on submission: Postfix asks Dovecot's SASL, Dovecot asks dynscreen."""
    s = lab.smtp(src, 587, timeout=10)
    try:
        s.ehlo()
        with pytest.raises((smtplib.SMTPAuthenticationError, smtplib.SMTPServerDisconnected,
                            OSError)):
            auth_plain(s, f"{user}@example.test", password)
    finally:
        with contextlib.suppress(Exception):
            s.close()


@pytest.mark.parametrize("protocol", ["pop3", "smtp"])
def test_pop3_and_smtp_auth_guessers_are_blocked_from_the_reports(lab: MailLab,
                                                                  protocol: str) -> None:
    src = lab.attacker()
    fails = _pop_fails if protocol == "pop3" else _smtp_auth_fails
    for i in range(4):
        fails(lab, src, "grace", f"guess-{i}")
    not_blocked(lab, src)
    sent = time.monotonic()
    with ThreadPoolExecutor(1) as pool:  # the 5th: its answer waits out the failure delay
        last = pool.submit(fails, lab, src, "grace", "guess-4")
        assert wait_for(lambda: src in lab.blocks(), timeout=15, step=0.005)
        took = time.monotonic() - sent
        last.result()
    assert block_of(lab, src)["reason"] == "auth_failures"
    assert took < 1.5, took
    print(f"\n{protocol} policy path: {took * 1000:.0f} ms from the 5th wrong password "
          "to the block")


def _webmail_login(lab: MailLab, client: str, user: str, password: str) -> str:
    """A webmail on the partner network logs in for a user at ``client`` (IMAP ID
    x-originating-ip, which Dovecot believes of login_trusted_networks): the response."""
    m = lab.imap(lab.partner[0], timeout=10)
    try:
        typ, _ = m.xatom("ID", f'("x-originating-ip" "{client}")')
        assert typ == "OK"
        try:
            typ, data = m.login(f"{user}@example.test", password)
        except imaplib.IMAP4.error as e:
            return str(e)
        return f"{typ} {data[0].decode()}"
    finally:
        m.shutdown()


def test_a_blocked_source_is_refused_before_any_password_check(lab: MailLab) -> None:
    src = lab.attacker()
    assert _webmail_login(lab, src, "erin", USERS["erin"]).startswith("OK")
    assert lab.cli("block", src, check=False).returncode == 0
    assert wait_for(lambda: src in lab.blocks(), timeout=5)
    refusals = len(lab.log_lines("policy server refusal"))
    answer = _webmail_login(lab, src, "erin", USERS["erin"])
    assert "Too many failed logins from your address" in answer, answer  # the right one
    mismatches = len(lab.log_lines("Password mismatch"))
    answer = _webmail_login(lab, src, "erin", "wrong")
    assert "Too many failed logins from your address" in answer, answer
    assert wait_for(lambda: len(lab.log_lines("policy server refusal")) == refusals + 2,
                    timeout=5)
    time.sleep(0.5)
    assert len(lab.log_lines("Password mismatch")) == mismatches, "no password was checked"
    # a reload that cannot read the key file keeps the listener and the key in use
    key = lab.dovecot_policy_key
    key.rename(key.with_suffix(".away"))
    try:
        lab.cli("reload", check=True)
        assert wait_for(lambda: "the key in use is kept" in lab.daemon_log.read_text(),
                        timeout=5)
        answer = _webmail_login(lab, src, "erin", USERS["erin"])
        assert "Too many failed logins from your address" in answer, answer
    finally:
        key.with_suffix(".away").rename(key)
        lab.cli("reload", check=True)
    assert lab.cli("unblock", src, check=False).returncode == 0


def test_frozen_account_cannot_log_in_but_receives_mail(lab: MailLab) -> None:
    src = lab.honest[0]
    m = lab.imap(src, timeout=10)
    for i in range(3):  # three failures in one session: the account is frozen
        with pytest.raises(imaplib.IMAP4.error):
            m.login("frank@example.test", f"wrong-{i}")
    m.shutdown()
    frozen_account(lab, "frank@example.test")
    assert not _login(lab, lab.honest[1], "frank", USERS["frank"]), "refused at login"
    assert lab.log_lines("policy server refusal")
    lab.send_mail(lab.partner[1], "frank", subject="still delivered")
    assert wait_for(lambda: any("still delivered" in t for t in lab.mailbox("frank")),
                    timeout=10)
    assert lab.cli("accounts", "unfreeze", "frank@example.test").returncode == 0
    assert wait_for(lambda: _login(lab, lab.honest[1], "frank", USERS["frank"]), timeout=5)


def test_log_path_and_fail_open_without_the_listener(lab: MailLab) -> None:
    """dovecot_policy_listen off: Dovecot cannot reach dynscreen and logs in as before;
    the log lines alone block the guesser (timed, to compare with the policy path)."""
    lab.reconfigure(accounts={"dovecot_policy_listen": ""})
    try:
        assert _login(lab, lab.honest[2], "alice", USERS["alice"]), "fail open"
        src = lab.attacker()
        took = _time_to_block(lab, src, "alice", 5)
        assert block_of(lab, src)["reason"] == "auth_failures"
        print(f"\nlog path: {took * 1000:.0f} ms from the 5th wrong password to the block")
    finally:
        lab.reconfigure(accounts={"dovecot_policy_listen": DOVECOT_POLICY_LISTEN})
