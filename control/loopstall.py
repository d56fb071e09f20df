"""How late the event loop runs: the worst stall, for `status` and the metrics.

Why: everything the daemon serves (log lines, the control socket, the policy
service) waits while one step holds the loop. A task that sleeps a fixed
interval and measures how much later it woke sees every such stall, whatever
caused it, at the cost of one wake-up per interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

INTERVAL_SECONDS = 0.05


class LoopStallMeter:
    """Records the worst lateness of the loop it runs on (seconds); report(max) on a new worst."""

    def __init__(self, report: Callable[[float], None] = lambda s: None, *,
                 interval: float = INTERVAL_SECONDS) -> None:
        self.report = report
        self.interval = interval
        self.worst = 0.0
        self.last = 0.0

    @property
    def worst_ms(self) -> float:
        return round(self.worst * 1000, 1)

    async def run(self) -> None:
        while True:
            began = time.monotonic()
            await asyncio.sleep(self.interval)
            self.last = max(0.0, time.monotonic() - began - self.interval)
            if self.last > self.worst:
                self.worst = self.last
                self.report(self.worst)
