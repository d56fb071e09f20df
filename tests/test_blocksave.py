"""The fast block-file writer: byte for byte what blockfile.format_block_file writes."""

from __future__ import annotations

import asyncio
import random
import stat
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from dynscreen.control.blockfile import BlockEntry, BlockFile, format_block_file
from dynscreen.control.blockindex import BlockIndex, IndexSnapshot
from dynscreen.control.blocksave import file_order, render, save_snapshot
from dynscreen.control.sourcekey import SourceKey

T0 = 1_790_000_000.0
REASONS = ("connections", "simultaneous", "auth_failures", "failed_rcpts", "rsets", "manual")
ORIGINS = ("kernel", "logs", "manual", "file")
NOTES = (None, None, None, "ticket 42", 'quote " and \\ back', "line\u2028break\x85",
         "ünïcödé", "# not a comment", "")


def entries_of(snap: IndexSnapshot) -> list[BlockEntry]:
    return [BlockEntry(SourceKey(k).network(), exp, reason, note, origin)
            for k, exp, reason, origin, note in snap.rows()]


def random_index(n: int, seed: int) -> BlockIndex:
    rnd = random.Random(seed)
    ix = BlockIndex(lambda: T0)
    while len(ix) < n:
        kind = rnd.random()
        if kind < 0.6:
            key = SourceKey.from_network(IPv4Address(rnd.getrandbits(32)))
        elif kind < 0.75:
            key = SourceKey.of((0xFFFF << 32) | rnd.getrandbits(32), 96 + rnd.randint(0, 32))
        elif kind < 0.9:
            key = SourceKey.of(rnd.getrandbits(128), 64)
        else:
            key = SourceKey.of(rnd.getrandbits(rnd.choice([16, 128])), rnd.randint(0, 128))
        # whole seconds, milliseconds, already expired, a fraction of a minute left
        left = rnd.choice([600, 0.001, -30, 3, 59.95, 86400 * 3, rnd.uniform(-100, 10_000)])
        ix.add(key, round(T0 + left, 3), rnd.choice(REASONS), rnd.choice(ORIGINS),
               note=rnd.choice(NOTES))
    return ix


def test_empty_file_is_the_header_alone() -> None:
    snap = BlockIndex(lambda: T0).snapshot()
    assert "".join(render(snap, T0)) == format_block_file([], T0)


@pytest.mark.parametrize("seed", range(6))
def test_same_bytes_as_the_current_serializer(seed: int) -> None:
    snap = random_index(3000, seed).snapshot()
    now = T0 + seed * 17.3
    assert "".join(render(snap, now)) == format_block_file(entries_of(snap), now)


def test_same_bytes_with_uniform_columns() -> None:
    """Whole-second expiries only (the time column is 20 wide) and one reason."""
    ix = BlockIndex(lambda: T0)
    for i in range(40):
        ix.add(SourceKey.from_network(IPv6Address((0x20010DB8 << 96) | i << 64)), T0 + 60 * i,
               "rsets", "logs")
    snap = ix.snapshot()
    assert "".join(render(snap, T0)) == format_block_file(entries_of(snap), T0)


def test_chunks_join_to_the_same_text(monkeypatch: pytest.MonkeyPatch) -> None:
    import dynscreen.control.blocksave as blocksave

    monkeypatch.setattr(blocksave, "CHUNK_LINES", 7)
    snap = random_index(100, 1).snapshot()
    chunks = list(render(snap, T0))
    assert len(chunks) > 10
    assert "".join(chunks) == format_block_file(entries_of(snap), T0)


def test_file_order_is_ipv4_then_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    import dynscreen.control.blocksave as blocksave

    monkeypatch.setattr(blocksave, "SORT_SLICE", 16)  # many slices to merge
    snap = random_index(500, 3).snapshot()
    keys = list(file_order(snap.entries))
    nets = [SourceKey(k).network() for k in keys]
    assert nets == sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))


def test_a_snapshot_made_in_steps_is_written_in_file_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Many parts (changes between the steps move keys to the last), each sorted in
    slices: the merge of the parts' runs gives the same text as the whole sorted."""
    import dynscreen.control.blocksave as blocksave

    monkeypatch.setattr(blocksave, "SORT_SLICE", 16)
    ix = random_index(600, 7)
    olds = list(ix.sources())
    builder = ix.snapshot_builder(chunk=40)
    step = 0
    while (snap := builder.step()) is None:
        step += 1
        ix.add(SourceKey.from_network(IPv4Address(0x0A000000 + step)), T0 + 60 * step, "manual",
               "manual")
        ix.add(SourceKey(olds[step]), T0 + 7, "rsets", "file")  # re-made: moves to the end
        ix.remove(SourceKey(olds[-step]))
    assert len(snap.parts) > 10 and len(snap) == len(ix)
    assert "".join(render(snap, T0)) == format_block_file(entries_of(snap), T0)


def test_save_writes_atomically_a_file_the_parser_reads_back(tmp_path: Path) -> None:
    ix = random_index(400, 5)
    snap = ix.snapshot()
    path = tmp_path / "state" / "blocks.dat"
    digest = save_snapshot(path, snap, T0)
    import hashlib

    data = path.read_bytes()
    assert hashlib.sha256(data).digest() == digest
    assert data == format_block_file(entries_of(snap), T0).encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # state files are private
    assert [p.name for p in path.parent.iterdir()] == ["blocks.dat"]  # no temp file left
    loaded = {(e.net, e.expires, e.reason, e.note or None, e.source)
              for e in BlockFile(path).load()}
    assert loaded == {(e.net, e.expires, e.reason, e.note or None, e.source)
                      for e in entries_of(snap)}


def test_save_runs_in_a_worker_thread_while_the_index_changes(tmp_path: Path) -> None:
    """The snapshot is private: the loop may change the index while the file is written."""
    ix = random_index(2000, 9)
    snap = ix.snapshot()
    want = format_block_file(entries_of(snap), T0).encode()
    path = tmp_path / "blocks.dat"

    async def main() -> int:
        task = asyncio.create_task(asyncio.to_thread(save_snapshot, path, snap, T0))
        changes = 0
        while not task.done():
            ix.add(SourceKey.from_network(IPv4Address(changes)), T0 + 1, "rsets", "logs")
            for b in ix.newest(5):
                ix.remove(b.source)
            changes += 1
            await asyncio.sleep(0)
        await task
        return changes

    changes = asyncio.run(main())
    assert changes > 0
    assert path.read_bytes() == want


def test_never_expiring_blocks_are_refused() -> None:
    ix = BlockIndex(lambda: T0)
    ix.add(SourceKey.parse("192.0.2.1"), float("inf"), "manual", "manual")
    with pytest.raises(ValueError, match="without expiry"):
        "".join(render(ix.snapshot(), time.time()))
