"""What the engine decides: blocks, freezes, notifications, exemptions, protections.

Each decision prints as the contract's JSON (docs/design.md, ``replay --json``);
the attributes beyond the contract (time, evidence) stay in Python so that the
daemon can log why and replay can summarise, without widening the JSON that
scripts parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dynscreen.control.addr import Network, network_key

REASONS = (
    "connections", "simultaneous", "auth_failures", "failed_rcpts", "rsets", "manual",
    "spray", "prefix",
)


@dataclass(frozen=True, slots=True)
class Block:
    """Block a source (an IPv4 address, or an IPv6 prefix) for ``minutes``.

    ``source`` is the typed key the block list and the kernel take as it is (no
    text in between); ``ip`` is its text, for the JSON and the logs. ``count`` is
    the counter value that reached the limit, ``first_ts`` the time
    of the oldest signal still in the window, ``file``/``line`` the log line that
    tipped it: the evidence an administrator asks for. A ``prefix`` block's source
    is a CIDR range and its ``count`` the number of member blocks that led to it.
    """

    action: ClassVar[str] = "block"
    source: Network
    reason: str
    minutes: int
    ts: float = 0.0
    count: int = 0
    first_ts: float = 0.0
    file: str = ""
    line: int = 0

    @property
    def ip(self) -> str:
        """The source as text (a /32 IPv4 as a bare address)."""
        return network_key(self.source)

    @property
    def until(self) -> float:
        """When the block expires (Unix seconds)."""
        return self.ts + self.minutes * 60

    def to_json(self) -> dict[str, object]:
        """The contract's shape."""
        return {
            "type": "decision",
            "action": "block",
            "ip": self.ip,
            "reason": self.reason,
            "minutes": self.minutes,
        }


@dataclass(frozen=True, slots=True)
class Freeze:
    """Freeze an account (it still receives, cannot send) after a session's failures.

    ``service`` is the protocol of the session that reached the limit, or None
    when the session ended before it was known; ``source`` is where it came from.
    """

    action: ClassVar[str] = "freeze"
    user: str
    service: str | None
    ts: float = 0.0
    count: int = 0
    source: str = ""
    file: str = ""
    line: int = 0

    def to_json(self) -> dict[str, object]:
        """The contract's shape."""
        return {"type": "decision", "action": "freeze", "user": self.user, "service": self.service}


@dataclass(frozen=True, slots=True)
class Notify:
    """Tell the postmaster that an account's session reached the failure limit."""

    action: ClassVar[str] = "notify"
    user: str
    service: str
    ts: float = 0.0
    count: int = 0
    source: str = ""
    file: str = ""
    line: int = 0

    def to_json(self) -> dict[str, object]:
        """The contract's shape."""
        return {"type": "decision", "action": "notify", "user": self.user, "service": self.service}


@dataclass(frozen=True, slots=True)
class Exempt:
    """Exempt a source from screening for ``minutes`` after a successful SMTP AUTH."""

    action: ClassVar[str] = "exempt"
    source: Network
    minutes: int
    ts: float = 0.0
    user: str | None = None
    file: str = ""
    line: int = 0

    @property
    def ip(self) -> str:
        """The source as text."""
        return network_key(self.source)

    @property
    def until(self) -> float:
        """When the exemption ends (Unix seconds)."""
        return self.ts + self.minutes * 60

    def to_json(self) -> dict[str, object]:
        """The contract's shape."""
        return {"type": "decision", "action": "exempt", "ip": self.ip, "minutes": self.minutes}


@dataclass(frozen=True, slots=True)
class Protect:
    """An account under a spraying attack: ``sources`` distinct sources failed on it
    within the window. While it is protected, a failure on it from a source that is
    not familiar blocks that source (reason ``spray``); the account is never locked.

    ``sample`` names some of the sources, for the postmaster's notice.
    """

    action: ClassVar[str] = "protect"
    user: str
    minutes: int
    sources: int
    ts: float = 0.0
    sample: tuple[str, ...] = ()
    file: str = ""
    line: int = 0

    @property
    def until(self) -> float:
        """When the protection ends (Unix seconds)."""
        return self.ts + self.minutes * 60

    def to_json(self) -> dict[str, object]:
        """The contract's shape."""
        return {
            "type": "decision",
            "action": "protect",
            "user": self.user,
            "minutes": self.minutes,
            "sources": self.sources,
        }


@dataclass(frozen=True, slots=True)
class Spare:
    """A trusted sender reached a limit and was not blocked: the record of why.

    ``reason`` is the limit it reached, ``trusted`` what made it trusted (its
    verified host name, or the trusted network it is in). Nothing is done; replay
    and the daemon's log show it, so that a spared source is never a silent one.
    """

    action: ClassVar[str] = "spare"
    ip: str
    reason: str
    trusted: str
    ts: float = 0.0
    count: int = 0
    file: str = ""
    line: int = 0

    def to_json(self) -> dict[str, object]:
        """The contract's shape."""
        return {
            "type": "decision",
            "action": "spare",
            "ip": self.ip,
            "reason": self.reason,
            "trusted": self.trusted,
        }


Decision = Block | Freeze | Notify | Exempt | Protect | Spare
