"""Mail to the postmaster through a real SMTP relay (aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from dynscreen.control.notify import Attempt, Notifier, compose, spool_path

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z
WINDOW = 10  # minutes
FAST = {"backoff_initial": 0.05, "backoff_max": 0.2, "timeout": 5.0}


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Inbox:
    """An aiosmtpd handler that keeps every mail; `refuse` DATA replies come first."""

    def __init__(self, refuse: list[str] | None = None) -> None:
        self.mails: list[tuple[str, list[str], EmailMessage]] = []
        self.refuse = list(refuse or [])
        self.logins: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.refuse:
                return self.refuse.pop(0)
            msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
            if session.authenticated:
                self.logins.append(session.login_data)
        return "250 OK"

    def subjects(self) -> list[str]:
        with self.lock:
            return [str(m["Subject"]) for _, _, m in self.mails]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.01)


def settle(n: Notifier, seconds: float = 0.3) -> None:
    """Give the worker time to act (for asserting that it did NOT send)."""
    n.wake()
    time.sleep(seconds)


@pytest.fixture
def relay() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    yield inbox, port
    ctl.stop()


@pytest.fixture
def local_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def notifier(port: int, clock: Callable[[], float] | None = None, **opts: Any) -> Notifier:
    return Notifier(
        "postmaster@example.com", ("127.0.0.1", port), WINDOW, clock=clock or Clock(),
        hostname="mx.example.com", **{**FAST, **opts},
    )


def body(msg: EmailMessage) -> str:
    part = msg.get_body()
    assert part is not None
    return part.get_content()


def test_the_mail(relay: tuple[Inbox, int], local_tz: None) -> None:
    inbox, port = relay
    n = notifier(port)
    n.start()
    try:
        n.notify("alice@example.com", "imap", "203.0.113.7", 10, T0, frozen=True)
        wait_until(lambda: len(inbox.mails) == 1)
    finally:
        n.stop()
    sender, rcpts, msg = inbox.mails[0]
    assert sender == "dynscreen@mx.example.com" and rcpts == ["postmaster@example.com"]
    assert msg["From"] == "dynscreen@mx.example.com"
    assert msg["To"] == "postmaster@example.com"
    subject = "dynscreen: account alice@example.com frozen after 10 failed logins (imap)"
    assert msg["Subject"] == subject
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"].endswith("@mx.example.com>") and msg["Date"]
    text = body(msg)
    for fact in (
        "account:    alice@example.com",
        "protocol:   IMAP",
        "from:       203.0.113.7",
        "failures:   10 in one session",
        "when:       2026-05-28 20:26:40 UTC (2026-05-28 22:26:40 CEST local time)",
        "frozen:     yes",
        "    dynscreen accounts unfreeze alice@example.com",
    ):
        assert fact in text, (fact, text)
    assert (n.queued, n.sent, n.send_failures, n.pending()) == (1, 1, 0, 0)


def test_not_frozen(relay: tuple[Inbox, int]) -> None:
    inbox, port = relay
    n = notifier(port)
    n.start()
    try:
        n.notify("bob@example.org", "pop", "2001:db8::5", 12, T0, frozen=False)
        wait_until(lambda: len(inbox.mails) == 1)
    finally:
        n.stop()
    msg = inbox.mails[0][2]
    subject = "dynscreen: account bob@example.org: 12 failed logins in one session (pop)"
    assert msg["Subject"] == subject
    text = body(msg)
    assert "frozen:     no" in text and "POP3" in text and "2001:db8::5" in text
    assert "unfreeze" not in text


def test_one_mail_per_account_per_window(relay: tuple[Inbox, int]) -> None:
    inbox, port = relay
    clock = Clock()
    n = notifier(port, clock)
    n.start()
    try:
        n.notify("alice@example.com", "imap", "203.0.113.7", 10, T0, frozen=True)
        wait_until(lambda: n.sent == 1)  # the window starts when the worker saw it sent

        clock.now = T0 + 60
        n.notify("Alice@Example.com", "smtp", "198.51.100.2", 11, T0 + 60, frozen=True)
        clock.now = T0 + 120
        n.notify("alice@example.com", "imap", "203.0.113.7", 10, T0 + 120, frozen=False)
        n.notify("bob@example.org", "pop", "192.0.2.9", 10, T0 + 120, frozen=False)
        wait_until(lambda: n.sent == 2)  # bob has his own window
        settle(n)
        assert len(inbox.mails) == 2 and n.pending() == 2

        clock.now = T0 + WINDOW * 60 - 1  # not yet
        settle(n)
        assert len(inbox.mails) == 2

        clock.now = T0 + WINDOW * 60
        n.wake()
        wait_until(lambda: len(inbox.mails) == 3)
        assert n.pending() == 0
    finally:
        n.stop()
    assert inbox.subjects() == [
        "dynscreen: account alice@example.com frozen after 10 failed logins (imap)",
        "dynscreen: account bob@example.org: 10 failed logins in one session (pop)",
        "dynscreen: account alice@example.com frozen after 11 failed logins (smtp) "
        "and 1 more session",
    ]
    summary = body(inbox.mails[2][2])
    assert "Every session since the last notice about this account (2):" in summary
    assert "from:       198.51.100.2, 203.0.113.7" in summary
    assert "protocol:   SMTP, IMAP" in summary
    rows = [line for line in summary.splitlines() if line.startswith("  2026-")]
    assert len(rows) == 2
    assert rows[0].split() == ["2026-05-28", "20:27:40", "UTC", "SMTP", "198.51.100.2", "11", "yes"]
    assert rows[1].split() == ["2026-05-28", "20:28:40", "UTC", "IMAP", "203.0.113.7", "10", "no"]


def test_relay_down_then_up(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    n = notifier(port, time.time)  # the backoff runs on the clock: a real one here
    n.start()
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    try:
        with caplog.at_level(logging.WARNING, logger="dynscreen.control.notify"):
            n.notify("alice@example.com", "imap", "203.0.113.7", 10, T0, frozen=True)
            wait_until(lambda: n.send_failures >= 3)  # 0.05 + 0.1 + 0.2 s of backoff
            n.notify("alice@example.com", "imap", "203.0.113.8", 10, T0 + 1, frozen=True)
            n.notify("carol@example.net", "smtp", "192.0.2.1", 10, T0 + 2, frozen=False)
            assert n.pending() == 3 and n.sent == 0
        assert "cannot reach the mail relay" in caplog.text
        ctl.start()
        wait_until(lambda: len(inbox.mails) == 2)
        assert n.pending() == 0
    finally:
        n.stop()
        ctl.stop()
    alice = next(m for _, _, m in inbox.mails if "alice" in str(m["Subject"]))
    assert "203.0.113.7, 203.0.113.8" in body(alice)  # nothing lost: both attempts listed
    assert n.sent == 2


def test_backoff_doubles_up_to_the_limit() -> None:
    """On the injected clock: each failed try schedules the next one twice as far, up to
    backoff_max; no try is made before the clock reaches it."""
    clock = Clock()
    n = notifier(free_port(), clock, backoff_initial=5.0, backoff_max=20.0)
    n.start()
    waits = []
    try:
        n.notify("alice@example.com", "imap", "203.0.113.7", 10, T0, frozen=True)
        for tries in range(1, 7):
            wait_until(lambda tries=tries: n.send_failures == tries  # type: ignore[misc]
                       and n.retry_at is not None and n.retry_at > clock.now)
            assert n.retry_at is not None
            waits.append(n.retry_at - clock.now)
            if tries == 1:
                settle(n)  # the clock has not moved: no second try
                assert n.send_failures == 1
            clock.now = n.retry_at
            n.wake()
    finally:
        n.stop()
    assert waits == [5.0, 10.0, 20.0, 20.0, 20.0, 20.0]
    assert n.pending() == 1


def test_relay_refuses_for_a_while(relay: tuple[Inbox, int]) -> None:
    inbox, port = relay
    inbox.refuse = ["451 4.3.0 try again later", "554 5.7.1 not today"]
    n = notifier(port, time.time)
    n.start()
    try:
        n.notify("alice@example.com", "imap", "203.0.113.7", 10, T0, frozen=True)
        wait_until(lambda: len(inbox.mails) == 1)
    finally:
        n.stop()
    assert n.send_failures == 2 and n.sent == 1 and n.pending() == 0


def test_notify_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    """A relay that accepts the connection and never greets holds the worker, not the caller."""
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(16)
        n = notifier(hang.getsockname()[1], timeout=2.0)
        n.start()
        try:
            n.notify("alice@example.com", "imap", "203.0.113.7", 10, T0, frozen=True)
            time.sleep(0.2)  # the worker is now stuck reading the greeting
            start = time.monotonic()
            for i in range(1000):
                n.notify(f"u{i}@example.com", "smtp", "192.0.2.1", 10, T0, frozen=False)
            assert time.monotonic() - start < 0.5
            assert n.pending() == 1001
        finally:
            with caplog.at_level(logging.ERROR, logger="dynscreen.control.notify"):
                n.stop(timeout=5)
    assert "not mailed and lost at stop (no spool file)" in caplog.text


def test_spool_survives_a_restart(relay: tuple[Inbox, int], tmp_path: Path) -> None:
    inbox, port = relay
    spool = spool_path(tmp_path / "frozen")
    assert spool == tmp_path / "frozen.notify"
    clock = Clock()

    down = notifier(free_port(), clock, spool=spool)
    down.start()
    down.notify("alice@example.com", "imap", "203.0.113.7", 10, T0, frozen=True)
    down.notify("alice@example.com", "imap", "203.0.113.9", 10, T0 + 5, frozen=True)
    wait_until(lambda: down.send_failures >= 1)
    down.stop()
    saved = json.loads(spool.read_text())
    assert [len(a["pending"]) for a in saved["accounts"]] == [2]

    up = notifier(port, clock, spool=spool)
    assert up.pending() == 2
    up.start()
    try:
        wait_until(lambda: up.sent == 1)
        assert "203.0.113.7, 203.0.113.9" in body(inbox.mails[0][2])
    finally:
        up.stop()

    # the rate limit survives too: the next notice waits for the window
    later = notifier(port, clock, spool=spool)
    later.start()
    try:
        clock.now = T0 + 60
        later.notify("alice@example.com", "smtp", "203.0.113.7", 10, T0 + 60, frozen=True)
        settle(later)
        assert len(inbox.mails) == 1 and later.pending() == 1
        clock.now = T0 + 60 + WINDOW * 60
        later.wake()
        wait_until(lambda: len(inbox.mails) == 2)
    finally:
        later.stop()
    after = json.loads(spool.read_text())
    assert [a["pending"] for a in after["accounts"]] == [[]]


def test_corrupt_spool_is_kept_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = tmp_path / "frozen.notify"
    spool.write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="dynscreen.control.notify"):
        n = notifier(free_port(), spool=spool)
    assert n.pending() == 0
    assert (tmp_path / "frozen.notify.corrupt").read_text() == "{not json"
    assert "unreadable" in caplog.text


def test_login(tmp_path: Path) -> None:
    def authenticator(server: Any, session: Any, envelope: Any, mech: str, data: Any) -> Any:
        ok = data.login == b"dynscreen" and data.password == b"s3cret"
        return AuthResult(success=ok, handled=False)

    inbox = Inbox()
    port = free_port()
    ctl = Controller(
        inbox, hostname="127.0.0.1", port=port, authenticator=authenticator,
        auth_require_tls=False,
    )
    ctl.start()
    n = notifier(port, username="dynscreen", password="s3cret")
    n.start()
    try:
        n.notify("alice@example.com", "imap", "203.0.113.7", 10, T0, frozen=True)
        wait_until(lambda: len(inbox.mails) == 1)
    finally:
        n.stop()
        ctl.stop()
    assert len(inbox.logins) == 1


def test_starttls(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    inbox = Inbox()
    port = free_port()
    ctl = Controller(
        inbox, hostname="127.0.0.1", port=port, tls_context=server_ctx, require_starttls=True
    )
    ctl.start()
    try:
        plain = notifier(port)  # no STARTTLS: the relay refuses, retried, never dropped
        plain.start()
        plain.notify("alice@example.com", "imap", "203.0.113.7", 10, T0, frozen=True)
        wait_until(lambda: plain.send_failures >= 1)
        plain.stop()
        assert plain.pending() == 1 and not inbox.mails

        tls = notifier(port, starttls=True, tls_context=ssl.create_default_context(cafile=cert))
        tls.start()
        tls.notify("alice@example.com", "imap", "203.0.113.7", 10, T0, frozen=True)
        wait_until(lambda: len(inbox.mails) == 1)
        tls.stop()
    finally:
        ctl.stop()


def test_compose_summary_and_hostile_names() -> None:
    attempts = [
        Attempt("eve@example.com", None, None, 10, T0, False),
        Attempt("eve@example.com", "sieve", "192.0.2.1", 13, T0 + 9, True),
    ]
    msg = compose(
        "eve@example.com\r\nBcc: victim@example.net", attempts, omitted=5,
        sender="dynscreen@mx", postmaster="postmaster@example.com", hostname="mx",
    )
    assert msg["Subject"] == (
        "dynscreen: account eve@example.com??Bcc: victim@example.net frozen after 13 failed "
        "logins (sieve) and 6 more sessions"
    )
    assert "Bcc" not in msg
    text = msg.get_content()
    assert "ManageSieve" in text and "unknown protocol" in text
    assert "and 5 more, not listed" in text


def test_a_spraying_notice_arrives_with_its_sources_and_survives_the_spool(
    relay: tuple[Inbox, int], tmp_path: Path
) -> None:
    inbox, port = relay
    spool = tmp_path / "frozen.notify"
    n = notifier(port, spool=spool)
    n.protect("ceo@example.com", 214, ("198.51.100.1", "2001:db8:1::/64"), 60, T0)
    n.notify("ceo@example.com", "imap", "192.0.2.9", 10, T0, frozen=False)
    n._save_spool()  # (the worker's first act): a restart finds the notices
    again = notifier(port, spool=spool)
    again.start()
    try:
        wait_until(lambda: len(inbox.mails) == 1)
    finally:
        again.stop()
    msg = inbox.mails[0][2]
    assert msg["Subject"] == (
        "dynscreen: account ceo@example.com under a password-spraying attack from 214 "
        "addresses and 1 failed-login session"
    )
    text = body(msg)
    assert "is NOT locked" in text and "214 different addresses" in text
    assert "    198.51.100.1\r\n    2001:db8:1::/64\r\n" in text
    assert "192.0.2.9" in text  # the session notice goes in the same mail
