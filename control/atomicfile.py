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
import ctypes
import ctypes.util
import errno
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o755


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``path`` atomically (creating the folder); no temp file is left behind."""
    _replace(path, (data,), mode, keep_group=True)


def _replace(path: Path, chunks: Iterable[bytes], mode: int, *, keep_group: bool,
             keep_if: Callable[[BinaryIO], bool] | None = None) -> bool:
    """The one way the writers replace a file: temp file, flush, rename, flush the folder.

    With ``keep_if``, the file found at ``path`` at the moment of the rename is asked
    (opened for reading): True keeps it and drops the new text (returns False)."""
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
        if keep_if is not None and not _swap_in(tmp, path, keep_if):
            os.unlink(tmp)
            return False
        if keep_if is None:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
    return True


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_renameat2: Callable[..., int] | None | bool = None


def _rename2(src: str, dst: Path, flags: int) -> int:
    """renameat2(2): 0, or the errno (ENOSYS/EINVAL: not here, or not on this file system)."""
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                             use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        return errno.ENOSYS
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return 0
    return ctypes.get_errno()


def _swap_in(tmp: str, path: Path, keep_if: Callable[[BinaryIO], bool]) -> bool:
    """Put ``tmp`` at ``path`` unless the file there must be kept; True if put.

    No window between the check and the rename: the two files are exchanged in one
    step (RENAME_EXCHANGE), and the one taken out is what is checked; kept, they are
    exchanged back (``tmp`` then holds the new text again). Where the file system
    cannot exchange, the check comes just before a plain rename (a window of
    microseconds, not of the seconds a million-line text takes to write)."""
    while True:
        err = _rename2(tmp, path, _RENAME_EXCHANGE)
        if err == errno.ENOENT:  # no file at path: only if none appears meanwhile
            err = _rename2(tmp, path, _RENAME_NOREPLACE)
            if err == errno.EEXIST:
                continue
            if err == 0:
                return True
        if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                if keep_if(f):
                    return False
            os.replace(tmp, path)
            return True
        if err:
            raise OSError(err, os.strerror(err), str(path))
        with open(tmp, "rb") as taken_out:
            keep = keep_if(taken_out)
        if keep:
            err = _rename2(tmp, path, _RENAME_EXCHANGE)
            if err:
                raise OSError(err, os.strerror(err), str(path))
            return False
        os.unlink(tmp)
        return True


def write_atomic_unless(path: Path, chunks: Iterable[bytes],
                        keep_if: Callable[[BinaryIO], bool], mode: int = FILE_MODE) -> bool:
    """write_atomic of pieces, unless the file found at ``path`` in the very step of the
    rename is to be kept (``keep_if``, given it open for reading: an edit by hand not
    read yet); False then, and that file stays as it is. The group is kept."""
    return _replace(path, chunks, mode, keep_group=True, keep_if=keep_if)


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
