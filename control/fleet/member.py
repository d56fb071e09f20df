"""This gateway as a fleet member: its changes out to Redis, the others' changes in.

Out: the parts report what changed here (a block made or lifted, a freeze, a
whitelist entry, the attempts the engine counted) and the member queues it;
the writer publishes the queue in order, each change as a stream entry plus
the key that holds the current state (a block, a freeze, the whitelist set).
A change leaves the queue only once Redis took it: with Redis down the queue
waits (counts excepted: they are stale by then) and goes out on reconnect.

In: the reader follows the stream and applies what other members made; at the
first connection, and whenever Redis lost its data, it reads the current state
instead (and the member publishes its own blocks again, which repairs a Redis
restarted empty). What comes in is checked (wire.py) and never echoed back out:
``applying`` tells the parts' reports apart from the member's own changes.
The local whitelist wins: a fleet block inside it is not applied here.
Blocks and unblocks applied from other members go to ``record`` (the daemon's
history, with the origin ``fleet:<member>``); the webhook hears of them from
the member that made them, once for the fleet.

The block table may hold a million blocks: nothing here builds an object per
block at once. A fleet block is compared with the block index's entry for its
source; a re-publish walks a copy of the index made in steps, in batches,
giving the loop a turn between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError, ResponseError

from dynscreen.control import ctlproto
from dynscreen.control.accounts import FrozenAccount, FrozenStore, account_key
from dynscreen.control.addr import Network, network_key, parse_network
from dynscreen.control.blockkeeper import snapshot
from dynscreen.control.blocklist import BlockList
from dynscreen.control.config import Fleet
from dynscreen.control.fleet import keys, wire
from dynscreen.control.fleet.link import Link
from dynscreen.control.sourcekey import SourceKey, key_text
from dynscreen.control.whitelist import Whitelist

log = logging.getLogger("dynscreen.fleet")
READ_BLOCK_MS = 1000
READ_COUNT = 1000
HEARTBEAT_SECONDS = 2.0
MAX_QUEUE = 1_000_000  # own changes kept while Redis is down (the oldest go first beyond)
REPUBLISH_BATCH = 5000  # blocks queued between two turns of the loop
PRUNE_EVERY = 30  # heartbeats between two prunings of lifted blocks from ``origins``
PRUNE_BATCH = 50_000  # origins looked at between two turns of the loop
STALE_COUNT = 30.0  # seconds: counts older than this in a backlog are not applied


class Host(Protocol):
    """What the member asks of the daemon for what other members made."""

    def remote_count(self, msg: wire.CountMsg) -> None: ...

    def remote_freeze(self, user: str, until: float) -> None: ...

    def remote_unfreeze(self, user: str) -> None: ...


@dataclass
class Counters:
    published: int = 0
    applied: int = 0
    skipped: int = 0  # bad entries read from Redis
    dropped: int = 0  # own changes given up (queue full, or counts while degraded)
    resyncs: int = 0  # reconnections that found changes trimmed away unread


class FleetMember:
    """Shares this gateway's blocks, counts, freezes and whitelist with the fleet."""

    def __init__(self, cfg: Fleet, name: str, link: Link, blocks: BlockList,
                 whitelist: Whitelist, frozen: FrozenStore, host: Host) -> None:
        self.cfg = cfg
        self.name = name
        self.share = frozenset(cfg.share)
        self.link = link
        self.blocks = blocks
        self.whitelist = whitelist
        self.frozen = frozen
        self.host = host
        # The blocks other members made (SourceKey int -> member); absent: made here.
        self.origins: dict[int, str] = {}
        self.beats = 0
        # Told of blocks and unblocks applied from other members: (action, **fields) as
        # history.record takes them; the daemon sets it.
        self.record: Callable[..., object] | None = None
        self.blocks_made = 0
        self.counters = Counters()
        self.queue: deque[wire.Message] = deque()
        self.applying = False
        self.epoch: str | None = None
        self.last_id = b"0-0"
        self.members: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._claims: set[asyncio.Task[None]] = set()
        self.notice_window = 3600.0  # seconds: the notifier's window (the daemon sets it)

    # ---- what the parts report (own changes) ---------------------------------------------

    def _queue(self, msg: wire.Message) -> None:
        if len(self.queue) >= MAX_QUEUE:
            self.queue.popleft()
            self.counters.dropped += 1
        self.queue.append(msg)
        self._wake.set()

    def block_changed(self, net: Network, until: float | None, reason: str, source: str,
                      note: str | None) -> None:
        """BlockList's watcher: a block made or lifted here."""
        if self.applying or "blocks" not in self.share:
            return
        key = network_key(net)
        if until is None:
            if self.whitelist.covering(net) is not None:
                return  # lifted by the local whitelist: that stays local
            self.origins.pop(_int_key(net), None)
            self._queue(wire.UnblockMsg(key, self.name))
            return
        self.origins.pop(_int_key(net), None)  # made (again) here: ours
        self.blocks_made += 1
        self._queue(wire.BlockMsg(key, until, reason, source, self.name, time.time(), note))

    def counted(self, counts: Iterable[tuple[str, str, int, str | None]]) -> None:
        """What the engine counted from this gateway's logs (after de-duplication)."""
        if "counters" not in self.share:
            return
        for limit, ip, n, host in counts:
            if self.link.state != "connected":
                self.counters.dropped += 1  # stale by the time Redis is back
                continue
            self._queue(wire.CountMsg(limit, ip, min(n, wire.MAX_COUNT), self.name, host))

    def freeze_changed(self, user: str, acc: FrozenAccount | None) -> None:
        """FrozenStore's watcher: an account frozen (acc) or unfrozen (None) here."""
        if self.applying or "accounts" not in self.share:
            return
        if acc is None:
            self._queue(wire.UnfreezeMsg(user, self.name))
        else:
            self._queue(wire.FreezeMsg(user, acc.since, acc.until, self.name, acc.service,
                                       acc.ip))

    def allow_changed(self, net: Network, on: bool) -> None:
        """Whitelist's watcher: a runtime entry added or removed here."""
        if self.applying or "whitelist" not in self.share:
            return
        self._queue(wire.AllowMsg(network_key(net), on, self.name))

    def claim_notice(self, user: str, send: Callable[[], None]) -> None:
        """Mail the postmaster about ``user`` (``send``) unless another member claimed this
        window's notice: the claim is a key set only if absent, expiring with the window.
        Redis unreachable: each member sends its own (better twice than never)."""
        if "accounts" not in self.share or self.link.state != "connected" \
                or self.link.client is None:
            send()
            return
        task = asyncio.get_running_loop().create_task(self._claim(user, send))
        self._claims.add(task)
        task.add_done_callback(self._claims.discard)

    async def _claim(self, user: str, send: Callable[[], None]) -> None:
        r = self.link.client
        assert r is not None
        try:
            won = await r.set(keys.NOTICE + account_key(user), self.name, nx=True,
                              ex=max(1, int(self.notice_window)))
        except (RedisError, OSError) as e:
            log.warning("fleet: claiming the notice about %s: %s; sending it", user, e)
            won = True
        if won:
            send()
        else:
            log.info("fleet: the postmaster hears about %s from another member", user)

    # ---- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, sync, then publish and read until the connection fails; again."""
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as e:
                await asyncio.sleep(self.link.lost(e))

    async def _session(self) -> None:
        r = self.link.client
        assert r is not None
        await r.ping()
        token = await r.get(keys.EPOCH)
        if token is None:
            await r.set(keys.EPOCH, secrets.token_hex(8).encode(), nx=True)
            token = await r.get(keys.EPOCH)
        epoch = token.decode() if isinstance(token, bytes) else str(token)
        fresh = self.epoch is None
        emptied = not fresh and epoch != self.epoch
        if fresh or emptied:
            # The current state, then the stream from where it stood.
            newest = await r.xrevrange(keys.CHANGES, count=1)
            self.last_id = newest[0][0] if newest else b"0-0"
            await self._load_state(r)
            if emptied:
                log.warning("fleet: Redis %s lost its data (new epoch): publishing this "
                            "gateway's blocks again", self.link.shown)
                await self._republish()
        elif await self._missed_changes(r):
            await self._catch_up(r)
        self.epoch = epoch
        self.link.connected()
        await self._heartbeat(r)
        # Reader and writer side by side: the first to fail ends both (the session ends).
        tasks = [asyncio.ensure_future(self._reader(r)), asyncio.ensure_future(self._writer(r))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            t.result()  # raises the failure

    async def _missed_changes(self, r: Any) -> bool:
        """True when the stream was trimmed past this member's place while it was away
        (it keeps the newest CHANGES_MAXLEN changes): what was cut is lost to it. Where
        the cut ends is unknown, so a first entry newer than our place counts as a gap."""
        try:
            info = await r.xinfo_stream(keys.CHANGES)
        except ResponseError:  # no stream at all: deleted, as nothing trims it to nothing
            return self.last_id != b"0-0"
        first = info.get("first-entry")
        if first:
            return _stream_id(first[0]) > _stream_id(self.last_id)
        return _stream_id(info["last-generated-id"]) > _stream_id(self.last_id)

    async def _catch_up(self, r: Any) -> None:
        """After a gap: the fleet's current state read again, and the blocks other members
        made that are no longer in Redis (lifted or run out meanwhile) lifted here too."""
        self.counters.resyncs += 1
        log.warning("fleet: Redis %s dropped changes this gateway had not read yet (away "
                    "longer than the stream keeps): reading the fleet's state again",
                    self.link.shown)
        newest = await r.xrevrange(keys.CHANGES, count=1)
        self.last_id = newest[0][0] if newest else b"0-0"
        present = await self._load_state(r)
        if "blocks" not in self.share:
            return
        gone = [(k, member) for k, member in self.origins.items()
                if key_text(k) not in present]
        for i, (k, member) in enumerate(gone, 1):
            text = key_text(k)
            self.origins.pop(k, None)
            self.applying = True
            try:
                lifted = self.blocks.remove(parse_network(text))
            finally:
                self.applying = False
            if lifted:
                log.info("fleet: %s's block of %s is no longer in Redis: lifted here too",
                         member, text)
                self._record("unblock", ip=text, origin=f"fleet:{member}")
            if i % REPUBLISH_BATCH == 0:
                await asyncio.sleep(0)

    async def _load_state(self, r: Any) -> set[str]:
        """Blocks, freezes and whitelist entries in Redis now: applied here. Returns the
        sources of the blocks found."""
        now = time.time()
        blocked: set[str] = set()
        for prefix in (keys.BLOCK, keys.FROZEN):
            names = [k async for k in r.scan_iter(match=prefix + "*", count=1000)]
            if prefix == keys.BLOCK:
                blocked.update(n.decode(errors="replace").removeprefix(prefix) for n in names)
            for i in range(0, len(names), 1000):
                values = await r.mget(names[i:i + 1000])
                for name, raw in zip(names[i:i + 1000], values, strict=True):
                    if raw is not None:
                        self._take(raw, now, f"key {name!r}", snapshot=True)
        for cidr in await r.smembers(keys.ALLOW):
            self._take(wire.encode(wire.AllowMsg(cidr.decode(errors="replace"), True,
                                                 "fleet")), now, f"set {keys.ALLOW}",
                       snapshot=True)
        return blocked

    async def _republish(self) -> None:
        """Redis came back empty: this gateway's blocks go out again with their origin,
        ahead of the changes queued meanwhile. The index is copied in steps and walked
        REPUBLISH_BATCH blocks at a time, the loop free between (a million blocks)."""
        if "blocks" in self.share:
            snap = await snapshot(self.blocks.index)
            now = time.time()
            origins, name, out = self.origins, self.name, self.queue.appendleft
            for i, (k, expires, reason, source, note) in enumerate(snap.rows(), 1):
                if expires > now:
                    out(wire.BlockMsg(key_text(k), expires, reason, source,
                                      origins.get(k, name), now, note))
                if i % REPUBLISH_BATCH == 0:
                    await asyncio.sleep(0)
        if "accounts" in self.share:
            for acc in self.frozen.list():
                self.queue.appendleft(wire.FreezeMsg(acc.user, acc.since, acc.until, self.name,
                                                     acc.service, acc.ip))
        if "whitelist" in self.share:
            for net in self.whitelist.runtime:
                self.queue.appendleft(wire.AllowMsg(network_key(net), True, self.name))

    async def _reader(self, r: Any) -> None:
        while True:
            found = await r.xread({keys.CHANGES: self.last_id}, count=READ_COUNT,
                                 block=READ_BLOCK_MS)
            now = time.time()
            for _stream, entries in found or ():
                for entry_id, fields in entries:
                    self.last_id = entry_id
                    raw = fields.get(b"m")
                    if raw is None:
                        self._skip(f"stream entry {entry_id!r}", "no field m")
                        continue
                    ms = int(entry_id.split(b"-")[0])
                    self._take(raw, now, f"stream entry {entry_id.decode()}",
                               age=now - ms / 1000)

    async def flush(self, timeout: float = 2.0) -> None:
        """At stop: publish what is still queued, if Redis answers within ``timeout``."""
        r = self.link.client
        if r is None or not self.queue or self.link.state != "connected":
            return
        try:
            await asyncio.wait_for(self._publish(r, len(self.queue)), timeout)
        except (RedisError, OSError, TimeoutError) as e:
            log.warning("fleet: %d change(s) not published at stop: %s", len(self.queue), e)

    async def _publish(self, r: Any, n: int) -> None:
        """Write up to n queued changes, 500 to a round trip; each leaves the queue only once
        Redis took it (a failed write keeps it queued)."""
        while n > 0 and self.queue:
            batch = [self.queue[i] for i in range(min(len(self.queue), 500, n))]
            pipe = r.pipeline(transaction=False)
            for msg in batch:
                self._write(pipe, msg)
            await pipe.execute()
            for _ in batch:
                self.queue.popleft()
            self.counters.published += len(batch)
            n -= len(batch)

    async def _writer(self, r: Any) -> None:
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        while True:
            if not self.queue:
                self._wake.clear()
                wait = max(0.0, next_beat - time.monotonic())
                # (asyncio.timeout, not wait_for: a cancel that meets wait_for's own
                # timeout could leave the writer's task hanging at stop on Python 3.11)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            if self.queue:
                await self._publish(r, 500)
            if time.monotonic() >= next_beat:
                await self._heartbeat(r)
                next_beat = time.monotonic() + HEARTBEAT_SECONDS

    def _write(self, pipe: Any, msg: wire.Message) -> None:
        text = wire.encode(msg)
        pipe.xadd(keys.CHANGES, {"m": text}, maxlen=keys.CHANGES_MAXLEN, approximate=True)
        if isinstance(msg, wire.BlockMsg):
            pipe.set(keys.BLOCK + msg.net, text, pxat=max(1, int(msg.expires * 1000)))
        elif isinstance(msg, wire.UnblockMsg):
            pipe.delete(keys.BLOCK + msg.net)
        elif isinstance(msg, wire.FreezeMsg):
            name = keys.FROZEN + account_key(msg.user)
            if msg.until is None:
                pipe.set(name, text)
            else:
                pipe.set(name, text, pxat=max(1, int(msg.until * 1000)))
        elif isinstance(msg, wire.UnfreezeMsg):
            pipe.delete(keys.FROZEN + account_key(msg.user))
        elif isinstance(msg, wire.AllowMsg):
            (pipe.sadd if msg.on else pipe.srem)(keys.ALLOW, msg.cidr)

    async def _prune_origins(self) -> None:
        """Forget the makers of blocks no longer here (expired, lifted), in batches."""
        index, origins = self.blocks.index, self.origins
        ks = list(origins)
        for i in range(0, len(ks), PRUNE_BATCH):
            for k in ks[i:i + PRUNE_BATCH]:
                if k not in index:
                    origins.pop(k, None)
            await asyncio.sleep(0)

    async def _heartbeat(self, r: Any) -> None:
        """Say this member is alive; read who else is."""
        now = time.time()
        self.beats += 1
        if self.beats % PRUNE_EVERY == 0:
            await self._prune_origins()
        me = {"name": self.name, "last_seen": now, "blocks_made": self.blocks_made}
        await r.set(keys.MEMBER + self.name, wire.json.dumps(me), ex=keys.MEMBER_TTL)
        names = [k async for k in r.scan_iter(match=keys.MEMBER + "*", count=1000)]
        seen: dict[str, dict[str, Any]] = {}
        for raw in await r.mget(names) if names else []:
            try:
                info = wire.json.loads(raw)
                name, last, made = info["name"], float(info["last_seen"]), info["blocks_made"]
                if not isinstance(name, str) or not wire.MEMBER.fullmatch(name) \
                        or isinstance(made, bool) or not isinstance(made, int):
                    raise ValueError("bad fields")
            except (ValueError, TypeError, KeyError) as e:
                self._skip("a member entry", str(e))
                continue
            seen[name] = {"name": name, "last_seen": last, "blocks_made": made}
        self.members = seen

    # ---- what other members made ---------------------------------------------------------

    def _skip(self, where: str, why: str) -> None:
        self.counters.skipped += 1
        log.warning("fleet: skipped a bad entry in Redis (%s): %s", where, why[:300])

    def _take(self, raw: bytes | str, now: float, where: str, *, snapshot: bool = False,
              age: float = 0.0) -> None:
        """Check one message from Redis and apply it; a bad one is logged and skipped."""
        try:
            msg = wire.decode(raw, now)
        except wire.WireError as e:
            self._skip(where, str(e))
            return
        if msg.member == self.name and not snapshot:
            return  # our own change, back from the stream
        if isinstance(msg, wire.CountMsg) and age > STALE_COUNT:
            return
        try:
            self.applying = True
            self._apply(msg, now)
            self.counters.applied += 1
        except Exception as e:  # one message never stops the reader
            log.error("fleet: applying %s from %s failed: %s: %s", msg.t, msg.member,
                      type(e).__name__, e)
        finally:
            self.applying = False

    def _apply(self, msg: wire.Message, now: float) -> None:
        if isinstance(msg, wire.BlockMsg):
            if "blocks" in self.share:
                self._apply_block(msg, now)
        elif isinstance(msg, wire.UnblockMsg):
            if "blocks" in self.share:
                net = parse_network(msg.net)
                self.origins.pop(_int_key(net), None)
                if self.blocks.remove(net):
                    log.info("fleet: %s unblocked %s", msg.member, msg.net)
                    self._record("unblock", ip=msg.net, origin=f"fleet:{msg.member}")
        elif isinstance(msg, wire.CountMsg):
            if "counters" in self.share:
                self.host.remote_count(msg)
        elif isinstance(msg, wire.FreezeMsg):
            if "accounts" in self.share:
                self._apply_freeze(msg, now)
        elif isinstance(msg, wire.UnfreezeMsg):
            if "accounts" in self.share and self.frozen.unfreeze(msg.user):
                self.host.remote_unfreeze(msg.user)
                log.info("fleet: %s unfroze account %s", msg.member, msg.user)
        elif isinstance(msg, wire.AllowMsg) and "whitelist" in self.share:
            self._apply_allow(msg)

    def _apply_block(self, msg: wire.BlockMsg, now: float) -> None:
        if msg.expires <= now:
            return
        net = msg.network
        w = self.whitelist.covering(net)
        if w is not None:
            log.info("fleet: block of %s by %s not applied: whitelisted here (%s)", msg.net,
                     msg.member, network_key(w))
            return
        k = _int_key(net)
        old = self.blocks.index.find(SourceKey(k))
        if old is not None and abs(old.expires - msg.expires) < 1.0 \
                and old.reason == msg.reason:
            if msg.member != self.name:
                self.origins.setdefault(k, msg.member)
            return
        if self.blocks.add(net, msg.expires, msg.reason, msg.source, msg.note):
            if msg.member != self.name:
                self.origins[k] = msg.member
            log.info("fleet: %s blocked %s (%s) until %s", msg.member, msg.net, msg.reason,
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(msg.expires)))
            self._record("block", ip=msg.net, reason=msg.reason,
                         origin=f"fleet:{msg.member}",
                         minutes=round(max(0.0, msg.expires - now) / 60, 1),
                         detail=f"made by {msg.member} ({msg.source})")

    def _record(self, action: str, **fields: Any) -> None:
        if self.record is not None:
            self.record(action, **fields)

    def _apply_freeze(self, msg: wire.FreezeMsg, now: float) -> None:
        if msg.until is not None and msg.until <= now:
            return
        minutes = 0.0 if msg.until is None else (msg.until - now) / 60
        acc = self.frozen.freeze(msg.user, now, minutes=minutes, service=msg.service,
                                 ip=msg.ip)
        if acc is not None:
            self.host.remote_freeze(msg.user, msg.until if msg.until is not None
                                    else float("inf"))
            log.warning("fleet: account %s frozen by %s", msg.user, msg.member)

    def _apply_allow(self, msg: wire.AllowMsg) -> None:
        net = parse_network(msg.cidr)
        if msg.on:
            if net not in self.whitelist.runtime:
                self.whitelist.add(net)
                log.info("fleet: %s whitelisted %s", msg.member, msg.cidr)
        elif net in self.whitelist.runtime:
            try:
                self.whitelist.remove(net)
            except (ctlproto.RequestError, ctlproto.OperationError) as e:
                log.warning("fleet: whitelist removal of %s by %s: %s", msg.cidr, msg.member, e)

    # ---- seeing the fleet ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.time()
        members = sorted(self.members.values(), key=lambda m: m["name"])
        return {
            "state": self.link.state,
            "redis": self.link.shown,
            "name": self.name,
            "share": sorted(self.share),
            "queued": len(self.queue),
            "published": self.counters.published,
            "applied": self.counters.applied,
            "skipped": self.counters.skipped,
            "dropped": self.counters.dropped,
            "resyncs": self.counters.resyncs,
            "last_error": self.link.last_error or None,
            "members": [{"name": m["name"], "last_seen_s": round(max(0.0, now - m["last_seen"]),
                                                                   1),
                         "blocks_made": m["blocks_made"]} for m in members],
        }

    def origin_of(self, net: Network) -> str:
        return self.origins.get(_int_key(net), self.name)


def _stream_id(entry_id: bytes) -> tuple[int, int]:
    """A stream entry id (b"<ms>-<seq>") in the order Redis gives them."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _int_key(net: Network) -> int:
    """The block index's key of net (origins are kept by it: no network per block)."""
    return int(SourceKey.from_network(net))


def member_name(cfg: Fleet) -> str:
    """[fleet].name, or the host name (its first label when it is no valid member name)."""
    if cfg.name:
        return cfg.name
    host = socket.gethostname()
    if wire.MEMBER.fullmatch(host):
        return host
    first = host.split(".")[0]
    return first if wire.MEMBER.fullmatch(first) else "gateway"


def open_member(cfg: Fleet, blocks: BlockList, whitelist: Whitelist, frozen: FrozenStore,
                host: Host, *, notice_window: float = 3600.0) -> FleetMember | None:
    """The member, watching the parts it shares; None when [fleet].redis is off."""
    if not cfg.enabled:
        return None
    member = FleetMember(cfg, member_name(cfg), Link(cfg), blocks, whitelist, frozen, host)
    member.notice_window = notice_window
    blocks.watchers.append(member.block_changed)
    whitelist.watchers.append(member.allow_changed)
    frozen.watchers.append(member.freeze_changed)
    return member
