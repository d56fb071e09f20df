"""The systemd journal as a log source: ``journalctl -f -o json`` as a child process.

Why journalctl and not libsystemd bindings: it is on every systemd machine, needs no
extra Python dependency, and its JSON output is a stable interface.

Entries are rendered by JournalEntry.line() as one text line in the shape Debian 12's
rsyslog writes to /var/log/mail.log (RFC 3339 with microseconds):
``2024-03-21T19:26:06.123456+00:00 host ident[pid]: message``, so the same parsers
read files and the journal. The time is UTC with an explicit offset: unambiguous
across DST changes and years, and to the microsecond, which a classic
``Mar 21 19:26:06`` stamp is not.

Units: exact names (``postfix@-.service``; a bare ``dovecot`` means
``dovecot.service``, as for ``journalctl -u``) are matched by journalctl on
``_SYSTEMD_UNIT``. A glob (``postfix@*``) is matched here instead: journalctl expands
``-u`` globs once, at start, against the units already in the journal, so an instance
started later would be missed (and a glob that matches nothing yet is an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path

from dynscreen.control.atomicfile import write_atomic

_log = logging.getLogger(__name__)

FIELDS = ("MESSAGE", "SYSLOG_IDENTIFIER", "_COMM", "_PID", "SYSLOG_PID", "_HOSTNAME",
          "_SYSTEMD_UNIT")
"""Asked of journalctl (``--output-fields``): less JSON to make and parse."""

MAX_LINE = 4 << 20
"""Longest JSON line read; longer entries are skipped with a warning."""

_UNIT_TYPES = (".service", ".socket", ".target", ".device", ".mount", ".automount",
               ".swap", ".timer", ".path", ".slice", ".scope")
_GLOB_CHARS = frozenset("*?[")


CURSOR_MODE = 0o600
_CURSOR = re.compile(r"[a-z]=[0-9a-fA-F]+(;[a-z]=[0-9a-fA-F]+)*")
_UNSAFE = re.compile(r"[^A-Za-z0-9@._:-]")


class CursorFile:
    """Where a journal source resumes after a restart: the cursor of the last entry the
    daemon handled, one file per source (0600: it names the journal's positions).

    Saved after every entry, so it must be cheap: the cursor is written in place with
    one pwrite, padded to a fixed size so that each write covers the one before (a
    replace by rename costs milliseconds on ext4, which flushes on rename). One
    syscall is all or nothing for a process that dies, so a crashed daemon leaves a
    whole cursor. When the follower stops, the file is replaced atomically and
    fsynced: a power loss after that keeps it.
    """

    SLOT = 512

    def __init__(self, path: Path, on_warning: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._warn = on_warning or _log.warning
        self._failed = False
        self._fd: int | None = None
        self._size = 0

    @classmethod
    def for_unit(cls, folder: Path, unit: str,
                 on_warning: Callable[[str], None] | None = None) -> CursorFile:
        """The cursor file of a unit in the state folder (the name made file-safe)."""
        return cls(folder / f"{_UNSAFE.sub('_', normalize_unit(unit))}.cursor", on_warning)

    def load(self) -> str | None:
        """The saved cursor; None when there is none yet, or it is not a cursor (warned)."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            self._warn(f"journal cursor {self.path} cannot be read ({e}): starting from now")
            return None
        if not _CURSOR.fullmatch(text):
            self._warn(f"journal cursor {self.path} holds no cursor: starting from now")
            return None
        return text

    def save(self, cursor: str, *, sync: bool = False) -> None:
        """Write it (in place; with sync, atomically and durably); a failure is warned
        once, and following goes on."""
        data = (cursor + "\n").encode().ljust(self.SLOT)
        try:
            if sync:
                self.close()
                write_atomic(self.path, data, CURSOR_MODE)
            else:
                self._write_in_place(data)
        except OSError as e:
            if not self._failed:
                self._warn(f"cannot save the journal cursor {self.path}: {e}; after a "
                           "restart, entries may be missed or read twice")
            self._failed = True
            self.close()
        else:
            self._failed = False

    def _write_in_place(self, data: bytes) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, CURSOR_MODE)
            os.fchmod(self._fd, CURSOR_MODE)
            self._size = os.fstat(self._fd).st_size
        os.pwrite(self._fd, data, 0)
        if len(data) < self._size:  # a longer cursor came before (over SLOT): cut its end
            os.ftruncate(self._fd, len(data))
        self._size = len(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class JournalUnavailable(RuntimeError):
    """journalctl is not installed."""


class JournalError(RuntimeError):
    """journalctl stopped: it never does while following, so its message is the reason."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journal entry, with the fields the mail-log parsers need."""

    ts: float  # __REALTIME_TIMESTAMP, Unix seconds
    identifier: str  # SYSLOG_IDENTIFIER, else _COMM
    pid: int | None  # _PID, else SYSLOG_PID
    hostname: str
    message: str
    unit: str = ""
    cursor: str = ""  # __CURSOR: where to resume (JournalFollower's after_cursor)

    def line(self) -> str:
        """The entry as one syslog-shaped line (see the module doc)."""
        stamp = datetime.fromtimestamp(self.ts, timezone.utc).isoformat(timespec="microseconds")
        tag = self.identifier if self.pid is None else f"{self.identifier}[{self.pid}]"
        message = self.message.rstrip("\n").replace("\n", " ")  # one entry, one line
        return f"{stamp} {self.hostname} {tag}: {message}"


def normalize_unit(unit: str) -> str:
    """``dovecot`` → ``dovecot.service``, as journalctl -u does; globs stay as they are."""
    if _GLOB_CHARS & set(unit) or unit.endswith(_UNIT_TYPES):
        return unit
    return unit + ".service"


def _text(value: object) -> str | None:
    """A field as JSON-exported: a string, bytes as a list of ints, or a list of values."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        if not value:
            return ""
        if isinstance(value[0], int):  # not valid UTF-8, or has control characters
            return bytes(value).decode("utf-8", "replace")
        return _text(value[0])  # the field occurs more than once: the first
    return str(value)


def parse_entry(obj: dict[str, object]) -> JournalEntry | None:
    """A JournalEntry from one ``journalctl -o json`` object; None if it has no time."""
    try:
        ts = int(_text(obj.get("__REALTIME_TIMESTAMP")) or "") / 1e6
    except ValueError:
        return None
    pid_text = _text(obj.get("_PID")) or _text(obj.get("SYSLOG_PID")) or ""
    return JournalEntry(
        ts=ts,
        identifier=_text(obj.get("SYSLOG_IDENTIFIER")) or _text(obj.get("_COMM")) or "-",
        pid=int(pid_text) if pid_text.isdigit() else None,
        hostname=_text(obj.get("_HOSTNAME")) or "localhost",
        message=_text(obj.get("MESSAGE")) or "",
        unit=_text(obj.get("_SYSTEMD_UNIT")) or "",
        cursor=_text(obj.get("__CURSOR")) or "",
    )


class JournalFollower:
    """Follow the journal entries of some systemd units, from now on by default.

    ``journal_dir`` / ``journal_file`` read another journal than the system's
    (``journalctl -D`` / ``--file``). "Now" is when the follower is made, as for
    FileFollower. ``since_now=False`` starts at the oldest entry;
    ``after_cursor`` resumes after an entry's cursor (it wins over ``since_now``).
    ``cursor_file`` resumes after the cursor saved there (if any), and saves each
    entry's cursor once the consumer has handled it (when it asks for the next one):
    after a restart, what was written while no follower ran is read, and no entry
    handled before is read again. No unit at all follows every entry.
    """

    def __init__(
        self,
        unit: str | Iterable[str],
        *,
        journal_dir: Path | None = None,
        journal_file: Path | None = None,
        since_now: bool = True,
        after_cursor: str | None = None,
        cursor_file: CursorFile | None = None,
        on_warning: Callable[[str], None] | None = None,
        journalctl: str = "journalctl",
    ) -> None:
        units = [unit] if isinstance(unit, str) else list(unit)
        self.units = [normalize_unit(u) for u in units]
        self._globs = any(_GLOB_CHARS & set(u) for u in self.units)
        self.journal_dir = journal_dir
        self.journal_file = journal_file
        self.since_now = since_now
        self.cursor_file = cursor_file
        if after_cursor is None and cursor_file is not None:
            after_cursor = cursor_file.load()
        self.after_cursor = after_cursor
        self._saved: str | None = None
        self._warn = on_warning or _log.warning
        exe = shutil.which(journalctl)
        if exe is None:
            raise JournalUnavailable(
                f"{journalctl} not found: reading the systemd journal needs it "
                "(Debian/Ubuntu package 'systemd': apt-get install systemd)"
            )
        self._exe = exe
        self._since = time.time()
        self._proc: asyncio.subprocess.Process | None = None
        self._closed = False

    def argv(self) -> list[str]:
        """The journalctl command line."""
        argv = [self._exe, "--follow", "--output=json", "--all", "--quiet", "--no-pager",
                "--output-fields=" + ",".join(FIELDS)]
        if self.journal_file is not None:
            argv.append(f"--file={self.journal_file}")
        if self.journal_dir is not None:
            argv.append(f"--directory={self.journal_dir}")
        if self.after_cursor is not None:
            argv.append(f"--after-cursor={self.after_cursor}")
        elif self.since_now:
            # A time, not --lines=0: entries written while journalctl starts are kept.
            argv.append(f"--since=@{self._since:.6f}")
        else:
            argv.append("--no-tail")
        if not self._globs:
            argv += [f"_SYSTEMD_UNIT={u}" for u in self.units]  # one field: ORed
        return argv

    def wanted(self, entry: JournalEntry) -> bool:
        """Our unit filter, where journalctl could not apply it (globs)."""
        if not self._globs or not self.units:
            return True
        return any(fnmatchcase(entry.unit, u) for u in self.units)

    async def entries(self) -> AsyncIterator[JournalEntry]:
        """Yield entries as the journal gets them, until close()."""
        argv = self.argv()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=MAX_LINE,
        )
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        errors: deque[str] = deque(maxlen=5)
        stderr_task = asyncio.create_task(self._read_stderr(proc.stderr, errors))
        discarding = False
        try:
            while not self._closed:
                try:
                    raw = await proc.stdout.readuntil(b"\n")
                except asyncio.LimitOverrunError as e:
                    await proc.stdout.readexactly(e.consumed)  # drop it, and the rest below
                    if not discarding:
                        self._warn(f"journal entry longer than {MAX_LINE} bytes; skipped")
                    discarding = True
                    continue
                except asyncio.IncompleteReadError:
                    break  # journalctl exited
                if discarding:
                    discarding = False
                    continue
                entry = self._parse(raw)
                if entry is not None and self.wanted(entry):
                    yield entry
                    # Back here: the consumer has handled it.
                    if self.cursor_file is not None and entry.cursor:
                        self.cursor_file.save(entry.cursor)
                        self._saved = entry.cursor
            if not self._closed:
                rc = await proc.wait()
                await stderr_task
                reason = "; ".join(errors) or "no message"
                raise JournalError(f"journalctl exited with status {rc}: {reason}")
        finally:
            if self.cursor_file is not None and self._saved is not None:
                self.cursor_file.save(self._saved, sync=True)  # durable on the way out
            await self._stop(proc)
            stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stderr_task

    def close(self) -> None:
        """Stop following: entries() ends (it also stops journalctl on its way out)."""
        self._closed = True
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()

    def _parse(self, raw: bytes) -> JournalEntry | None:
        try:
            obj = json.loads(raw)
        except ValueError:
            self._warn(f"journalctl printed something that is not JSON: {raw[:200]!r}")
            return None
        entry = parse_entry(obj) if isinstance(obj, dict) else None
        if entry is None:
            self._warn(f"journal entry without a time skipped: {raw[:200]!r}")
        return entry

    async def _read_stderr(self, stream: asyncio.StreamReader, errors: deque[str]) -> None:
        """Pass journalctl's complaints on as warnings; keep the last for an exit error."""
        async for raw in stream:
            text = raw.decode("utf-8", "replace").strip()
            if text:
                errors.append(text)
                self._warn(f"journalctl: {text}")

    @staticmethod
    async def _stop(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
