"""Supervised long-running tasks: a crash is logged, counted, restarted with backoff, and shown.

Why: the daemon's work happens in a handful of endless asyncio tasks (log
followers, kernel events, sweep, heartbeat, address watch). An exception that
escapes one of them would end it quietly, and with it a part of the screening,
until somebody restarts the daemon. Here every such task runs in a loop that
logs the traceback, tells the metrics, waits (1 s, doubling up to a minute;
back to 1 s after a minute of good running) and starts it again; `status`
shows each task's state, restarts and last error.

A task that returns on its own is restarted too: none of them is meant to end
while the daemon runs. Cancelling (stop) is the only way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("dynscreen.supervise")

BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
STABLE_SECONDS = 60.0  # a run this long resets the backoff


@dataclass
class TaskState:
    """What `status` says about one supervised task."""

    name: str
    factory: Callable[[], Awaitable[None]] = field(repr=False)
    state: str = "running"  # running | restarting
    restarts: int = 0
    last_error: str | None = None
    last_crash: float | None = None  # Unix time
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, object]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error,
                "last_crash": self.last_crash}


class Supervisor:
    """Runs named coroutines forever; on_restart(name) and on_state(name, up) feed metrics."""

    def __init__(
        self,
        *,
        on_restart: Callable[[str], None] | None = None,
        on_state: Callable[[str, bool], None] | None = None,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        stable_seconds: float = STABLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_restart = on_restart or (lambda name: None)
        self._on_state = on_state or (lambda name, up: None)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_seconds = stable_seconds
        self._clock = clock
        self.tasks: dict[str, TaskState] = {}

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run factory() under supervision as `name` (a name already running is an error)."""
        old = self.tasks.get(name)
        if old is not None and old.task is not None and not old.task.done():
            raise ValueError(f"task {name} is already supervised")
        st = TaskState(name, factory)
        self.tasks[name] = st
        st.task = asyncio.get_running_loop().create_task(self._keep(st), name=name)

    async def stop(self, *names: str) -> None:
        """Cancel the named tasks (all when none is named) and wait for them to end."""
        wanted = [self.tasks[n] for n in names if n in self.tasks] if names \
            else list(self.tasks.values())
        for st in wanted:
            if st.task is not None:
                st.task.cancel()
        for st in wanted:
            if st.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await st.task
            self.tasks.pop(st.name, None)

    def status(self) -> dict[str, dict[str, object]]:
        return {name: st.to_json() for name, st in sorted(self.tasks.items())}

    async def _keep(self, st: TaskState) -> None:
        delay = self.backoff_initial
        while True:
            began = self._clock()
            st.state = "running"
            self._on_state(st.name, True)
            try:
                await st.factory()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                delay = self._next_delay(began, delay)
                error = f"{type(e).__name__}: {e}"[:500]
                log.error("task %s crashed (%s); restarting it in %g s", st.name, error, delay,
                          exc_info=True)
            else:
                delay = self._next_delay(began, delay)
                error = "ended on its own"
                log.error("task %s ended on its own; restarting it in %g s", st.name, delay)
            st.state = "restarting"
            st.restarts += 1
            st.last_error = error
            st.last_crash = time.time()
            self._on_state(st.name, False)
            self._on_restart(st.name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    def _next_delay(self, began: float, delay: float) -> float:
        """The wait before this restart: back to the start after a long good run."""
        return self.backoff_initial if self._clock() - began >= self.stable_seconds else delay
