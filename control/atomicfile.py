"""Replace a file in one step, so a reader or a crash never sees half of it.

The block file, the whitelist file and the frozen-accounts file are state the
daemon must find intact after a power cut: the text goes to a temporary file
in the same folder, is flushed to disk, renamed over the old name, and the
folder is flushed so the rename itself survives.

They name addresses and accounts, so they are private: the mode is set on the
file itself (0600 unless a caller asks otherwise), whatever the umask, on every
rewrite; the group of the file being replaced is kept, so a group an
administrator gave a file (a mail server's, for a lookup table) stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o755


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``path`` atomically (creating the folder); no temp file is left behind."""
    _replace(path, (data,), mode, keep_group=True)


def _replace(path: Path, chunks: Iterable[bytes], mode: int, *, keep_group: bool) -> None:
    """The one way both writers replace a file: temp file, flush, rename, flush the folder."""
    folder = path.parent
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    group: int | None = None
    if keep_group:
        with contextlib.suppress(OSError):
            group = os.stat(path).st_gid
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            if group is not None and group != os.fstat(f.fileno()).st_gid:
                with contextlib.suppress(PermissionError):  # not root: the group is ours
                    os.fchown(f.fileno(), -1, group)
            os.fchmod(f.fileno(), mode)  # explicit: the umask does not decide
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def write_new(path: Path, data: bytes, mode: int = FILE_MODE) -> bool:
    """Write ``data`` to ``path`` only if no file has that name; False if one has.

    For copies that must never replace another (O_EXCL: no race between check and write).
    """
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # os.open's mode passes through the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    fsync_dir(path.parent)
    return True


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic_chunks(path: Path, chunks: Iterable[bytes], mode: int = FILE_MODE) -> bytes:
    """write_atomic for text made piece by piece (a million-line block file never sits
    in memory whole); returns the SHA-256 of what was written."""
    digest = hashlib.sha256()

    def hashed() -> Iterator[bytes]:
        for chunk in chunks:
            digest.update(chunk)
            yield chunk

    _replace(path, hashed(), mode, keep_group=False)
    return digest.digest()
