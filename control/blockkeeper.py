"""The block file kept in step with the block list: saved, watched for hand edits.

Why a room of its own, and a thread: formatting and writing a million lines,
or reading and checking an edited file of that size, takes seconds. All of the
file's work (BlockFile: save, edit check, keeping a refused text) runs in one
worker thread, one job at a time, so the event loop (logs, control socket,
policy service) never waits for the disk and the file is never read while
being written. The loop only snapshots the blocks and applies an edit's change.

Under churn the file is rewritten at most once per gap: 4 times as long as the
last write took, within 1 to 5 seconds (a small file: every second; a million
lines: every few seconds). The first change after a quiet spell is saved at
the next check (about a second), and stop() always saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from dynscreen.control import blockfile
from dynscreen.control.blockfile import BlockDiff, BlockEntry, BlockFile, BlockFileError
from dynscreen.control.blocklist import BlockList

log = logging.getLogger("dynscreen.blocks")
CHECK_SECONDS = 1.0  # how often a hand edit is looked for
GAP_MIN_SECONDS = 1.0  # under churn, rewrites are at least this far apart
GAP_MAX_SECONDS = 5.0  # and at most this far
GAP_FACTOR = 4.0  # times the last write's duration
_T = TypeVar("_T")


class BlockFileKeeper:
    """Saves the block list to its file off the loop and applies hand edits of the file."""

    def __init__(self, blocks: BlockList, file: BlockFile, *,
                 gap: tuple[float, float] = (GAP_MIN_SECONDS, GAP_MAX_SECONDS),
                 check_every: float = CHECK_SECONDS) -> None:
        self.blocks = blocks
        self.file = file
        self.path = file.path
        self.gap_min, self.gap_max = gap
        self.gap = self.gap_min  # the wait after the last write before the next
        self.check_every = check_every
        self.saved_version = -1  # the block list's version last written (or found unchanged)
        self.saves = 0  # rewrites done
        self._last_save = float("-inf")  # monotonic
        self._stat: tuple[int, int, int] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynscreen-blockfile")
        self._wake = asyncio.Event()

    async def _off_loop(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    # ---- start-up ------------------------------------------------------------------------

    def read_at_start(self) -> list[BlockEntry] | None:
        """The file's blocks; None (logged, the file kept aside) when it is refused."""
        try:
            entries = self.file.load()
        except BlockFileError as e:
            kept = self._keep_rejected(e)
            log.error("%s; running blocks stay as they are%s", e,
                      f", the file is kept as {kept}" if kept else "")
            return None
        self._stat = self._stat_now()
        return entries

    # ---- saving --------------------------------------------------------------------------

    def soon(self) -> None:
        """A change worth saving without waiting for the next check (a command's)."""
        self._wake.set()

    async def save_now(self, force: bool = False) -> None:
        """Write the blocks if they changed since the last save (always with ``force``)."""
        version = self.blocks.version
        if version == self.saved_version and not force:
            return
        entries = self.blocks.entries()  # a snapshot, on the loop: the thread formats it
        now = time.time()
        self._last_save = time.monotonic()
        try:
            written = await self._off_loop(lambda: self._write(entries, now))
        except OSError as e:
            log.error("cannot write the block file %s: %s", self.path, e)
            return
        took = time.monotonic() - self._last_save
        self.gap = min(self.gap_max, max(self.gap_min, GAP_FACTOR * took))
        self.saved_version = version
        if written:
            self.saves += 1

    def _write(self, entries: list[BlockEntry], now: float) -> bool:
        written = self.file.save(entries, now)
        if written:
            self._stat = self._stat_now()
        return written

    async def run(self) -> None:
        """Look for hand edits every check; save when the blocks moved and the gap allows."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.check_every)
            self._wake.clear()
            await self.check_edit()
            if self.blocks.version != self.saved_version \
                    and time.monotonic() - self._last_save >= self.gap:
                await self.save_now()

    async def stop(self) -> None:
        """The last save (always), then the worker thread ends."""
        await self.save_now(force=True)
        self._pool.shutdown(wait=True)

    # ---- edits ---------------------------------------------------------------------------

    async def check_edit(self, *, force: bool = False) -> tuple[int, int, int] | None:
        """A hand edit of the file: validated and applied, or refused and kept aside (logged).
        None when there was no edit, or it was refused. ``force`` (`dynscreen reload`):
        look even when the file's stat looks unchanged."""
        change = await self._off_loop(lambda: self._read_edit(force))
        if isinstance(change, BlockFileError):
            self.blocks.changed()  # the next save writes the blocks in force over it
            return None
        if change is None:
            return None
        counts = self._apply(change, "block file edit applied")
        # Rewritten at once, as the edit was just read: a later rewrite could rename a
        # new file over the path while an editor is writing its next edit into it.
        await self.save_now()
        return counts

    def _read_edit(self, force: bool) -> BlockDiff | BlockFileError | None:
        """In the worker: the change an edit makes; None when there is none; the error
        (logged, the text kept aside) when it is refused."""
        now_stat = self._stat_now()
        if now_stat is None or (now_stat == self._stat and not force):
            return None
        if not self.file.edited():
            self._stat = now_stat
            return None
        try:
            change = self.file.load_change()
        except BlockFileError as e:
            kept = self._keep_rejected(e)
            self._stat = self._stat_now()
            log.error("%s: edit refused, running blocks unchanged%s", e,
                      f"; the edited file is kept as {kept}" if kept else "")
            return e
        self._stat = self._stat_now()
        return change

    def _apply(self, change: BlockDiff, what: str) -> tuple[int, int, int]:
        added, removed, changed = self.blocks.apply_change(change)
        log.info("%s: %d added, %d removed, %d changed", what, added, removed, changed)
        self.blocks.changed()  # rewritten with a fresh version line for the next edit
        self.soon()
        return added, removed, changed

    async def apply_text(self, text: str, base: str | None) -> tuple[int, int, int]:
        """An edit sent over the socket: with ``base`` (the text the editor started from)
        only what it changed applies; without, the blocks become the text. Saved at once."""
        def parse() -> tuple[list[BlockEntry], list[BlockEntry] | None]:
            wanted = blockfile.parse_block_file(text, str(self.path))
            before = None if base is None else blockfile.parse_block_file(
                base, "the text the edit started from", limit=False)
            return wanted, before
        wanted, before = await self._off_loop(parse)
        if before is None:
            added, removed, changed = self.blocks.apply_edit(wanted)
        else:
            added, removed, changed = self.blocks.apply_change(blockfile.diff(before, wanted))
        await self.save_now(force=True)
        log.info("blocks edit applied: %d added, %d removed, %d changed", added, removed, changed)
        return added, removed, changed

    async def text(self) -> str:
        """The block file as it would be written now (formatted off the loop)."""
        entries, now = self.blocks.entries(), time.time()
        return await self._off_loop(lambda: blockfile.format_block_file(entries, now))

    # ---- the file on disk ----------------------------------------------------------------

    def _keep_rejected(self, e: BlockFileError) -> Path | None:
        if e.data is None:
            return None
        try:
            return self.file.keep_rejected(e.data)
        except OSError as err:
            log.error("cannot keep the refused block file: %s", err)
            return None

    def _stat_now(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)
