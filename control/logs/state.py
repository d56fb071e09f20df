"""Where each log source stands, for `status`: the followers report, status reads.

Why a room of its own: the followers (files, the journal) know when a line comes
and when they fail; `status` shows it. A source an admin believes is screened and
that is not (the file never appeared, journalctl died, nothing written for hours)
must be visible without reading the daemon's log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

STATES = ("live", "waiting", "error")


@dataclass
class LogSourceState:
    """One followed source: live (being read), waiting (its file does not exist yet),
    or error (its follower stopped; ``error`` says why)."""

    source: str
    format: str
    state: str = "waiting"
    lines: int = 0
    last_line_at: float | None = None
    error: str | None = None
    is_open: Callable[[], bool] | None = field(default=None, repr=False)
    """For a file: whether it is open now (else awaited), asked when status is made."""

    def line_read(self, now: float) -> None:
        self.lines += 1
        self.last_line_at = now

    def live(self) -> None:
        self.state = "live"
        self.error = None

    def failed(self, message: str) -> None:
        self.state = "error"
        self.error = message
        self.is_open = None

    def current(self) -> str:
        if self.state != "error" and self.is_open is not None:
            return "live" if self.is_open() else "waiting"
        return self.state

    def to_json(self, now: float) -> dict[str, object]:
        """The status --json "logs" item."""
        age = None if self.last_line_at is None else round(max(0.0, now - self.last_line_at), 1)
        out: dict[str, object] = {"source": self.source, "format": self.format,
                                  "state": self.current(), "lines": self.lines,
                                  "last_line_age_s": age}
        if self.error is not None:
            out["error"] = self.error
        return out
