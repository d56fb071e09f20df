"""The connection to the fleet's Redis: made, lost, made again, and what state it is in.

The state is "off" (no [fleet].redis), "connected", or "degraded" (configured
but unreachable: the gateway screens alone meanwhile). A lost connection is
tried again with a backoff from 0.2 s up to 5 s, so a Redis back from a
restart is found within seconds, without hammering one that is down.
The URL goes to the client library as given (redis://, rediss:// with TLS,
unix://); the password comes from the URL or password_file and is never logged.
A redis+sentinel:// URL (url.py) makes a Sentinel client: the library asks the
Sentinels for the master before each new connection, so a failover is one lost
connection, retried like any other, that finds the new master.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
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


def _sentinel_client(where: fleet_url.SentinelUrl, kwargs: dict[str, object]
                     ) -> tuple[aioredis.Redis, Sentinel]:
    """A client of the service's current master, found through the Sentinels (whose
    own clients close with the link)."""
    options = dict(kwargs)
    if where.password is not None:
        options.setdefault("password", where.password)  # password_file first
    if where.username is not None:
        options["username"] = where.username
    sentinels = Sentinel(
        list(where.sentinels),
        sentinel_kwargs={"socket_connect_timeout": CONNECT_TIMEOUT,
                         "socket_timeout": CONNECT_TIMEOUT, "retry": Retry(NoBackoff(), 0)})
    client: aioredis.Redis = sentinels.master_for(where.service, db=where.db, **options)
    return client, sentinels


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
        self.sentinels: Sentinel | None = None  # with a redis+sentinel:// URL
        # Told ("degraded", error) when the fleet is lost (or unreachable from the start) and
        # ("connected", "") when it is back after that: the daemon's webhook events.
        self.on_change: Callable[[str, str], None] | None = None
        self._told = "connected"  # the last state on_change was told of
        if cfg.redis:
            kwargs: dict[str, object] = {
                "socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": SOCKET_TIMEOUT,
                "retry": Retry(NoBackoff(), 0), "decode_responses": False,
            }
            if password is not None:
                kwargs["password"] = password
            if cfg.redis.startswith(fleet_url.SENTINEL + "://"):
                self.client, self.sentinels = _sentinel_client(fleet_url.sentinel(cfg.redis),
                                                               kwargs)
            else:
                # The URL's options, then ours over them: password_file wins over a
                # password in the URL (redis-py's from_url would let the URL win).
                options = {**parse_url(cfg.redis), **kwargs}
                self.client = aioredis.Redis.from_pool(aioredis.ConnectionPool(**options))

    def connected(self) -> None:
        if self.state != "connected":
            log.info("fleet: connected to %s", self.shown)
        self.state = "connected"
        self.since = time.time()
        self.backoff = BACKOFF_MIN
        self._tell("connected", "")

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
        self._tell("degraded", text)
        return wait

    def _tell(self, state: str, error: str) -> None:
        """on_change, once per change (not per failed try); its failure is logged, never
        ends the member."""
        if self.on_change is None or state == self._told:
            return
        self._told = state
        try:
            self.on_change(state, error)
        except Exception as e:
            log.error("fleet: telling of the state %s failed: %s: %s", state,
                      type(e).__name__, e)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        for s in self.sentinels.sentinels if self.sentinels is not None else ():
            await s.aclose()
