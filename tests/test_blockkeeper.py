"""The block file's keeper: writes off the loop, at most once per gap under churn,
always at stop, and a hand edit applied between writes."""

from __future__ import annotations

import asyncio
import threading
import time
from ipaddress import ip_network
from pathlib import Path

import pytest
from fakeplane import FakePlane

from dynscreen.control.blockfile import BlockFile
from dynscreen.control.blockkeeper import BlockFileKeeper
from dynscreen.control.blocklist import BlockList


def test_churn_is_written_in_a_worker_thread_once_per_gap_and_at_stop(tmp_path: Path) -> None:
    dp = FakePlane(max_blocks=10_000)
    blocks = BlockList(dp, lambda net, until: None)  # type: ignore[arg-type]
    file = BlockFile(tmp_path / "blocks")
    writers: list[str] = []
    keeper = BlockFileKeeper(blocks, file, gap=(0.5, 0.5), check_every=0.05)
    real_write = keeper._write

    def write(snap, now):  # type: ignore[no-untyped-def]
        writers.append(threading.current_thread().name)
        return real_write(snap, now)

    keeper._write = write  # type: ignore[method-assign]

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(keeper.run())
        end = time.monotonic() + 1.6
        n = 0
        while time.monotonic() < end:  # a block every 10 ms: churn
            n += 1
            blocks.add(ip_network(f"10.1.{n // 250}.{n % 250}"), time.time() + 600, "manual",
                       "manual")
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert 2 <= keeper.saves <= 5, keeper.saves  # 1.6 s / 0.5 s gap (+ the first)
        await keeper.stop()
        lines = [ln for ln in keeper.path.read_text().splitlines() if ln and ln[0] != "#"]
        assert len(lines) == n, "stop() writes every block"

    asyncio.run(main())
    assert writers and set(writers) == {"dynscreen-blockfile_0"}, writers


def test_a_hand_edit_is_applied_from_the_worker(tmp_path: Path) -> None:
    dp = FakePlane()
    blocks = BlockList(dp, lambda net, until: None)  # type: ignore[arg-type]
    keeper = BlockFileKeeper(blocks, BlockFile(tmp_path / "blocks"), check_every=0.05)

    async def main() -> None:
        blocks.add(ip_network("192.0.2.1"), time.time() + 600, "manual", "manual")
        await keeper.save_now()
        text = keeper.path.read_text()
        keeper.path.write_text(text.replace("192.0.2.1 ", "192.0.2.2 "))
        assert await keeper.check_edit() == (1, 1, 0)
        assert set(dp.blocks) == {ip_network("192.0.2.2/32")}
        keeper.path.write_text("192.0.2.9 soon manual\n")
        assert await keeper.check_edit() is None
        assert list(tmp_path.glob("blocks.rejected-*")), "the refused text is kept"
        await keeper.stop()
        assert "192.0.2.2 " in keeper.path.read_text()

    asyncio.run(main())


def test_a_long_pending_journal_is_saved_without_waiting_for_the_gap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big table's gap is long (4 times a slow write); command changes piling up in
    NAME.pending are folded into the file once the journal is long."""
    import dynscreen.control.blockkeeper as blockkeeper

    monkeypatch.setattr(blockkeeper, "PENDING_LINES", 3)
    dp = FakePlane()
    blocks = BlockList(dp, lambda net, until: None)  # type: ignore[arg-type]
    keeper = BlockFileKeeper(blocks, BlockFile(tmp_path / "blocks"), gap=(60, 60),
                             check_every=0.05)

    async def main() -> None:
        await keeper.save_now()  # the gap (60 s) runs from here
        task = asyncio.get_running_loop().create_task(keeper.run())
        for i in range(1, 3):
            blocks.add(ip_network(f"192.0.2.{i}"), time.time() + 600, "manual", "manual")
            keeper.note_unblocked([f"198.51.100.{i}"])
            await asyncio.sleep(0.2)
        assert keeper.saves == 1 and keeper.pending_path.exists()  # 2 lines: waits
        blocks.add(ip_network("192.0.2.3"), time.time() + 600, "manual", "manual")
        keeper.note_unblocked(["198.51.100.3"])
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert keeper.saves == 2 and not keeper.pending_path.exists()
        assert "192.0.2.3" in keeper.path.read_text()
        await keeper.stop()

    asyncio.run(main())


ARENA_PROBE = """
import ctypes, re, sys, tempfile, threading
from dynscreen.control import blockkeeper
if sys.argv[1] == "limited":
    assert blockkeeper.limit_heap_arenas()
held = []
together = threading.Barrier(6)
def work():
    together.wait()  # all alive at once: no thread takes over an arena another left
    held.append([bytes(100_000) for _ in range(20)])
    together.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile() as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    print(len(re.findall(r'<heap nr="', open(f.name).read())))
"""


@pytest.mark.parametrize("how", ["limited", "default"])
def test_threads_share_at_most_two_heap_arenas(how: str) -> None:
    """glibc gives each new thread an arena of its own (memory freed in one is not handed
    back by a trim of another): the daemon caps them before its threads start."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's arenas only")
    r = subprocess.run([sys.executable, "-c", ARENA_PROBE, how], capture_output=True,
                       text=True, check=True)
    heaps = int(r.stdout)
    if how == "limited":
        assert heaps <= 2, r.stdout
    else:
        assert heaps > 2, "the probe must show arenas per thread without the cap"


def test_the_gap_under_churn_grows_with_the_table(tmp_path: Path) -> None:
    """A big table's render holds the GIL for a while each time: 100,000 blocks are
    rewritten at most every 10 s even when the last write looked quick, a small table
    keeps the 1 s minimum, and the maximum caps both."""
    blocks = BlockList(FakePlane(), lambda net, until: None)  # type: ignore[arg-type]
    keeper = BlockFileKeeper(blocks, BlockFile(tmp_path / "blocks"), gap=(1.0, 30.0))
    try:
        assert keeper.next_gap(0.1, 1000) == 1.0
        assert keeper.next_gap(0.5, 100_000) == pytest.approx(10.0)
        assert keeper.next_gap(4.0, 100_000) == pytest.approx(16.0)  # 4 x the write
        assert keeper.next_gap(0.5, 1_000_000) == 30.0
    finally:
        keeper._pool.shutdown()


def test_a_save_sets_the_gap_from_the_table_size(tmp_path: Path) -> None:
    blocks = BlockList(FakePlane(), lambda net, until: None)  # type: ignore[arg-type]
    for i in range(200):
        blocks.add(ip_network(f"10.0.{i}.1"), time.time() + 600, "manual", "manual")
    keeper = BlockFileKeeper(blocks, BlockFile(tmp_path / "blocks"), gap=(0.001, 30.0))

    async def main() -> None:
        await keeper.save_now()
        await keeper.stop()

    asyncio.run(main())
    assert keeper.gap >= 200 * 1e-4


def test_the_file_read_ahead_is_what_the_start_gets(tmp_path: Path) -> None:
    """The daemon reads the block file while the BPF program compiles in a thread:
    the keeper's start takes those rows, and a refused file is still kept aside."""
    from dynscreen.control.blockfile import parse_rows

    path = tmp_path / "blocks"
    path.write_text("192.0.2.1 2030-01-01T00:00:00Z manual\n"
                    "198.51.100.0/24 2030-01-02T00:00:00Z manual\n")
    blocks = BlockList(FakePlane(), lambda net, until: None)  # type: ignore[arg-type]
    file = BlockFile(path)
    keeper = BlockFileKeeper(blocks, file, ahead=BlockFileKeeper.read_now(file),
                             gap=(1.0, 30.0))
    try:
        assert keeper.read_at_start() == parse_rows(path.read_text(), str(path))
        assert keeper.ahead is None  # taken once: a later read is the file's own
    finally:
        keeper._pool.shutdown()
    path.write_text("192.0.2.1 2030-01-01T00:00:00Z manual\n"
                    "not-an-address 2030-01-02T00:00:00Z manual\n")
    file = BlockFile(path)
    keeper = BlockFileKeeper(blocks, file, ahead=BlockFileKeeper.read_now(file))
    try:
        assert keeper.read_at_start() is None
        assert list(tmp_path.glob("blocks.rejected-*")), "the refused text is kept"
    finally:
        keeper._pool.shutdown()
