"""A state file the daemon rewrites and an administrator may edit by hand.

The block file and the frozen-accounts file share these rules, so an
administrator's typing always wins over the daemon's bookkeeping:

- nothing is written over an edit the daemon has not read yet (``edited()``
  compares a digest of what was last written or read; a stat proves "unchanged"
  cheaply once it is older than the clock's granularity), checked again in the
  very step of the rename (atomicfile.write_atomic_unless): an edit saved while a
  million-line text was being written is not lost to it;
- a refused edit is kept beside the file as ``NAME.rejected-YYYYmmddTHHMMSSZ``
  (``-1``, ``-2``, ... when that name is taken): never overwritten, byte for byte;
- an edit applies as a change against the text it was started from: every
  text the daemon writes ends with a version line naming it, and the daemon
  remembers the texts it wrote lately (``base_for()``), so a block or a
  freeze made while an editor was open is not taken for a deletion;
- every write is atomic and private (control/atomicfile.py).

Memory: a remembered text is kept zlib-packed (a daemon-written block file packs
~6 to 1: the 90 MB of a million blocks become ~15 MB; a text read is packed
once a newer one is remembered, so a start does not wait for it), and a text written in
pieces is hashed and packed piece by piece as it goes to disk, never joined
whole: both C steps release the GIL, so a worker thread writing a million
lines leaves the event loop free, and no 80 MB copy stays behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from dynscreen.control.atomicfile import FILE_MODE, write_atomic_unless, write_new

# Texts remembered for base_for(): the latest RECENT_VERSIONS, and of the older ones the
# oldest of each power-of-two age bucket (1 s, 2 s, 4 s, ...: an editor open for an hour
# finds its text, or one close to it), within VERSION_BYTES (packed) in all.
RECENT_VERSIONS = 16
VERSION_BYTES = 32 * 1024 * 1024
PACK_LEVEL = 1  # zlib: the fastest level already packs the daemon's texts ~8 to 1
_VERSION_LINE = (b"# dynscreen version %s: keep this line, it tells which text an edit "
                 b"started from\n")
_VERSION = re.compile(rb"^# dynscreen version ([0-9a-f]{16}):", re.MULTILINE)


class _Stat(NamedTuple):
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def _stat(path: Path) -> _Stat | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _Stat(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# A stat equal to the one recorded proves "unchanged" only if the file's last change is
# older than the clock's granularity at the time of recording (else a write in the same
# tick would keep the same times): the "racily clean" rule of git's index.
_RACY_NS = 2_000_000_000


class _Version(NamedTuple):
    at: float
    name: bytes | None  # the version line's id (None: a text read, not written)
    blob: bytes  # the text, zlib-packed when packed
    packed: bool

    @property
    def data(self) -> bytes:
        return zlib.decompress(self.blob) if self.packed else self.blob


class StateFile:
    """The file at ``path``: read, write without clobbering edits, keep rejects, find bases."""

    def __init__(self, path: Path, mode: int = FILE_MODE) -> None:
        self.path = Path(path)
        self.mode = mode
        self._digest: bytes | None = None  # sha256 of what was last written or read
        self._stat: _Stat | None = None  # a stat proving the file still holds _digest
        self._versions: list[_Version] = []  # newest first
        self._last_name = 0

    def read(self) -> bytes | None:
        """The file's bytes (None when there is none); remember() them once they are valid.

        A file left more open than ``mode`` (by an older version, or a copy) is
        closed down at once rather than at its next rewrite.
        """
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_mode & 0o777 & ~self.mode:
                    with contextlib.suppress(PermissionError):
                        os.fchmod(f.fileno(), self.mode)
                return f.read()
        except FileNotFoundError:
            self._digest = self._stat = None
            return None

    def remember(self, data: bytes, now: float | None = None, name: bytes | None = None) -> None:
        """``data`` is what the file holds and what the daemon acts on: read or written."""
        self._remember(hashlib.sha256(data).digest(), data, False, now, name)

    def _remember(self, digest: bytes, blob: bytes, packed: bool, now: float | None,
                  name: bytes | None) -> None:
        self._digest = digest
        self._stat = None  # the next edited() hashes once, then trusts the stat
        now = time.time() if now is None else now
        self._versions.insert(0, _Version(now, name, blob, packed))
        self._thin(now)

    def edited(self) -> bool:
        """Whether the file differs from what was last written or read.

        A missing file is no edit (the daemon writes it anew).
        """
        st = _stat(self.path)
        if st is None:
            return False
        if self._digest is None:
            return True
        if st == self._stat:
            return False
        try:
            digest = hashlib.sha256(self.path.read_bytes()).digest()
        except FileNotFoundError:
            return False
        if digest != self._digest:
            return True
        self._stat = st if st.ctime_ns < time.time_ns() - _RACY_NS else None
        return False

    def write(self, data: bytes, now: float | None = None) -> bool:
        """Replace the file with ``data`` and a version line, unless an unread edit waits;
        True if written."""
        if self.edited():
            return False
        name = b"%016x" % max(time.time_ns(), self._last_name + 1)  # when, and unique
        self._last_name = int(name, 16)
        data += _VERSION_LINE % name
        if not write_atomic_unless(self.path, (data,), self._unread, self.mode):
            return False
        self.remember(data, now, name)
        return True

    def write_chunks(self, chunks: Iterable[bytes], now: float | None = None) -> bool:
        """write() for a text made piece by piece (a million-line block file): the same
        rules, the pieces written as they come (hashed and packed as they go, never
        joined whole); True if written."""
        if self.edited():
            return False
        name = b"%016x" % max(time.time_ns(), self._last_name + 1)
        self._last_name = int(name, 16)
        digest = hashlib.sha256()
        packer = zlib.compressobj(PACK_LEVEL)
        packed: list[bytes] = []

        def body() -> Iterator[bytes]:
            for chunk in _and_then(chunks, _VERSION_LINE % name):
                digest.update(chunk)
                packed.append(packer.compress(chunk))
                yield chunk
            packed.append(packer.flush())
        if not write_atomic_unless(self.path, body(), self._unread, self.mode):
            return False  # an edit came while the text was written: it is read first
        self._remember(digest.digest(), b"".join(packed), True, now, name)
        return True

    def _unread(self, f: BinaryIO) -> bool:
        """Whether the open file (the one a write is about to replace) holds anything but
        what was last written or read: checked in the step of the rename, as the edited()
        at the start of a write that takes seconds leaves those seconds open."""
        if self._digest is None:
            return True
        if self._stat is not None:  # a trusted stat (see edited()): no need to read it all
            st = os.fstat(f.fileno())  # (the rename itself moved its ctime)
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == self._stat[:4]:
                return False
        digest = hashlib.sha256()
        while chunk := f.read(1 << 20):
            digest.update(chunk)
        return digest.digest() != self._digest

    def keep_rejected(self, data: bytes) -> Path:
        """Keep a refused text beside the file, under a name no other copy has.

        When the file still holds that text, it counts as read: the next write()
        replaces it with the state in force.
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = self.path.with_name(f"{self.path.name}.rejected-{stamp}")
        target, n = base, 0
        while not write_new(target, data, self.mode):
            n += 1
            target = base.with_name(f"{base.name}-{n}")
        if self.holds(data):  # the refused text is what the file holds: dealt with
            self._digest, self._stat = hashlib.sha256(data).digest(), None
        return target

    def holds(self, data: bytes) -> bool:
        """Whether the file holds exactly ``data`` now."""
        try:
            return hashlib.sha256(self.path.read_bytes()).digest() == \
                hashlib.sha256(data).digest()
        except FileNotFoundError:
            return False

    def base_for(self, data: bytes) -> bytes | None:
        """The text an edit started from (None: none remembered).

        The one its version line names; if that one is no longer remembered, the
        latest written before it (a block made after it stays), else the oldest
        remembered (a text written before a restart: what the daemon read at
        start); without a version line, the latest text written or read.
        """
        if not self._versions:
            return None
        names = _VERSION.findall(data)
        if not names:
            return self._versions[0].data
        wanted = int(names[-1], 16)
        for v in self._versions:  # newest first
            if v.name is not None and int(v.name, 16) <= wanted:
                return v.data
        return self._versions[-1].data

    def _thin(self, now: float) -> None:
        """Keep the recent texts and the oldest of each age bucket, newest first, within bytes."""
        recent, older = self._versions[:RECENT_VERSIONS], self._versions[RECENT_VERSIONS:]
        by_bucket: dict[int, _Version] = {}
        for v in reversed(older):  # oldest first: the first seen of a bucket stays
            by_bucket.setdefault(int(math.log2(max(now - v.at, 1.0))), v)
        kept = [recent[0]]
        size = len(recent[0].blob) if recent[0].packed else 0  # packed once superseded
        for v in [*recent[1:], *sorted(by_bucket.values(), key=lambda v: -v.at)]:
            if not v.packed:  # no longer the newest: packed now
                v = v._replace(blob=zlib.compress(v.blob, PACK_LEVEL), packed=True)
            size += len(v.blob)
            if size > VERSION_BYTES:
                break
            kept.append(v)
        self._versions = kept


def _and_then(chunks: Iterable[bytes], last: bytes) -> Iterator[bytes]:
    yield from chunks
    yield last
