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
import errno
import imaplib
import os
import poplib
import shutil
import smtplib
import socket
import subprocess
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dynscreen.control.lab import MailLab
from dynscreen.control.lab.netns import wait_for

from conftest import require, require_bpf

SMTP, SUBMISSION, POP3, IMAP = 25, 587, 110, 143


def have_mail_servers() -> bool:
    return all(shutil.which(t) or os.path.exists(f"/usr/sbin/{t}") for t in ("postfix",
                                                                              "dovecot"))


class LabRetries:
    """Lab builds that failed once and passed on a second try: each one is warned about at
    once, appended to a log file and summed up at the end of the run, so that a lab that is
    flaky to build never passes silently."""

    NAME = "dynscreen-lab-retries"

    def __init__(self, log: Path | None) -> None:
        self.log = log
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)
        warnings.warn(text, stacklevel=2)
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}\n")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.notes:
            return
        terminalreporter.section("dynscreen lab builds retried", red=True, bold=True)
        terminalreporter.write_line(
            f"{len(self.notes)} lab build(s) failed once and passed on retry"
            + (f" (logged in {self.log})" if self.log else "") + ":", red=True, bold=True)
        for text in self.notes:
            terminalreporter.write_line(f"  {text}", red=True)


def lab_retries(config: pytest.Config) -> LabRetries:
    """The run's LabRetries, registered as a plugin the first time (for its summary)."""
    found = config.pluginmanager.get_plugin(LabRetries.NAME)
    if isinstance(found, LabRetries):
        return found
    log = Path(os.environ.get("DYNSCREEN_LAB_RETRY_LOG",
                              str(Path(__file__).resolve().parents[1] / "build" /
                                  "lab-retries.log")))
    retries = LabRetries(log)
    config.pluginmanager.register(retries, LabRetries.NAME)
    return retries


def open_with_retry(make: Callable[[str], MailLab], tag: str, retries: LabRetries,
                    where: str) -> MailLab:
    """Build the lab; one more try when the first fails (a busy machine can make a start
    time out), counted and reported by ``retries``."""
    try:
        return make(tag).open()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:  # LabError, MailError, ...
        first = f"{type(e).__name__}: {e}".splitlines()[0]
        retries.note(f"{where}: building the mail lab failed once ({first}); trying again")
        return make(f"{tag}r").open()


@pytest.fixture(scope="module", name="lab")
def lab_fixture(request: pytest.FixtureRequest) -> Iterator[MailLab]:
    """The module's lab; a test module imports this to use the ``lab`` fixture."""
    require_bpf()
    require(have_mail_servers(), "needs Debian's postfix and dovecot: run `sudo make setup-dev`")
    settings: dict[str, Any] = getattr(request.module, "LAB", {})
    tag = f"{os.getpid() % 10000}{zlib.crc32(request.module.__name__.encode()) % 100:02d}"
    m = open_with_retry(lambda t: MailLab(tag=t, **settings), tag,
                        lab_retries(request.config), request.module.__name__)
    failed_before = request.session.testsfailed
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


def drops(m: MailLab) -> int:
    """Packets the kernel dropped so far, all reasons (the drop_* counters of status)."""
    return sum(v for k, v in m.result("status")["counters"].items()
               if k.startswith("drop_") and isinstance(v, int))


def assert_dropped(m: MailLab, src: str, port: int, timeout: float = 1.0) -> None:
    """A new TCP connection from ``src`` is dropped: the server listens (a positive control
    from a fresh, unblocked client address, through the same screened gateway, gets
    through first), the connection from ``src`` times out (a refusal raises
    ConnectionRefusedError: that is no drop), and the kernel's drop counters move."""
    control = m.attacker()
    s = m.tcp(control, port, timeout=2.0)
    assert s is not None, f"positive control: {control} could not connect to port {port}"
    s.close()
    before = drops(m)
    s = m.tcp(src, port, timeout=timeout)
    if s is not None:
        s.close()
        raise AssertionError(f"{src} connected to port {port}: not dropped")
    after = wait_for(lambda: drops(m) > before and drops(m), timeout=2)
    assert after, f"{src} timed out on port {port} but no kernel drop counter moved " \
                  f"({before} drops before)"


def connects(m: MailLab, src: str, port: int) -> bool:
    """True when a new connection from ``src`` is accepted; False when it times out (a
    refusal raises: the server must be listening for this to mean anything)."""
    s = m.tcp(src, port, timeout=2.0)
    if s is None:
        return False
    s.close()
    return True


class Watch:
    """A session's socket and the client's address and port, taken when the session opens
    (a client library closes its socket on an error, and the address goes with it)."""

    def __init__(self, session: Any) -> None:
        sock = getattr(session, "sock", session)
        assert isinstance(sock, socket.socket), f"no socket in {session!r}"
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.peer = (host.removeprefix("::ffff:"), port)


def session_closed(m: MailLab, session: Any, timeout: float = 5) -> bool:
    """True once ``session`` (a Watch, or an open smtplib, imaplib or poplib session or
    socket) was closed under the client, seen where it happens:

    - the server's end left the gateway's socket table (`ss`: no established or
      close-wait socket for the client's address and port any more), and
    - when the client still holds its socket: reading it gives a reset or an end of
      file. A read that times out (what XDP dropping the client's packets looks like)
      is not a close.
    """
    w = session if isinstance(session, Watch) else Watch(session)
    gone = wait_for(lambda: w.peer not in m.net.server_sockets(), timeout=timeout, step=0.1)
    if not gone:
        return False
    if w.sock.fileno() == -1:  # the client library closed it after an error: ss decides
        return True
    w.sock.settimeout(2.0)
    try:
        while w.sock.recv(4096):  # replies the client library has not read yet
            pass
    except TimeoutError:
        return False
    except OSError as e:  # ConnectionResetError, ECONNABORTED, EPIPE: a reset
        return e.errno is not None and e.errno != errno.EBADF
    return True  # end of file: the server's end closed


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
