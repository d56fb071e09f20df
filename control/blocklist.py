"""The current blocks: the kernel's tables as enforcement, the daemon's own index as the answer.

Every change goes to the kernel first (so it is enforced at once), then into
the ``BlockIndex`` (control/blockindex.py), which answers every question about
blocks from memory: ``find`` is one dict probe, the sweep costs O(expired),
``status`` reads the newest or most dropping N. The kernel maps are walked in
full (batch lookups) only at start (``reconcile``: adoption plus the block
file) and on ``resync`` (a lost kernel event, or asked for).

A change the engine did not decide (kernel, manual, file, expiry) is told to
it through ``hear``; the engine's own decisions are not echoed back: decisions
flow one way.

Public API for the other rooms (fleet, policy, explain, history):
``find(source)``, ``covering(source)``, ``select(...)``/``newest``/``most_dropping``
(newest first, filtered), ``len()``, ``snapshot()`` (a copy to walk in another
thread), ``add``/``remove``/``kernel_made`` to change, ``version`` for savers.
Sources are ``SourceKey`` ints or ``ipaddress`` networks, both accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from dynscreen.control.blockfile import (
    SOURCES,
    BlockDiff,
    BlockEntry,
    FileRow,
    diff,
    latest_expiry,
)
from dynscreen.control.blockindex import BlockIndex, IndexedBlock, IndexSnapshot
from dynscreen.control.dataplane.blocktable import KernelRow
from dynscreen.control.dataplane.loader import BlockTableFull
from dynscreen.control.sourcekey import SourceKey, key_text

Network = IPv4Network | IPv6Network
Source = Network | SourceKey
log = logging.getLogger("dynscreen.blocks")


class BlockTable(Protocol):
    """What the block list needs of the kernel (dataplane.blocktable.KernelBlockTable)."""

    def add_block(self, net: Network, until: float, reason: str, origin: str) -> None: ...

    def remove_block(self, net: Network) -> bool: ...

    def read_rows(self) -> Iterable[KernelRow]: ...

    def read_drops(self) -> dict[int, int]: ...

    def write_rows(self, rows: list[KernelRow],
                   meanwhile: Callable[[], object] | None = None) -> None:
        """Write in bulk; ``meanwhile`` (when given) runs on the caller's thread while the
        kernel writes, and runs even when the write is refused."""

    def delete_rows(self, sources: list[int]) -> int: ...


@dataclass(frozen=True)
class Shown:
    """A block as `status` shows it (a few at a time: built from the index on demand)."""

    net: Network
    reason: str
    note: str | None
    expires: float
    drops: int
    source: str

    @classmethod
    def of(cls, b: IndexedBlock) -> Shown:
        return cls(b.source.network(), b.reason, b.note, b.expires, b.drops, b.origin)

    def to_json(self, now: float) -> dict[str, object]:
        return {
            "ip": key_text(int(SourceKey.from_network(self.net))),
            "reason": self.reason,
            "note": self.note,
            "minutes_left": round(max(0.0, self.expires - now) / 60, 1),
            "drops": self.drops,
            "source": self.source,
        }


def _key(source: Source) -> SourceKey:
    return source if isinstance(source, SourceKey) else SourceKey.from_network(source)


def _net(source: Source) -> Network:
    return source.network() if isinstance(source, SourceKey) else source


def _origin(name: str) -> str:
    return name if name in SOURCES else "file"


@dataclass(frozen=True)
class Resync:
    """What a reconciliation with the kernel found: blocks the index lacked, blocks only the
    index held (gone from the kernel behind the daemon's back), expiries taken from the kernel."""

    found: int
    dropped: int
    updated: int


class BlockList:
    """Blocks in the kernel and in the index; hear(net, until|None) tells the engine of the
    changes it did not make."""

    def __init__(self, table: BlockTable, hear: Callable[[Network, float | None], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.hear = hear
        self.clock = clock
        self.index = BlockIndex(clock)
        self.refused = 0
        # Told of every block made or lifted here (not of expiries): the fleet shares them.
        # (net, until or None when lifted, reason, source, note)
        self.watchers: list[Callable[[Network, float | None, str, str, str | None], None]] = []
        self.ipv6_prefix: int = getattr(table, "ipv6_prefix", 64)

    @property
    def version(self) -> int:
        """Moves on every change: the block file is saved when it moved."""
        return self.index.generation

    def changed(self) -> None:
        """Something the block file shows changed (a new version to save)."""
        self.index.generation += 1

    # ---- changes ---------------------------------------------------------------------------

    def add(self, net: Source, until: float, reason: str, source: str,
            note: str | None = None, *, decided: bool = False) -> bool:
        """Block net until a Unix time; False (logged, counted) when the table is full.

        ``decided``: the engine made this block, so it is not told of it again.
        An expiry beyond the longest block is cut to it: every entry point refuses
        one, this is the last line of defence.
        """
        until = min(until, latest_expiry(self.clock()))
        network = _net(net)
        try:
            self.table.add_block(network, until, reason, source)
        except BlockTableFull as e:
            self.refused += 1
            log.error("%s", e)
            return False
        self.index.add(_key(net), until, reason, source, note or None)
        if not decided:
            self.hear(network, until)
        for watch in self.watchers:
            watch(network, until, reason, source, note)
        return True

    def remove(self, net: Source) -> bool:
        network = _net(net)
        in_kernel = self.table.remove_block(network)
        removed = self.index.remove(_key(net)) is not None or in_kernel
        if removed:
            self.hear(network, None)
            for watch in self.watchers:
                watch(network, None, "", "", None)
        return removed

    def remove_all(self) -> list[SourceKey]:
        """`unblock --all`: every block out of the kernel in one batch delete, then the index."""
        gone = [SourceKey(k) for k in self.index.sources()]
        self.table.delete_rows([int(k) for k in gone])
        for k in gone:
            self.index.remove(k)
            self.hear(k.network(), None)
            for watch in self.watchers:
                watch(k.network(), None, "", "", None)
        return gone

    def kernel_made(self, made: Sequence[tuple[Network, float, str]]) -> None:
        """The kernel blocked sources by itself (ring-buffer events, a poll's worth: a
        flood's thousands): (net, until, reason) each. The index takes them in one bulk
        step; the engine and the watchers hear of each."""
        now = self.clock()
        self.index.load(((int(SourceKey.from_network(net)), until, 0, reason, "kernel")
                         for net, until, reason in made), made_at=now)
        for net, until, reason in made:
            self.hear(net, until)
            for watch in self.watchers:
                watch(net, until, reason, "kernel", None)

    def sweep(self, now: float | None = None) -> list[IndexedBlock]:
        """Remove the expired blocks (the kernel already ignores them): O(expired), one
        batch delete from the kernel."""
        gone = self.index.sweep(now)
        if gone:
            self.table.delete_rows([int(b.source) for b in gone])
            for b in gone:
                self.hear(b.source.network(), None)
        return gone

    # ---- questions (all from the index) ----------------------------------------------------

    def __len__(self) -> int:
        return len(self.index)

    def find(self, net: Source) -> Shown | None:
        """The block of exactly this source, O(1)."""
        b = self.index.find(_key(net))
        return None if b is None else Shown.of(b)

    def covering(self, net: Source) -> list[IndexedBlock]:
        """The blocks holding all of net (its own, its /64, a range around it)."""
        return self.index.covering(_key(net))

    def select(self, *, ip: Source | None = None, reason: str | None = None,
               origin: str | None = None) -> Iterator[IndexedBlock]:
        """The blocks matching the filters, newest first (a lazy walk)."""
        return self.index.select(ip=None if ip is None else _key(ip), reason=reason,
                                 origin=origin)

    def newest(self, n: int, **filters: object) -> list[IndexedBlock]:
        return self.index.newest(n, **filters)  # type: ignore[arg-type]

    def most_dropping(self, n: int, **filters: object) -> list[IndexedBlock]:
        return self.index.most_dropping(n, **filters)  # type: ignore[arg-type]

    def snapshot(self) -> IndexSnapshot:
        return self.index.snapshot()

    def current(self) -> list[Shown]:
        """Every block as a Shown: for small tables and tests; the daemon's own paths use
        the index's queries."""
        return [Shown.of(b) for b in self.index.select()]

    def entries(self) -> list[BlockEntry]:
        """The blocks as the block file holds them (an edit's diff; small tables)."""
        return [BlockEntry(net=s.net, expires=s.expires, reason=s.reason, note=s.note,
                           source=_origin(s.source)) for s in self.current()]

    def inside(self, nets: list[Network]) -> list[IndexedBlock]:
        """The blocks lying inside any of these ranges (the whitelist's lift): one probe per
        single address, one pass over the keys for the ranges."""
        keys = [SourceKey.from_network(n) for n in nets]
        out = [b for k in keys if k.plen == 128 and (b := self.index.find(k)) is not None]
        ranges = [k for k in keys if k.plen < 128]
        if ranges:
            every = self.index.sources()
            for r in ranges:  # the keys inside r lie between two bounds: a plain comparison
                lo = int(r)
                hi = (r.addr128 | ((1 << (128 - r.plen)) - 1)) << 8 | 0xFF
                p = r.plen
                out += [b for k in every if lo <= k <= hi and k & 0xFF >= p
                        and (b := self.index.find(SourceKey(k))) is not None]
        return out

    # ---- the kernel in bulk -------------------------------------------------------------

    def reconcile(self, saved: Iterable[FileRow | BlockEntry],
                  now: float | None = None) -> tuple[int, int]:
        """Start-up: adopt the kernel's tables into the index (one batch walk), then make
        the kernel hold the union of its blocks and the file's.

        Blocks only the file knows (a reboot emptied the kernel) are put back in one
        batch; blocks only the kernel knows (made while no daemon ran) stay; for one in
        both, the later expiry wins and the file's note is kept. Returns (restored from
        the file, kept from the kernel). The engine hears of the ranges (they hold many
        sources); of single sources it hears when it first decides on one
        (daemon.apply asks ``find``): a million notes at start would cost seconds.
        """
        now = self.clock() if now is None else now
        index = self.index
        latest = latest_expiry(now)
        far: list[KernelRow] = []

        expired: list[int] = []

        def adopted() -> Iterator[KernelRow]:
            for r in self.table.read_rows():
                if r.expires <= now:  # ran out while no daemon ran: not a block any more
                    expired.append(int(r.source))
                    continue
                if r.expires >= latest:  # read back cut: store the cut, so it ends some day
                    far.append(r._replace(expires=latest, origin=_origin(r.origin)))
                yield r
        kept = index.load(adopted(), made_at=now)
        if expired:
            self.table.delete_rows(expired)
        if far:
            log.warning("%d block(s) in the kernel expired later than the longest block "
                        "(%s first): cut to it", len(far), far[0].source)
            self._write(far)
        restore: list[KernelRow] = []
        notes: list[tuple[int, str]] = []
        expiry_of = index.expiry_of
        for e in saved:
            if isinstance(e, BlockEntry):
                e = FileRow(int(SourceKey.from_network(e.net)), e.expires, e.reason, e.note,
                            e.source)
            if e.expires <= now:
                continue
            if e.note:
                notes.append((e.source, e.note))
            have = expiry_of(e.source) if kept else None
            if have is not None and have >= e.expires:
                continue
            restore.append(KernelRow(e.source, e.expires, 0, e.reason,  # type: ignore[arg-type]
                                     e.origin if e.origin in SOURCES else "file"))
        if restore:
            # The index is built while the kernel's batch syscalls run (they release the
            # GIL): at a million rows, about a second of the start.
            self._write(restore, meanwhile=lambda: index.load(restore, made_at=now))
        for k, note in notes:
            index.set_note(SourceKey(k), note)
        for b in index.wider_than_sources(self.ipv6_prefix):
            self.hear(b.source.network(), b.expires)
        self.changed()
        return len(restore), kept

    def _write(self, rows: list[KernelRow],
               meanwhile: Callable[[], object] | None = None) -> None:
        try:
            self.table.write_rows(rows, meanwhile)
        except BlockTableFull as e:
            self.refused += 1
            log.error("restoring blocks: %s", e)

    def resync_plan(self, rows: list[KernelRow]) -> tuple[list[KernelRow], list[int]]:
        """In a worker thread, after a walk: (kernel rows the index lacks or holds with an
        earlier expiry, index sources the kernel lacks). Reads the index without changing
        it (single dict probes and one C-level key copy: safe beside the loop)."""
        entries = self.index._entries
        differ = []
        for row in rows:
            v = entries.get(int(row.source))
            if v is None or row.expires > (v >> 59) / 1000 + 1.0:
                differ.append(row)
        kernel = {int(r.source) for r in rows}
        return differ, [k for k in self.index.sources() if k not in kernel]

    def resync(self, differ: list[KernelRow], missing: list[int], changed: set[int],
               walked_at: float) -> Resync:
        """On the loop: apply a resync_plan, skipping what changed during the walk.

        Blocks the kernel holds and the index lacks (a ring-buffer event lost) are
        indexed and told to the engine; a later kernel expiry (the kernel re-blocked a
        source whose block had run out, its event lost) is taken; index entries the
        kernel lacks (unblocked behind the daemon's back: an offline `unblock`) are
        forgotten.
        """
        index = self.index
        found = updated = dropped = 0
        for row in differ:
            k = SourceKey(row.source)
            if int(k) in changed:
                continue
            b = index.find(k)
            if b is not None and row.expires <= b.expires + 1.0:
                continue
            index.add(k, row.expires, row.reason, _origin(row.origin),
                      b.note if b is not None else None, made_at=walked_at)
            self.hear(k.network(), row.expires)
            if b is None:
                found += 1
            else:
                updated += 1
        for key in missing:
            if key in changed:
                continue
            b = index.remove(SourceKey(key))
            if b is not None:
                self.hear(b.source.network(), None)
                dropped += 1
        return Resync(found, dropped, updated)

    # ---- edits ------------------------------------------------------------------------------

    def apply_edit(self, wanted: list[BlockEntry], now: float | None = None
                   ) -> tuple[int, int, int]:
        """Make the blocks equal a validated text: (added, removed, changed).

        For a text given without the one it was started from; an edit with its
        base goes through apply_change() and leaves blocks it did not touch alone.
        """
        return self.apply_change(diff(self.entries(), wanted), now)

    def apply_change(self, change: BlockDiff, now: float | None = None
                     ) -> tuple[int, int, int]:
        """Apply what an edit changed, line by line: (added, removed, changed).

        Removed lines unblock; added or changed lines block (an expired one
        unblocks); every block the edit did not mention stays as it is.
        """
        now = self.clock() if now is None else now
        added = removed = changed = 0
        for e in change.removed:
            if self.remove(e.net):
                removed += 1
        for e in [*change.added, *(new for _, new in change.changed)]:
            old = self.find(e.net)
            if e.expires <= now:
                if old is not None and self.remove(e.net):
                    removed += 1
                continue
            if old is None:
                if self.add(e.net, e.expires, e.reason, e.source, e.note):
                    added += 1
            elif (abs(old.expires - e.expires) >= 1 or old.reason != e.reason
                  or (old.note or None) != (e.note or None)):
                src = old.source if e.source != "file" else "file"
                if self.add(e.net, e.expires, e.reason, src, e.note):
                    changed += 1
        return added, removed, changed
