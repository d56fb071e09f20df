"""Bulk reads and writes of the kernel's block tables (batch syscalls) against real maps.

Run as root under `flock /tmp/dynscreen-netns.lock` (CI=true: no skipping).
"""

from __future__ import annotations

import ctypes
import math
import struct
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

from dynscreen.control.config import MAX_MINUTES
from dynscreen.control.dataplane import abi, bpfsys
from dynscreen.control.dataplane import blocktable as bt
from dynscreen.control.sourcekey import SourceKey

from conftest import require_bpf
from packets import v4_syn, v6_syn

pytestmark = pytest.mark.root

XDP_DROP, XDP_PASS = 1, 2
ADOPT_N = 100_000


def K(text: str) -> SourceKey:
    return SourceKey.parse(text)


def fds(dp) -> tuple[int, int]:  # noqa: ANN001
    return bt.block_map_fds(dp)


def kernel_view(dp) -> dict[SourceKey, tuple[str, str, int, bool]]:  # noqa: ANN001
    """The loader's own per-key reading (bcc), as the reference."""
    return {SourceKey.from_network(b.source): (b.reason, b.origin, b.drops, b.cidr)
            for b in dp.list_blocks(include_expired=True)}


def test_struct_layouts_agree_with_the_ctypes_mirror() -> None:
    assert bt.BLOCK.size == ctypes.sizeof(abi.Block)
    assert [abi.Block.expires.offset, abi.Block.drops.offset, abi.Block.reason.offset,
            abi.Block.origin.offset] == [0, 8, 16, 20]
    assert bt.KEY.size == ctypes.sizeof(abi.Key)
    assert bt.LPM_KEY.size == ctypes.sizeof(abi.LpmKey) and abi.LpmKey.addr.offset == 4
    b = abi.Block(expires=1, drops=2, reason=3, origin=4)
    assert bt.BLOCK.unpack(bytes(b)) == (1, 2, 3, 4)
    assert bt.KEY.unpack(bytes(abi.key_for(IPv4Network("192.0.2.1/32")))) == (
        0, (0xFFFF << 32) | 0xC0000201)


def test_read_what_the_loader_wrote(dp) -> None:  # noqa: ANN001
    now = time.time()
    dp.add_blocks([
        (IPv4Network("192.0.2.1/32"), now + 600, "connections", "kernel"),
        (IPv4Network("192.0.2.2/32"), now + 60.5, "rsets", "logs"),
        (IPv6Network("2001:db8:1:2::/64"), now + 3600, "auth_failures", "logs"),
        (IPv4Network("198.51.100.0/24"), now + 120, "manual", "manual"),
        (IPv6Network("2001:db8:ff::/48"), now + 120, "manual", "file"),
    ])
    dp.add_block(IPv4Network("192.0.2.3/32"), now - 5, "rsets", "logs")  # expired, still there
    got = {r.source: r for r in bt.read_blocks(*fds(dp), dp.ipv6_prefix)}
    assert {k: (r.reason, r.origin, r.drops, not bt.is_hashed(k, 64)) for k, r in got.items()} \
        == kernel_view(dp)
    assert abs(got[K("192.0.2.2")].expires - (now + 60.5)) < 0.01
    assert got[K("192.0.2.3")].expires < now
    assert got[K("2001:db8:ff::/48")].reason == "manual"


def test_written_blocks_are_enforced_and_removed(dp) -> None:  # noqa: ANN001
    now = time.time()
    rows = [
        bt.KernelRow(K("198.51.100.7"), now + 600, 0, "connections", "logs"),
        bt.KernelRow(K("2001:db8:1:2::/64"), math.inf, 0, "manual", "manual"),
        bt.KernelRow(K("203.0.113.0/24"), now + 600, 0, "manual", "manual"),
    ]
    assert bt.write_blocks(*fds(dp), rows, dp.ipv6_prefix, dp.filter_mark) == (2, 1)
    dp._sync_cidr_count()  # what the caller owes after writing ranges (see write_blocks)
    assert kernel_view(dp) == {
        K("198.51.100.7"): ("connections", "logs", 0, False),
        K("2001:db8:1:2::/64"): ("manual", "manual", 0, False),
        K("203.0.113.0/24"): ("manual", "manual", 0, True),
    }
    # "never" is written as the table's maximum and read back cut to the longest block
    longest = MAX_MINUTES * 60
    before = time.time()
    never = [b for b in dp.list_blocks() if b.source == IPv6Network("2001:db8:1:2::/64")]
    [row] = [r for r in bt.read_blocks(*fds(dp), dp.ipv6_prefix)
             if r.source == K("2001:db8:1:2::/64")]
    after = time.time()
    assert before + longest <= never[0].expires <= after + longest
    assert before + longest <= row.expires <= after + longest
    run = lambda frame: bpfsys.prog_test_run(dp.prog_fd, frame).retval  # noqa: E731
    assert run(v4_syn("198.51.100.7")) == XDP_DROP
    assert run(v6_syn("2001:db8:1:2::99")) == XDP_DROP
    assert run(v4_syn("203.0.113.50")) == XDP_DROP
    assert run(v4_syn("198.51.100.8")) == XDP_PASS
    removed = bt.delete_blocks(*fds(dp), [K("198.51.100.7"), K("192.0.2.99"),
                                          K("203.0.113.0/24")], dp.ipv6_prefix)
    assert removed == 2
    dp.blocks_changed()  # what the caller owes after removing (see delete_blocks)
    assert run(v4_syn("198.51.100.7")) == XDP_PASS
    assert set(kernel_view(dp)) == {K("2001:db8:1:2::/64")}


def test_delete_skips_missing_keys_inside_a_batch(dp) -> None:  # noqa: ANN001
    now = time.time()
    keys = [SourceKey.from_network(IPv4Address(0xC0000200 + i)) for i in range(50)]
    present = [k for i, k in enumerate(keys) if i % 3 != 2]  # the first and the last are
    bt.write_blocks(*fds(dp), [bt.KernelRow(k, now + 60, 0, "rsets", "logs") for k in present],
                    dp.ipv6_prefix)
    assert bt.delete_blocks(*fds(dp), keys, dp.ipv6_prefix) == len(present) == 34
    assert kernel_view(dp) == {}


def test_batch_walk_with_a_tiny_chunk_grows_past_full_buckets(dp) -> None:  # noqa: ANN001
    """chunk=1: any hash bucket with two entries answers ENOSPC until the chunk grows."""
    now = time.time()
    n = 3000
    keys = [SourceKey.from_network(IPv4Address(0x0A000000 + i)) for i in range(n)]
    bt.write_blocks(*fds(dp), [bt.KernelRow(k, now + 60, 0, "rsets", "logs") for k in keys],
                    dp.ipv6_prefix)
    blocks_fd, _ = fds(dp)
    chunks = list(bpfsys.map_lookup_batch(blocks_fd, 16, 24, chunk=1))
    got = [k for c in chunks for k in struct.iter_unpack(">QQ", c.keys)]
    assert sorted(lo for _hi, lo in got) == sorted((int(k) >> 8) & (2**64 - 1) for k in keys)


def test_key_by_key_walk_agrees_with_the_batch_walk(dp) -> None:  # noqa: ANN001
    now = time.time()
    keys = [SourceKey.from_network(IPv4Address(0x0A000000 + i)) for i in range(700)]
    bt.write_blocks(*fds(dp), [bt.KernelRow(k, now + i, 0, "rsets", "logs")
                               for i, k in enumerate(keys)], dp.ipv6_prefix)
    blocks_fd, _ = fds(dp)

    def pairs(chunks: Iterator[bpfsys.MapChunk]) -> set[tuple[bytes, bytes]]:
        return {(c.keys[i * 16:(i + 1) * 16], c.values[i * 24:(i + 1) * 24])
                for c in chunks for i in range(c.count)}

    batch = pairs(bpfsys.map_lookup_batch(blocks_fd, 16, 24, chunk=64))
    assert len(batch) == 700
    assert pairs(bpfsys.map_walk_keys(blocks_fd, 16, 24, chunk=64)) == batch


def test_the_trie_is_read_batched_or_key_by_key(dp, monkeypatch) -> None:  # noqa: ANN001
    """Tries have batch calls only where the kernel gives them the generic ones; without,
    the walk goes key by key, with the same result."""
    now = time.time()
    rows = [bt.KernelRow(SourceKey.of((0xFFFF << 32) | (10 << 24 | i << 8), 120), now + 60, 0,
                         "manual", "manual") for i in range(40)]
    assert bt.write_blocks(*fds(dp), rows, dp.ipv6_prefix) == (0, 40)
    want = {r.source for r in rows}
    assert {r.source for r in bt.read_blocks(*fds(dp), dp.ipv6_prefix)} == want
    _, cidr_fd = fds(dp)
    lpm = ctypes.sizeof(abi.LpmKey)
    assert sum(c.count for c in bpfsys.map_walk_keys(cidr_fd, lpm, 24)) == 40

    calls = []

    def no_batch(*args: object) -> int:  # an older kernel: ENOTSUPP for this map type
        calls.append(args)
        ctypes.set_errno(524)
        return -524

    monkeypatch.setattr(bpfsys._libbpf(), "bpf_map_lookup_batch", no_batch)
    with pytest.raises(bpfsys.BatchUnsupported):
        next(bpfsys.map_lookup_batch(cidr_fd, lpm, 24))
    assert {r.source for r in bt.read_blocks(*fds(dp), dp.ipv6_prefix)} == want
    assert len(calls) == 3  # one refused try per walk (hash and trie), one above
    monkeypatch.undo()
    assert bt.delete_blocks(*fds(dp), [r.source for r in rows], dp.ipv6_prefix) == 40
    assert kernel_view(dp) == {}


def test_adoption_of_100k_blocks() -> None:
    """A table of 100,000 blocks written by the loader (bcc) reads back whole and exact."""
    require_bpf()
    from dynscreen.control.dataplane.loader import DataPlane

    dp = DataPlane(pin_path=None, max_blocks=ADOPT_N + 1000, max_tracked=1024, tracepoint=False)
    dp.load()
    try:
        now = time.time()
        reasons = ("connections", "simultaneous", "auth_failures", "failed_rcpts", "rsets")
        origins = ("kernel", "logs")
        want = {}
        batch = []
        for i in range(ADOPT_N):
            if i % 10 == 0:
                net = IPv6Network(((0x20010DB8 << 96) | i << 64, 64))
            else:
                net = IPv4Network(0x0A000000 + i)
            until = now + 60 + (i % 5000) * 0.25
            reason, origin = reasons[i % 5], origins[i % 2]
            batch.append((net, until, reason, origin))
            want[SourceKey.from_network(net)] = (until, reason, origin)
        dp.add_blocks(batch)
        got = list(bt.read_blocks(*fds(dp), dp.ipv6_prefix))
        assert len(got) == ADOPT_N
        for r in got:
            until, reason, origin = want.pop(r.source)
            assert (r.reason, r.origin, r.drops) == (reason, origin, 0)
            assert abs(r.expires - until) < 0.01
        assert want == {}
    finally:
        dp.close()



def test_drops_are_read_without_a_row_per_block() -> None:
    """chunk_drops decodes only the entries with drops, to the same keys as read_blocks."""
    v4, v6 = K("192.0.2.7"), K("2001:db8:1:2::/64")
    keys = b"".join(bt.KEY.pack((int(k) >> 8) >> 64, (int(k) >> 8) & (2**64 - 1))
                    for k in (v4, v6, K("192.0.2.8")))
    values = b"".join(bt.BLOCK.pack(123, d, 1, 2) for d in (5, 7, 0))
    assert bt.chunk_drops(keys, values, False, 64) == {int(v4): 5, int(v6): 7}
    rng = K("198.51.100.0/24")
    lkey = bt.LPM_KEY.pack(rng.plen, ((int(rng) >> 8) >> 64).to_bytes(8, "big"),
                           ((int(rng) >> 8) & (2**64 - 1)).to_bytes(8, "big"))
    assert bt.chunk_drops(lkey, bt.BLOCK.pack(1, 9, 0, 0), True, 64) == {int(rng): 9}


def test_the_index_is_built_beside_the_batch_write(dp, monkeypatch) -> None:  # noqa: ANN001
    """``meanwhile`` (the start's index build) runs on the caller's thread while the
    batch syscalls run in another; the filter bits are set before either; a refused
    write still lets ``meanwhile`` finish, then raises."""
    import threading

    from dynscreen.control.dataplane.loader import BlockTableFull

    now = time.time()
    rows = [bt.KernelRow(K("198.51.100.177"), now + 600, 0, "connections", "logs")]
    table = bt.KernelBlockTable(dp)
    seen: dict[str, object] = {}
    calls: list[tuple[int, threading.Thread]] = []
    real = bpfsys.map_update_batch

    def update(fd, keys, values, count):  # noqa: ANN001, ANN202
        calls.append((fd, threading.current_thread()))
        return real(fd, keys, values, count)
    monkeypatch.setattr(bt.bpfsys, "map_update_batch", update)
    table.write_rows(rows, lambda: seen.setdefault("meanwhile", threading.current_thread()))
    assert seen["meanwhile"] is threading.current_thread()
    main = threading.current_thread()
    filter_fd = dp.table("block_filter").map_fd
    # the filter bits (when one was clear) first, on the caller's thread; the entries
    # after them, on another
    writes = [t for fd, t in calls if fd == table.fds[0]]
    assert writes and all(t is not main for t in writes)
    first = next(i for i, (fd, _) in enumerate(calls) if fd == table.fds[0])
    assert all(fd == filter_fd and t is main for fd, t in calls[:first])
    run = lambda frame: bpfsys.prog_test_run(dp.prog_fd, frame).retval  # noqa: E731
    assert run(v4_syn("198.51.100.177")) == XDP_DROP

    def full(fd, keys, values, count):  # noqa: ANN001, ANN202
        if fd == table.fds[0]:
            raise bpfsys.BpfError(7, "BPF_MAP_UPDATE_BATCH: Argument list too long")
        return real(fd, keys, values, count)
    monkeypatch.setattr(bt.bpfsys, "map_update_batch", full)
    ran: list[bool] = []
    with pytest.raises(BlockTableFull):
        table.write_rows([bt.KernelRow(K("198.51.100.8"), now + 600, 0, "manual", "manual")],
                         lambda: ran.append(True))
    assert ran == [True]
