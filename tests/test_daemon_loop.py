"""Nothing slow on the loop: its worst stall is measured and shown, and the heartbeat
does not depend on it. The daemon runs on a data plane without a kernel here; the
kernel side of the heartbeat is test_xdp's."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from fakeplane import FakePlane

from dynscreen.control.config import from_dict
from dynscreen.control.daemon import Daemon, Options


def daemon(tmp_path: Path) -> tuple[Daemon, FakePlane]:
    cfg = from_dict({
        "screening": {"close_session": False},
        "daemon": {"state_file": str(tmp_path / "blocks"), "socket": str(tmp_path / "sock"),
                   "whitelist_file": str(tmp_path / "wl"), "frozen_file": str(tmp_path / "fz"),
                   "metrics_listen": ""},
    })
    dp = FakePlane()
    return Daemon(Options(None), cfg, dp, ["fake0"], []), dp  # type: ignore[arg-type]


def sample(d: Daemon, name: str) -> float:
    value = d.metrics.registry.get_sample_value(name, {})
    return 0.0 if value is None else value


def test_a_slow_handler_shows_in_loop_stall_max_ms(tmp_path: Path) -> None:
    d, _ = daemon(tmp_path)
    d.server.handlers["ping"] = lambda req: time.sleep(0.4) or {}  # holds the loop 400 ms

    async def main() -> dict[str, Any]:
        d.supervisor.start("loop-stall", d.stall.run)
        await asyncio.sleep(0.2)
        quiet = d.stall.worst_ms
        await d.server.answer(b'{"cmd": "ping"}\n')
        await asyncio.sleep(0.2)
        status = json.loads(await d.server.answer(b'{"cmd": "status"}\n'))["result"]
        await d.supervisor.stop()
        assert quiet < 300, quiet
        return status

    status = asyncio.run(main())
    assert status["daemon"]["loop_stall_max_ms"] >= 350
    assert sample(d, "dynscreen_loop_stall_max_seconds") >= 0.35


def test_the_heartbeat_beats_while_the_loop_is_held(tmp_path: Path) -> None:
    """Held for 2.5 s, the loop runs nothing; the heartbeat thread still stamps every
    second (the kernel's timeout is 10 s; test_xdp holds one past a 1 s timeout)."""
    d, dp = daemon(tmp_path)

    async def main() -> None:
        d.heartbeat.start()
        await asyncio.sleep(0.1)
        held = time.monotonic()
        time.sleep(2.5)
        d.heartbeat.stop()
        during = [t for t in dp.stamps if t > held]
        assert len(during) >= 2, dp.stamps
        gaps = [b - a for a, b in zip([held, *during], during, strict=False)]
        assert max(gaps) < 1.5, gaps

    asyncio.run(main())
    assert dp.stamp_threads == {"dynscreen-heartbeat"}
    assert time.time() - sample(d, "dynscreen_heartbeat_timestamp_seconds") < 2


def test_a_flood_of_blocks_closes_sessions_in_a_few_bounded_ss_runs(tmp_path: Path) -> None:
    """2,000 blocks at once: a handful of batched `ss` runs, never more than MAX_RUNS at
    once, none on the loop; every open session of theirs closed, the counters in status."""
    from ipaddress import ip_network

    from dynscreen.control import sessions

    d, _ = daemon(tmp_path)
    d.cfg = from_dict({"screening": {"close_session": True}})
    sources = [f"198.18.{n // 250}.{n % 250 + 1}" for n in range(2000)]
    running = peak = 0
    killed: list[str] = []

    async def fake_ss(argv: list[str], timeout: float) -> tuple[int, str, str]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        if "-K" not in argv:  # the listing: one open session per source
            return 0, "".join(f"ESTAB 0 0 192.0.2.25:25 {a}:4000\n" for a in sources), ""
        dsts = [argv[i + 1].removesuffix("/32") for i, a in enumerate(argv) if a == "dst"]
        killed.extend(dsts)
        return 0, "".join(f"ESTAB 0 0 192.0.2.25:25 {a}:4000\n" for a in dsts), ""

    d.closer._run = fake_ss

    async def main() -> dict[str, Any]:
        for a in sources:
            d.close_sessions(ip_network(a))
        await d.closer.drain(timeout=10)
        return json.loads(await d.server.answer(b'{"cmd": "status"}\n'))["result"]

    counters = asyncio.run(main())["counters"]
    assert sorted(killed) == sorted(sources), "each source's session closed, once"
    assert counters["close_session_runs"] == 2000
    assert counters["sessions_closed"] == 2000
    assert counters["close_session_dropped"] == 0
    assert peak <= sessions.MAX_RUNS
    assert counters["close_session_ss_runs"] <= 40, "batched, not one ss per address"
