"""What members write to Redis and read back: one JSON object per change, checked.

Everything read from Redis is untrusted: another member may run another
version, an administrator may write by hand, an attacker with Redis access may
try anything. A message is checked as a block-file line is (address, expiry
within the longest block, a known reason and origin, a one-line note) before it
touches the kernel; a bad one raises WireError, which the reader logs and skips.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from dynscreen.control.accounts import check_user
from dynscreen.control.addr import Network, network_key, parse_address, parse_network
from dynscreen.control.blockfile import SOURCES, latest_expiry
from dynscreen.control.decisions import REASONS

LIMITS = ("auth_failures", "failed_rcpts", "rsets")  # the log-based limits counted fleet-wide
MEMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_NOTE = 500
MAX_COUNT = 1000  # one count message: at most this many attempts
MAX_TEXT = 4096  # bytes of one message


class WireError(ValueError):
    """A message from Redis that is not to be applied; str() says what is wrong."""


@dataclass(frozen=True)
class BlockMsg:
    """A block made by ``member``: the same absolute expiry everywhere."""

    net: str
    expires: float
    reason: str
    source: str  # how the origin made it: kernel, logs, manual, file
    member: str
    made_at: float
    note: str | None = None
    t: str = "block"

    @property
    def network(self) -> Network:
        return _parse_net(self.net)


@dataclass(frozen=True)
class UnblockMsg:
    net: str
    member: str
    t: str = "unblock"


@dataclass(frozen=True)
class CountMsg:
    """Attempts one member counted (after its own de-duplication) toward a limit."""

    limit: str
    ip: str
    n: int
    member: str
    host: str | None = None  # the sender's verified host name (trusted senders)
    t: str = "count"


@dataclass(frozen=True)
class FreezeMsg:
    user: str
    since: float
    until: float | None  # None: until unfrozen
    member: str
    service: str | None = None
    ip: str | None = None
    t: str = "freeze"


@dataclass(frozen=True)
class UnfreezeMsg:
    user: str
    member: str
    t: str = "unfreeze"


@dataclass(frozen=True)
class AllowMsg:
    """A runtime whitelist entry added (``on``) or removed."""

    cidr: str
    on: bool
    member: str
    t: str = "allow"


Message = BlockMsg | UnblockMsg | CountMsg | FreezeMsg | UnfreezeMsg | AllowMsg
KINDS: dict[str, type] = {"block": BlockMsg, "unblock": UnblockMsg, "count": CountMsg,
                          "freeze": FreezeMsg, "unfreeze": UnfreezeMsg, "allow": AllowMsg}


def encode(msg: Message) -> str:
    return json.dumps({k: v for k, v in asdict(msg).items() if v is not None or k == "until"},
                      separators=(",", ":"))


def decode(raw: bytes | str, now: float) -> Message:
    """A checked message; WireError says what is wrong with it."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_TEXT:
            raise WireError(f"message of {len(raw)} bytes (at most {MAX_TEXT})")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("not UTF-8 text") from None
    if len(raw) > MAX_TEXT:
        raise WireError(f"message of {len(raw)} characters (at most {MAX_TEXT})")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise WireError(f"not JSON ({e})") from None
    if not isinstance(data, dict):
        raise WireError("not a JSON object")
    kind = data.get("t")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown message type {kind!r}")
    names = set(cls.__dataclass_fields__)
    extra = set(data) - names
    if extra:
        raise WireError(f"{kind}: unknown field(s) {', '.join(sorted(extra))}")
    try:
        msg = cls(**data)
    except TypeError as e:
        raise WireError(f"{kind}: {e}") from None
    _check(msg, now)
    return msg


def _text(value: Any, what: str, *, limit: int = 255) -> str:
    if not isinstance(value, str) or not value or len(value) > limit \
            or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise WireError(f"{what}: expected one line of at most {limit} characters, "
                        f"got {str(value)[:80]!r}")
    return value


def _time(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise WireError(f"{what}: expected a Unix time, got {value!r}")
    return float(value)


@functools.lru_cache(maxsize=4096)
def _parse_net(text: str) -> Network:
    """(Cached: a message's network is parsed when checked and again when applied.)"""
    return parse_network(text)


def _net(value: Any) -> Network:
    text = _text(value, "net", limit=64)
    try:
        return _parse_net(text)
    except ValueError as e:
        raise WireError(f"net {text!r}: {e}") from None


def _check(msg: Message, now: float) -> None:
    member = msg.member
    if not isinstance(member, str) or not MEMBER.fullmatch(member):
        raise WireError(f"member {str(member)[:80]!r}: not a member name")
    if isinstance(msg, BlockMsg):
        _net(msg.net)
        expires = _time(msg.expires, "expires")
        if expires > latest_expiry(now):
            raise WireError(f"block of {msg.net}: expires beyond the longest block (ten years)")
        _time(msg.made_at, "made_at")
        if msg.reason not in REASONS:
            raise WireError(f"block of {msg.net}: unknown reason {str(msg.reason)[:40]!r}")
        if msg.source not in SOURCES:
            raise WireError(f"block of {msg.net}: unknown source {str(msg.source)[:40]!r}")
        if msg.note is not None:
            _text(msg.note, "note", limit=MAX_NOTE)
    elif isinstance(msg, UnblockMsg):
        _net(msg.net)
    elif isinstance(msg, CountMsg):
        if msg.limit not in LIMITS:
            raise WireError(f"count: unknown limit {str(msg.limit)[:40]!r}")
        try:
            parse_address(_text(msg.ip, "ip", limit=64))
        except ValueError as e:
            raise WireError(f"count: ip {msg.ip!r}: {e}") from None
        if isinstance(msg.n, bool) or not isinstance(msg.n, int) or not 0 < msg.n <= MAX_COUNT:
            raise WireError(f"count: n must be 1 to {MAX_COUNT}, got {msg.n!r}")
        if msg.host is not None:
            _text(msg.host, "host")
    elif isinstance(msg, FreezeMsg | UnfreezeMsg):
        try:
            check_user(_text(msg.user, "user", limit=320))
        except ValueError as e:
            raise WireError(f"user: {e}") from None
        if isinstance(msg, FreezeMsg):
            _time(msg.since, "since")
            if msg.until is not None:
                _time(msg.until, "until")
            for name in ("service", "ip"):
                value = getattr(msg, name)
                if value is not None:
                    _text(value, name, limit=64)
    elif isinstance(msg, AllowMsg):
        _net(msg.cidr)
        if not isinstance(msg.on, bool):
            raise WireError(f"allow: on must be true or false, got {msg.on!r}")


def block_key(net: Network) -> str:
    """The text a network is known by in Redis keys and messages."""
    return network_key(net)
