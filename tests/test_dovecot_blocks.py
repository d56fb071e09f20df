"""The daemon's answer to Dovecot's ``command=allow`` comes from its block index: every
block the kernel enforces is refused, not only those the engine still tracks."""

from __future__ import annotations

import asyncio
import socket
import time
from ipaddress import ip_network
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fakeplane import FakePlane
from test_dovecotpolicy import connect, dovecot_body

from dynscreen.control.blockfile import BlockEntry, BlockFile
from dynscreen.control.blocklist import BlockList
from dynscreen.control.config import from_dict
from dynscreen.control.daemon import Daemon, Options
from dynscreen.control.dovecotpolicy import BLOCKED_MSG, source_blocked


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon(tmp_path: Path, **screening: Any) -> Daemon:
    cfg = from_dict({
        "screening": {"close_session": False, "whitelist": ["127.0.0.0/8", "192.0.2.0/28"],
                      **screening},
        "accounts": {"dovecot_policy_listen": f"127.0.0.1:{free_port()}"},
        "daemon": {"state_file": str(tmp_path / "blocks"), "socket": str(tmp_path / "sock"),
                   "whitelist_file": str(tmp_path / "wl"), "frozen_file": str(tmp_path / "fz"),
                   "history_file": str(tmp_path / "history.sqlite"),
                   "pin_path": str(tmp_path / "no-pins"), "metrics_listen": ""},
    })
    return Daemon(Options(None), cfg, FakePlane(), ["fake0"], [])  # type: ignore[arg-type]


def allow_answers(d: Daemon, addresses: list[str]) -> dict[str, Any]:
    """Start the daemon's blocks (the file adopted, as at start) and its Dovecot policy
    listener, and ask ``command=allow`` for each address over HTTP."""

    async def main() -> dict[str, Any]:
        d.blocks.reconcile(d.keeper.read_at_start() or [], time.time())
        await d._start_dovecot_policy()
        assert d.dovecot_policy is not None
        client = await connect(d.dovecot_policy)
        try:
            out = {}
            for a in addresses:
                status, answer = await client.ask("allow", dovecot_body("allow", remote=a))
                assert status == 200
                out[a] = answer
            return out
        finally:
            client.close()
            await d.dovecot_policy.close()

    return asyncio.run(main())


def test_manual_file_and_range_blocks_are_refused(tmp_path: Path) -> None:
    now = time.time()
    # A block in the file at start (made before this daemon: the engine never heard of it).
    BlockFile(tmp_path / "blocks").save(
        [BlockEntry(ip_network("203.0.113.20/32"), now + 600, "manual", "from the file")], now)
    d = daemon(tmp_path)
    d.blocks.add(ip_network("203.0.113.30/32"), now + 600, "manual", "manual")  # by hand
    d.blocks.add(ip_network("198.51.100.0/24"), now + 600, "manual", "manual")  # a range
    d.blocks.add(ip_network("2001:db8:7::/48"), now + 600, "manual", "fleet")  # a fleet range
    d.blocks.add(ip_network("192.0.2.0/24"), now + 600, "manual", "manual")  # over a whitelist
    d.blocks.add(ip_network("203.0.113.40/32"), now - 1, "manual", "manual")  # expired, unswept
    refused = ["203.0.113.20", "203.0.113.30", "198.51.100.77", "2001:db8:7:1::5",
               "::ffff:198.51.100.8"]
    allowed = ["203.0.113.21", "192.0.2.5", "203.0.113.40", "not-an-address"]
    answers = allow_answers(d, refused + allowed)
    for a in refused:
        assert answers[a] == {"status": -1, "msg": BLOCKED_MSG}, a
    for a in allowed:
        assert answers[a] == {"status": 0}, a
    assert d.dovecot_policy is not None and d.dovecot_policy.rejects == len(refused)


def test_a_block_the_engine_forgot_is_still_refused(tmp_path: Path) -> None:
    """The engine tracks at most max_tracked sources: the ones it evicted are still
    blocked in the kernel, so still refused."""
    d = daemon(tmp_path, max_tracked=10)
    now = time.time()
    blocked = [f"203.0.113.{i}" for i in range(1, 40)]
    for a in blocked:
        d.blocks.add(ip_network(a), now + 600, "auth_failures", "logs")
    assert not d.engine.is_blocked(blocked[0], now), "the engine forgot the first ones"
    answers = allow_answers(d, blocked[:3])
    assert all(answers[a]["status"] == -1 for a in blocked[:3])


def test_monitor_mode_refuses_nothing(tmp_path: Path) -> None:
    d = daemon(tmp_path, mode="monitor")
    d.blocks.add(ip_network("203.0.113.30/32"), time.time() + 600, "manual", "manual")
    assert allow_answers(d, ["203.0.113.30"])["203.0.113.30"] == {"status": 0}


def test_the_lookup_asks_the_index_for_its_covering_blocks_only() -> None:
    """Never every block: current(), select() and the kernel's rows are not asked."""
    dp = FakePlane(max_blocks=20_000)
    blocks = BlockList(dp, lambda net, until: None)  # type: ignore[arg-type]
    now = time.time()
    for i in range(10_000):
        blocks.add(ip_network(f"10.0.{i >> 8}.{i & 255}"), now + 600, "manual", "manual")

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("walked every block")

    for name in ("current", "select", "snapshot", "entries"):
        setattr(blocks, name, refuse)
    dp.read_rows = refuse  # type: ignore[method-assign]
    nobody = SimpleNamespace(covering=lambda net: None)  # an empty whitelist
    assert source_blocked(blocks, nobody, "10.0.3.7", now)
    assert not source_blocked(blocks, nobody, "10.1.3.7", now)
    assert not source_blocked(blocks, nobody, "10.0.3.7", now + 601)  # expired by then
