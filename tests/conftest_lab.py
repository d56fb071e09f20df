"""The real mail-gateway lab for the end-to-end tests (tests/test_e2e_*.py).

One lab per test module (``dynscreen.control.lab.MailLab``): namespaces, Debian's
Postfix and Dovecot, and `dynscreen run` screening them. Each scenario takes
source addresses nobody used before (``lab.attacker()``), so scenarios of one
module do not see each other's blocks. A module sets ``LAB = {...}`` to change
the lab's settings (MailLab keyword arguments).

The helpers here assert both sides: what a client experiences and what
`dynscreen status --json` reports.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import shutil
import smtplib
import subprocess
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dynscreen.control.lab import MailLab
from dynscreen.control.lab.netns import wait_for

from conftest import require, require_bpf

SMTP, SUBMISSION, POP3, IMAP = 25, 587, 110, 143


def have_mail_servers() -> bool:
    return all(shutil.which(t) or os.path.exists(f"/usr/sbin/{t}") for t in ("postfix",
                                                                              "dovecot"))


@pytest.fixture(scope="module", name="lab")
def lab_fixture(request: pytest.FixtureRequest) -> Iterator[MailLab]:
    """The module's lab; a test module imports this to use the ``lab`` fixture."""
    require_bpf()
    require(have_mail_servers(), "needs Debian's postfix and dovecot: run `sudo make setup-dev`")
    settings: dict[str, Any] = getattr(request.module, "LAB", {})
    tag = f"{os.getpid() % 10000}{zlib.crc32(request.module.__name__.encode()) % 100:02d}"
    m = MailLab(tag=tag, **settings)
    failed_before = request.session.testsfailed
    try:
        m.open()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:  # LabError, MailError, ...
        # One more try (a busy machine can make a start time out); the first error is kept
        # in the warnings summary, so a lab that is flaky to build does not go unnoticed.
        warnings.warn(f"building the mail lab failed once, trying again: {e}", stacklevel=1)
        m = MailLab(tag=f"{tag}r", **settings)
        m.open()
    try:
        yield m
    finally:
        if request.session.testsfailed > failed_before:
            print(report(m))
        m.close()
    assert not m.leftovers(), f"the lab left {m.leftovers()}"


def report(m: MailLab) -> str:
    """The tails of every log of the lab, for a failed test's output."""
    parts = []
    for name, path in (("dynscreen", m.daemon_log), ("postfix", m.postfix_log),
                       ("dovecot", m.dovecot_log)):
        parts.append(f"---- {name} ({path})\n{m.tail(path, 40)}")
    return "\n".join(parts)


# ---- what dynscreen reports ------------------------------------------------------------------


def block_of(m: MailLab, ip: str, timeout: float = 10) -> dict[str, Any]:
    """Wait until the daemon holds a block for ``ip``; then return it as
    `dynscreen status --json` shows it."""
    assert m.wait_block(ip, timeout=timeout), f"{ip} was not blocked\n{report(m)}"
    blocks = {b["ip"]: b for b in m.status()["blocks"]}
    assert ip in blocks, blocks
    return blocks[ip]


def not_blocked(m: MailLab, ip: str) -> None:
    blocks = {b["ip"]: b for b in m.status()["blocks"]}
    assert ip not in blocks, f"{ip} was blocked: {blocks[ip]}"


def counters(m: MailLab) -> dict[str, int]:
    return m.status()["counters"]


def frozen_account(m: MailLab, user: str, timeout: float = 10) -> dict[str, Any]:
    """Wait until `dynscreen accounts list --json` shows ``user`` frozen; that entry."""

    def find() -> dict[str, Any] | None:
        for a in m.frozen():
            if a["user"].lower() == user.lower():
                return a
        return None

    acc = wait_for(find, timeout=timeout, step=0.2)
    assert acc, f"{user} was not frozen: {m.frozen()}\n{report(m)}"
    return acc


# ---- what the client experiences -----------------------------------------------------------


def refused(m: MailLab, src: str, port: int) -> bool:
    """True when a new TCP connection from ``src`` gets nowhere (dropped: it times out)."""
    s = m.tcp(src, port, timeout=1.0)
    if s is None:
        return True
    s.close()
    return False


def connects(m: MailLab, src: str, port: int) -> bool:
    s = m.tcp(src, port, timeout=2.0)
    if s is None:
        return False
    s.close()
    return True


def eventually_closed(probe: Callable[[], object], timeout: float = 5) -> bool:
    """True once ``probe`` (a protocol command on an open session) fails: the session
    was closed under the client. Commands that still succeed are retried."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            probe()
        except (OSError, EOFError, smtplib.SMTPServerDisconnected, imaplib.IMAP4.abort,
                imaplib.IMAP4.error, poplib.error_proto):
            return True
        time.sleep(0.1)
    return False


def quietly_close(*sessions: Any) -> None:
    for s in sessions:
        with contextlib.suppress(Exception):
            if isinstance(s, smtplib.SMTP):
                s.close()
            elif isinstance(s, imaplib.IMAP4):
                s.shutdown()
            elif isinstance(s, poplib.POP3):
                s.close()
            else:
                s.close()
