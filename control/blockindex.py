"""The daemon's own table of current blocks: every question about blocks answered from memory.

The kernel map stays the enforcement point and what survives a restart, but
it is a poor table to ask: one syscall per entry to walk, no order, no
expiry schedule. This index holds the same blocks, keyed by one typed value,
``SourceKey``, from the kernel key to the CLI's answer:

- ``find(source)`` is one dict probe; ``covering(address)`` (which blocks hold
  an address: its own, its IPv6 /64, a hand-made CIDR range) probes one key per
  prefix length in use, a handful;
- ``sweep(now)`` costs O(expired): blocks sit in one-second buckets of a timer
  wheel whose due seconds are kept in a heap; a block re-made or removed
  leaves its old slot behind, skipped when that bucket comes due (lazy
  deletion);
- ``newest``/``most_dropping``/``select`` serve ``status`` with ``--limit``,
  ``--all`` and the ``--ip``/``--reason``/``--source`` filters: the dict keeps
  blocks in the order they were made, so the newest N are the last N;
- ``count_by_reason`` is kept as blocks come and go.

Memory: an entry is a bare int key (the SourceKey's value) mapping to one int
packing expiry and making time (milliseconds, the block file's resolution),
reason and origin; notes and drop counts sit in side dicts, only for blocks
that have them. About 125-135 bytes a block, key included
(tests/test_blockindex.py holds it under 150): a million blocks in ~125 MB.

Pure: no I/O, no kernel, the clock injected.

How the daemon is meant to use it (issue 12's one-way flow):

1. Start: adopt the kernel's tables (``dataplane.blocktable.read_blocks``,
   batch lookups) with ``load(rows, made_at=now)``; reconcile with the block
   file against ``find`` (put file-only blocks into the kernel first, with
   ``blocktable.write_blocks``, then ``load`` them); ``set_note`` the file's
   notes. Expired rows may be loaded: the first sweep removes them.
2. Every change goes to the kernel first (enforced at once), then here:
   ``add``/``remove``. The engine is told only about blocks it did not make:
   kernel ring-buffer blocks (``origin="kernel"``), manual and file blocks,
   removals and expiries. A block the engine decided (``origin="logs"``) is
   not echoed back to it: the engine already holds it.
3. Once a second: ``sweep(now)``, then delete the returned sources from the
   kernel in one batch (``blocktable.delete_blocks``) and tell the engine.
4. ``generation`` moves on every change: the block-file saver compares it with
   the generation it last wrote, takes a ``snapshot()`` on the loop (a dict
   copy, milliseconds) and renders and writes it in a worker thread
   (``blocksave``).
5. Drop counts live in the kernel: an occasional batch walk (off the loop)
   hands them to ``set_drops``; status shows the last ones read.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple

from dynscreen.control.sourcekey import SourceKey, is_ipv4, key_text, overlaps

# The packed value: origin id (bits 0-7), reason id (8-15), made_at ms (16-58),
# expires ms (59-101; all ones: never).
_MS_BITS = 43
_MS_MASK = (1 << _MS_BITS) - 1
NEVER_MS = _MS_MASK
_MADE_SHIFT = 16
_EXP_SHIFT = _MADE_SHIFT + _MS_BITS


def _ms(t: float) -> int:
    if t == math.inf:
        return NEVER_MS
    ms = round(t * 1000)
    if not 0 <= ms < NEVER_MS:
        raise ValueError(f"time {t!r} is outside 1970 .. 2248")
    return ms


def _time(ms: int) -> float:
    return math.inf if ms == NEVER_MS else ms / 1000


class IndexedBlock(NamedTuple):
    """One block as the index answers: made on demand, only for what is asked."""

    source: SourceKey
    reason: str
    origin: str
    note: str | None
    made_at: float
    expires: float  # Unix time; inf: never
    drops: int

    def to_json(self, now: float) -> dict[str, object]:
        """The shape of a block in ``status --json`` (DESIGN: ip, reason, note, ...)."""
        return {
            "ip": key_text(int(self.source)),
            "reason": self.reason,
            "note": self.note,
            "minutes_left": round(max(0.0, self.expires - now) / 60, 1)
            if self.expires != math.inf else None,
            "drops": self.drops,
            "source": self.origin,
        }


class _Names:
    """Reason or origin names as small ids (at most 256: they are a fixed vocabulary)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}

    def id(self, name: str) -> int:
        i = self.ids.get(name)
        if i is None:
            if len(self.names) == 256:
                raise ValueError(f"too many distinct names for the index: {name!r}")
            i = self.ids[name] = len(self.names)
            self.names.append(name)
        return i


def _id_in(names: tuple[str, ...], name: str | None) -> int | None:
    """A filter's id: None for no filter, -1 for a name nothing has (matches nothing)."""
    if name is None:
        return None
    return names.index(name) if name in names else -1


def _kept(k: int, v: int, rid: int | None, oid: int | None, ip: SourceKey | None) -> bool:
    """Whether the filters (reason id, origin id, overlapping source) keep an entry."""
    return (rid is None or (v >> 8 & 0xFF) == rid) and (oid is None or (v & 0xFF) == oid) \
        and (ip is None or overlaps(int(ip), k))


def _matching(entries: dict[int, int], rid: int | None, oid: int | None,
              ip: SourceKey | None) -> Iterator[tuple[int, int]]:
    """(key, packed value) of the entries the filters keep, newest first: the one walk
    both the live index and its snapshot answer a filtered query with."""
    unfiltered = rid is None and oid is None and ip is None  # --all: no call per block
    for k in reversed(entries):
        v = entries[k]
        if unfiltered or _kept(k, v, rid, oid, ip):
            yield k, v


@dataclass(frozen=True)
class IndexSnapshot:
    """The blocks at one moment, safe to read from another thread while the index moves on.

    ``parts`` are dicts in made order, one after the other: a snapshot made in steps
    keeps one per step (one dict of a million would be resized, a stall of ~50 ms,
    as it grows); ``entries`` joins them (for small tables and tests)."""

    parts: tuple[dict[int, int], ...]
    notes: dict[int, str]
    drops: dict[int, int]
    reasons: tuple[str, ...]
    origins: tuple[str, ...]
    generation: int

    @property
    def entries(self) -> dict[int, int]:
        if len(self.parts) == 1:
            return self.parts[0]
        out: dict[int, int] = {}
        for p in self.parts:
            out.update(p)
        return out

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def items(self) -> Iterator[tuple[int, int]]:
        """(key, packed value) in made order."""
        for p in self.parts:
            yield from p.items()

    def rows(self) -> Iterator[tuple[int, float, str, str, str | None]]:
        """(source int, expires, reason, origin, note) per block, in no particular order."""
        reasons, origins, notes = self.reasons, self.origins, self.notes
        for k, v in self.items():
            yield (k, _time(v >> _EXP_SHIFT), reasons[v >> 8 & 0xFF], origins[v & 0xFF],
                   notes.get(k))

    def json_texts(self, now: float, *, ip: SourceKey | None = None, reason: str | None = None,
                   origin: str | None = None, chunk: int = 8192) -> Iterator[str]:
        """BlockIndex.json_texts over this copy (any ip filter walks the table here)."""
        reasons = [json.dumps(n) for n in self.reasons]
        origins = [json.dumps(n) for n in self.origins]
        notes, drops = self.notes, self.drops
        out = ["["]
        sep = ""
        rid = _id_in(self.reasons, reason)
        oid = _id_in(self.origins, origin)
        found = () if rid == -1 or oid == -1 else (
            kv for p in reversed(self.parts) for kv in _matching(p, rid, oid, ip))
        for k, v in found:
            exp = v >> _EXP_SHIFT
            left = "null" if exp == NEVER_MS else \
                repr(round(max(0.0, exp / 1000 - now) / 60, 1))
            note = notes.get(k)
            out.append(f'{sep}{{"ip": "{key_text(k)}", "reason": {reasons[v >> 8 & 0xFF]}, '
                       f'"note": {"null" if note is None else json.dumps(note)}, '
                       f'"minutes_left": {left}, "drops": {drops.get(k, 0)}, '
                       f'"source": {origins[v & 0xFF]}}}')
            sep = ", "
            if len(out) >= chunk:
                yield "".join(out)
                out.clear()
        out.append("]")
        yield "".join(out)


class BlockIndex:
    """Current blocks by source, with an expiry wheel and the queries `status` needs."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._entries: dict[int, int] = {}  # SourceKey value -> packed value; made order
        self._notes: dict[int, str] = {}
        self._drops: dict[int, int] = {}
        self._reasons = _Names()
        self._origins = _Names()
        self._by_reason: dict[int, int] = {}  # reason id -> blocks
        self._plens: dict[int, int] = {}  # prefix length (128-bit space) -> blocks
        self._buckets: dict[int, list[int]] = {}  # expiry second -> sources (some stale)
        self._due: list[int] = []  # heap of the seconds in _buckets
        self._last_made = 0  # the latest made_at ms inserted: the dict is in made order
        self._ordered = True
        self._rank: list[int] | None = None  # keys by drops, most first (rank_drops)
        self._journals: list[set[int]] = []  # keys changed while a SnapshotBuilder copies
        self.generation = 0

    # ---- changes -----------------------------------------------------------------------

    def add(self, source: SourceKey, expires: float, reason: str, origin: str,
            note: str | None = None, *, made_at: float | None = None) -> IndexedBlock | None:
        """Record a block (replacing the source's previous one, returned).

        made_at defaults to the clock: a re-made block becomes the newest. Given
        and equal to the old block's, the block keeps its place (an edit of its
        expiry or note is no new block).
        """
        k = int(source)
        made = _ms(self.clock() if made_at is None else made_at)
        value = (_ms(expires) << _EXP_SHIFT | made << _MADE_SHIFT
                 | self._reasons.id(reason) << 8 | self._origins.id(origin))
        prev = self._entries.get(k)
        keep_place = prev is not None and (prev >> _MADE_SHIFT & _MS_MASK) == made
        old = self._remove(k, pop=not keep_place)
        self._insert(k, value, keep_place=keep_place)
        if note:
            self._notes[k] = note
        self.generation += 1
        return old

    def load(self, rows: Iterable[tuple[int, float, int, str, str]], *, made_at: float) -> int:
        """Bulk add of (source, expires, drops, reason, origin) rows, the shape of
        ``blocktable.KernelRow``, all made at ``made_at``; returns how many."""
        made_ms = _ms(made_at)
        made = made_ms << _MADE_SHIFT
        if made_ms < self._last_made:
            self._ordered = False
        else:
            self._last_made = made_ms
        rid, oid = self._reasons.id, self._origins.id
        entries, drops, buckets = self._entries, self._drops, self._buckets
        by_reason, plens, journals = self._by_reason, self._plens, self._journals
        low_of: dict[str, dict[str, int]] = {}  # reason -> origin -> the value's low bits
        new_secs: list[int] = []
        n = 0
        inf, never = math.inf, NEVER_MS
        for source, expires, dropped, reason, origin in rows:  # _insert, inlined: 1M rows
            # A key object of the index's own (+ 0 makes a new int): the row's key sits
            # among the row's other objects, freed after the load; kept, it would pin
            # their memory (Python's allocator hands back only wholly free arenas).
            k = int(source) + 0
            if k in entries:
                self._remove(k)
            per = low_of.get(reason)
            if per is None:
                per = low_of[reason] = {}
            low = per.get(origin)
            if low is None:
                low = per[origin] = rid(reason) << 8 | oid(origin)
            ms = never if expires == inf else _ms(expires)
            entries[k] = ms << _EXP_SHIFT | made | low
            r = low >> 8
            by_reason[r] = by_reason.get(r, 0) + 1
            p = k & 0xFF
            plens[p] = plens.get(p, 0) + 1
            if ms != never:
                sec = ms // 1000
                bucket = buckets.get(sec)
                if bucket is None:
                    buckets[sec] = [k]
                    new_secs.append(sec)
                else:
                    bucket.append(k)
            if journals:
                for j in journals:
                    j.add(k)
            if dropped:
                drops[k] = dropped
            n += 1
        due = self._due
        due.extend(new_secs)
        heapq.heapify(due)
        self.generation += 1
        return n

    def remove(self, source: SourceKey) -> IndexedBlock | None:
        """Forget a block; the one removed (None when there was none)."""
        old = self._remove(int(source))
        if old is not None:
            self.generation += 1
        return old

    def set_note(self, source: SourceKey, note: str | None) -> bool:
        """Attach (or clear) a block's note; False when the source is not blocked."""
        k = int(source)
        if k not in self._entries:
            return False
        if note:
            self._notes[k] = note
        else:
            self._notes.pop(k, None)
        for j in self._journals:
            j.add(k)
        self.generation += 1
        return True

    def set_drops(self, counts: Iterable[tuple[int, int]]) -> None:
        """Replace the drop counts with (source, drops) pairs read from the kernel."""
        entries = self._entries
        self._drops = {int(k): d for k, d in counts if d and int(k) in entries}
        self._rank = None

    def replace_drops(self, drops: dict[int, int], rank: list[int]) -> None:
        """Take drop counts made elsewhere (a worker thread: ``rank_drops``), no walk here."""
        self._drops = drops
        self._rank = rank

    def sweep(self, now: float | None = None) -> list[IndexedBlock]:
        """Remove and return the blocks whose expiry has come: O(expired + buckets due)."""
        now_ms = _ms(self.clock() if now is None else now)
        now_s = now_ms // 1000
        due, buckets, entries = self._due, self._buckets, self._entries
        gone: list[IndexedBlock] = []
        while due and due[0] <= now_s:
            sec = heapq.heappop(due)
            keep: list[int] = []
            for k in buckets.pop(sec):
                v = entries.get(k)
                if v is None:
                    continue  # removed since: a stale slot
                exp = v >> _EXP_SHIFT
                if exp // 1000 != sec:
                    continue  # re-made with another expiry: its slot is elsewhere
                if exp <= now_ms:
                    gone.append(self._view(k, v))
                    self._remove(k)
                else:
                    keep.append(k)  # later in the current second
            if keep:
                buckets[sec] = keep
                heapq.heappush(due, sec)
                break
        if gone:
            self.generation += 1
        return gone

    # ---- questions ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, source: object) -> bool:
        return source in self._entries

    def find(self, source: SourceKey) -> IndexedBlock | None:
        """The block of exactly this source, O(1)."""
        v = self._entries.get(int(source))
        return None if v is None else self._view(int(source), v)

    def expiry_of(self, source: int) -> float | None:
        """The block's expiry (inf: never), None when the source is not blocked: no view made."""
        v = self._entries.get(int(source))
        return None if v is None else _time(v >> _EXP_SHIFT)

    def covering(self, source: SourceKey) -> list[IndexedBlock]:
        """The blocks that hold all of ``source`` (an address: its own block, its /64,
        any range around it), longest prefix first; one probe per prefix length in use."""
        k = int(source)
        addr, plen = k >> 8, k & 0xFF
        out = []
        for p in sorted(self._plens, reverse=True):
            if p > plen:
                continue
            cand = (addr >> (128 - p) << (128 - p)) << 8 | p
            v = self._entries.get(cand)
            if v is not None:
                out.append(self._view(cand, v))
        return out

    def sources(self) -> list[int]:
        """Every blocked source as a bare SourceKey int (a copy: safe to walk while changing)."""
        return list(self._entries)

    def wider_than_sources(self, ipv6_prefix: int) -> list[IndexedBlock]:
        """The blocks of ranges holding more than one source (an IPv4 range, an IPv6 range
        wider than the source prefix): none to look for unless such a length is in use."""
        wide = {p for p in self._plens if p < 128 and p != ipv6_prefix
                and not (p > ipv6_prefix and p < 96)}
        if not wide:
            return []
        return [self._view(k, v) for k, v in self._entries.items()
                if k & 0xFF in wide and (k & 0xFF < ipv6_prefix or is_ipv4(k))]

    def next_expiry(self) -> float | None:
        """The second of the earliest pending expiry (a sweep before it finds nothing)."""
        return float(self._due[0]) if self._due else None

    def count_by_reason(self) -> dict[str, int]:
        names = self._reasons.names
        return {names[r]: n for r, n in self._by_reason.items() if n}

    def select(self, *, ip: SourceKey | None = None, reason: str | None = None,
               origin: str | None = None) -> Iterator[IndexedBlock]:
        """The blocks matching the filters, newest first (``status --all``).

        ip matches blocks that overlap it: for an address, the blocks covering it;
        for a range, those inside it too. Without ip (or with a range) this walks
        the table, stopping as soon as the caller stops asking.
        """
        rid = self._reasons.ids.get(reason, -1) if reason is not None else None
        oid = self._origins.ids.get(origin, -1) if origin is not None else None
        if rid == -1 or oid == -1:
            return
        if ip is not None and int(ip) & 0xFF == 128:  # an address: ask by prefix
            hits = sorted(self.covering(ip), key=lambda b: b.made_at, reverse=True)
            yield from (b for b in hits if (reason is None or b.reason == reason)
                        and (origin is None or b.origin == origin))
            return
        self._put_in_order()
        entries = self._entries
        for k, v in _matching(entries, rid, oid, ip):
            yield self._view(k, v)

    def newest(self, n: int, *, ip: SourceKey | None = None, reason: str | None = None,
               origin: str | None = None) -> list[IndexedBlock]:
        """The n most recently made blocks matching the filters (see select)."""
        out: list[IndexedBlock] = []
        if n <= 0:
            return out
        for b in self.select(ip=ip, reason=reason, origin=origin):
            out.append(b)
            if len(out) == n:
                break
        return out

    def most_dropping(self, n: int, *, ip: SourceKey | None = None, reason: str | None = None,
                      origin: str | None = None) -> list[IndexedBlock]:
        """The n blocks with the most drops (the newest first among equals); blocks
        without drops fill the list after those with. O(blocks with drops)."""
        if n <= 0:
            return []
        rid = self._reasons.ids.get(reason, -1) if reason is not None else None
        oid = self._origins.ids.get(origin, -1) if origin is not None else None
        entries = self._entries
        if self._rank is not None:  # ranked off the loop: walk it until n are found
            out = []
            for k in self._rank:
                v = entries.get(k)
                if v is None or not _kept(k, v, rid, oid, ip):
                    continue
                out.append(self._view(k, v))
                if len(out) == n:
                    return out
            if len(self._rank) == len(self._drops):  # every dropping block was ranked
                for b in self.select(ip=ip, reason=reason, origin=origin):
                    if not b.drops:
                        out.append(b)
                        if len(out) == n:
                            break
                return out
        ranked = []  # (drops, made ms, key): compared as plain tuples, no view per block
        for k, d in self._drops.items():
            v = entries.get(k)
            if v is None or not _kept(k, v, rid, oid, ip):
                continue
            ranked.append((d, v >> _MADE_SHIFT & _MS_MASK, k))
        out = [self._view(k, entries[k]) for _d, _m, k in heapq.nlargest(n, ranked)]
        if len(out) < n:
            for b in self.select(ip=ip, reason=reason, origin=origin):
                if not b.drops:
                    out.append(b)
                    if len(out) == n:
                        break
        return out

    def json_texts(self, now: float, *, ip: SourceKey | None = None, reason: str | None = None,
                   origin: str | None = None, chunk: int = 8192) -> Iterator[str]:
        """``status --json --all``'s "blocks" array as text, in chunks, newest first:
        the same JSON as ``[b.to_json(now) for b in select(...)]`` without building a
        view and a dict per block (a million blocks stream in seconds). It works on a
        snapshot: to keep the loop free, take ``snapshot()`` on the loop and run its
        ``json_texts`` in a worker thread."""
        if ip is not None and int(ip) & 0xFF == 128:  # an address: a few blocks at most
            views = self.select(ip=ip, reason=reason, origin=origin)
            yield "[" + ", ".join(json.dumps(b.to_json(now)) for b in views) + "]"
            return
        yield from self.snapshot().json_texts(now, ip=ip, reason=reason, origin=origin,
                                              chunk=chunk)

    def snapshot(self) -> IndexSnapshot:
        """A copy to save or show from a worker thread (dict copies: ms for a million)."""
        self._put_in_order()
        return IndexSnapshot((self._entries.copy(),), self._notes.copy(), self._drops.copy(),
                             tuple(self._reasons.names), tuple(self._origins.names),
                             self.generation)

    @contextlib.contextmanager
    def journal(self) -> Iterator[set[int]]:
        """The keys changed (added, removed, re-made, noted) while the block runs: what a
        walk of the kernel made meanwhile must not override."""
        changed: set[int] = set()
        self._journals.append(changed)
        try:
            yield changed
        finally:
            for i, j in enumerate(self._journals):
                if j is changed:
                    del self._journals[i]
                    break

    def snapshot_builder(self, chunk: int = 32768) -> SnapshotBuilder:
        """A snapshot made in steps of ``chunk`` blocks, the loop free between steps (a
        million-block dict copy holds the loop 30-200 ms; a step, a few ms)."""
        return SnapshotBuilder(self, chunk)

    # ---- the machinery -----------------------------------------------------------------

    def _view(self, k: int, v: int) -> IndexedBlock:
        return IndexedBlock(SourceKey(k), self._reasons.names[v >> 8 & 0xFF],
                            self._origins.names[v & 0xFF], self._notes.get(k),
                            (v >> _MADE_SHIFT & _MS_MASK) / 1000, _time(v >> _EXP_SHIFT),
                            self._drops.get(k, 0))

    def _insert(self, k: int, v: int, keep_place: bool = False) -> None:
        made = v >> _MADE_SHIFT & _MS_MASK
        if not keep_place:
            if made < self._last_made:
                self._ordered = False
            else:
                self._last_made = made
        self._entries[k] = v
        for j in self._journals:
            j.add(k)
        r = v >> 8 & 0xFF
        self._by_reason[r] = self._by_reason.get(r, 0) + 1
        plen = k & 0xFF
        self._plens[plen] = self._plens.get(plen, 0) + 1
        exp = v >> _EXP_SHIFT
        if exp != NEVER_MS:
            sec = exp // 1000
            bucket = self._buckets.get(sec)
            if bucket is None:
                self._buckets[sec] = [k]
                heapq.heappush(self._due, sec)
            elif bucket[-1] != k:
                bucket.append(k)

    def _remove(self, k: int, pop: bool = True) -> IndexedBlock | None:
        """Forget k's bookkeeping; with pop=False its dict slot stays for an update in place."""
        v = self._entries.pop(k, None) if pop else self._entries.get(k)
        if v is None:
            return None
        for j in self._journals:
            j.add(k)
        old = IndexedBlock(SourceKey(k), self._reasons.names[v >> 8 & 0xFF],
                           self._origins.names[v & 0xFF], self._notes.pop(k, None),
                           (v >> _MADE_SHIFT & _MS_MASK) / 1000, _time(v >> _EXP_SHIFT),
                           self._drops.pop(k, 0))
        self._by_reason[v >> 8 & 0xFF] -= 1
        plen = k & 0xFF
        left = self._plens[plen] - 1
        if left:
            self._plens[plen] = left
        else:
            del self._plens[plen]
        return old

    def _put_in_order(self) -> None:
        """Re-sort by made_at after an out-of-order insert (rare: an explicit older made_at)."""
        if self._ordered:
            return
        items = sorted(self._entries.items(), key=lambda kv: kv[1] >> _MADE_SHIFT & _MS_MASK)
        self._entries = dict(items)
        self._last_made = max((v >> _MADE_SHIFT & _MS_MASK for _, v in items), default=0)
        self._ordered = True



def rank_drops(rows: Iterable[tuple[int, float, int, str, str]], top: int = 10_000
               ) -> tuple[dict[int, int], list[int]]:
    """(drops by source, the ``top`` sources by drops) from kernel rows: made in a worker
    thread, handed to ``BlockIndex.replace_drops``."""
    drops = {int(r[0]): r[2] for r in rows if r[2]}
    rank = heapq.nlargest(top, drops, key=drops.__getitem__)
    return drops, rank


class SnapshotBuilder:
    """Copies the index a chunk per ``step()``; changes made between steps are journaled
    and applied at the last step, so the snapshot is the index as it was then.

    No step lists all the keys (a million at once holds the loop ~20 ms): each step
    copies the next ``chunk`` items from one iterator over the live dict. Any change
    between steps ends that iterator (a dict iterator notices a change of size, not a
    resize that moves its slots); the next step makes a new one and finds its place
    again. Keys no change touched (none in the journal) keep their order, and each can
    only move up (towards the start), by at most one place per key removed, which the
    journal counts: so the step skips, at C speed, to the place of the last copied
    untouched key less the journal's size, and looks for that key within the next few.
    Keys copied twice or missed are all in the journal, and the last step takes every
    journaled key from the live index. Should changes touch most of the table while it
    is copied (few untouched keys to go on from), the next step copies the rest at
    once: a stall, but the snapshot ends."""

    def __init__(self, index: BlockIndex, chunk: int) -> None:
        index._put_in_order()
        self.index = index
        self.chunk = chunk
        self.parts: list[dict[int, int]] = []
        # (the last key of each part, its place in the walk then): where to go on from
        self.marks: list[tuple[int, int]] = []
        self.pos = 0  # the place of the next item in the current walk
        self.journal: set[int] = set()
        index._journals.append(self.journal)
        self._walk: Iterator[tuple[int, int]] | None = iter(index._entries.items())
        self._over = index._entries  # the dict the walk goes over ...
        self._gen = index.generation  # ... as it was then

    def step(self) -> IndexSnapshot | None:
        """Copy the next chunk; the snapshot once all is copied (None before)."""
        ix = self.index
        live = ix._entries
        if len(self.journal) > len(live) // 2:  # churn over most of the table: no anchor
            self.parts = [live.copy()]  # holds; one copy at once (a stall, but an end)
            self.marks.clear()
            self._walk = iter(())
        elif self._walk is None or live is not self._over or ix.generation != self._gen:
            self._walk = self._resume(live)
            self._over, self._gen = live, ix.generation
        part = dict(islice(self._walk, self.chunk))
        if len(part) == self.chunk:
            self.parts.append(part)
            self.pos += len(part)
            self.marks.append((next(reversed(part)), self.pos - 1))
            return None
        if part:
            self.parts.append(part)
        self.close()
        last: dict[int, int] = {}
        for k in self.journal:  # changed during the copy: as it is now, the newest
            for p in self.parts:
                p.pop(k, None)
            v = live.get(k)
            if v is not None:
                last[k] = v
        self.parts.append(last)
        self._walk = None
        return IndexSnapshot(tuple(self.parts), ix._notes.copy(), ix._drops.copy(),
                             tuple(ix._reasons.names), tuple(ix._origins.names),
                             ix.generation)

    def _resume(self, live: dict[int, int]) -> Iterator[tuple[int, int]]:
        """A new walk over ``live``, placed just after the last copied untouched key (the
        parts after it are dropped, to be copied again); from the start if none is found."""
        journal = self.journal
        while self.marks:  # the last untouched key copied; what was copied after it goes
            part = self.parts[-1]
            back = next((i for i, k in enumerate(reversed(part)) if k not in journal), None)
            if back is not None:
                for _ in range(back):
                    part.popitem()
                self.marks[-1] = (next(reversed(part)), self.marks[-1][1] - back)
                break
            self.marks.pop()
            self.parts.pop()
        walk = iter(live.items())
        if not self.marks:
            self.parts.clear()
            self.pos = 0
            return walk
        key, place = self.marks[-1]
        skip = max(0, place - len(journal))  # the key's place now is in [skip, place]
        next(islice(walk, skip, skip), None)
        for i, (k, _v) in enumerate(islice(walk, place - skip + 1)):
            if k == key:
                self.pos = skip + i + 1
                self.marks[-1] = (key, self.pos - 1)
                return walk
        self.marks.clear()  # not where it must be: start again (no key copied twice)
        self.parts.clear()
        self.pos = 0
        return iter(live.items())

    def close(self) -> None:
        """Stop journaling (a builder given up must be closed)."""
        journals = self.index._journals
        for i, j in enumerate(journals):
            if j is self.journal:
                del journals[i]
                break
