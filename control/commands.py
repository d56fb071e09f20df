"""The control socket's commands: one method per name in ctlproto.COMMANDS.

The protocol's list is the only list: handlers() maps each of its names to the
method of that name, so a command cannot be listed without a handler or
handled without being listed (a missing one fails at start, and in the tests).
A command that changes the blocks replies once the block file holds the change
(written in the keeper's worker thread: the loop goes on meanwhile), so a
crash right after it neither loses a note nor brings back what it lifted.
The parts a command works on are passed in; what belongs to the running
daemon (its config, status sections, reload, detach, closing sessions) comes
through the small Host interface, so this room runs without a kernel.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from ipaddress import IPv6Network
from typing import Any, Protocol

from dynscreen.control import blockfile, blockstatus, ctlproto
from dynscreen.control.accounts import FrozenStore
from dynscreen.control.addr import Network, network_key, parse_network, source_of
from dynscreen.control.blockkeeper import BlockFileKeeper, snapshot
from dynscreen.control.blocklist import BlockList
from dynscreen.control.config import MAX_MINUTES, Config
from dynscreen.control.metrics import Metrics
from dynscreen.control.sourcekey import SourceKey
from dynscreen.control.whitelist import Whitelist

log = logging.getLogger("dynscreen")
VERSION = "0.1.0"
MAX_NOTE = 500  # characters of a block's note (it goes into the block file as a comment)


class CommandPlane(Protocol):
    """What the commands read of the data plane."""

    attached: dict[str, str]

    def counters(self) -> dict[str, int]: ...

    def sources(self) -> list[Any]: ...


class CommandEngine(Protocol):
    def note_unfreeze(self, user: str) -> None: ...


class Host(Protocol):
    """What belongs to the running daemon."""

    cfg: Config

    def close_sessions(self, net: Network) -> None: ...

    def status_parts(self) -> dict[str, Any]: ...

    def reload(self) -> Awaitable[dict[str, Any]]: ...

    def detach(self) -> list[str]: ...

    def tell(self, action: str, **fields: Any) -> None: ...

    def explain(self, net: Network) -> Awaitable[dict[str, Any]]: ...

    def history_rows(self, req: dict[str, Any]) -> Awaitable[dict[str, Any]]: ...


class Commands:
    """Carries out control-socket requests on the parts it is given."""

    def __init__(self, host: Host, dp: CommandPlane, blocks: BlockList, keeper: BlockFileKeeper,
                 whitelist: Whitelist, frozen: FrozenStore, engine: CommandEngine,
                 metrics: Metrics) -> None:
        self.host = host
        self.dp = dp
        self.blocks = blocks
        self.keeper = keeper
        self.whitelist = whitelist
        self.frozen = frozen
        self.engine = engine
        self.metrics = metrics

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """Each protocol command's handler: the method of its name."""
        return {name: getattr(self, name) for name in ctlproto.COMMANDS}

    # ---- reading ------------------------------------------------------------------------

    def ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": VERSION}

    def status(self, req: dict[str, Any]) -> Any:
        """Counters and blocks (control/blockstatus.py): the newest ``limit`` and the most
        dropping ones, or with ``all`` every block, newest first, streamed (its JSON made
        from an index snapshot in a worker thread); filters ``ip``, ``reason``, ``source``.
        Every answer comes from the index, never a kernel walk."""
        ip = req.get("ip")
        try:
            q = blockstatus.StatusQuery(
                limit=req.get("limit", blockstatus.LIMIT), show_all=req.get("all"),
                ip=None if ip is None else SourceKey.from_network(self._net_arg(req, "ip")),
                reason=req.get("reason"), origin=req.get("source"))
        except ValueError as e:
            raise ctlproto.RequestError(str(e)) from None
        now = time.time()
        cfg = self.host.cfg
        parts = self.host.status_parts()
        counters = self.dp.counters()
        counters["blocks_refused"] = self.blocks.refused
        counters.update(parts.pop("counters"))
        origin = parts.pop("block_origin", None)  # the fleet: the member that made each
        head: dict[str, Any] = {
            "counters": counters,
            "mode": cfg.screening.mode,
            "enabled": cfg.screening.enabled,
            "interfaces": dict(self.dp.attached),
            **parts,
        }
        index = self.blocks.index
        if q.show_all:
            return self._every_block(head, q, now)  # awaited by the server
        shown = blockstatus.summary(index, q, now)
        listed = [b for key in ("blocks", "most_dropping") for b in shown[key]]
        nets = {b["ip"]: parse_network(b["ip"]) for b in listed}
        fresh = getattr(self.dp, "block_drops", None)  # the periodic walk's counts are older
        drops = fresh(set(nets.values())) if fresh is not None else {}
        for b in listed:
            net = nets[b["ip"]]
            b["drops"] = max(b.get("drops") or 0, drops.get(net, 0))
            if origin is not None:
                b["origin"] = origin(net)
        return {**head, **shown}

    async def _every_block(self, head: dict[str, Any], q: blockstatus.StatusQuery,
                           now: float) -> ctlproto.Streamed:
        index = self.blocks.index
        snap = await snapshot(index)  # in steps: the loop runs between them
        more, texts = blockstatus.every_block(index, snap, q, now)
        return ctlproto.Streamed({**head, **more}, "blocks", texts)

    def top(self, req: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        rows = []
        limit = req.get("limit", 50)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ctlproto.RequestError('"limit" must be a whole number, 0 or more')
        for st in self.dp.sources()[:limit]:
            b = self.blocks.find(st.source)
            rows.append({
                "ip": network_key(st.source), "rate": st.rate, "established": st.established,
                "syn_per_second": st.syn_per_second, "drops": b.drops if b else 0,
                "blocked": b is not None, "reason": b.reason if b else None,
                "minutes_left": round((b.expires - now) / 60, 1) if b else None,
            })
        return {"sources": rows, "counters": self.dp.counters()}

    # ---- blocks -------------------------------------------------------------------------

    def _net_arg(self, req: dict[str, Any], key: str) -> Network:
        val = req.get(key)
        if not isinstance(val, str):
            raise ctlproto.RequestError(f'"{key}" must be an address or CIDR range')
        try:
            net = parse_network(val)
        except ValueError as e:
            raise ctlproto.RequestError(f"{val!r} is not an address or CIDR range: {e}") from None
        prefix = self.host.cfg.screening.ipv6_prefix
        if isinstance(net, IPv6Network) and net.prefixlen == 128 and "/" not in val:
            return source_of(net.network_address, prefix)  # an address stands for its source
        return net

    async def block(self, req: dict[str, Any]) -> dict[str, Any]:
        s = self.host.cfg.screening
        net = self._net_arg(req, "addr")
        minutes = req.get("minutes") or s.block_minutes
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) \
                or not 0 < minutes <= MAX_MINUTES:
            raise ctlproto.RequestError(
                f"minutes must be more than 0 and at most {MAX_MINUTES} (ten years), "
                f"got {minutes!r}")
        note = req.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE
                                 or any(c < " " or c == "\x7f" for c in note)):
            raise ctlproto.RequestError(
                f"the note must be one line of text (at most {MAX_NOTE} characters, "
                "no control characters)")
        w = self.whitelist.covering(net)
        if w is not None:
            raise ctlproto.RequestError(
                f"{network_key(net)} is whitelisted ({network_key(w)}): remove it from the "
                "whitelist first")
        until = time.time() + float(minutes) * 60
        if not self.blocks.add(net, until, "manual", "manual", note):
            raise ctlproto.OperationError(
                f"the block table is full ({s.max_blocks}, max_blocks): "
                f"{network_key(net)} not blocked")
        log.warning(
            "blocked %s for %g min by hand%s", network_key(net), minutes,
            f": {note}" if note else "")
        self.host.close_sessions(net)
        self.host.tell("block", ip=network_key(net), reason="manual", origin="manual",
                       minutes=float(minutes), detail=note)
        # Noted at once (a line appended), the file rewritten by the keeper off the loop, not
        # awaited here: a crash before the rewrite loses neither the block nor its note.
        shown = self.blocks.find(net)
        if shown is not None:
            self.keeper.note_block(net, shown.expires, shown.reason, shown.source, shown.note)
        return {"block": shown.to_json(time.time()) if shown else None}

    async def unblock(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("all") is True:
            gone = self.blocks.remove_all()
            for k in gone:
                self.host.tell("unblock", ip=network_key(k.network()), origin="manual")
            if gone:
                log.warning("unblocked all %d block(s) by hand", len(gone))
                await self.keeper.save_now()
            return {"removed": bool(gone), "unblocked": [str(k) for k in gone]}
        net = self._net_arg(req, "addr")
        removed = self.blocks.remove(net)
        if removed:
            log.warning("unblocked %s by hand", network_key(net))
            self.host.tell("unblock", ip=network_key(net), origin="manual")
            # Noted at once (a line appended), the file rewritten by the keeper off the loop:
            # a crash before that does not bring the block back from the older file.
            self.keeper.note_unblocked([network_key(net)])
        return {"removed": removed}

    async def blocks_text(self, req: dict[str, Any]) -> ctlproto.Streamed:
        """The text `blocks edit` opens: streamed, each piece rendered and made a piece of
        the JSON string in a worker thread (a million lines: ~90 MB, never joined here,
        never encoded on the loop); the reply's shape is {"path", "text"} all the same."""
        pieces = await self.keeper.text_pieces()
        return ctlproto.Streamed({"path": str(self.keeper.path)}, "text", _json_string(pieces))

    async def blocks_apply(self, req: dict[str, Any]) -> dict[str, Any]:
        text, base = req.get("text"), req.get("base")
        if not isinstance(text, str):
            raise ctlproto.RequestError('"text" must be the block file\'s text')
        if base is not None and not isinstance(base, str):
            raise ctlproto.RequestError('"base" must be the text the edit started from')
        try:
            added, removed, changed = await self.keeper.apply_text(text, base)
        except blockfile.BlockFileError as e:
            raise ctlproto.RequestError(str(e)) from None
        return {"added": added, "removed": removed, "changed": changed}

    # ---- whitelist ----------------------------------------------------------------------

    def _cidr_arg(self, req: dict[str, Any]) -> Network:
        val = req.get("cidr")
        if not isinstance(val, str):
            raise ctlproto.RequestError('"cidr" must be an address or CIDR range')
        try:
            return parse_network(val)
        except ValueError as e:
            raise ctlproto.RequestError(f"{val!r} is not an address or CIDR range: {e}") from None

    async def allow_add(self, req: dict[str, Any]) -> dict[str, Any]:
        unblocked = self.whitelist.add(self._cidr_arg(req))
        if unblocked:
            await self.keeper.save_now()
        return {"whitelist": self.whitelist.rows(), "unblocked": unblocked}

    def allow_remove(self, req: dict[str, Any]) -> dict[str, Any]:
        self.whitelist.remove(self._cidr_arg(req))
        return {"whitelist": self.whitelist.rows()}

    def allow_list(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"whitelist": self.whitelist.rows()}

    # ---- accounts -----------------------------------------------------------------------

    def accounts_list(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"accounts": [a.to_dict() for a in self.frozen.list()]}

    def accounts_unfreeze(self, req: dict[str, Any]) -> dict[str, Any]:
        user = req.get("user")
        if not isinstance(user, str) or not user.strip():
            raise ctlproto.RequestError('"user" must be an account name')
        removed = self.frozen.unfreeze(user)
        if removed:
            self.engine.note_unfreeze(user)
            self.metrics.set_frozen_accounts(len(self.frozen))
            log.warning("account %s unfrozen by hand", user)
            self.host.tell("unfreeze", user=user, origin="manual")
        return {"removed": removed}

    # ---- the daemon ---------------------------------------------------------------------

    async def reload(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self.host.reload()

    def detach(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"detached": self.host.detach()}

    # ---- what happened, and why ---------------------------------------------------------

    async def explain(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self.host.explain(self._net_arg(req, "addr"))

    async def history(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self.host.history_rows(req)


def _json_string(pieces: Iterator[str]) -> Iterator[str]:
    """One JSON string made of pieces, each escaped on its own (escapes are per character:
    the joined text is the escape of the joined pieces)."""
    yield '"'
    for piece in pieces:
        yield json.dumps(piece)[1:-1]
    yield '"'
