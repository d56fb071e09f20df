"""A flood's kernel blocks reach the daemon as batches: one poll's blocks are one history
transaction and one log line, every block still indexed, told to the engine, counted
and handed to the session closer, and the loop gets turns while a batch is handled.
No kernel: the data plane is FakePlane, whose poll hands over all waiting events."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from ipaddress import IPv4Network, ip_network
from pathlib import Path
from typing import Any

import pytest
from fakeplane import FakePlane

from dynscreen.control import daemon as daemon_module
from dynscreen.control import daemonlog
from dynscreen.control.config import from_dict
from dynscreen.control.daemon import Daemon, Options
from dynscreen.control.dataplane.loader import KernelEvent
from dynscreen.control.history import BATCH, History, read
from dynscreen.control.sessions import SessionCloser

FIRST = 0xCB007100  # 203.0.113.0: the batch's sources count up from here


def flood_events(n: int, *, start: int = FIRST, reason: str = "connections",
                 monitor: bool = False) -> list[KernelEvent]:
    until = time.time() + 3600
    return [KernelEvent(IPv4Network((start + i, 32)), until, reason, 2, monitor, False, False)
            for i in range(n)]


def make_daemon(tmp_path: Path, *, close_session: bool = True) -> tuple[Daemon, FakePlane]:
    cfg = from_dict({
        "screening": {"close_session": close_session, "ports": [25],
                      "whitelist": ["127.0.0.0/8", "203.0.113.200/32"]},
        "daemon": {"state_file": str(tmp_path / "blocks"), "socket": str(tmp_path / "sock"),
                   "whitelist_file": str(tmp_path / "wl"), "frozen_file": str(tmp_path / "fz"),
                   "history_file": str(tmp_path / "history.sqlite"),
                   "pin_path": str(tmp_path / "no-pins"), "metrics_listen": ""},
    })
    dp = FakePlane(max_blocks=100_000)
    d = Daemon(Options(None), cfg, dp, ["fake0"], [])  # type: ignore[arg-type]
    ran: list[list[str]] = []

    async def fake_ss(argv: list[str], timeout: float) -> tuple[int, str, str]:
        ran.append(argv)
        return 0, "", ""  # no open sessions to close

    d.closer = SessionCloser(lambda: [25], run=fake_ss)
    return d, dp


class Heard:
    """The engine's note_block calls, counted (the engine itself still hears them)."""

    def __init__(self, d: Daemon) -> None:
        self.nets: list[Any] = []
        real = d.engine.note_block

        def note_block(net: Any, until: float, *, now: float | None = None) -> None:
            self.nets.append(net)
            real(net, until, now=now)

        d.engine = _Wrapped(d.engine, note_block=note_block)  # type: ignore[assignment]


class _Wrapped:
    def __init__(self, real: Any, **over: Any) -> None:
        self._real, self._over = real, over

    def __getattr__(self, name: str) -> Any:
        return self._over.get(name) or getattr(self._real, name)


def handle(d: Daemon, dp: FakePlane, events: list[KernelEvent], *,
           ticks: list[int] | None = None) -> None:
    """Run the kernel-event task until the batch is handled (and the closer drained);
    ``ticks`` counts the loop's turns for another task meanwhile."""
    want = len(d.blocks) + sum(not e.table_full for e in events)
    dp.events.extend(events)

    async def main() -> None:
        d.history.start()
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                if ticks is not None:
                    ticks.append(len(d.blocks))
                await asyncio.sleep(0)

        tick = asyncio.get_running_loop().create_task(ticker())
        task = asyncio.get_running_loop().create_task(d._kernel_events())
        for _ in range(500):
            if len(d.blocks) >= want and d.history.pending() == 0 and not d.closer.busy():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the batch's closing step (history, log) is done by now
        stop.set()
        task.cancel()
        await asyncio.gather(task, tick, return_exceptions=True)
        d.history.flush()
        d.history.stop()

    asyncio.run(main())


def kernel_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "kernel blocked" in r.getMessage()]


def test_one_poll_of_kernel_blocks_is_one_transaction_and_one_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    d, dp = make_daemon(tmp_path)
    heard = Heard(d)
    n = BATCH + 100  # more rows than the writer joins from single records in one insert
    events = flood_events(n)
    handle(d, dp, events)

    # Everything recorded: index, engine, metrics, session closer, history (each row).
    assert len(d.blocks) == n
    assert all(d.blocks.find(e.source) is not None for e in events)
    assert [d.blocks.find(e.source).source for e in events[:1]] == ["kernel"]  # type: ignore[union-attr]
    assert len(heard.nets) == n and set(heard.nets) == {e.source for e in events}
    made = d.metrics._blocks_made.labels("connections", "kernel")._value.get()
    assert made == n
    assert d.closer.submitted == n and d.close_session_runs == n
    rows = read(tmp_path / "history.sqlite")
    assert sorted(r.ip for r in rows) == sorted(str(e.source.network_address) for e in events)
    assert {(r.action, r.origin, r.reason) for r in rows} == {("block", "kernel", "connections")}
    assert rows[0].detail == "connections reached 2 in the kernel"
    # ... in one transaction, and one log line naming the first few and how many more.
    assert d.history.transactions == 1
    [line] = kernel_lines(caplog)
    shown = ", ".join(f"203.0.113.{i}" for i in range(daemonlog.SHOWN))
    assert line == (f"kernel blocked {n} sources (connections {n}): {shown}, ... "
                    f"(+{n - daemonlog.SHOWN} more)")


def test_a_single_kernel_block_keeps_its_own_line(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    d, dp = make_daemon(tmp_path, close_session=False)
    handle(d, dp, flood_events(1, monitor=True))
    assert kernel_lines(caplog) == ["kernel blocked 203.0.113.0: connections (2) "
                                    "[monitor: not dropped]"]
    assert d.history.transactions == 1 and d.closer.submitted == 0


def test_a_mixed_batch_counts_its_reasons_and_leaves_table_full_to_the_problems(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    d, dp = make_daemon(tmp_path)
    full = KernelEvent(ip_network("198.51.100.9"), None, "connections", 2, False, True, False)
    events = [*flood_events(5), full, *flood_events(3, start=FIRST + 100, reason="simultaneous")]
    handle(d, dp, events)
    assert len(d.blocks) == 8 and d.blocks.find(full.source) is None
    assert "block table full" in d.problems
    [line] = kernel_lines(caplog)
    assert line.startswith("kernel blocked 8 sources (connections 5, simultaneous 3): ")
    assert line.endswith("203.0.113.100, 203.0.113.101, 203.0.113.102")  # all 8 named
    rows = read(tmp_path / "history.sqlite")
    assert len(rows) == 8 and "198.51.100.9" not in {r.ip for r in rows}


def test_a_batch_gives_the_loop_turns_between_its_pieces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no time allowed per slice, every piece is followed by a turn of the loop:
    another task runs while the batch is only partly indexed."""
    monkeypatch.setattr(daemon_module, "KERNEL_SLICE_SECONDS", 0.0)
    d, dp = make_daemon(tmp_path)
    n = 10 * daemon_module.KERNEL_PIECE
    ticks: list[int] = []
    handle(d, dp, flood_events(n), ticks=ticks)
    assert len(d.blocks) == n
    partway = sorted({t for t in ticks if 0 < t < n})
    assert len(partway) >= 9, f"the loop ran only at {partway} of {n} blocks"
    assert d.history.transactions == 1, "still one transaction for the whole poll"


def test_a_flood_s_survivors_are_kept_out_of_full_collections(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's object per blocked source would make every full GC pass walk a
    flood's 100,000 of them on the loop: after FREEZE_EVERY kernel blocks they are
    moved out of the collector's reach (gc.freeze), as start does."""
    monkeypatch.setattr(daemon_module, "FREEZE_EVERY", 50)
    d, dp = make_daemon(tmp_path, close_session=False)
    frozen = gc.get_freeze_count()
    try:
        handle(d, dp, flood_events(40))
        assert gc.get_freeze_count() == frozen, "fewer than FREEZE_EVERY: nothing frozen"
        handle(d, dp, flood_events(20, start=FIRST + 40))
        assert gc.get_freeze_count() > frozen + 60
        assert d.kernel_unfrozen == 0
    finally:
        gc.unfreeze()


def test_the_closer_spares_whitelisted_ranges_only_inside_wider_sources(
        tmp_path: Path) -> None:
    d, _ = make_daemon(tmp_path)
    wl = d.whitelist.all()

    async def main() -> dict[Any, Any]:
        d.closer.submit_many([ip_network("203.0.113.0/24"), ip_network("203.0.113.200/32"),
                              ip_network("192.0.2.1/32")], wl)
        pending = dict(d.closer._pending)
        await d.closer.drain(5)
        return pending

    pending = asyncio.run(main())
    assert pending[ip_network("203.0.113.0/24")] == (ip_network("203.0.113.200/32"),)
    assert pending[ip_network("203.0.113.200/32")] == ()  # the range itself: nothing inside
    assert pending[ip_network("192.0.2.1/32")] == ()


def test_history_takes_a_batch_whole_in_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    h = History(path, 90)
    h.start()
    rows = [{"ip": f"10.9.{i // 256}.{i % 256}", "reason": "connections", "origin": "kernel"}
            for i in range(2048)]  # more than one writer BATCH: still not split
    assert h.record_many("block", rows) == 2048
    h.flush()
    assert h.transactions == 1 and h.written == 2048
    h.record("unblock", ip="10.9.0.0", origin="manual")
    h.stop()
    got = read(path, limit=10_000)
    assert len(got) == 2049 and got[-1].action == "unblock"


def test_history_cuts_a_batch_at_its_bound_and_counts_the_rest(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite", 90, queue_size=100)  # no writer: nothing drains
    assert h.record("block", ip="10.9.9.9")
    assert h.record_many("block", [{"ip": f"10.9.0.{i}"} for i in range(150)]) == 99
    assert h.dropped == 51 and h.pending() == 100
    assert not h.record("block", ip="10.9.9.8") and h.dropped == 52


def test_listing_names_the_first_and_counts_the_rest() -> None:
    assert daemonlog.listing(["a", "b"]) == "a, b"
    assert daemonlog.listing(["a", "b", "c"], shown=2) == "a, b, ... (+1 more)"
    assert daemonlog.listing(["a", "b"], total=2050, shown=2) == "a, b, ... (+2048 more)"
    assert daemonlog.listing(["a", "b", "c"], shown=3) == "a, b, c"


def test_ss_runs_from_the_closer_s_own_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop does not start ss itself (a fork and a child watcher's thread each time):
    a worker thread of the closer's runs it."""
    import threading

    from dynscreen.control import sessions

    ran: list[tuple[str, list[str]]] = []

    def fake_run(argv: list[str], timeout: float) -> tuple[int, str, str]:
        ran.append((threading.current_thread().name, argv))
        return 0, "", ""

    monkeypatch.setattr(sessions, "_run", fake_run)
    closer = SessionCloser(lambda: [25])

    async def main() -> None:
        closer.submit(ip_network("192.0.2.1"))
        await closer.drain(5)

    asyncio.run(main())
    assert ran and all(name.startswith("dynscreen-ss") for name, _ in ran)
    assert closer.ss_runs == len(ran) and closer.failures == 0
