"""The current blocks: the kernel's tables, the notes beside them, the block file.

The kernel holds each block's source, expiry, reason, origin and drops; the
note an administrator typed lives here. Every change goes to the kernel
first (so it is enforced at once) and counts as a new version for the block
file's keeper (control/blockkeeper.py). A change the engine did not decide
(kernel, manual, file, expiry) is told to it through ``hear``; the engine's own
decisions are not echoed back: decisions flow one way.

Sources are typed (``Network``) from the engine's decision to the kernel key.
The kernel walks (list_blocks, sweep_expired) stay behind this class's API
(current, find, entries, sweep), so an index of its own can replace them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from dynscreen.control.addr import network_key
from dynscreen.control.blockfile import BlockDiff, BlockEntry, diff, latest_expiry
from dynscreen.control.dataplane.loader import BlockTableFull, DataPlane, KernelBlock

Network = IPv4Network | IPv6Network
log = logging.getLogger("dynscreen.blocks")


@dataclass(frozen=True)
class Shown:
    """A block as `status` shows it."""

    net: Network
    reason: str
    note: str | None
    expires: float
    drops: int
    source: str

    def to_json(self, now: float) -> dict[str, object]:
        return {
            "ip": network_key(self.net),
            "reason": self.reason,
            "note": self.note,
            "minutes_left": round(max(0.0, self.expires - now) / 60, 1),
            "drops": self.drops,
            "source": self.source,
        }


class BlockList:
    """Blocks in the kernel plus their notes; hear(net, until|None) tells the engine of the
    changes it did not make."""

    def __init__(self, dp: DataPlane, hear: Callable[[Network, float | None], None]) -> None:
        self.dp = dp
        self.notes: dict[Network, str] = {}
        self.hear = hear
        self.version = 0  # counts changes: the block file is saved when it moved
        self.refused = 0
        # Told of every block made or lifted here (not of expiries): the fleet shares them.
        # (net, until or None when lifted, reason, source, note)
        self.watchers: list[Callable[[Network, float | None, str, str, str | None], None]] = []

    def changed(self) -> None:
        """Something the block file shows changed (a new version to save)."""
        self.version += 1

    def add(self, net: Network, until: float, reason: str, source: str,
            note: str | None = None, *, decided: bool = False) -> bool:
        """Block net until a Unix time; False (logged, counted) when the table is full.

        ``decided``: the engine made this block, so it is not told of it again.
        An expiry beyond the longest block is cut to it: every entry point refuses
        one, this is the last line of defence.
        """
        until = min(until, latest_expiry(time.time()))
        try:
            self.dp.add_block(net, until, reason, source)
        except BlockTableFull as e:
            self.refused += 1
            log.error("%s", e)
            return False
        if note:
            self.notes[net] = note
        else:
            self.notes.pop(net, None)
        if not decided:
            self.hear(net, until)
        self.changed()
        for watch in self.watchers:
            watch(net, until, reason, source, note)
        return True

    def remove(self, net: Network) -> bool:
        removed = self.dp.remove_block(net)
        self.notes.pop(net, None)
        if removed:
            self.hear(net, None)
            self.changed()
            for watch in self.watchers:
                watch(net, None, "", "", None)
        return removed

    def kernel_made(self, net: Network, until: float, reason: str = "connections") -> None:
        """The kernel blocked a source by itself: tell the engine, save the file."""
        self.hear(net, until)
        self.changed()
        for watch in self.watchers:
            watch(net, until, reason, "kernel", None)

    def current(self) -> list[Shown]:
        return [self._shown(b) for b in self.dp.list_blocks()]

    def _shown(self, b: KernelBlock) -> Shown:
        return Shown(b.source, b.reason, self.notes.get(b.source), b.expires, b.drops, b.origin)

    def find(self, net: Network) -> Shown | None:
        for s in self.current():
            if s.net == net:
                return s
        return None

    def entries(self) -> list[BlockEntry]:
        """The blocks as the block file holds them."""
        return [BlockEntry(net=s.net, expires=s.expires, reason=s.reason, note=s.note,
                           source=s.source) for s in self.current()]

    def sweep(self, now: float | None = None) -> list[KernelBlock]:
        """Remove expired entries (the kernel already ignores them)."""
        gone = self.dp.sweep_expired()
        for b in gone:
            self.notes.pop(b.source, None)
            self.hear(b.source, None)
        if gone:
            self.changed()
        return gone

    def reconcile(self, saved: Iterable[BlockEntry], now: float | None = None) -> tuple[int, int]:
        """Start-up: make the kernel hold the union of its blocks and the file's.

        Blocks only the file knows (a reboot emptied the kernel) are put back;
        blocks only the kernel knows (made while no daemon ran) stay; for one in
        both, the later expiry wins and the file's note is kept. Returns
        (restored from the file, kept from the kernel).
        """
        now = time.time() if now is None else now
        kernel = {b.source: b for b in self.dp.list_blocks()}
        self._cut_far_expiries(kernel.values(), now)
        restored = 0
        batch = []
        for e in saved:
            if e.expires <= now:
                continue
            if e.note:
                self.notes[e.net] = e.note
            k = kernel.get(e.net)
            if k is not None and k.expires >= e.expires:
                continue
            src = e.source if e.source in ("kernel", "logs", "manual", "file") else "file"
            batch.append((e.net, e.expires, e.reason, src))
            restored += 1
        if batch:
            try:
                self.dp.add_blocks(batch)
            except BlockTableFull as e:
                log.error("restoring the block file: %s", e)
        for net, until, *_ in batch:
            self.hear(net, until)
        for net, b in kernel.items():
            self.hear(net, b.expires)
        self.changed()
        return restored, len(kernel)

    def _cut_far_expiries(self, blocks: Iterable[KernelBlock], now: float) -> None:
        """Kernel entries beyond the longest block (the data plane reads them back cut to
        it, e.g. the table's "never"): store that cut expiry, so they end some day."""
        latest = latest_expiry(now)
        far = [b for b in blocks if b.expires >= latest]
        if not far:
            return
        log.warning("%d block(s) in the kernel expired later than the longest block "
                    "(%s first): cut to it", len(far), network_key(far[0].source))
        try:
            self.dp.add_blocks([(b.source, b.expires, b.reason,
                                 b.origin if b.origin in ("kernel", "logs", "manual", "file")
                                 else "file") for b in far])
        except BlockTableFull as e:  # replacing entries needs no room; said in case
            log.error("cutting far expiries: %s", e)

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
        now = time.time() if now is None else now
        have = {s.net: s for s in self.current()}
        added = removed = changed = 0
        for e in change.removed:
            if self.remove(e.net):
                removed += 1
        for e in [*change.added, *(new for _, new in change.changed)]:
            old = have.get(e.net)
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
