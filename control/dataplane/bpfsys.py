"""The libbpf calls bcc does not export, through ctypes on libbpf.so.1.

bcc's libbcc carries its own copy of libbpf but exports neither
bpf_prog_test_run_opts nor the object-info calls; Debian's libbpf1 (libbcc's
dependency) has them. Also the bulk map calls (BPF_MAP_LOOKUP_BATCH and
friends): libbpf's wrappers are one syscall each, and working on raw byte
blobs keeps a million entries from turning into a million ctypes objects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator
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
        _lib.bpf_prog_get_next_id.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
        _declare_map_calls(_lib)
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
        # The rest of struct bpf_prog_info up to recursion_misses (kernel 5.12+; an older
        # kernel fills less and leaves it 0).
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
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


def prog_recursion_misses(prog_id: int) -> int:
    """How often the kernel skipped a program instead of running it: a tracing program
    is not run on a CPU where one already runs (or a map syscall has paused them)."""
    fd = _check(_libbpf().bpf_prog_get_fd_by_id(prog_id), f"program id {prog_id}")
    try:
        return prog_recursion_misses_fd(fd)
    finally:
        os.close(fd)


def prog_recursion_misses_fd(prog_fd: int) -> int:
    """prog_recursion_misses for a program this process holds (by its fd)."""
    info = _ProgInfo()
    _info(prog_fd, info)
    return int(info.recursion_misses)


def prog_ids() -> list[int]:
    """The ids of every loaded BPF program (BPF_PROG_GET_NEXT_ID)."""
    lib = _libbpf()
    out: list[int] = []
    cur = ctypes.c_uint32(0)
    while lib.bpf_prog_get_next_id(cur.value, ctypes.byref(cur)) == 0:
        out.append(cur.value)
    return out


def array_lookup(fd: int, index: int, value_size: int) -> bytes | None:
    """One entry of an array map (None: no such index)."""
    lib = _libbpf()
    key = ctypes.c_uint32(index)
    buf = ctypes.create_string_buffer(value_size)
    if lib.bpf_map_lookup_elem(fd, ctypes.byref(key), buf) < 0:
        return None
    return buf.raw


def array_update(fd: int, index: int, value: bytes) -> None:
    lib = _libbpf()
    key = ctypes.c_uint32(index)
    buf = ctypes.create_string_buffer(value, len(value))
    _check(lib.bpf_map_update_elem(fd, ctypes.byref(key), buf, 0), "BPF_MAP_UPDATE_ELEM")


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


BPF_CGROUP_SOCK_OPS = 3  # enum bpf_attach_type


def link_create(prog_fd: int, target_fd: int, attach_type: int, what: str) -> int:
    """Attach through a BPF link (BPF_LINK_CREATE): the attachment lasts while the link's
    fd is open, so a process that dies leaves nothing attached."""
    lib = _libbpf()
    lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return _check(lib.bpf_link_create(prog_fd, target_fd, attach_type, None), what)


# ---- bulk map access ------------------------------------------------------------------------

# The kernel's ENOTSUPP (not in userspace errno): a map type without a batch operation.
_ENOTSUPP = 524
_NO_BATCH = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, _ENOTSUPP})
BATCH_CHUNK = 16384


def _declare_map_calls(lib: ctypes.CDLL) -> None:
    vp, u32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)
    lib.bpf_map_lookup_batch.argtypes = [ctypes.c_int, vp, vp, vp, vp, u32p, vp]
    lib.bpf_map_update_batch.argtypes = [ctypes.c_int, vp, vp, u32p, vp]
    lib.bpf_map_delete_batch.argtypes = [ctypes.c_int, vp, u32p, vp]
    lib.bpf_map_get_next_key.argtypes = [ctypes.c_int, vp, vp]
    lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, vp, vp]
    lib.bpf_map_update_elem.argtypes = [ctypes.c_int, vp, vp, ctypes.c_uint64]
    lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, vp]


def _errno_of(rc: int) -> int:
    return ctypes.get_errno() or -rc


class BatchUnsupported(BpfError):
    """The kernel (before 5.6) or the map type (an LPM trie, on some kernels) has no
    batch operation."""


@dataclass(frozen=True)
class MapChunk:
    """Entries of a map as packed arrays: ``count`` keys of ``key_size`` bytes, values alike."""

    keys: bytes
    values: bytes
    count: int


def map_lookup_batch(fd: int, key_size: int, value_size: int,
                     chunk: int = BATCH_CHUNK) -> Iterator[MapChunk]:
    """Every entry of a hash map, ``chunk`` per BPF_MAP_LOOKUP_BATCH call.

    BatchUnsupported (before anything is yielded) when the map or the kernel
    cannot; map_walk() then falls back. Entries added or deleted while the walk
    runs may be missed or seen (each at most once per bucket); a caller that
    must not miss them reconciles afterwards.
    """
    lib = _libbpf()
    token_size = max(key_size, 8)  # a hash map's batch token is a u32 bucket number
    in_tok = ctypes.create_string_buffer(token_size)
    out_tok = ctypes.create_string_buffer(token_size)
    first = True
    while True:
        keys = ctypes.create_string_buffer(key_size * chunk)
        values = ctypes.create_string_buffer(value_size * chunk)
        count = ctypes.c_uint32(chunk)
        rc = lib.bpf_map_lookup_batch(fd, None if first else in_tok, out_tok, keys, values,
                                      ctypes.byref(count), None)
        err = _errno_of(rc) if rc < 0 else 0
        if err == errno.ENOSPC and count.value == 0:
            chunk *= 2  # one hash bucket holds more entries than fit: ask with room for them
            continue
        if err and err != errno.ENOENT:
            if first and err in _NO_BATCH:
                raise BatchUnsupported(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
            raise BpfError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
        n = count.value
        if n:
            yield MapChunk(keys.raw[: n * key_size], values.raw[: n * value_size], n)
        if err == errno.ENOENT:  # the walk is complete
            return
        ctypes.memmove(in_tok, out_tok, token_size)
        first = False


def map_walk_keys(fd: int, key_size: int, value_size: int,
                  chunk: int = BATCH_CHUNK) -> Iterator[MapChunk]:
    """Every entry by BPF_MAP_GET_NEXT_KEY + BPF_MAP_LOOKUP_ELEM: two syscalls an entry.

    For map types without batch calls (LPM tries on some kernels) and old kernels.
    A key deleted under the walk can restart a hash map's walk: its keys may then
    come twice (later ones win).
    """
    lib = _libbpf()
    prev = ctypes.create_string_buffer(key_size)
    key = ctypes.create_string_buffer(key_size)
    value = ctypes.create_string_buffer(value_size)
    keys, values = bytearray(), bytearray()
    n = 0
    have_prev = False
    while True:
        rc = lib.bpf_map_get_next_key(fd, prev if have_prev else None, key)
        if rc < 0:
            err = _errno_of(rc)
            if err == errno.ENOENT:
                break
            raise BpfError(err, f"BPF_MAP_GET_NEXT_KEY: {os.strerror(err)}")
        rc = lib.bpf_map_lookup_elem(fd, key, value)
        if rc == 0:
            keys += key.raw
            values += value.raw
            n += 1
            if n == chunk:
                yield MapChunk(bytes(keys), bytes(values), n)
                keys.clear()
                values.clear()
                n = 0
        elif _errno_of(rc) != errno.ENOENT:  # deleted between the two calls: skip it
            err = _errno_of(rc)
            raise BpfError(err, f"BPF_MAP_LOOKUP_ELEM: {os.strerror(err)}")
        ctypes.memmove(prev, key, key_size)
        have_prev = True
    if n:
        yield MapChunk(bytes(keys), bytes(values), n)


def map_walk(fd: int, key_size: int, value_size: int,
             chunk: int = BATCH_CHUNK) -> Iterator[MapChunk]:
    """Every entry of a map: batched where the kernel can, key by key where it cannot."""
    walk = map_lookup_batch(fd, key_size, value_size, chunk)
    try:
        first = next(walk)
    except StopIteration:
        return
    except BatchUnsupported:
        yield from map_walk_keys(fd, key_size, value_size, chunk)
        return
    yield first
    yield from walk


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int,
                     chunk: int = BATCH_CHUNK) -> int:
    """Write ``count`` packed entries, ``chunk`` per BPF_MAP_UPDATE_BATCH (element by
    element where batches are unsupported). Returns how many were written; BpfError
    (E2BIG: the map is full) names how far it got.
    """
    lib = _libbpf()
    if count == 0:
        return 0
    key_size, value_size = len(keys) // count, len(values) // count
    kbuf = (ctypes.c_char * len(keys)).from_buffer_copy(keys)
    vbuf = (ctypes.c_char * len(values)).from_buffer_copy(values)
    base_k, base_v = ctypes.addressof(kbuf), ctypes.addressof(vbuf)
    done = 0
    while done < count:
        n = min(chunk, count - done)
        cnt = ctypes.c_uint32(n)
        rc = lib.bpf_map_update_batch(fd, base_k + done * key_size, base_v + done * value_size,
                                      ctypes.byref(cnt), None)
        if rc < 0:
            err = _errno_of(rc)
            if done == 0 and cnt.value == 0 and err in _NO_BATCH:
                return _update_each(fd, base_k, base_v, key_size, value_size, count)
            done += cnt.value
            raise BpfError(err, f"BPF_MAP_UPDATE_BATCH after {done} of {count} entries: "
                                f"{os.strerror(err)}")
        done += n
    return done


def _update_each(fd: int, base_k: int, base_v: int, key_size: int, value_size: int,
                 count: int) -> int:
    lib = _libbpf()
    for i in range(count):
        rc = lib.bpf_map_update_elem(fd, base_k + i * key_size, base_v + i * value_size, 0)
        if rc < 0:
            err = _errno_of(rc)
            raise BpfError(err, f"BPF_MAP_UPDATE_ELEM after {i} of {count} entries: "
                                f"{os.strerror(err)}")
    return count


def map_delete_batch(fd: int, keys: bytes, count: int, chunk: int = BATCH_CHUNK) -> int:
    """Delete ``count`` packed keys; keys already gone are skipped. Returns how many went.

    BPF_MAP_DELETE_BATCH stops at the first missing key (ENOENT), so after one the
    rest of that chunk is deleted key by key.
    """
    lib = _libbpf()
    if count == 0:
        return 0
    key_size = len(keys) // count
    kbuf = (ctypes.c_char * len(keys)).from_buffer_copy(keys)
    base = ctypes.addressof(kbuf)
    deleted = done = 0
    batch_ok = True
    while done < count:
        n = min(chunk, count - done)
        if batch_ok:
            cnt = ctypes.c_uint32(n)
            rc = lib.bpf_map_delete_batch(fd, base + done * key_size, ctypes.byref(cnt), None)
            if rc == 0:
                deleted += n
                done += n
                continue
            err = _errno_of(rc)
            if err in _NO_BATCH and cnt.value == 0:
                batch_ok = False
            elif err != errno.ENOENT:
                raise BpfError(err, f"BPF_MAP_DELETE_BATCH: {os.strerror(err)}")
            deleted += cnt.value
            done += cnt.value
            n -= cnt.value
        for i in range(done, done + n):
            rc = lib.bpf_map_delete_elem(fd, base + i * key_size)
            if rc == 0:
                deleted += 1
            elif (err := _errno_of(rc)) != errno.ENOENT:
                raise BpfError(err, f"BPF_MAP_DELETE_ELEM: {os.strerror(err)}")
        done += n
    return deleted
