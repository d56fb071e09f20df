"""The libbpf calls bcc does not export, through ctypes on libbpf.so.1.

bcc's libbcc carries its own copy of libbpf but exports neither
bpf_prog_test_run_opts nor the object-info calls; Debian's libbpf1 (libbcc's
dependency) has them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

_lib: ctypes.CDLL | None = None


def _libbpf() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        _lib = ctypes.CDLL(name, use_errno=True)
        _lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.c_void_p]
        _lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        _lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
        _lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
        _lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
        _lib.bpf_map_get_fd_by_id.argtypes = [ctypes.c_uint32]
    return _lib


class BpfError(OSError):
    """A bpf syscall failed; errno and what was being done are in the message."""


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno() or -rc
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return rc


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class TestRun:
    """What BPF_PROG_TEST_RUN reports: the program's return, mean ns per run, the frame out."""

    retval: int
    duration_ns: int
    data: bytes = b""


def prog_test_run(prog_fd: int, frame: bytes, repeat: int = 1) -> TestRun:
    """Run a loaded program over one frame (at least 14 bytes for XDP)."""
    buf = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(len(frame) + 256)
    opts = _TestRunOpts()
    opts.sz = ctypes.sizeof(_TestRunOpts)
    opts.data_in = ctypes.cast(buf, ctypes.c_void_p)
    opts.data_size_in = len(frame)
    opts.data_out = ctypes.cast(out, ctypes.c_void_p)
    opts.data_size_out = len(out)
    opts.repeat = repeat
    _check(_libbpf().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return TestRun(retval=opts.retval, duration_ns=opts.duration,
                   data=out.raw[:min(opts.data_size_out, len(out))])


class _ProgInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


@dataclass(frozen=True)
class MapInfo:
    id: int
    name: str
    key_size: int
    value_size: int
    max_entries: int


def _info(fd: int, info: ctypes.Structure) -> None:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "BPF_OBJ_GET_INFO_BY_FD")


def prog_name_and_maps(prog_id: int) -> tuple[str, list[int]]:
    """The name of a loaded program and the ids of the maps it uses."""
    fd = _check(_libbpf().bpf_prog_get_fd_by_id(prog_id), f"program id {prog_id}")
    try:
        info = _ProgInfo()
        _info(fd, info)
        n = info.nr_map_ids
        ids = (ctypes.c_uint32 * max(n, 1))()
        info = _ProgInfo()
        info.nr_map_ids = n
        info.map_ids = ctypes.cast(ids, ctypes.c_void_p).value or 0
        _info(fd, info)
        return info.name.decode(errors="replace"), list(ids[:n])
    finally:
        os.close(fd)


def map_info_fd(fd: int) -> MapInfo:
    info = _MapInfo()
    _info(fd, info)
    return MapInfo(info.id, info.name.decode(errors="replace"), info.key_size,
                   info.value_size, info.max_entries)


def map_fd_by_id(map_id: int) -> int:
    return _check(_libbpf().bpf_map_get_fd_by_id(map_id), f"map id {map_id}")


def obj_pin(fd: int, path: str) -> None:
    _check(_libbpf().bpf_obj_pin(fd, path.encode()), f"pin {path}")


def obj_get(path: str) -> int:
    return _check(_libbpf().bpf_obj_get(path.encode()), f"open pin {path}")
