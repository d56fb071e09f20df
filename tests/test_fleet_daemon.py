"""The daemon as a fleet member (a real redis-server on a unix socket): the webhook hears
when the fleet is lost and back; other members' blocks and unblocks are in the history."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_explain import daemon
from test_fleet_member import Gateway, until
from test_webhook import Receiver, wait_for

from dynscreen.control.addr import parse_network
from dynscreen.control.lab.redisserver import RedisServer, available

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed "
                                "(make setup-dev)")


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(password="s3cret-pw") as srv:
        yield srv


def test_the_webhook_hears_the_fleet_degraded_and_restored(server: RedisServer,
                                                           tmp_path: Path) -> None:
    rx = Receiver().start()
    url = f"unix://:s3cret-pw@{server.socket}"
    d, _ = daemon(tmp_path, fleet={"redis": url, "name": "mx1"},
                  notify={"webhook": rx.url, "events": ["fleet_degraded", "fleet_restored"]})

    def named(event: str) -> list[dict]:
        return [e for e in rx.events() if e["event"] == event]

    async def main() -> None:
        assert d.fleet is not None
        d.history.start()
        d._start_webhook()
        task = asyncio.get_running_loop().create_task(d.fleet.run())
        try:
            await until(lambda: d.fleet is not None and d.fleet.link.state == "connected")
            await asyncio.sleep(0.3)
            assert rx.events() == []  # connected from the start: nothing to tell
            server.stop()
            assert await asyncio.to_thread(wait_for, lambda: named("fleet_degraded"))
            server.start()
            assert await asyncio.to_thread(wait_for, lambda: named("fleet_restored"), 15)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await d.fleet.link.close()
            assert d.webhook is not None
            d.webhook.stop()
            d.history.stop()

    try:
        asyncio.run(main())
    finally:
        rx.stop()
    [lost] = named("fleet_degraded")
    assert lost["redis"] == f"unix://{server.socket}" and lost["member"] == "mx1"
    assert lost["error"]  # why: the client library's error
    assert "s3cret" not in str(rx.events())
    [back] = named("fleet_restored")
    assert back["redis"] == lost["redis"] and "error" not in back


def test_blocks_from_other_members_are_in_the_history(server: RedisServer,
                                                      tmp_path: Path) -> None:
    url = f"unix://:s3cret-pw@{server.socket}"
    d, dp = daemon(tmp_path, fleet={"redis": url, "name": "mx1"})

    async def main() -> list[dict]:
        assert d.fleet is not None
        d.history.start()
        other = Gateway("gw-a", url, tmp_path / "gw-a")
        other.start()
        task = asyncio.get_running_loop().create_task(d.fleet.run())
        try:
            await until(lambda: d.fleet is not None and d.fleet.link.state == "connected"
                        and other.member.link.state == "connected")
            net = parse_network("203.0.113.9")
            other.blocks.add(net, time.time() + 600, "auth_failures", "logs")
            await until(lambda: net in dp.blocks)
            other.blocks.remove(net)
            await until(lambda: net not in dp.blocks)
            rows = await asyncio.to_thread(d.history.query, ip="203.0.113.9")
            return [r.to_json() for r in rows]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await d.fleet.link.close()
            await other.stop()
            d.history.stop()

    rows = asyncio.run(main())
    by_action = {r["action"]: r for r in rows}
    assert set(by_action) == {"block", "unblock"}, rows
    assert by_action["block"]["origin"] == "fleet:gw-a"
    assert by_action["block"]["reason"] == "auth_failures"
    assert by_action["unblock"]["origin"] == "fleet:gw-a"
