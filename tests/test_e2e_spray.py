"""End to end, password spraying: many addresses, one account, the real Postfix and Dovecot.

Sources that each fail once on one account (far under the per-address limit) from at
least ``spray_sources`` distinct addresses put the account under protection: the
postmaster's Maildir gets the notice naming the sources, a later stranger failing on
the account is blocked at once (reason ``spray``) and dropped by the kernel, while an
address that logged in as the account before (familiar: its user's phone with an old
password) fails on it and passes. Lab limits: 4 failed logins per source, 3 per account
in one session (see dynscreen.control.lab); spray_sources is the default (10).
"""

from __future__ import annotations

import imaplib

import pytest
from conftest_lab import (
    IMAP,
    assert_dropped,
    block_of,
    connects,
    lab_fixture,  # noqa: F401  (provides the `lab` fixture)
    not_blocked,
    quietly_close,
    report,
)

from dynscreen.control.config import Accounts
from dynscreen.control.lab import MailLab
from dynscreen.control.lab.mail import USERS
from dynscreen.control.lab.netns import wait_for

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]

SPRAY_SOURCES = Accounts().spray_sources  # the default: the lab does not change it
VICTIM = "alice@example.test"


def _fail_once(lab: MailLab, src: str, user: str = VICTIM) -> None:
    """One failed IMAP login for ``user`` from ``src``, in a session of its own."""
    m = lab.imap(src)
    try:
        with pytest.raises((imaplib.IMAP4.error, imaplib.IMAP4.abort, OSError, EOFError)):
            m.login(user, "Winter2026!")
    finally:
        quietly_close(m)


def _notice(lab: MailLab) -> str | None:
    for text in lab.mailbox("postmaster"):
        if f"a password-spraying attack on the account {VICTIM}:" in text:
            return text
    return None


def test_spraying_protects_the_account_tells_the_postmaster_and_spares_the_familiar(
    lab: MailLab,
) -> None:
    familiar = lab.honest[0]
    m = lab.imap(familiar)  # alice's own device logs in: that address is familiar
    m.login(VICTIM, USERS["alice"])
    m.logout()

    sprayers = [lab.attacker() for _ in range(SPRAY_SOURCES)]
    for src in sprayers[:-1]:
        _fail_once(lab, src)
    for src in sprayers[:-1]:  # each one failure: under every per-address limit
        not_blocked(lab, src)
    _fail_once(lab, sprayers[-1])  # the SPRAY_SOURCES-th distinct source
    b = block_of(lab, sprayers[-1])
    assert b["reason"] == "spray", b

    text = wait_for(lambda: _notice(lab), timeout=20, step=0.25)
    assert text, f"no spraying notice in the postmaster's Maildir\n{report(lab)}"
    assert f"{SPRAY_SOURCES} different addresses" in text and "is NOT locked" in text
    listed = [src for src in sprayers if f"\n    {src}\n" in text.replace("\r\n", "\n")]
    assert listed == sprayers, f"the notice names {listed}:\n{text}"

    # The account is protected: a stranger's first failure blocks it, in the kernel too.
    stranger = lab.attacker()
    _fail_once(lab, stranger)
    assert block_of(lab, stranger)["reason"] == "spray"
    assert_dropped(lab, stranger, IMAP)

    # The familiar address mistypes alice's password: it is not blocked. (A stranger
    # after it is: once its block shows, the daemon has read the familiar's failure.)
    _fail_once(lab, familiar)
    witness = lab.attacker()
    _fail_once(lab, witness)
    assert block_of(lab, witness)["reason"] == "spray"
    assert lab.log_lines(f"{VICTIM},{familiar}"), "Dovecot logged the familiar's failure"
    not_blocked(lab, familiar)
    assert connects(lab, familiar, IMAP)
    m = lab.imap(familiar)  # and alice still logs in: the account is never locked
    m.login(VICTIM, USERS["alice"])
    m.logout()
