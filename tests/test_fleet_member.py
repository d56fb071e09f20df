"""Fleet members sharing through a real redis-server (a unix socket in a temp folder).

Each gateway here is the parts the fleet works with (block list on a fake data
plane, whitelist, frozen accounts, a real engine) and a FleetMember, all in one
event loop; the namespace lab (test_fleet_lab.py) runs whole daemons.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from fakeplane import FakePlane

from dynscreen.control.accounts import FrozenStore
from dynscreen.control.addr import parse_network
from dynscreen.control.blocklist import BlockList
from dynscreen.control.config import Config, from_dict
from dynscreen.control.decisions import Block
from dynscreen.control.engine import Engine
from dynscreen.control.events import Event
from dynscreen.control.fleet import keys, wire
from dynscreen.control.fleet.member import FleetMember, open_member
from dynscreen.control.lab.redisserver import RedisServer, available
from dynscreen.control.whitelist import Whitelist

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed "
                                "(make setup-dev)")


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


class Gateway:
    """The parts of one daemon the fleet touches, joined as the daemon joins them."""

    def __init__(self, name: str, url: str, folder: Path, *, auth_failures: int = 5,
                 extra: dict | None = None) -> None:
        folder.mkdir()
        fleet = {"redis": url, "name": name, **(extra or {})}
        self.cfg: Config = from_dict({"screening": {"limits": {"auth_failures": auth_failures}},
                                      "fleet": fleet})
        self.now = time.time()
        self.dp = FakePlane()
        self.engine = Engine(self.cfg, now=self.now)
        self.blocks = BlockList(self.dp, self._hear)  # type: ignore[arg-type]
        self.whitelist = Whitelist([], folder / "whitelist", self.dp, self.engine, self.blocks)
        self.frozen = FrozenStore(folder / "frozen")
        member = open_member(self.cfg.fleet, self.blocks, self.whitelist, self.frozen, self)
        assert member is not None
        self.member: FleetMember = member
        self.engine.share_counts("counters" in self.cfg.fleet.share)
        self.task: asyncio.Task[None] | None = None

    def _hear(self, net, until) -> None:  # noqa: ANN001
        if until is None:
            self.engine.note_unblock(net)
        else:
            self.engine.note_block(net, until, now=time.time())

    def apply(self, decisions: list) -> None:
        for d in decisions:
            if isinstance(d, Block):
                self.blocks.add(d.source, time.time() + d.minutes * 60, d.reason, "logs",
                                decided=True)

    def feed(self, ev: Event) -> None:
        self.apply(self.engine.feed(ev, time.time()))
        self.member.counted(self.engine.take_counted())

    def remote_count(self, msg: wire.CountMsg) -> None:
        self.apply(self.engine.feed_remote(msg.limit, msg.ip, msg.n, time.time(), msg.host))

    def remote_freeze(self, user: str, until: float) -> None:
        self.engine.note_freeze(user, until)

    def remote_unfreeze(self, user: str) -> None:
        self.engine.note_unfreeze(user)

    def blocked(self) -> dict[str, tuple[float, str]]:
        return {str(b.source.network_address) if b.source.prefixlen == 32 else str(b.source):
                (b.expires, b.reason) for b in self.dp.list_blocks()}

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.member.run())

    async def pause(self) -> None:
        """Away from the fleet (the member's task ended), keeping its place in the stream."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    async def stop(self) -> None:
        await self.pause()
        await self.member.link.close()


Scenario = Callable[..., Awaitable[None]]


def fleet_test(fn: Scenario) -> Callable[..., None]:
    """An async scenario as a test: run in a loop of its own with ``fleet(name)`` making
    started members on the test's redis-server; every member is stopped after."""
    def test(server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        async def play() -> None:
            made: list[Gateway] = []

            def make(name: str, **kw: object) -> Gateway:
                gw = Gateway(name, server.unix_url, tmp_path / name, **kw)  # type: ignore[arg-type]
                gw.start()
                made.append(gw)
                return gw

            try:
                await fn(make, server, caplog)
            finally:
                for gw in made:
                    await gw.stop()

        asyncio.run(play())

    test.__name__ = fn.__name__
    test.__doc__ = fn.__doc__
    return test


async def until(pred: Callable[[], object], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def connected(*gws: Gateway) -> None:
    await until(lambda: all(g.member.link.state == "connected" for g in gws))


def fail(ip: str) -> Event:
    return Event("auth_failure", ip, time.time(), "smtp", "bob", origin="postfix")


# --- blocks ---------------------------------------------------------------------------------


@fleet_test
async def test_a_block_reaches_every_member_with_its_expiry(fleet, server, caplog) -> None:
    a, b, c = fleet("gw-a"), fleet("gw-b"), fleet("gw-c")
    await connected(a, b, c)
    until_t = time.time() + 600
    assert a.blocks.add(parse_network("192.0.2.7"), until_t, "manual", "manual", "ticket 9")
    t0 = time.monotonic()
    await until(lambda: "192.0.2.7" in b.blocked() and "192.0.2.7" in c.blocked(), 1.0)
    assert time.monotonic() - t0 < 1.0
    for gw in (b, c):
        expires, reason = gw.blocked()["192.0.2.7"]
        assert abs(expires - until_t) < 0.01 and reason == "manual"
        assert gw.member.origin_of(parse_network("192.0.2.7")) == "gw-a"
        assert gw.blocks.find(parse_network("192.0.2.7")).note == "ticket 9"
    # Not echoed back: gw-a made one block, and published once.
    await asyncio.sleep(0.3)
    assert a.member.blocks_made == 1 and b.member.blocks_made == 0


@fleet_test
async def test_an_unblock_anywhere_lifts_it_everywhere(fleet, server, caplog) -> None:
    a, b = fleet("gw-a"), fleet("gw-b")
    await connected(a, b)
    net = parse_network("198.51.100.0/24")
    a.blocks.add(net, time.time() + 600, "manual", "manual")
    await until(lambda: "198.51.100.0/24" in b.blocked())
    assert b.blocks.remove(net)
    await until(lambda: "198.51.100.0/24" not in a.blocked())
    assert not server.client().exists(keys.BLOCK + "198.51.100.0/24")


@fleet_test
async def test_the_local_whitelist_wins(fleet, server, caplog) -> None:
    a, b = fleet("gw-a"), fleet("gw-b")
    await connected(a, b)
    b.whitelist.config = [parse_network("203.0.113.0/24")]  # b's own config whitelist
    a.blocks.add(parse_network("203.0.113.5"), time.time() + 600, "manual", "manual")
    a.blocks.add(parse_network("192.0.2.1"), time.time() + 600, "manual", "manual")
    await until(lambda: "192.0.2.1" in b.blocked())
    assert "203.0.113.5" not in b.blocked()
    # b lifting a block because of its whitelist does not unblock the fleet
    b.whitelist.config.append(parse_network("192.0.2.1"))
    b.whitelist.lift_covered()
    await asyncio.sleep(0.5)
    assert "192.0.2.1" in a.blocked()
    assert server.client().exists(keys.BLOCK + "192.0.2.1")


@fleet_test
async def test_a_member_starting_late_gets_the_current_blocks(fleet, server, caplog) -> None:
    a = fleet("gw-a")
    await connected(a)
    for i in range(20):
        a.blocks.add(parse_network(f"192.0.2.{i}"), time.time() + 600, "manual", "manual")
    await until(lambda: not a.member.queue)
    late = fleet("gw-late")
    await until(lambda: len(late.blocked()) == 20)
    assert late.member.origin_of(parse_network("192.0.2.3")) == "gw-a"


# --- counters -------------------------------------------------------------------------------


@fleet_test
async def test_failures_over_three_gateways_block_at_the_fifth(fleet, server, caplog) -> None:
    a, b, c = fleet("gw-a"), fleet("gw-b"), fleet("gw-c")
    await connected(a, b, c)
    ip = "192.0.2.50"
    for gw in (a, b, c, a):  # four failures: under the limit everywhere
        gw.feed(fail(ip))
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    assert all(ip not in gw.blocked() for gw in (a, b, c))
    assert all(gw.engine.counters(ip)["auth_failures"] == 4 for gw in (a, b, c))
    b.feed(fail(ip))  # the fifth, on b
    assert ip in b.blocked()
    await until(lambda: ip in a.blocked() and ip in c.blocked(), 1.0)


@fleet_test
async def test_local_de_duplication_stays_local(fleet, server, caplog) -> None:
    """One attempt described by Postfix and by Dovecot's auth process counts once, fleet-wide."""
    a, b = fleet("gw-a"), fleet("gw-b")
    await connected(a, b)
    ip = "192.0.2.60"
    a.feed(Event("auth_failure", ip, time.time(), "smtp", "bob", origin="dovecot-auth"))
    a.feed(Event("auth_failure", ip, time.time(), "smtp", "bob", origin="postfix"))
    await until(lambda: b.engine.counters(ip)["auth_failures"] == 1)
    await asyncio.sleep(0.3)
    assert b.engine.counters(ip)["auth_failures"] == 1
    assert a.engine.counters(ip)["auth_failures"] == 1


# --- accounts and whitelist -----------------------------------------------------------------


@fleet_test
async def test_a_freeze_and_an_unfreeze_hold_everywhere(fleet, server, caplog) -> None:
    a, b = fleet("gw-a"), fleet("gw-b")
    await connected(a, b)
    a.frozen.freeze("alice@example.org", time.time(), minutes=30, service="smtp",
                    ip="192.0.2.9")
    await until(lambda: b.frozen.is_frozen("alice@example.org", time.time()))
    acc = b.frozen.get("alice@example.org")
    assert acc is not None and acc.until is not None
    assert abs(acc.until - a.frozen.get("alice@example.org").until) < 1  # type: ignore[union-attr]
    b.frozen.unfreeze("ALICE@example.org")
    await until(lambda: not a.frozen.is_frozen("alice@example.org", time.time()))


@fleet_test
async def test_a_runtime_whitelist_entry_reaches_every_member(fleet, server, caplog) -> None:
    a, b = fleet("gw-a"), fleet("gw-b")
    await connected(a, b)
    b.blocks.add(parse_network("192.0.2.77"), time.time() + 600, "manual", "manual")
    a.whitelist.add(parse_network("192.0.2.64/26"))
    await until(lambda: parse_network("192.0.2.64/26") in b.whitelist.runtime)
    await until(lambda: "192.0.2.77" not in b.blocked())
    a.whitelist.remove(parse_network("192.0.2.64/26"))
    await until(lambda: not b.whitelist.runtime)


# --- trust ----------------------------------------------------------------------------------


@fleet_test
async def test_bad_entries_are_logged_and_skipped(fleet, server, caplog) -> None:
    r = server.client()
    r.set(keys.BLOCK + "junk", b"{not json")
    r.set(keys.BLOCK + "192.0.2.200", json.dumps({
        "t": "block", "net": "192.0.2.200", "expires": time.time() + 10 * 3660 * 86400,
        "reason": "manual", "source": "manual", "member": "evil", "made_at": 0}))
    caplog.set_level(logging.WARNING, "dynscreen.fleet")
    a = fleet("gw-a")
    await connected(a)
    r.xadd(keys.CHANGES, {"m": json.dumps({"t": "block", "net": "999.1.1.1", "expires": 1,
                                           "reason": "manual", "source": "manual",
                                           "member": "x", "made_at": 0})})
    r.xadd(keys.CHANGES, {"m": json.dumps({"t": "block", "net": "192.0.2.201",
                                           "expires": time.time() + 60, "reason": "because",
                                           "source": "manual", "member": "x", "made_at": 0})})
    r.xadd(keys.CHANGES, {"other": "x"})
    good = wire.BlockMsg("192.0.2.202", time.time() + 60, "manual", "manual", "gw-z",
                         time.time())
    r.xadd(keys.CHANGES, {"m": wire.encode(good)})
    await until(lambda: "192.0.2.202" in a.blocked())
    assert set(a.blocked()) == {"192.0.2.202"}
    assert a.member.counters.skipped == 5
    said = [rec.getMessage() for rec in caplog.records]
    assert any("not JSON" in m for m in said)
    assert any("beyond the longest block" in m for m in said)
    assert any("999.1.1.1" in m for m in said)
    assert any("unknown reason 'because'" in m for m in said)
    assert any("no field m" in m for m in said)


# --- Redis down -----------------------------------------------------------------------------


@fleet_test
async def test_redis_down_then_back_empty_every_member_ends_with_every_block(
        fleet, server, caplog) -> None:
    caplog.set_level(logging.WARNING, "dynscreen.fleet")
    a, b = fleet("gw-a"), fleet("gw-b")
    await connected(a, b)
    a.blocks.add(parse_network("192.0.2.1"), time.time() + 600, "manual", "manual")
    await until(lambda: "192.0.2.1" in b.blocked())
    server.stop()
    for gw, ip in ((a, "192.0.2.2"), (b, "192.0.2.3"), (a, "192.0.2.4")):
        gw.blocks.add(parse_network(ip), time.time() + 600, "manual", "manual")
    await until(lambda: a.member.link.state == "degraded" and b.member.link.state == "degraded")
    assert a.member.status()["state"] == "degraded" and len(a.member.queue) == 2
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    server.start()  # empty: persistence is off
    want = {"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"}
    await until(lambda: set(a.blocked()) == want and set(b.blocked()) == want, 10)
    await connected(a, b)
    stored = {k.decode().removeprefix(keys.BLOCK)
              for k in server.client().scan_iter(keys.BLOCK + "*")}
    await until(lambda: {k.decode().removeprefix(keys.BLOCK)
                         for k in server.client().scan_iter(keys.BLOCK + "*")} == want, 3)
    assert stored <= want
    assert b.member.origin_of(parse_network("192.0.2.2")) == "gw-a"


def test_a_password_file_works_and_is_never_shown(tmp_path: Path) -> None:
    asyncio.run(_password_file(tmp_path))


async def _password_file(tmp_path: Path) -> None:
    secret = "s3cret-pw"
    with RedisServer(password=secret) as srv:
        (tmp_path / "pw").write_text(secret + "\n")
        # The file's password wins over a wrong one in the URL.
        gw = Gateway("gw-a", f"unix://:wrong@{srv.socket}", tmp_path / "gw",
                     extra={"password_file": str(tmp_path / "pw")})
        gw.start()
        try:
            await connected(gw)
            st = gw.member.status()
            assert secret not in json.dumps(st)
        finally:
            await gw.stop()
    bad = Gateway("gw-b", f"redis://:{secret}@127.0.0.1:1/0", tmp_path / "gw2")
    bad.start()
    try:
        await until(lambda: bad.member.link.last_error)
        assert secret not in json.dumps(bad.member.status())
        assert bad.member.status()["redis"] == "redis://127.0.0.1:1/0"
    finally:
        await bad.stop()


@fleet_test
async def test_status_shows_the_members(fleet, server, caplog) -> None:
    a, b = fleet("gw-a"), fleet("gw-b")
    await connected(a, b)
    a.blocks.add(parse_network("192.0.2.1"), time.time() + 600, "manual", "manual")
    await until(lambda: {m["name"] for m in b.member.status()["members"]} == {"gw-a", "gw-b"}
                and any(m["blocks_made"] == 1 for m in b.member.status()["members"]), 6)
    st = b.member.status()
    assert st["state"] == "connected" and st["redis"].startswith("unix://")
    for m in st["members"]:
        assert set(m) == {"name", "last_seen_s", "blocks_made"} and m["last_seen_s"] < 5


@fleet_test
async def test_one_postmaster_notice_per_account_and_window_fleet_wide(
        fleet, server, caplog) -> None:
    a, b, c = fleet("gw-a"), fleet("gw-b"), fleet("gw-c")
    await connected(a, b, c)
    sent: list[str] = []
    for gw in (a, b, c, a):
        gw.member.claim_notice("Bob@example.org", lambda gw=gw: sent.append(gw.member.name))
    await until(lambda: server.client().exists(keys.NOTICE + "bob@example.org"))
    await asyncio.sleep(0.3)
    assert len(sent) == 1
    assert 0 < server.client().ttl(keys.NOTICE + "bob@example.org") <= 3600
    c.member.claim_notice("carol@example.org", lambda: sent.append("carol"))
    await until(lambda: "carol" in sent)


def test_tls_works_and_checks_the_certificate(tmp_path: Path) -> None:
    """rediss:// to a redis-server on 127.0.0.1 with a self-signed certificate: trusted
    through ?ssl_ca_certs=, refused (degraded) without it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RedisServer(bind="127.0.0.1", port=port, tls=True) as srv:
        asyncio.run(_tls(srv, tmp_path))


async def _tls(srv: RedisServer, tmp_path: Path) -> None:
    good = Gateway("gw-a", f"{srv.tcp_url}?ssl_ca_certs={srv.ca}", tmp_path / "a")
    bad = Gateway("gw-b", srv.tcp_url, tmp_path / "b")
    good.start()
    bad.start()
    try:
        await connected(good)
        good.blocks.add(parse_network("192.0.2.1"), time.time() + 60, "manual", "manual")
        await until(lambda: srv.client().exists(keys.BLOCK + "192.0.2.1"))
        await until(lambda: "certificate" in bad.member.link.last_error.lower())
        assert bad.member.link.state == "degraded"
    finally:
        await good.stop()
        await bad.stop()


@fleet_test
async def test_what_is_queued_at_stop_is_published(fleet, server, caplog) -> None:
    a = fleet("gw-a")
    await connected(a)
    assert a.task is not None
    a.task.cancel()  # the daemon stops its tasks first ...
    await asyncio.gather(a.task, return_exceptions=True)
    a.blocks.add(parse_network("192.0.2.99"), time.time() + 60, "manual", "manual")
    assert len(a.member.queue) == 1
    await a.member.flush()  # ... then flushes the fleet's queue
    assert not a.member.queue
    assert server.client().exists(keys.BLOCK + "192.0.2.99")


# --- a large table --------------------------------------------------------------------------


def test_a_republish_walks_the_index_in_batches_yielding_to_the_loop(tmp_path: Path) -> None:
    """No Redis needed: the re-publish queues every block with its origin member, and the
    loop gets turns while it runs (a million blocks must not stall it)."""
    from dynscreen.control.fleet import member as member_mod
    from dynscreen.control.sourcekey import SourceKey

    n = 3 * member_mod.REPUBLISH_BATCH + 17
    gw = Gateway("gw-a", "redis://127.0.0.1:1/0", tmp_path / "gw-a")
    gw.dp.max_blocks = 10**6
    now = time.time()
    for i in range(n):
        gw.blocks.add(parse_network(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"),
                      now + 600, "manual", "manual")
    gw.blocks.add(parse_network("10.255.0.1"), now - 1, "manual", "manual")  # expired
    other = parse_network("10.255.0.2")
    gw.blocks.add(other, now + 600, "auth_failures", "logs")
    gw.member.origins[int(SourceKey.from_network(other))] = "gw-b"  # made by another member
    gw.member.queue.clear()
    gw.member.queue.append(wire.UnblockMsg("10.0.0.1", "gw-a"))  # queued meanwhile

    async def play() -> int:
        turns = 0
        done = False

        async def other_work() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        ticker = asyncio.get_running_loop().create_task(other_work())
        await asyncio.sleep(0)
        start = turns
        await gw.member._republish()
        done = True
        await ticker
        return turns - start

    turns = asyncio.run(play())
    assert turns >= 3  # the loop ran between the batches
    queued = list(gw.member.queue)
    assert isinstance(queued[-1], wire.UnblockMsg)  # the newer change stays after them
    blocks = {m.net: m for m in queued if isinstance(m, wire.BlockMsg)}
    assert len(blocks) == n + 1 and "10.255.0.1" not in blocks
    assert blocks["10.255.0.2"].member == "gw-b" and blocks["10.255.0.2"].reason == \
        "auth_failures"
    assert blocks["10.0.0.5"].member == "gw-a" and blocks["10.0.0.5"].source == "manual"
    assert abs(blocks["10.0.0.5"].expires - (now + 600)) < 0.01


@fleet_test
async def test_a_member_away_longer_than_the_stream_keeps_reads_the_state_again(
        fleet, server, caplog) -> None:
    """Changes trimmed off the stream while a member was away (its link down, Redis up):
    the member sees the gap on reconnecting and reads the fleet's state instead."""
    caplog.set_level(logging.INFO, "dynscreen.fleet")
    a, b = fleet("gw-a"), fleet("gw-b")
    await connected(a, b)
    for ip in ("192.0.2.1", "192.0.2.9"):
        a.blocks.add(parse_network(ip), time.time() + 600, "manual", "manual")
    await until(lambda: set(b.blocked()) == {"192.0.2.1", "192.0.2.9"})
    await b.pause()
    a.blocks.remove(parse_network("192.0.2.1"))
    a.blocks.add(parse_network("192.0.2.5"), time.time() + 600, "manual", "manual")
    await until(lambda: not a.member.queue)
    redis = server.client()
    redis.xtrim(keys.CHANGES, maxlen=0, approximate=False)  # the stream moved on without b
    a.blocks.add(parse_network("192.0.2.6"), time.time() + 600, "manual", "manual")
    await until(lambda: not a.member.queue)
    b.start()
    await until(lambda: set(b.blocked()) == {"192.0.2.5", "192.0.2.6", "192.0.2.9"}, 10)
    assert b.member.status()["resyncs"] == 1
    assert any("had not read yet" in r.getMessage() for r in caplog.records)
    assert any("192.0.2.1 is no longer in Redis" in r.getMessage() for r in caplog.records)


@fleet_test
async def test_a_member_away_briefly_just_reads_on(fleet, server, caplog) -> None:
    a, b = fleet("gw-a"), fleet("gw-b")
    await connected(a, b)
    a.blocks.add(parse_network("192.0.2.1"), time.time() + 600, "manual", "manual")
    await until(lambda: "192.0.2.1" in b.blocked())
    await b.pause()
    a.blocks.remove(parse_network("192.0.2.1"))
    await until(lambda: not a.member.queue)
    b.start()
    await until(lambda: not b.blocked(), 10)
    assert b.member.status()["resyncs"] == 0
