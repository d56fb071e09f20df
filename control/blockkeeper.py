"""The block file kept in step with the block list: saved, watched for hand edits.

Why a room of its own, and a thread: formatting and writing a million lines,
or reading and checking an edited file of that size, takes seconds. All of the
file's work (BlockFile: save, edit check, keeping a refused text) runs in one
worker thread, one job at a time, so the event loop (logs, control socket,
policy service) never waits for the disk and the file is never read while
being written. The loop only snapshots the blocks and applies an edit's change.

Under churn the file is rewritten at most once per gap: 4 times as long as the
last write took and at least 1 s per 10,000 blocks, within 1 to 30 seconds (a
small file: every second; 100,000 blocks: every 10 s; a million: every 30 s), so
the worker spends at most a fifth of its time on rewrites and the loop, which
waits for the GIL while the render holds it, stalls seldom. Nothing waits on
the gap for safety: a command's change is in NAME.pending at once, and the
kernel's pinned table keeps every other block across a crash of the daemon.
The first change after a quiet spell is saved at the next check (about a
second), a long pending journal (PENDING_LINES) is folded in without waiting
for the gap, and stop() always saves.

Memory: a save of a million lines frees tens of MB of short-lived objects
(the snapshot, the sorted key runs, the text's pieces); glibc keeps such freed
heap pages, so after each save the worker hands them back (malloc_trim).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from dynscreen.control import blockfile, blocksave
from dynscreen.control.addr import network_key
from dynscreen.control.atomicfile import write_atomic
from dynscreen.control.blockfile import BlockDiff, BlockEntry, BlockFile, BlockFileError, FileRow
from dynscreen.control.blockindex import BlockIndex, IndexSnapshot
from dynscreen.control.blocklist import BlockList, Network
from dynscreen.control.sourcekey import SourceKey
from dynscreen.control.utctime import format_time

log = logging.getLogger("dynscreen.blocks")
CHECK_SECONDS = 1.0  # how often a hand edit is looked for
GAP_MIN_SECONDS = 1.0  # under churn, rewrites are at least this far apart
GAP_MAX_SECONDS = 30.0  # and at most this far
GAP_FACTOR = 4.0  # times the last write's duration
# and at least this long per block held: a rewrite's render holds the GIL for most of
# its length, and the loop waits each time for it; 100,000 blocks every 10 s, not every 1-4
GAP_PER_BLOCK = 1e-4
PENDING_LINES = 10_000  # a journal this long is saved without waiting for the gap
SNAPSHOT_STEP = 8192  # blocks copied per loop step: a few ms on a loaded machine
TELL_CHUNK = 1000  # an edit's history rows told at once ...
TELL_PAUSE = 0.02  # ... then the loop and the history's writer run this long
_T = TypeVar("_T")


async def snapshot(index: BlockIndex, chunk: int = SNAPSHOT_STEP) -> IndexSnapshot:
    """The index copied in steps, the loop free between them (no stall of a whole copy)."""
    builder = index.snapshot_builder(chunk)
    try:
        while (snap := builder.step()) is None:
            await asyncio.sleep(0)
    finally:
        builder.close()
    return snap


def _trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc's malloc_trim; elsewhere a no-op).
    ctypes drops the GIL for the call."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Callable[[int], int] | bool | None = None
M_ARENA_MAX = -8  # glibc's mallopt parameter
ARENAS = 2


def limit_heap_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does; elsewhere a no-op, False).

    Each thread that allocates while another holds the main arena gets an arena of
    its own (up to 8 per core), and memory freed in one is not handed back by a trim of
    another: the keeper's saves, the kernel walks and the history writer, each in a
    thread, left the daemon at 418 MB after a quiet start and 660 MB after a busy one.
    Call before the threads start."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def _free(held: list[IndexSnapshot]) -> None:
    """In the worker: drop a snapshot part by part (freeing a million blocks in one
    C-level cascade would hold the GIL for tens of ms), then trim the heap."""
    parts = list(held.pop().parts)
    while parts:
        parts.pop()
    _trim_heap()


class BlockFileKeeper:
    """Saves the block list to its file off the loop and applies hand edits of the file."""

    def __init__(self, blocks: BlockList, file: BlockFile, *,
                 gap: tuple[float, float] = (GAP_MIN_SECONDS, GAP_MAX_SECONDS),
                 check_every: float = CHECK_SECONDS,
                 tell: Callable[..., None] | None = None,
                 ahead: Future[list[FileRow]] | None = None) -> None:
        self.blocks = blocks
        self.ahead = ahead  # read_ahead's rows of ``file``, for read_at_start
        # The daemon's tell (history, webhook): what an edit blocked and unblocked.
        self.tell = tell
        self.file = file
        self.path = file.path
        self.gap_min, self.gap_max = gap
        self.gap = self.gap_min  # the wait after the last write before the next
        self.check_every = check_every
        self.saved_version = -1  # the block list's version last written (or found unchanged)
        self.saves = 0  # rewrites done
        self._last_save = float("-inf")  # monotonic
        self._stat: tuple[int, int, int] | None = None
        limit_heap_arenas()  # before the worker thread (and the daemon's others) start
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynscreen-blockfile")
        self._wake = asyncio.Event()
        self._saving = asyncio.Lock()
        # Command changes not yet in a saved file, one line each in NAME.pending: a command
        # replies before the rewrite; a crash meanwhile must not lose a note or bring back
        # an unblocked address.
        self.pending_path = self.path.with_name(self.path.name + ".pending")
        self._pending: list[str] = []

    async def _off_loop(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    # ---- start-up ------------------------------------------------------------------------

    @staticmethod
    def read_now(file: BlockFile) -> Future[list[FileRow]]:
        """The file's rows, read now (the daemon does it while the BPF program compiles
        in another thread), as a future for the keeper (``ahead``): its error, if any,
        is read_at_start's to log."""
        out: Future[list[FileRow]] = Future()
        try:
            out.set_result(file.load_rows())
        except Exception as e:  # BlockFileError, OSError: raised at read_at_start
            out.set_exception(e)
        return out

    def read_at_start(self) -> list[FileRow] | None:
        """The file's blocks (the fast reader's rows, read ahead when the keeper was given
        ``ahead``); None (logged, the file kept aside) when it is refused."""
        try:
            rows = self.ahead.result() if self.ahead is not None else self.file.load_rows()
            self.ahead = None
            entries = self._with_pending(rows)
        except BlockFileError as e:
            kept = self._keep_rejected(e)
            log.error("%s; running blocks stay as they are%s", e,
                      f", the file is kept as {kept}" if kept else "")
            return None
        self._stat = self._stat_now()
        return entries

    def note_block(self, net: Network, expires: float, reason: str, origin: str,
                   note: str | None) -> None:
        """Record a command's block the file does not show yet (with its note: the kernel
        keeps the block across a crash, not the note)."""
        e = BlockEntry(net, expires, reason, note, origin)
        self._note([f"{e.key} {format_time(e.expires)} {e.reason} "
                    f"# {blockfile._comment(e, time.time())}\n"])

    def note_unblocked(self, sources: list[str]) -> None:
        """Record unblocks the file does not show yet (else a restart after a crash would
        restore them from the older file)."""
        self._note([f"-{s}\n" for s in sources])

    def _note(self, lines: list[str]) -> None:
        """Append to NAME.pending, not fsynced: like the kernel's pins, what a restart
        adopts, it survives a crash of the process, not of the machine."""
        if not lines:
            return
        self._pending += lines
        try:
            with open(self.pending_path, "a", encoding="utf-8") as f:
                f.writelines(lines)
        except OSError as e:
            log.error("cannot note block changes in %s: %s", self.pending_path, e)
        self.soon()

    def _with_pending(self, rows: list[FileRow]) -> list[FileRow]:
        """The file's rows with the changes a crash kept from it (NAME.pending) applied."""
        try:
            text = self.pending_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return rows
        except (OSError, UnicodeDecodeError) as e:
            log.error("cannot read %s: %s", self.pending_path, e)
            return rows
        by_key = {r.source: r for r in rows}
        n = 0
        for no, line in enumerate(text.splitlines(), 1):
            try:
                if line.startswith("-"):
                    by_key.pop(int(SourceKey.parse(line[1:].strip())), None)
                elif line.strip():
                    for r in blockfile.parse_rows(line, str(self.pending_path), limit=False):
                        by_key[r.source] = r
                n += 1
            except (ValueError, BlockFileError) as e:
                log.warning("%s:%d: skipped: %s", self.pending_path, no, e)
        if n:
            log.info("%d block change(s) made before a crash applied over %s", n, self.path)
        return list(by_key.values())

    def _saved_pending(self, upto: int) -> None:
        """A save holds the first ``upto`` noted changes: forget them (the file, once empty)."""
        self._pending = self._pending[upto:]
        try:
            if self._pending:
                write_atomic(self.pending_path, "".join(self._pending).encode())
            else:
                self.pending_path.unlink(missing_ok=True)
        except OSError as e:
            log.error("cannot update %s: %s", self.pending_path, e)

    # ---- saving --------------------------------------------------------------------------

    def soon(self) -> None:
        """A change worth saving without waiting for the next check (a command's)."""
        self._wake.set()

    async def save_now(self, force: bool = False) -> None:
        """Write the blocks if they changed since the last save (always with ``force``).

        One save at a time: a second caller waits for the one under way, then saves
        only if the blocks moved again."""
        async with self._saving:
            await self._save(force)

    async def _save(self, force: bool) -> None:
        version = self.blocks.version
        if version == self.saved_version and not force:
            return
        noted = len(self._pending)
        snap = await snapshot(self.blocks.index)  # in steps: the loop runs between them
        version = snap.generation
        now = time.time()
        self._last_save = time.monotonic()
        held = [snap]  # the only reference: freed in the worker, not on the loop
        del snap
        try:
            written = await self._off_loop(lambda: self._write(held[0], now))
        except OSError as e:
            log.error("cannot write the block file %s: %s", self.path, e)
            return
        finally:
            await self._off_loop(lambda: _free(held))
        if written and (noted or self.pending_path.exists()):
            self._saved_pending(noted)
        took = time.monotonic() - self._last_save
        self.gap = self.next_gap(took, len(self.blocks))
        self.saved_version = version
        if written:
            self.saves += 1

    def next_gap(self, took: float, size: int) -> float:
        """The wait before the next rewrite under churn: GAP_FACTOR times the last write,
        and GAP_PER_BLOCK per block held (a loaded machine makes a write look short while
        the loop is what waited), within the keeper's bounds."""
        return min(self.gap_max, max(self.gap_min, GAP_FACTOR * took, GAP_PER_BLOCK * size))

    def _write(self, snap: IndexSnapshot, now: float) -> bool:
        """In the worker: render (blocksave) and write, unless an unread edit waits."""
        written = self.file.state.write_chunks(
            (c.encode() for c in blocksave.render(snap, now)), now)
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
                    and (time.monotonic() - self._last_save >= self.gap
                         or len(self._pending) >= PENDING_LINES):
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
        heard: list[tuple[Network, float | None, str, str | None]] = []
        counts = self._apply(change, "block file edit applied", heard)
        # Rewritten at once, as the edit was just read: a later rewrite could rename a
        # new file over the path while an editor is writing its next edit into it.
        await self.save_now()
        await self._tell(heard, change)
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

    def _apply(self, change: BlockDiff, what: str,
               heard: list[tuple[Network, float | None, str, str | None]] | None = None
               ) -> tuple[int, int, int]:
        with self._heard() as made:
            added, removed, changed = self.blocks.apply_change(change)
        if heard is not None:
            heard += made
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
        change = None if before is None else blockfile.diff(before, wanted)
        with self._heard() as heard:
            if change is None:
                added, removed, changed = self.blocks.apply_edit(wanted)
            else:
                added, removed, changed = self.blocks.apply_change(change)
        await self.save_now(force=True)
        await self._tell(heard, change)
        log.info("blocks edit applied: %d added, %d removed, %d changed", added, removed, changed)
        return added, removed, changed

    @contextlib.contextmanager
    def _heard(self) -> Iterator[list[tuple[Network, float | None, str, str | None]]]:
        """While an edit applies, each block it makes or lifts (the block list's watchers
        are told of every one): (net, until or None when lifted, reason, note)."""
        heard: list[tuple[Network, float | None, str, str | None]] = []
        if self.tell is None:
            yield heard
            return

        def watch(net: Network, until: float | None, reason: str, _source: str,
                  note: str | None) -> None:
            heard.append((net, until, reason, note))
        self.blocks.watchers.append(watch)
        try:
            yield heard
        finally:
            self.blocks.watchers.remove(watch)

    async def _tell(self, heard: list[tuple[Network, float | None, str, str | None]],
                    change: BlockDiff | None) -> None:
        """Tell what an edit did, origin "file", each with the reason of its line (an
        unblock: of the removed line, when the edit's diff is known). In chunks, the
        loop free between them: a big edit's rows reach the history's bounded queue
        no faster than its writer thread takes them."""
        if self.tell is None or not heard:
            return
        lines = {} if change is None else {
            e.net: e.reason for e in [*change.removed, *change.added,
                                      *(new for _, new in change.changed)]}
        now = time.time()
        for n, (net, until, reason, note) in enumerate(heard, 1):
            key = network_key(net)
            if until is None:
                self.tell("unblock", ip=key, reason=lines.get(net), origin="file")
            else:
                self.tell("block", ip=key, reason=reason, origin="file",
                          minutes=round(max(0.0, until - now) / 60, 1), detail=note)
            if n % TELL_CHUNK == 0:
                await asyncio.sleep(TELL_PAUSE)

    async def text(self) -> str:
        """The block file as it would be written now (formatted off the loop)."""
        pieces = await self.text_pieces()
        return await self._off_loop(lambda: "".join(pieces))

    async def text_pieces(self) -> Iterator[str]:
        """The block file as it would be written now, in pieces to make one at a time in
        a worker thread (a million lines need never be joined): `blocks edit`'s text."""
        snap, now = await snapshot(self.blocks.index), time.time()
        return blocksave.render(snap, now)

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
