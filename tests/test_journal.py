"""JournalFollower against real journal files made by systemd-journal-remote."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Awaitable, Mapping
from pathlib import Path

import pytest

from dynscreen.control.logs import journal as journal_module
from dynscreen.control.logs.journal import (
    CursorFile,
    JournalEntry,
    JournalError,
    JournalFollower,
    JournalUnavailable,
    normalize_unit,
    parse_entry,
)

from conftest import require

TIMEOUT = 10.0
BOOT = "0123456789abcdef0123456789abcdef"
REMOTE_PATHS = ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")


def _need(what: str, package: str) -> None:
    """Missing tool: a failure under the suite's CI flag (make setup-dev installs it), a skip
    elsewhere (tests/conftest.py, require)."""
    require(False, f"{what} not installed (Debian package {package}; make setup-dev installs it)")


@pytest.fixture
def journal_remote() -> str:
    for path in (shutil.which("systemd-journal-remote"), *REMOTE_PATHS):
        if path and os.access(path, os.X_OK):
            if shutil.which("journalctl") is None:
                _need("journalctl", "systemd")
            return path
    _need("systemd-journal-remote", "systemd-journal-remote")
    raise AssertionError("unreachable")


def export(fields: Mapping[str, str | bytes]) -> bytes:
    """One entry in the journal export format (binary-safe form where needed)."""
    out = bytearray()
    for key, value in fields.items():
        raw = value.encode() if isinstance(value, str) else value
        if b"\n" in raw or not raw.isascii():
            out += key.encode() + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
        else:
            out += key.encode() + b"=" + raw + b"\n"
    return bytes(out + b"\n")


class Journal:
    """A journal file that test entries are appended to, batch by batch."""

    def __init__(self, remote: str, path: Path) -> None:
        self.remote = remote
        self.path = path
        self.seq = 0

    def add(self, *entries: tuple[str, str | bytes], age: float = 0.0, **extra: str) -> None:
        """Append (unit, message) entries, stamped `age` seconds ago."""
        batch = b""
        for unit, message in entries:
            self.seq += 1
            fields: dict[str, str | bytes] = {
                "__REALTIME_TIMESTAMP": str(int((time.time() - age) * 1e6)),
                "__MONOTONIC_TIMESTAMP": str(self.seq),
                "_BOOT_ID": BOOT,
                "_SYSTEMD_UNIT": unit,
                "SYSLOG_IDENTIFIER": unit.split("@")[0].split(".")[0] + "/smtpd",
                "_PID": str(1000 + self.seq),
                "_HOSTNAME": "mx1",
                "MESSAGE": message,
            }
            fields.update(extra)
            batch += export(fields)
        subprocess.run(
            [self.remote, f"--output={self.path}", "-"],
            input=batch, check=True, capture_output=True, timeout=TIMEOUT,
        )


@pytest.fixture
def journal(journal_remote: str, tmp_path: Path) -> Journal:
    return Journal(journal_remote, tmp_path / "test.journal")


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, TIMEOUT)

    asyncio.run(bounded())


class Collector:
    """Drive JournalFollower.entries() in a task."""

    def __init__(self, follower: JournalFollower) -> None:
        self.follower = follower
        self.queue: asyncio.Queue[JournalEntry] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for entry in self.follower.entries():
            self.queue.put_nowait(entry)

    async def messages(self, n: int) -> list[str]:
        return [(await self.queue.get()).message for _ in range(n)]

    async def close(self) -> None:
        self.follower.close()
        await self.task


def test_since_now_skips_old_and_follows_appended(journal: Journal) -> None:
    journal.add(("postfix@-.service", "old postfix"), ("dovecot.service", "old dovecot"), age=60)

    async def body() -> None:
        c = Collector(JournalFollower("postfix@-.service", journal_file=journal.path))
        journal.add(("postfix@-.service", "connect from a"), ("dovecot.service", "imap"))
        journal.add(("postfix@-.service", "disconnect from a"))
        entries = [await c.queue.get() for _ in range(2)]
        assert [e.message for e in entries] == ["connect from a", "disconnect from a"]
        e = entries[0]
        assert (e.identifier, e.pid, e.hostname, e.unit) == (
            "postfix/smtpd", 1003, "mx1", "postfix@-.service")
        assert abs(e.ts - time.time()) < 5
        assert e.cursor
        assert e.line().endswith(" mx1 postfix/smtpd[1003]: connect from a")
        # the dovecot entry was filtered out: the next one is the next postfix one
        journal.add(("postfix@-.service", "marker"))
        assert await c.messages(1) == ["marker"]
        await c.close()

    run(body())


def test_from_start_and_several_units(journal: Journal) -> None:
    journal.add(
        ("postfix@-.service", "p1"), ("ssh.service", "s1"), ("dovecot.service", "d1"), age=60
    )

    async def body() -> None:
        follower = JournalFollower(
            ["postfix@-.service", "dovecot"], journal_file=journal.path, since_now=False
        )
        c = Collector(follower)
        assert await c.messages(2) == ["p1", "d1"]
        journal.add(("ssh.service", "s2"), ("dovecot.service", "d2"))
        assert await c.messages(1) == ["d2"]
        await c.close()

    run(body())


def test_glob_matches_units_that_appear_later(journal: Journal) -> None:
    """journalctl -u would expand the glob at start, and fail: nothing matches yet."""
    journal.add(("ssh.service", "s1"), age=60)

    async def body() -> None:
        c = Collector(JournalFollower(["postfix@*", "dovecot"], journal_dir=journal.path.parent))
        journal.add(
            ("ssh.service", "s2"),
            ("postfix@second.service", "p2"),
            ("postfix.service", "not an instance"),
            ("dovecot.service", "d2"),
        )
        assert await c.messages(2) == ["p2", "d2"]
        await c.close()

    run(body())


def test_binary_and_multiline_message(journal: Journal) -> None:
    journal.add(("postfix@-.service", b"caf\xe9 \xff ok\nsecond line\n"), age=1)

    async def body() -> None:
        c = Collector(
            JournalFollower("postfix@-.service", journal_file=journal.path, since_now=False)
        )
        entry = await c.queue.get()
        assert entry.message == "caf\ufffd \ufffd ok\nsecond line\n"
        assert entry.line().endswith("]: caf\ufffd \ufffd ok second line")
        await c.close()

    run(body())


def test_long_entries(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fields over 4 KiB come whole (--all); JSON lines over MAX_LINE are skipped."""
    monkeypatch.setattr(journal_module, "MAX_LINE", 64 * 1024)
    journal.add(
        ("postfix@-.service", "a" * 20000),
        ("postfix@-.service", "b" * 200000),
        ("postfix@-.service", "after"),
        age=1,
    )
    warnings: list[str] = []

    async def body() -> None:
        c = Collector(JournalFollower(
            "postfix@-.service", journal_file=journal.path, since_now=False,
            on_warning=warnings.append,
        ))
        assert await c.messages(2) == ["a" * 20000, "after"]
        await c.close()

    run(body())
    assert warnings == [f"journal entry longer than {64 * 1024} bytes; skipped"]


def test_resume_after_cursor(journal: Journal) -> None:
    journal.add(*[("postfix@-.service", f"m{i}") for i in range(3)], age=60)

    async def first() -> str:
        c = Collector(
            JournalFollower("postfix@-.service", journal_file=journal.path, since_now=False)
        )
        entries = [await c.queue.get() for _ in range(3)]
        await c.close()
        return entries[1].cursor

    async def body() -> None:
        cursor = await first()
        c = Collector(JournalFollower(
            "postfix@-.service", journal_file=journal.path, after_cursor=cursor))
        assert await c.messages(1) == ["m2"]
        await c.close()

    run(body())


def test_journalctl_failure_is_an_error(journal: Journal, tmp_path: Path) -> None:
    warnings: list[str] = []

    async def body() -> None:
        follower = JournalFollower(
            "x", journal_file=tmp_path / "missing.journal", on_warning=warnings.append
        )
        with pytest.raises(JournalError, match="journalctl exited with status 1"):
            async for _ in follower.entries():
                pass

    run(body())
    assert any("journalctl:" in w for w in warnings)


def test_missing_journalctl_names_the_package() -> None:
    with pytest.raises(JournalUnavailable, match="apt-get install systemd"):
        JournalFollower("postfix", journalctl="no-such-journalctl")


def test_unit_names_and_command_line() -> None:
    assert normalize_unit("dovecot") == "dovecot.service"
    assert normalize_unit("postfix@-.service") == "postfix@-.service"
    assert normalize_unit("postfix@*") == "postfix@*"
    assert normalize_unit("exim4.socket") == "exim4.socket"
    before = time.time()
    exact = JournalFollower(["postfix@-.service", "dovecot"]).argv()
    since = [float(a[9:]) for a in exact if a.startswith("--since=@")]
    assert len(since) == 1 and before <= since[0] <= time.time()
    assert exact[-2:] == ["_SYSTEMD_UNIT=postfix@-.service", "_SYSTEMD_UNIT=dovecot.service"]
    globbed = JournalFollower(["postfix@*", "dovecot"], since_now=False).argv()
    assert "--no-tail" in globbed
    assert not [a for a in globbed if a.startswith("_SYSTEMD_UNIT=")]


def test_parse_entry_and_line() -> None:
    entry = parse_entry({
        "__REALTIME_TIMESTAMP": "1711049166123456",
        "__CURSOR": "s=1",
        "_PID": "4711",
        "_HOSTNAME": "mx1",
        "SYSLOG_IDENTIFIER": ["postfix/smtpd", "dup"],
        "MESSAGE": [0x63, 0x61, 0x66, 0xE9],
        "_SYSTEMD_UNIT": "postfix@-.service",
    })
    assert entry == JournalEntry(
        ts=1711049166.123456, identifier="postfix/smtpd", pid=4711, hostname="mx1",
        message="caf\ufffd", unit="postfix@-.service", cursor="s=1",
    )
    assert entry.line() == "2024-03-21T19:26:06.123456+00:00 mx1 postfix/smtpd[4711]: caf\ufffd"
    bare = parse_entry({"__REALTIME_TIMESTAMP": "1000000", "_COMM": "kernel", "MESSAGE": "x"})
    assert bare is not None
    assert bare.line() == "1970-01-01T00:00:01.000000+00:00 localhost kernel: x"
    assert parse_entry({"MESSAGE": "no time"}) is None


def test_cursor_file_across_a_restart(journal: Journal, tmp_path: Path) -> None:
    """Stop, entries written meanwhile, start again: each entry handled exactly once."""
    cursors = tmp_path / "state" / "journal"
    handled: list[str] = []

    def follower() -> JournalFollower:
        return JournalFollower("postfix@-.service", journal_file=journal.path,
                               cursor_file=CursorFile.for_unit(cursors, "postfix@-.service"))

    journal.add(("postfix@-.service", "before the first start"), age=60)

    async def first_run() -> None:
        f = follower()
        assert f.after_cursor is None  # nothing saved yet: from now on
        c = Collector(f)
        journal.add(*[("postfix@-.service", f"a{i}") for i in range(3)])
        handled.extend(await c.messages(3))
        await c.close()

    async def second_run() -> None:
        f = follower()
        assert f.after_cursor is not None
        c = Collector(f)
        handled.extend(await c.messages(2))
        journal.add(("postfix@-.service", "after"))
        handled.extend(await c.messages(1))
        await c.close()

    run(first_run())
    saved = cursors / "postfix@-.service.cursor"
    assert saved.stat().st_mode & 0o777 == 0o600
    journal.add(("postfix@-.service", "down1"), ("dovecot.service", "other unit"),
                ("postfix@-.service", "down2"))
    run(second_run())
    assert handled == ["a0", "a1", "a2", "down1", "down2", "after"]


def test_cursor_is_saved_only_once_the_entry_is_handled(journal: Journal, tmp_path: Path) -> None:
    """An entry received but not handled (the consumer stopped in between) is read again."""
    cursors = tmp_path / "cursors"
    journal.add(("postfix@-.service", "m0"), ("postfix@-.service", "m1"), age=60)

    async def take(n: int) -> list[str]:
        f = JournalFollower("postfix@-.service", journal_file=journal.path, since_now=False,
                            cursor_file=CursorFile.for_unit(cursors, "postfix@-.service"))
        got: list[str] = []
        async with contextlib.aclosing(f.entries()) as entries:
            async for entry in entries:
                got.append(entry.message)
                if len(got) == n:
                    break  # m{n-1} received, never handled: its cursor must not be saved
        return got

    async def body() -> None:
        assert await take(2) == ["m0", "m1"]
        assert await take(1) == ["m1"]

    run(body())


def test_a_damaged_cursor_file_is_warned_and_ignored(tmp_path: Path) -> None:
    path = tmp_path / "x.cursor"
    path.write_text("not a cursor\n")
    warnings: list[str] = []
    assert CursorFile(path, warnings.append).load() is None
    assert warnings == [f"journal cursor {path} holds no cursor: starting from now"]
    assert CursorFile.for_unit(tmp_path, "dovecot").path == tmp_path / "dovecot.service.cursor"


def test_cursor_saved_in_place_is_whole_without_a_clean_stop(tmp_path: Path) -> None:
    """The per-entry save (no close, as after a crash) is readable; a shorter cursor after
    a longer one leaves nothing of the longer one behind."""
    path = tmp_path / "state" / "u.cursor"
    saver = CursorFile(path)
    long_cursor = "s=" + "a" * 700 + ";i=1"
    saver.save(long_cursor)
    assert CursorFile(path).load() == long_cursor
    saver.save("s=ab;i=2")
    assert CursorFile(path).load() == "s=ab;i=2"
    assert path.stat().st_mode & 0o777 == 0o600
    saver.save("s=ab;i=3", sync=True)  # the clean stop: replaced atomically
    assert CursorFile(path).load() == "s=ab;i=3"
    saver.close()
