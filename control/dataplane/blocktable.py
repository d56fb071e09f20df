"""The kernel's block tables read and written in bulk: a million entries in a few syscalls.

The loader's per-key bcc calls cost a syscall and several ctypes objects per
entry; that is fine for one block and ruinous for an adoption of a million.
Here the block hash map is walked with BPF_MAP_LOOKUP_BATCH and written with
BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH (bpfsys), and the raw entries are
decoded with ``struct`` straight into ``SourceKey`` ints: no ipaddress object,
no ctypes structure per entry. The CIDR trie gets batch calls only from kernels
that give tries the generic ones (6.18 does); elsewhere bpfsys walks it key by
key, two syscalls an entry (it holds hand-made ranges: a few, at most thousands).

Meant for the daemon's start (adoption: ``read_blocks`` into the BlockIndex),
explicit reconciliation, and bulk restore from the block file
(``write_blocks``); single blocks keep going through ``DataPlane.add_block``,
which also resets the source's counters and the trie count in the config.
"""

from __future__ import annotations

import ctypes
import errno
import math
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from dynscreen.control.config import MAX_MINUTES
from dynscreen.control.dataplane import abi, bpfsys
from dynscreen.control.sourcekey import SourceKey

NEVER = 2**64 - 1

# struct twins of abi.Block / abi.Key / abi.LpmKey (tests/test_blocktable.py checks the
# layouts agree with the ctypes mirror, which tests/test_abi.py checks against the C header).
BLOCK = struct.Struct("=QQII")  # expires (CLOCK_MONOTONIC ns), drops, reason, origin
KEY = struct.Struct(">QQ")  # the 16-byte address, as two big-endian halves
LPM_KEY = struct.Struct("=I8s8s")  # prefix length (host order), then the address


class KernelRow(NamedTuple):
    """One entry of the block table or the CIDR trie, as the index takes it."""

    source: SourceKey
    expires: float  # Unix time (written: inf is never; read: cut to the longest block)
    drops: int
    reason: str
    origin: str


def block_map_fds(dp: object) -> tuple[int, int]:
    """The fds of a loaded DataPlane's block hash map and CIDR trie."""
    return dp.table("blocks").map_fd, dp.table("cidr_blocks").map_fd  # type: ignore[attr-defined]


def is_hashed(source: int, ipv6_prefix: int) -> bool:
    """Whether a source lives in the hash map (an IPv4 address, an IPv6 /prefix) or the trie."""
    plen = source & 0xFF
    if (source >> 40) == 0xFFFF and plen >= 96:
        return plen == 128
    return plen == ipv6_prefix


class _Clock:
    """The kernel's CLOCK_MONOTONIC ns against Unix time, read once per bulk call."""

    def __init__(self) -> None:
        now = time.time()
        self.offset = now - time.clock_gettime_ns(time.CLOCK_MONOTONIC) / 1e9
        self.latest = now + MAX_MINUTES * 60

    def unix(self, mono: int) -> float:
        """Read back cut to the longest block from now, as the loader's to_unix: "never" (the
        maximum) or any far value written by an older version or by hand is harmless."""
        return min(mono / 1e9 + self.offset, self.latest)

    def mono(self, unix: float) -> int:
        if unix == math.inf:
            return NEVER
        return max(0, min(int((unix - self.offset) * 1e9), NEVER))


def read_blocks(blocks_fd: int, cidr_fd: int, ipv6_prefix: int) -> Iterator[KernelRow]:
    """Every entry of both tables, expired ones included (the sweep removes those)."""
    clock = _Clock()
    reasons, origins = abi.REASONS, abi.ORIGINS
    unpack_block = BLOCK.iter_unpack
    key_size, value_size = ctypes.sizeof(abi.Key), ctypes.sizeof(abi.Block)
    v6 = ipv6_prefix
    offset, latest = clock.offset, clock.latest
    for chunk in bpfsys.map_walk(blocks_fd, key_size, value_size):
        for (hi, lo), (exp, drops, reason, origin) in zip(
                KEY.iter_unpack(chunk.keys), unpack_block(chunk.values), strict=True):
            if hi == 0 and lo >> 32 == 0xFFFF:
                source = SourceKey(lo << 8 | 128)
            else:
                source = SourceKey((hi << 64 | lo) << 8 | v6)
            yield KernelRow(source, min(exp / 1e9 + offset, latest), drops,
                            reasons.get(reason, "?"), origins.get(origin, "?"))
    key_size = ctypes.sizeof(abi.LpmKey)
    for chunk in bpfsys.map_walk(cidr_fd, key_size, value_size):
        for (plen, hi, lo), (exp, drops, reason, origin) in zip(
                LPM_KEY.iter_unpack(chunk.keys), unpack_block(chunk.values), strict=True):
            addr = int.from_bytes(hi + lo, "big")
            yield KernelRow(SourceKey.of(addr, plen), clock.unix(exp), drops,
                            reasons.get(reason, "?"), origins.get(origin, "?"))


def chunk_drops(keys: bytes, values: bytes, lpm: bool, ipv6_prefix: int) -> dict[int, int]:
    """The source keys with drops in one chunk of a walk, and their drops: only those
    entries are decoded (the drops are every third u64 of the values), so a walk of a
    million blocks makes no object per block."""
    drops = memoryview(values).cast("Q")[1::3]  # BLOCK: expires, drops, reason+origin
    out: dict[int, int] = {}
    for i, d in enumerate(drops):
        if not d:
            continue
        if lpm:
            plen, hi, lo = LPM_KEY.unpack_from(keys, i * LPM_KEY.size)
            out[int(SourceKey.of(int.from_bytes(hi + lo, "big"), plen))] = d
        else:
            hi, lo = KEY.unpack_from(keys, i * KEY.size)
            out[lo << 8 | 128 if hi == 0 and lo >> 32 == 0xFFFF
                else (hi << 64 | lo) << 8 | ipv6_prefix] = d
    return out


def read_drops(blocks_fd: int, cidr_fd: int, ipv6_prefix: int) -> dict[int, int]:
    """Drops by source for the blocks that have any: the drop counts `status` shows,
    read in a worker thread without a row per block (read_blocks makes a million)."""
    out: dict[int, int] = {}
    value_size = ctypes.sizeof(abi.Block)
    for fd, key_size, lpm in ((blocks_fd, ctypes.sizeof(abi.Key), False),
                              (cidr_fd, ctypes.sizeof(abi.LpmKey), True)):
        for chunk in bpfsys.map_walk(fd, key_size, value_size):
            out.update(chunk_drops(chunk.keys, chunk.values, lpm, ipv6_prefix))
    return out


def write_blocks(blocks_fd: int, cidr_fd: int, rows: Iterable[KernelRow],
                 ipv6_prefix: int,
                 mark: Callable[[list[bytes]], None] | None = None,
                 meanwhile: Callable[[], object] | None = None) -> tuple[int, int]:
    """Put blocks into the tables (drops start at 0): (hashed, ranges) written.

    With ``meanwhile``, the batch syscalls (which release the GIL) run in a thread of
    their own once the buffers are packed, and ``meanwhile`` runs on the caller's
    thread beside them (the start builds its index so); it runs even when the write
    fails, and the write's error is raised after it.

    ``mark`` (DataPlane.filter_mark) gets the hashed keys BEFORE the write: without
    their block-filter bits an armed program never looks the new entries up. The
    caller still owes the trie's count in the config when ranges were written,
    DataPlane.blocks_changed when an entry may have been rewritten (the blocked-source
    caches), and, for sources that may have live counters, reset_source.
    """
    clock = _Clock()
    offset, never = clock.offset, NEVER
    reason_ids, origin_ids = abi.REASON_IDS, abi.ORIGIN_IDS
    hkeys: list[bytes] = []
    hvals: list[bytes] = []
    lkeys: list[bytes] = []
    lvals: list[bytes] = []
    pack_block, inf = BLOCK.pack, math.inf
    for source, expires, _drops, reason, origin in rows:
        try:
            mono = never if expires == inf else max(0, min(int((expires - offset) * 1e9), never))
            value = pack_block(mono, 0, reason_ids[reason], origin_ids[origin])
        except KeyError as e:
            raise ValueError(f"block of {source}: unknown reason or origin {e}") from None
        plen = source & 0xFF
        addr16 = (source >> 8).to_bytes(16, "big")
        if plen == 128 and (source >> 40) == 0xFFFF or is_hashed(source, ipv6_prefix):
            hkeys.append(addr16)
            hvals.append(value)
        else:
            lkeys.append(plen.to_bytes(4, sys.byteorder) + addr16)
            lvals.append(value)
    nh, nl = len(hkeys), len(lkeys)
    if mark is not None and hkeys:
        mark(hkeys)
    hkeys_b, hvals_b = b"".join(hkeys), b"".join(hvals)
    del hkeys, hvals
    lkeys_b, lvals_b = b"".join(lkeys), b"".join(lvals)

    def update() -> None:
        bpfsys.map_update_batch(blocks_fd, hkeys_b, hvals_b, nh)
        bpfsys.map_update_batch(cidr_fd, lkeys_b, lvals_b, nl)
    if meanwhile is None:
        update()
        return nh, nl
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynscreen-kernel-write") as pool:
        writing = pool.submit(update)
        try:
            meanwhile()
        finally:
            writing.result()  # the write's error, if any (after meanwhile's)
    return nh, nl


def delete_blocks(blocks_fd: int, cidr_fd: int, sources: Iterable[int],
                  ipv6_prefix: int) -> int:
    """Remove blocks by source (absent ones are skipped): how many were removed. The
    caller owes DataPlane.blocks_changed after (else a CPU's blocked-source cache keeps
    dropping a removed source)."""
    hkeys, lkeys = bytearray(), bytearray()
    nh = nl = 0
    for s in sources:
        addr16 = (int(s) >> 8).to_bytes(16, "big")
        if is_hashed(s, ipv6_prefix):
            hkeys += addr16
            nh += 1
        else:
            lkeys += (s & 0xFF).to_bytes(4, sys.byteorder) + addr16
            nl += 1
    return (bpfsys.map_delete_batch(blocks_fd, bytes(hkeys), nh)
            + bpfsys.map_delete_batch(cidr_fd, bytes(lkeys), nl))


class KernelBlockTable:
    """The block tables as the block list uses them: single changes through the loader
    (which resets the source's counters and keeps the trie count), bulk ones batched.

    The bulk calls take and give ``KernelRow``s; ``read_rows`` walks both tables with
    BPF_MAP_LOOKUP_BATCH and may run in a worker thread (the map fds are plain fds).
    """

    def __init__(self, dp: object) -> None:
        self.dp = dp
        self.ipv6_prefix: int = dp.ipv6_prefix  # type: ignore[attr-defined]
        self.fds = block_map_fds(dp)

    def add_block(self, net: object, until: float, reason: str, origin: str) -> None:
        self.dp.add_block(net, until, reason, origin)  # type: ignore[attr-defined]

    def remove_block(self, net: object) -> bool:
        return bool(self.dp.remove_block(net))  # type: ignore[attr-defined]

    def read_rows(self) -> Iterator[KernelRow]:
        return read_blocks(*self.fds, self.ipv6_prefix)

    def read_drops(self) -> dict[int, int]:
        out = read_drops(*self.fds, self.ipv6_prefix)
        cached = getattr(self.dp, "cached_drops", None)
        if cached is not None:  # drops the blocked-source caches have not handed over yet
            pending = cached()
            for lpm in (False, True):  # source keys (16 bytes), range keys (20)
                part = {k: d for k, d in pending.items() if (len(k) == 20) == lpm}
                if not part:
                    continue
                keys = b"".join(part)
                values = b"".join(BLOCK.pack(0, d, 0, 0) for d in part.values())
                for source, d in chunk_drops(keys, values, lpm, self.ipv6_prefix).items():
                    if source in out:
                        out[source] += d
        return out

    def _changed(self) -> None:
        changed = getattr(self.dp, "blocks_changed", None)
        if changed is not None:
            changed()

    def write_rows(self, rows: list[KernelRow],
                   meanwhile: Callable[[], object] | None = None) -> None:
        """Write in bulk; raises loader.BlockTableFull when the hash map refuses for room.
        ``meanwhile`` runs beside the batch syscalls (write_blocks)."""
        try:
            _, ranges = write_blocks(*self.fds, rows, self.ipv6_prefix,
                                     getattr(self.dp, "filter_mark", None), meanwhile)
        except bpfsys.BpfError as e:
            from dynscreen.control.dataplane.loader import BlockTableFull

            if e.errno in (errno.E2BIG, errno.ENOSPC):  # the hash map or the trie is full
                raise BlockTableFull(f"the block table is full (max_blocks): {e}") from None
            raise
        finally:
            self._changed()  # entries may have been rewritten (even by a failed batch)
        if ranges:
            self.dp._sync_cidr_count()  # type: ignore[attr-defined]

    def delete_rows(self, sources: list[int]) -> int:
        try:
            n = delete_blocks(*self.fds, sources, self.ipv6_prefix)
        finally:
            self._changed()
        if any(not is_hashed(s, self.ipv6_prefix) for s in sources):
            self.dp._sync_cidr_count()  # type: ignore[attr-defined]
        return n
