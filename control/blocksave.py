"""The block file rendered from an index snapshot, fast and off the event loop.

``blockfile.format_block_file`` builds a ``BlockEntry`` and an ipaddress
network per block and the whole text in memory: fine for a few thousand
blocks, seconds and hundreds of MB for a million. This renders the same bytes
(tests/test_blocksave.py holds it to that) from a ``BlockIndex.snapshot()``:
int keys sorted at C speed, address text without ipaddress objects for IPv4,
each expiry second formatted once, and the text produced in chunks, so the
file never sits in memory whole.

Threading: a snapshot is a private copy, so ``save_snapshot`` may run in a
worker thread (``asyncio.to_thread``) while the loop keeps changing the
index; the GIL is handed back every few ms, so the loop stalls no longer
than that. The daemon decides when (``generation`` moved, at most every few
seconds, always at stop) and keeps ``BlockFile.edited()``'s guard: an unread
edit is never written over.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path

from dynscreen.control.atomicfile import FILE_MODE, write_atomic_chunks
from dynscreen.control.blockfile import HEADER, _note_text
from dynscreen.control.blockindex import IndexSnapshot
from dynscreen.control.sourcekey import key_text

_V4_FIRST = (0xFFFF << 32) << 8 | 96  # 0.0.0.0/0: every IPv4 key sorts between these two
_V4_LAST = ((0xFFFF << 32) | 0xFFFFFFFF) << 8 | 128
_EXP_SHIFT = 59  # blockindex's packing: expires ms above bit 59, reason id at 8, origin at 0
_NEVER_MS = (1 << 43) - 1
CHUNK_LINES = 16384
SORT_SLICE = 8192  # keys per C sort: a few ms of GIL each, even on a loaded machine


def file_order(keys: Iterable[int]) -> Iterator[int]:
    """The file's order: IPv4 first, by address then prefix; then IPv6 alike.

    Sorted in slices merged by heapq.merge rather than by one sorted() call: a
    C sort of a million keys holds the GIL for about a second, which would stall
    the event loop while the save runs in a worker thread.
    """
    v4: list[int] = []
    v6: list[int] = []
    for k in keys:
        (v4 if _V4_FIRST <= k <= _V4_LAST else v6).append(k)
    for part in (v4, v6):
        runs = [sorted(part[i:i + SORT_SLICE]) for i in range(0, len(part), SORT_SLICE)]
        yield from heapq.merge(*runs)


def _runs(part: dict[int, int]) -> Iterator[list[int]]:
    """The part's keys in sorted runs of at most SORT_SLICE (the GIL for a few ms each)."""
    keys = list(part)
    for i in range(0, len(keys), SORT_SLICE):
        yield sorted(keys[i:i + SORT_SLICE])


def _pairs(part: dict[int, int], run: list[int], lo: int, hi: int) -> Iterator[tuple[int, int]]:
    for i in range(lo, hi):
        k = run[i]
        yield k, part[k]


def snapshot_order(snap: IndexSnapshot) -> Iterator[tuple[int, int]]:
    """The snapshot's (key, value) pairs in file order, made one at a time.

    Only the keys are sorted (runs of references to ints the snapshot already
    holds: 8 bytes a block), each value looked up in its own part as the merge
    reaches it, so a save of a million blocks makes no million pairs at once.
    The parts' keys are unique (the builder keeps a key in its newest part only).
    """
    runs = [(part, run, bisect_left(run, _V4_FIRST), bisect_right(run, _V4_LAST))
            for part in snap.parts for run in _runs(part)]
    # IPv4 first (the mapped range sits inside the IPv6 space), then IPv6 below and above it
    yield from heapq.merge(*(_pairs(part, run, lo, hi) for part, run, lo, hi in runs))
    yield from heapq.merge(*(chain(_pairs(part, run, 0, lo), _pairs(part, run, hi, len(run)))
                             for part, run, lo, hi in runs))


class _Times:
    """blockfile's format_time, each second formatted once."""

    def __init__(self) -> None:
        self.seconds: dict[int, str] = {}

    def text(self, ms: int) -> str:
        if ms == _NEVER_MS:
            raise ValueError("a block without expiry has no place in the block file")
        whole, frac = divmod(ms, 1000)
        base = self.seconds.get(whole)
        if base is None:
            base = self.seconds[whole] = datetime.fromtimestamp(whole, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S")
        return f"{base}.{frac:03d}Z" if frac else f"{base}Z"


def render(snap: IndexSnapshot, now: float) -> Iterator[str]:
    """The block file's text for the snapshot, in chunks; the same text as
    ``format_block_file`` of the same blocks."""
    yield HEADER
    if not len(snap):
        return
    reasons, origins, notes = snap.reasons, snap.origins, snap.notes
    # Column widths: the first pass measures, the second writes.
    w_addr = max(len(key_text(k)) for k, _ in snap.items())
    w_time = 24 if any((v >> _EXP_SHIFT) % 1000 for _, v in snap.items()) else 20
    used = {v >> 8 & 0xFF for _, v in snap.items()}
    w_reason = max(len(reasons[r]) for r in used)
    times = _Times()
    yield "\n"
    pad = [f"{name:<{w_reason}}" for name in reasons]
    plain = [f"from {name}\n" for name in origins]
    left_text: dict[float, str] = {}
    lines: list[str] = []
    for k, v in snapshot_order(snap):
        ms = v >> _EXP_SHIFT
        # blockfile._minutes_left, each distinct tenth of a minute formatted once
        left = ms / 1000 - now
        if left <= 0:
            minutes = "expired"
        else:
            tenths = round(left / 60, 1)
            minutes = left_text.get(tenths)  # type: ignore[assignment]
            if minutes is None:
                minutes = left_text[tenths] = \
                    f"{max(tenths, 0.1):.1f}".removesuffix(".0") + " min left"
        note = notes.get(k)
        how = plain[v & 0xFF] if note is None else f"{origins[v & 0xFF]}: {_note_text(note)}\n"
        lines.append(f"{key_text(k):<{w_addr}}  {times.text(ms):<{w_time}}  "
                     f"{pad[v >> 8 & 0xFF]}  # {minutes}, {how}")
        if len(lines) == CHUNK_LINES:
            yield "".join(lines)
            lines.clear()
    if lines:
        yield "".join(lines)


def save_snapshot(path: Path, snap: IndexSnapshot, now: float, mode: int = FILE_MODE) -> bytes:
    """Render and write the file atomically; the SHA-256 of what was written
    (what BlockFile remembers to recognise its own file). Safe in a worker thread."""
    return write_atomic_chunks(Path(path), (c.encode() for c in render(snap, now)), mode)
