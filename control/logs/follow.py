"""Follow a growing log file with inotify, for the asyncio daemon.

Why inotify and not polling: a poll interval is latency added to every signal and
wakeups on an idle gateway; inotify wakes the daemon when the file changes.

What the follower guarantees, and why:

- It starts at the end of the file as it is at construction (a daemon restart must
  not replay yesterday's log), unless ``from_start``. A line still being written
  at that moment (no newline yet) is yielded whole once its newline comes.
- Line numbers are physical line numbers in the current file incarnation, counted
  from its start even when the follower started at its end (``replay`` and the
  daemon report the same numbers for the same line).
- A line waits for its newline. A line over ``max_line`` bytes is skipped with a
  warning, and the rest of it is dropped as it arrives: memory stays bounded
  whatever is written. Invalid UTF-8 is decoded with replacement characters.
- A file that does not exist yet (or whose directory does not) is waited for.
- Rotation by rename-and-create: the follower keeps reading the old file until the
  new one has data. The writer (syslog) writes to the new file only after it has
  reopened, so by then the old one is complete: nothing is lost, nothing repeated.
  The same holds for deletion and re-creation.
- copytruncate: the follower notices the file shrank, or that the bytes before its
  position changed (truncated and refilled before it looked), and starts again
  from the beginning. Lines written between logrotate's copy and its truncate are
  lost to every reader; that is copytruncate's own race.

- A restart resumes (``detach`` then ``resume=``): the supervisor restarts a crashed
  follower after a backoff (1 s, doubling to a minute), and lines written meanwhile
  must not be lost. The stopped follower hands over its open file and read state:
  the same file goes on from its last offset; a file rotated meanwhile is read to its
  end through the handle kept open, then the new one from its start; lines already
  read but not yet taken by the consumer come first.

Not handled: a path that is a symlink whose target is replaced in another
directory (the watch is on the symlink's directory), and two writers that keep
appending to the old file after the new one has data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from inotify_simple import INotify, flags

_log = logging.getLogger(__name__)

CHUNK = 1 << 20
"""Bytes read at once: big reads keep a backlog cheap to catch up on."""

TAIL = 64
"""Bytes before the read position re-read with each chunk: if they changed, the file
was truncated and refilled past our position before we looked (copytruncate)."""

_FILE_MASK = flags.MODIFY
_DIR_MASK = (
    flags.CREATE
    | flags.MOVED_TO
    | flags.MOVED_FROM
    | flags.DELETE
    | flags.MODIFY  # the new file's writes, while we still finish the old one
    | flags.DELETE_SELF
    | flags.MOVE_SELF
    | flags.ONLYDIR
)
_ANCESTOR_MASK = flags.CREATE | flags.MOVED_TO | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR
# The directory's own parent: a removed directory reports nothing itself while we
# hold a file in it open (its inode lives on), but its parent sees the rmdir.
_UP_MASK = flags.CREATE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE | flags.ONLYDIR
_DIR_GONE = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED | flags.UNMOUNT

Line = tuple[int, str]


@dataclass
class FollowPosition:
    """Where a stopped follower stood, for the next one on the same path (``resume=``):
    its open file (owned by this object until a follower takes it) and read state."""

    fd: int | None
    ident: tuple[int, int] | None = None
    pos: int = 0
    skip_to: int = 0
    lineno: int = 0
    buf: bytes = b""
    discarding: bool = False
    tail: bytes = b""
    switching: bool = False
    pending: list[Line] = field(default_factory=list)

    def close(self) -> None:
        """Release the file when no follower will take it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FileFollower:
    """Yield the lines appended to one log file, across rotations; see the module doc."""

    def __init__(
        self,
        path: Path | str,
        *,
        from_start: bool = False,
        max_line: int = 65536,
        on_warning: Callable[[str], None] | None = None,
        resume: FollowPosition | None = None,
    ) -> None:
        self.path = Path(path).absolute()
        self._name = self.path.name
        self._max_line = max_line
        self._warn = on_warning or _log.warning
        self._ino = INotify(nonblocking=True)
        self._closed = False
        self._dir_wd: int | None = None
        self._up_wd: int | None = None
        self._dir_is_target = False
        self._dir_stale = True
        self._fd: int | None = None
        self._file_wd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._pos = 0
        self._skip_to = 0  # start-at-end: bytes before this are counted, not yielded
        self._lineno = 0
        self._buf = bytearray()  # the partial last line, at most max_line bytes
        self._discarding = False  # inside an over-long line: drop until its newline
        self._tail = b""
        self._switching = False
        self._pending: deque[Line] = deque()  # read, not yet taken by the consumer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        try:
            self._watch_dir()
            if resume is not None:
                self._resume(resume)
            else:
                self._open(from_start=from_start)
        except BaseException:
            self.close()
            raise

    # -- public -------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """A file is open and followed (else the path is awaited: it does not exist yet)."""
        return self._fd is not None

    def read_available(self) -> list[Line]:
        """Everything readable now, without waiting (tests, benchmarks, catch-up)."""
        self._drain_events()
        out: list[Line] = list(self._pending)
        self._pending.clear()
        while True:
            batch, more = self._step()
            out.extend(batch)
            if not more:
                return out

    async def lines(self) -> AsyncIterator[Line]:
        """Yield (line number, text) forever; ends only when close() is called."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._loop = loop
        fd = self._ino.fileno()
        loop.add_reader(fd, self._on_inotify)
        try:
            while not self._closed:
                while self._pending:  # taken one by one: a stop keeps the rest (detach)
                    yield self._pending.popleft()
                    if self._closed:
                        return
                batch, more = self._step()
                self._pending.extend(batch)
                if more:
                    await asyncio.sleep(0)  # a long backlog must not starve the loop
                    continue
                if self._pending:
                    continue
                await self._wake.wait()
                self._wake.clear()
        finally:
            if self._loop is not None:
                self._loop.remove_reader(fd)
                self._loop = None

    def close(self) -> None:
        """Stop following: release the inotify instance and the open file."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            self._loop.remove_reader(self._ino.fileno())
            self._loop = None
        if self._wake is not None:
            self._wake.set()
        self._close_file()
        self._ino.close()

    def detach(self) -> FollowPosition:
        """Stop following and hand over where this follower stood, its open file included,
        for the next follower of the path (``resume=``): nothing read or written meanwhile
        is lost."""
        fd, self._fd = self._fd, None
        at = FollowPosition(fd, self._ident, self._pos, self._skip_to, self._lineno,
                            bytes(self._buf), self._discarding, self._tail, self._switching,
                            list(self._pending))
        self._pending.clear()
        self.close()
        return at

    def __enter__(self) -> FileFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- watches ------------------------------------------------------------

    def _on_inotify(self) -> None:
        if self._drain_events() and self._wake is not None:
            self._wake.set()

    def _drain_events(self) -> bool:
        """Consume queued events; say whether any may concern our file."""
        if self._closed:
            return False
        relevant = False
        for ev in self._ino.read(timeout=0):
            if ev.wd == self._file_wd:
                relevant = True
            elif ev.wd == -1:  # queue overflow: events were lost, look at everything again
                self._dir_stale = True
                relevant = True
            elif ev.wd == self._dir_wd:
                if ev.mask & _DIR_GONE or not self._dir_is_target:
                    self._dir_stale = True
                    relevant = True
                elif ev.name == self._name:
                    relevant = True
            elif ev.wd == self._up_wd and ev.name == self.path.parent.name:
                self._dir_stale = True
                relevant = True
        return relevant

    def _watch_dir(self) -> None:
        """Watch the file's directory, or its deepest existing ancestor until it exists."""
        # Remove before adding: a second watch on an inode would replace the first's mask.
        for wd in (self._dir_wd, self._up_wd):
            if wd is not None:
                self._rm_watch(wd)
        self._dir_wd = self._up_wd = None
        target = self.path.parent
        p = target
        while True:
            try:
                wd = self._ino.add_watch(p, _DIR_MASK if p == target else _ANCESTOR_MASK)
            except (FileNotFoundError, NotADirectoryError):
                p = p.parent
                continue
            if p == target:
                break
            # The next level may have appeared while we climbed: go down again.
            nxt = p / target.relative_to(p).parts[0]
            if not nxt.is_dir():
                break
            self._rm_watch(wd)
            p = target
        self._dir_wd = wd
        self._dir_is_target = p == target
        self._dir_stale = not self._dir_is_target
        if self._dir_is_target and target.parent != target:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                self._up_wd = self._ino.add_watch(target.parent, _UP_MASK)

    def _rm_watch(self, wd: int) -> None:
        with contextlib.suppress(OSError):  # already gone with its inode
            self._ino.rm_watch(wd)

    # -- the file -------------------------------------------------------------

    def _open(self, *, from_start: bool) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return False
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(f"{self.path}: not a regular file")
        # Watch the inode we hold (not the name): writes to it after a rename count.
        self._file_wd = self._ino.add_watch(f"/proc/self/fd/{fd}", _FILE_MASK)
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)
        self._restart(skip_to=0 if from_start else st.st_size)
        return True

    def _resume(self, at: FollowPosition) -> None:
        """Take over a stopped follower's file and state (see detach)."""
        self._pending.extend(at.pending)
        if at.fd is None:  # it was waiting for the file: all that is there now is new
            self._open(from_start=True)
            return
        fd, at.fd = at.fd, None
        self._fd = fd
        self._file_wd = self._ino.add_watch(f"/proc/self/fd/{fd}", _FILE_MASK)
        self._ident = at.ident
        self._pos, self._skip_to, self._lineno = at.pos, at.skip_to, at.lineno
        self._buf = bytearray(at.buf)
        self._discarding, self._tail, self._switching = at.discarding, at.tail, at.switching

    def _restart(self, skip_to: int = 0) -> None:
        self._pos = 0
        self._skip_to = skip_to
        self._lineno = 0
        self._buf.clear()
        self._discarding = False
        self._tail = b""
        self._switching = False

    def _close_file(self) -> None:
        if self._file_wd is not None:
            self._rm_watch(self._file_wd)
            self._file_wd = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._ident = None

    def _replaced(self) -> bool:
        """Has the path moved on to another file that the writer has started filling?"""
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return False  # deleted: the writer may still write to ours; wait for a new one
        return (st.st_dev, st.st_ino) != self._ident and st.st_size > 0

    def _step(self) -> tuple[list[Line], bool]:
        """Read at most one chunk: the complete lines, and whether more may be waiting."""
        if self._closed:
            return [], False
        if self._dir_stale:
            self._watch_dir()
        if self._fd is None and not self._open(from_start=True):
            return [], False
        assert self._fd is not None
        k = len(self._tail)
        want = CHUNK
        if self._pos < self._skip_to:
            want = min(want, self._skip_to - self._pos)
        data = os.pread(self._fd, want + k, self._pos - k)
        if data[:k] != self._tail:  # shrank, or rewritten under us: copytruncate
            self._restart()
            return [], True
        if len(data) > k:
            new = data[k:]
            emit = self._pos >= self._skip_to
            self._pos += len(new)
            self._tail = new[-TAIL:] if len(new) >= TAIL else (self._tail + new)[-TAIL:]
            # Even after a short read: the next step checks for rotation at the end.
            return (self._feed(new) if emit else self._skip(new)), True
        # At the end of our file. Once the path holds a new file with data, read ours
        # to its end one last time (the stat came after the read above), then switch.
        if self._switching:
            out = self._flush_partial()
            self._close_file()
            return out, True
        if self._replaced():
            self._switching = True
            return [], True
        return [], False

    # -- splitting ------------------------------------------------------------

    def _feed(self, data: bytes) -> list[Line]:
        first = data.find(b"\n")
        if first < 0:
            self._add_partial(data)
            return []
        out: list[Line] = []
        self._lineno += 1
        if self._discarding:
            self._discarding = False
        else:
            head = data[:first]
            if self._buf:
                head = bytes(self._buf) + head
                self._buf.clear()
            self._emit(head, self._lineno, out)
        last = data.rfind(b"\n")
        if last > first:
            body = data[first + 1 : last]
            n0 = self._lineno + 1
            parts = body.split(b"\n")
            if max(map(len, parts)) <= self._max_line:
                # "\n" never occurs inside a UTF-8 sequence, and the decoder never
                # swallows one when replacing: one decode and split is line by line.
                texts = body.decode("utf-8", "replace").split("\n")
                out.extend(zip(range(n0, n0 + len(texts)), texts, strict=True))
            else:
                for n, part in enumerate(parts, n0):
                    self._emit(part, n, out)
            self._lineno += len(parts)
        self._add_partial(data[last + 1 :])
        return out

    def _skip(self, data: bytes) -> list[Line]:
        """Before the start position: count lines, keep only the partial last one."""
        last = data.rfind(b"\n")
        if last >= 0:
            self._lineno += data.count(b"\n", 0, last + 1)
            self._buf.clear()
            self._discarding = False
            data = data[last + 1 :]
        self._add_partial(data)
        return []

    def _emit(self, raw: bytes, n: int, out: list[Line]) -> None:
        if len(raw) > self._max_line:
            self._warn_long(n)
        else:
            out.append((n, raw.decode("utf-8", "replace")))

    def _add_partial(self, data: bytes) -> None:
        if not data or self._discarding:
            return
        if len(self._buf) + len(data) > self._max_line:
            self._warn_long(self._lineno + 1)
            self._buf.clear()
            self._discarding = True
        else:
            self._buf += data

    def _warn_long(self, n: int) -> None:
        self._warn(f"{self.path}: line {n} is longer than {self._max_line} bytes; skipped")

    def _flush_partial(self) -> list[Line]:
        """The old file's unterminated last line: it will get no newline now; keep it."""
        out: list[Line] = []
        if self._buf and not self._discarding:
            out.append((self._lineno + 1, self._buf.decode("utf-8", "replace")))
        self._buf.clear()
        self._discarding = False
        return out
