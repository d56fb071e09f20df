"""The control-socket commands without a kernel: the room runs on a fake data plane.

Requests go through ControlServer.answer (the protocol's decoding and error
codes), the parts are the real BlockList, BlockFileKeeper, Whitelist and
FrozenStore, the host is a stand-in for the daemon.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from fakeplane import FakePlane

from dynscreen.control import ctlproto
from dynscreen.control.accounts import FrozenStore
from dynscreen.control.blockfile import BlockFile
from dynscreen.control.blockkeeper import BlockFileKeeper
from dynscreen.control.blocklist import BlockList
from dynscreen.control.commands import Commands
from dynscreen.control.config import Config, from_dict
from dynscreen.control.ctlserver import ControlServer
from dynscreen.control.dataplane.blocktable import KernelRow
from dynscreen.control.engine import Engine
from dynscreen.control.metrics import Metrics
from dynscreen.control.sourcekey import SourceKey
from dynscreen.control.whitelist import Whitelist


class Host:
    """The daemon's side, as the commands see it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.closed: list[Any] = []
        self.reloads = 0
        self.detached = False
        self.told: list[dict[str, Any]] = []

    def close_sessions(self, net: Any) -> None:
        self.closed.append(net)

    def status_parts(self) -> dict[str, Any]:
        return {"counters": {"log_events": 7}, "started": 1.0, "logs": [],
                "daemon": {"running": True, "loop_stall_max_ms": 0.0}}

    async def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return {"config": None, "unblocked": 0}

    def detach(self) -> list[str]:
        self.detached = True
        return ["fake0"]

    def tell(self, action: str, **fields: Any) -> None:
        self.told.append({"action": action, **fields})

    async def explain(self, net: Any) -> dict[str, Any]:
        return {"ip": str(net)}

    async def history_rows(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"rows": [], "dropped": 0}


class Room:
    def __init__(self, tmp: Path) -> None:
        self.cfg = from_dict({"screening": {"whitelist": ["192.0.2.0/28"]}})
        self.dp = FakePlane()
        self.engine = Engine(self.cfg, now=time.time())
        self.heard: list[tuple[Any, float | None]] = []
        self.blocks = BlockList(self.dp, lambda n, u: self.heard.append((n, u)))  # type: ignore[arg-type]
        self.keeper = BlockFileKeeper(self.blocks, BlockFile(tmp / "blocks"))
        self.whitelist = Whitelist(list(self.cfg.screening.whitelist), tmp / "whitelist",
                                   self.dp, self.engine, self.blocks)  # type: ignore[arg-type]
        self.frozen = FrozenStore(tmp / "frozen")
        self.frozen.load()
        self.host = Host(self.cfg)
        self.commands = Commands(self.host, self.dp, self.blocks, self.keeper,  # type: ignore[arg-type]
                                 self.whitelist, self.frozen, self.engine, Metrics())
        self.server = ControlServer(tmp / "sock", self.commands.handlers())

    async def ask(self, cmd: str, **args: Any) -> dict[str, Any]:
        reply = await self.server.answer(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        if isinstance(reply, ctlproto.Streamed):  # as the server sends it, piece by piece
            reply = reply.opening() + "".join(reply.texts).encode() + reply.closing()
        return json.loads(reply)  # type: ignore[no-any-return]


@pytest.fixture
def room(tmp_path: Path) -> Room:
    return Room(tmp_path)


def test_the_protocols_list_is_the_only_list(room: Room,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every protocol command is served by the method of its name; a command added to the
    protocol without a handler fails when the room is built, not when a client asks."""
    assert sorted(room.commands.handlers()) == sorted(ctlproto.COMMANDS)
    monkeypatch.setattr(ctlproto, "COMMANDS", (*ctlproto.COMMANDS, "frobnicate"))
    with pytest.raises(AttributeError, match="frobnicate"):
        room.commands.handlers()


def test_block_unblock_and_the_whitelist_without_a_kernel(room: Room) -> None:
    async def main() -> None:
        r = await room.ask("block", addr="203.0.113.9", minutes=5, note="by hand")
        assert r["ok"] and r["result"]["block"]["ip"] == "203.0.113.9"
        assert r["result"]["block"]["note"] == "by hand"
        net = ip_network("203.0.113.9/32")
        assert net in room.dp.blocks and room.host.closed == [net]
        assert not room.keeper.path.exists(), "the reply does not wait for the file"
        # ... but a crash now loses neither the block nor its note: noted at once
        (row,) = room.keeper.read_at_start() or []
        assert (str(SourceKey(row.source)), row.note, row.origin) == \
            ("203.0.113.9", "by hand", "manual")
        await room.keeper.save_now()  # what the keeper's task does within a second
        assert "203.0.113.9 " in room.keeper.path.read_text()
        assert [n for n, _ in room.heard] == [net], "a manual block reaches the engine"
        r = await room.ask("block", addr="192.0.2.3")
        assert r == {"ok": False, "error": "192.0.2.3 is whitelisted (192.0.2.0/28): remove "
                     "it from the whitelist first", "code": 2}
        r = await room.ask("block", addr="203.0.113.10", minutes=-1)
        assert r["code"] == 2 and "minutes must be more than 0" in r["error"]
        r = await room.ask("allow_add", cidr="203.0.113.0/24")
        assert r["result"]["unblocked"] == 1 and net not in room.dp.blocks
        assert ip_network("203.0.113.0/24") in room.dp.whitelisted
        assert (room.whitelist.path).read_text().strip().endswith("203.0.113.0/24")
        r = await room.ask("allow_remove", cidr="192.0.2.0/28")
        assert r["code"] == 2 and "config file" in r["error"]
        r = await room.ask("allow_remove", cidr="203.0.113.0/24")
        assert r["ok"] and ip_network("203.0.113.0/24") not in room.dp.whitelisted
        r = await room.ask("unblock", addr="203.0.113.9")
        assert r["result"] == {"removed": False}
        await room.ask("block", addr="203.0.113.11")
        await room.keeper.save_now()
        assert "203.0.113.11" in room.keeper.path.read_text()
        assert (await room.ask("unblock", addr="203.0.113.11"))["result"] == {"removed": True}
        assert "203.0.113.11" in room.keeper.path.read_text(), "the reply did not wait"
        # ... but the unblock is noted at once: a crash now does not restore it at start
        assert room.keeper.pending_path.read_text().splitlines()[-1] == "-203.0.113.11"
        assert [r.source for r in room.keeper.read_at_start() or []] == []
        await room.keeper.save_now()
        assert "203.0.113.11" not in room.keeper.path.read_text()
        assert not room.keeper.pending_path.exists(), "forgotten once the file shows it"
        status = (await room.ask("status"))["result"]
        assert status["counters"] == {"packets": 0, "blocks_refused": 0, "log_events": 7}
        assert status["interfaces"] == {"fake0": "generic"} and "loop_stall_max_ms" in \
            status["daemon"]
        assert (await room.ask("detach"))["result"] == {"detached": ["fake0"]}
        assert room.host.detached
        await room.keeper.stop()

    asyncio.run(main())


def test_block_file_edits_go_through_the_keeper(room: Room) -> None:
    async def main() -> None:
        await room.ask("block", addr="198.51.100.7", minutes=60)
        text = (await room.ask("blocks_text"))["result"]["text"]
        assert "198.51.100.7" in text
        edited = text.replace("198.51.100.7", "198.51.100.8")
        r = await room.ask("blocks_apply", text=edited, base=text)
        assert r["result"] == {"added": 1, "removed": 1, "changed": 0}
        assert set(room.dp.blocks) == {ip_network("198.51.100.8/32")}
        assert "198.51.100.8" in room.keeper.path.read_text(), "saved at once"
        r = await room.ask("blocks_apply", text="not a block\n")
        assert r["code"] == 2 and str(room.keeper.path) in r["error"]
        await room.keeper.stop()

    asyncio.run(main())


def test_status_answers_from_the_index_with_limit_filters_and_a_streamed_all(
        room: Room) -> None:
    """`status` over the real socket: the newest N, the filters, and `all` streamed in
    pieces (each made in a worker thread) that join into one JSON reply."""
    now = time.time()
    rows = [KernelRow(SourceKey.parse(f"10.8.{i // 250}.{i % 250}"), now + 600 + i, i % 7,
                      "rsets" if i % 3 else "connections", "kernel") for i in range(20_000)]
    room.blocks.index.load(rows, made_at=now - 5)
    room.blocks.add(ip_network("198.51.100.0/24"), now + 60, "manual", "manual", "newest")

    async def main() -> None:
        await room.server.start()
        try:
            st = (await room.ask("status", limit=3))["result"]
            assert st["block_count"] == 20_001 and len(st["blocks"]) == 3
            assert st["blocks"][0]["ip"] == "198.51.100.0/24"
            assert st["blocks_by_reason"] == {"rsets": 13_333, "connections": 6_667,
                                              "manual": 1}
            st = (await room.ask("status", ip="10.8.3.7"))["result"]
            assert [b["ip"] for b in st["blocks"]] == ["10.8.3.7"]
            st = (await room.ask("status", reason="connections", source="kernel",
                                 limit=10_000))["result"]
            assert len(st["blocks"]) == 6_667 and st["blocks_shown"] == 10_000
            assert (await room.ask("status", limit=-1))["code"] == 2

            def every() -> dict[str, Any]:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(60)
                    s.connect(str(room.server.path))
                    s.sendall(b'{"cmd": "status", "all": true}\n')
                    return json.loads(s.makefile("rb").readline())  # type: ignore[no-any-return]
            got = (await asyncio.to_thread(every))["result"]
            assert got["blocks_shown"] == "all" and got["counters"]["log_events"] == 7
            assert len(got["blocks"]) == 20_001 and got["blocks"][0]["note"] == "newest"
            assert {b["ip"] for b in got["blocks"]} == \
                {str(r.source) for r in rows} | {"198.51.100.0/24"}
        finally:
            await room.server.close()
            await room.keeper.stop()

    asyncio.run(main())


def test_the_block_file_text_is_streamed_in_pieces(room: Room,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`blocks edit`'s text at a million lines is never joined or JSON-encoded whole on
    the loop: the reply comes in pieces, and decodes to the same text."""
    import dynscreen.control.blocksave as blocksave

    monkeypatch.setattr(blocksave, "CHUNK_LINES", 2)

    async def main() -> None:
        for i, note in enumerate(['say "hi"', "café ☕ \\ back", "plain", None, "𝄞 clef"]):
            await room.ask("block", addr=f"198.51.100.{i + 1}", minutes=60, note=note)
        reply = await room.server.answer(b'{"cmd": "blocks_text"}\n')
        assert isinstance(reply, ctlproto.Streamed)
        pieces = list(reply.texts)
        assert len(pieces) > 4
        got = json.loads(reply.opening() + "".join(pieces).encode() + reply.closing())
        assert got["result"] == {"path": str(room.keeper.path),
                                 "text": await room.keeper.text()}
        assert 'say \\"hi\\"' in got["result"]["text"] and "☕" in got["result"]["text"]
        await room.keeper.stop()

    asyncio.run(main())
