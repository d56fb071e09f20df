"""A stand-in for the daemon's control socket, for testing the client without BPF or root.

It speaks control/ctlproto.py exactly (one JSON line each way, error replies
for malformed or unknown requests), answers each command with a canned
result, and records every request so that a test can check what was sent.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import dynscreen.cli.app as cli_app
from dynscreen.cli import client
from dynscreen.cli.app import OperationFailed, UserError, app
from dynscreen.control import ctlproto


@dataclass
class Error:
    """Answer with an error reply (code 2: invalid request, 1: operation failed)."""

    message: str
    code: int = 2


@dataclass
class Raw:
    """Answer with these bytes as they are (a garbled or truncated reply), then hang up."""

    data: bytes


Answer = Any  # a result, an Error, a Raw, or a callable(request) returning one of those

BLOCK = {
    "ip": "203.0.113.7",
    "reason": "connections",
    "note": None,
    "minutes_left": 7.5,
    "drops": 40,
    "source": "kernel",
}
BLOCKS_TEXT = (
    "# dynscreen blocks: ADDR EXPIRY REASON [# comment]\n"
    "203.0.113.7 2030-01-01T00:10:00Z connections # 7.5 min left\n"
    "2001:db8:1:2::/64 2030-01-01T00:20:00Z manual # 17.0 min left, spam run\n"
)

DEFAULT_RESULTS: dict[str, Any] = {
    "ping": {"pid": 4242, "version": "0.1.0"},
    "status": {
        "blocks": [
            BLOCK,
            {
                "ip": "2001:db8:1:2::/64",
                "reason": "manual",
                "note": "spam run",
                "minutes_left": 17.0,
                "drops": 3,
                "source": "manual",
            },
        ],
        "counters": {
            "passed": 1234,
            "drop_blocked": 43,
            "drop_syn_cap": 5,
            "drop_rate": 0,
            "blocks_made": 2,
        },
        "mode": "enforce",
        "enabled": True,
        "interfaces": {"eth0": "native"},
        "started": 1_700_000_000,
    },
    "top": {
        "sources": [
            {
                "ip": "198.51.100.9",
                "rate": 42,
                "established": 7,
                "syn_per_second": 3,
                "drops": 0,
                "blocked": False,
                "reason": None,
                "minutes_left": None,
            },
            {
                "ip": "203.0.113.7",
                "rate": 61,
                "established": 0,
                "syn_per_second": 0,
                "drops": 40,
                "blocked": True,
                "reason": "connections",
                "minutes_left": 7.5,
            },
        ],
        "counters": {"passed": 1234, "drop_blocked": 43},
    },
    "block": {
        "block": {
            "ip": "192.0.2.1",
            "reason": "manual",
            "note": None,
            "minutes_left": 10.0,
            "drops": 0,
            "source": "manual",
        }
    },
    "unblock": {"removed": True},
    "allow_add": {
        "whitelist": [
            {"cidr": "127.0.0.0/8", "source": "config"},
            {"cidr": "192.0.2.0/24", "source": "runtime"},
        ],
        "unblocked": 3,
    },
    "allow_remove": {"whitelist": [{"cidr": "127.0.0.0/8", "source": "config"}]},
    "allow_list": {
        "whitelist": [
            {"cidr": "127.0.0.0/8", "source": "config"},
            {"cidr": "::1/128", "source": "config"},
            {"cidr": "192.0.2.0/24", "source": "runtime"},
        ]
    },
    "accounts_list": {
        "accounts": [
            {
                "user": "alice@example.com",
                "since": 1_700_000_000,
                "until": None,
                "service": "imap",
                "ip": "198.51.100.23",
                "session": "4F2A1B3C",
                "failures": 10,
            }
        ]
    },
    "accounts_unfreeze": {"removed": True},
    "blocks_text": {"path": "/var/lib/dynscreen/blocks.dat", "text": BLOCKS_TEXT},
    "blocks_apply": {"added": 1, "removed": 0, "changed": 0},
    "reload": {"config": "/etc/dynscreen/dynscreen.toml"},
    "detach": {"detached": ["eth0"]},
}


class FakeDaemon:
    """A threaded unix-socket server answering canned results; `requests` records what came."""

    def __init__(self, path: Path, results: dict[str, Answer] | None = None) -> None:
        self.path = path
        self.results: dict[str, Answer] = copy.deepcopy(DEFAULT_RESULTS)
        if results:
            self.results.update(results)
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._handlers: list[threading.Thread] = []

    # --- test side ---

    def answer(self, cmd: str, answer: Answer) -> None:
        """Change what `cmd` gets from now on."""
        with self._lock:
            self.results[cmd] = answer

    def commands(self) -> list[str]:
        with self._lock:
            return [r["cmd"] for r in self.requests]

    def last(self, cmd: str | None = None) -> dict[str, Any]:
        """The most recent request (of `cmd`, if given)."""
        with self._lock:
            for req in reversed(self.requests):
                if cmd is None or req["cmd"] == cmd:
                    return req
        raise AssertionError(f"no {cmd or ''} request was received")

    def start(self) -> FakeDaemon:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        sock.listen(16)
        sock.settimeout(0.1)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="fakedaemon", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for handler in self._handlers:
            handler.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> FakeDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- daemon side ---

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            handler = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            handler.start()
            self._handlers.append(handler)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            line = self._read_line(conn)
            if line is None:
                return
            try:
                req = ctlproto.decode_request(line)
            except ctlproto.RequestError as e:
                with contextlib.suppress(OSError):
                    conn.sendall(ctlproto.error(str(e), 2))
                return
            with self._lock:
                self.requests.append(req)
                answer = self.results.get(req["cmd"])
            if callable(answer):
                answer = answer(req)
            if isinstance(answer, Raw):
                data = answer.data
            elif isinstance(answer, Error):
                data = ctlproto.error(answer.message, answer.code)
            else:
                data = ctlproto.ok(answer)
            # The client may have given up (a timeout test): like the daemon, carry on.
            with contextlib.suppress(OSError):
                conn.sendall(data)

    @staticmethod
    def _read_line(conn: socket.socket) -> bytes | None:
        buf = b""
        while b"\n" not in buf:
            try:
                chunk = conn.recv(1 << 16)
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
            if len(buf) > ctlproto.MAX_REQUEST + 1:
                conn.sendall(ctlproto.error("request too large", 2))
                return None
        return buf.split(b"\n", 1)[0]


@contextmanager
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket path holds at most 107 bytes."""
    d = Path(tempfile.mkdtemp(prefix="ds-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def running(
    results: dict[str, Answer] | None = None, name: str = "control.sock"
) -> Iterator[FakeDaemon]:
    """A started FakeDaemon on a fresh short path, stopped and removed afterwards."""
    with short_dir() as d, FakeDaemon(d / name, results) as fake:
        yield fake


@pytest.fixture(name="fake")
def fake_fixture() -> Iterator[FakeDaemon]:
    """A running fake daemon per test; a test module imports this to use ``fake``."""
    with running() as d:
        yield d


@pytest.fixture(name="no_ambient", autouse=True)
def no_ambient_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The machine's config, env, editor and a real daemon must not leak into the client
    tests; a test module imports this and it applies to every test there."""
    for var in ("DYNSCREEN_CONFIG", "DYNSCREEN_SOCKET", "EDITOR", "VISUAL", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_app, "DEFAULT_CONFIG", tmp_path / "no-such-dir" / "dynscreen.toml")
    monkeypatch.setattr(client, "DEFAULT_SOCKET", tmp_path / "no-such-dir" / "control.sock")


@dataclass
class Outcome:
    """What a user sees from one `dynscreen` run: exit code and the two streams."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Outcome:
    """Run the CLI in-process and map UserError/OperationFailed to exit codes as `main` does.

    Any other exception is a bug (it would be a traceback for the user): re-raised.
    """
    result = CliRunner().invoke(app, list(args), env=env, input=input)
    exc = result.exception
    code, stderr = result.exit_code, result.stderr
    if isinstance(exc, UserError):
        code, stderr = 2, stderr + f"dynscreen: {exc}\n"
    elif isinstance(exc, OperationFailed):
        code, stderr = 1, stderr + f"dynscreen: {exc}\n"
    elif exc is not None and not isinstance(exc, SystemExit):
        raise exc
    return Outcome(code, result.stdout, stderr)
