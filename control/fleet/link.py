"""The connection to the fleet's Redis: made, lost, made again, and what state it is in.

The state is "off" (no [fleet].redis), "connected", or "degraded" (configured
but unreachable: the gateway screens alone meanwhile). A lost connection is
tried again with a backoff from 0.2 s up to 5 s, so a Redis back from a
restart is found within seconds, without hammering one that is down.
The URL goes to the client library as given (redis://, rediss:// with TLS,
unix://); the password comes from the URL or password_file and is never logged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from dynscreen.control.config import Fleet
from dynscreen.control.fleet import url as fleet_url

log = logging.getLogger("dynscreen.fleet")
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0  # longer than the stream read's block (1 s)
STATES = ("off", "connected", "degraded")


class LinkError(Exception):
    """The fleet cannot be set up (an unreadable password file): the message says why."""


def read_password(path: str) -> str | None:
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LinkError(f"fleet.password_file {path}: {getattr(e, 'strerror', None) or e}"
                        ) from None
    return text.strip("\r\n") or None


class Link:
    """One Redis client for the member, its state, and the wait before the next try."""

    def __init__(self, cfg: Fleet) -> None:
        self.url = cfg.redis
        self.shown = fleet_url.shown(cfg.redis) if cfg.redis else ""
        password = read_password(cfg.password_file)
        self.state = "degraded" if cfg.redis else "off"
        self.since = time.time()
        self.last_error = ""
        self.backoff = BACKOFF_MIN
        self.client: aioredis.Redis | None = None
        if cfg.redis:
            kwargs: dict[str, object] = {
                "socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": SOCKET_TIMEOUT,
                "retry": Retry(NoBackoff(), 0), "decode_responses": False,
            }
            if password is not None:
                kwargs["password"] = password
            # The URL's options, then ours over them: password_file wins over a password
            # in the URL (redis-py's from_url would let the URL win).
            options = {**parse_url(cfg.redis), **kwargs}
            self.client = aioredis.Redis.from_pool(aioredis.ConnectionPool(**options))

    def connected(self) -> None:
        if self.state != "connected":
            log.info("fleet: connected to %s", self.shown)
        self.state = "connected"
        self.since = time.time()
        self.backoff = BACKOFF_MIN

    def lost(self, e: BaseException) -> float:
        """Note a failure (logged once per outage); the seconds to wait before the next try."""
        text = f"{type(e).__name__}: {e}".replace(self.url, self.shown)
        if self.state != "degraded" or text != self.last_error:
            log.warning("fleet: Redis %s unreachable (%s): screening alone, own changes "
                        "queued until it is back", self.shown, text)
        if self.state != "degraded":
            self.since = time.time()
        self.state = "degraded"
        self.last_error = text
        wait = self.backoff
        self.backoff = min(BACKOFF_MAX, self.backoff * 2)
        return wait

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
