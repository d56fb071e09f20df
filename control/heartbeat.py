"""The kernel heartbeat, stamped from a thread of its own.

Why a thread: while the heartbeat is older than its timeout (10 s), the XDP
program pauses the limits that need live counts (rate, simultaneous), so a
stalled event loop must not be able to stop it. The stamp is one bpf syscall
through ctypes (the GIL is released around it); the map handle is looked up
once, on the thread that starts the heartbeat (DataPlane.heartbeat_stamper).
A failing stamp is logged (once a minute) and tried again at the next beat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("dynscreen")
LOG_EVERY = 60.0


class HeartbeatThread:
    """Calls stamp() every ``every`` seconds, then beat() (the metrics), until stop()."""

    def __init__(self, stamp: Callable[[], None], every: float,
                 beat: Callable[[], None] = lambda: None) -> None:
        self.stamp = stamp
        self.every = every
        self.beat = beat
        self.beats = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged = float("-inf")

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dynscreen-heartbeat",
                                        daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                self.stamp()
                self.beats += 1
                self.beat()
            except Exception as e:  # noqa: BLE001 - the next beat tries again
                self.failures += 1
                now = time.monotonic()
                if now - self._logged >= LOG_EVERY:
                    self._logged = now
                    log.error("kernel heartbeat failed: %s: %s", type(e).__name__, e)
            if self._stop.wait(self.every):
                return
