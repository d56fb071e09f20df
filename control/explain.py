"""`dynscreen explain ADDR`: everything dynscreen knows about one address or range, in one
answer: whether it is whitelisted, trusted or exempt (and by what), its current block,
the log lines that led to it, its counters against each limit, and its past blocks.

Why one room: the daemon answers from its live parts and the CLI answers offline from
the pins, the block file and the history; both build the same JSON here, so an
administrator reads one shape whichever way it was made.

The engine keeps, per source, only the (time, file, line) of each event counted in a
window; the text of those lines comes from ``LineMemory``, a bounded map of the last
signal lines the daemon read (and, for a journal source, their cursors).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dynscreen.control.addr import Network, network_key
from dynscreen.control.blocklist import Shown
from dynscreen.control.history import Record

LINES_KEPT = 20_000  # signal lines whose text is remembered (a few MB at most)
HISTORY_SHOWN = 50  # past rows in one answer
MAX_TEXT = 2000  # characters of a line kept


class LineMemory:
    """The text (and journal cursor) of the last LINES_KEPT lines that carried a signal."""

    def __init__(self, size: int = LINES_KEPT) -> None:
        self.size = size
        self._lines: OrderedDict[tuple[str, int], tuple[str, str | None]] = OrderedDict()

    def keep(self, source: str, line: int, text: str, cursor: str | None = None) -> None:
        lines = self._lines
        lines[(source, line)] = (text[:MAX_TEXT], cursor)
        if len(lines) > self.size:
            lines.popitem(last=False)

    def get(self, source: str, line: int) -> tuple[str, str | None] | None:
        return self._lines.get((source, line))

    def evidence(self, proof: Iterable[tuple[float, str, int]]) -> list[dict[str, Any]]:
        """The contract's evidence items: ``{"time", "source", "line", "text"}``; a journal
        line is named by its cursor (``"line"``), a file line by its number."""
        out = []
        for ts, source, line in proof:
            known = self.get(source, line)
            where: int | str = line
            if known is not None and known[1]:
                where = known[1]
            out.append({"time": ts, "source": source, "line": where,
                        "text": known[0] if known is not None else None})
        return out


@dataclass
class Facts:
    """What one side (the daemon, or the files offline) knows, before it is shaped."""

    ip: str
    key: str
    running: bool
    whitelist_entry: Network | None = None
    whitelist_origin: str | None = None  # "config" or "runtime"
    trusted_entry: str | None = None
    exempt_until: float = 0.0
    exempt_by: tuple[str, ...] = ()
    block: dict[str, Any] | None = None  # reason, origin, expires, drops, note, ip
    live_evidence: tuple[dict[str, Any], ...] = ()
    counters: tuple[dict[str, Any], ...] = ()
    history: tuple[Record, ...] = ()
    notes: tuple[str, ...] = ()


def report(f: Facts, now: float) -> dict[str, Any]:
    """The contract's JSON (docs/design.md, `explain --json`), with the extras after it.

    A current block's evidence and ``made_at`` come from its row in the history (the
    latest block of it made before now); without a block, the evidence is what the
    live windows hold.
    """
    block = None
    evidence: list[dict[str, Any]] = list(f.live_evidence)
    if f.block is not None:
        made = _made(f.history, f.block, now)
        block = {
            "reason": f.block["reason"],
            "origin": f.block["origin"],
            "expires": f.block["expires"],
            "made_at": made.time if made is not None else None,
            "ip": f.block["ip"],
            "drops": f.block.get("drops"),
            "note": f.block.get("note"),
        }
        evidence = list(made.evidence) if made is not None else []
    return {
        "ip": f.ip,
        "source": f.key,
        "whitelisted": f.whitelist_entry is not None,
        "whitelist_entry": network_key(f.whitelist_entry) if f.whitelist_entry else None,
        "whitelist_origin": f.whitelist_origin,
        "trusted": f.trusted_entry is not None,
        "trusted_entry": f.trusted_entry,
        "exempt": f.exempt_until > now,
        "exempt_until": f.exempt_until if f.exempt_until > now else None,
        "exempt_by": list(f.exempt_by),
        "block": block,
        "evidence": evidence,
        "counters": list(f.counters),
        "history": [r.to_json() for r in f.history[-HISTORY_SHOWN:]],
        "daemon": {"running": f.running},
        "notes": list(f.notes),
    }


def _made(history: Iterable[Record], block: dict[str, Any], now: float) -> Record | None:
    """The history row of the block in force: the latest block of its address."""
    found = None
    for r in history:
        if r.action == "block" and r.ip == block["ip"] and r.time <= now + 1:
            found = r
        elif r.action in ("unblock", "expire") and r.ip == block["ip"]:
            found = None
    return found


def counter(limit: str, count: int, maximum: int, minutes: float | None) -> dict[str, Any]:
    """One counter row: ``{"limit", "count", "max", "window_minutes"}``."""
    return {"limit": limit, "count": count, "max": maximum, "window_minutes": minutes}


def engine_counters(windows: Iterable[tuple[str, int, int, float, Any]]) -> list[dict[str, Any]]:
    return [counter(name, count, limit, minutes) for name, count, limit, minutes, _ in windows]


def engine_evidence(windows: Iterable[tuple[str, int, int, float, Any]],
                    lines: LineMemory) -> list[dict[str, Any]]:
    """The lines the live windows count, each with its limit, oldest first."""
    out = []
    for name, _count, _limit, _minutes, proof in windows:
        for item in lines.evidence(proof):
            out.append({**item, "limit": name})
    out.sort(key=lambda e: e["time"])
    return out


class Explainer:
    """The daemon's side: the facts from its live parts, the past from its history."""

    def __init__(self, config: Any, whitelist: Any, blocks: Any, engine: Any, dp: Any,
                 history: Any, lines: LineMemory) -> None:
        self.config = config  # () -> Config: the running config, also after a reload
        self.whitelist = whitelist
        self.blocks = blocks
        self.engine = engine
        self.dp = dp
        self.history = history
        self.lines = lines

    def facts(self, net: Network, now: float) -> Facts:
        """Everything but the history (read from the loop: all of it is in memory)."""
        cfg = self.config()
        key = network_key(net)
        seen = self.engine.explain(key, now)
        w = self.whitelist.covering(net)
        origin = None
        if w is not None:
            origin = "config" if w in self.whitelist.config else "runtime"
        # Only the few blocks the index says cover net (one probe per prefix length in
        # use): never every block, which at a million would hold the loop for seconds.
        block = covering_block([Shown.of(b) for b in self.blocks.covering(net)], net, now)
        windows = seen["windows"]
        counters = engine_counters(windows)
        lim = cfg.screening.limits
        live = [s for s in self.dp.sources() if s.source == net]
        if lim.connections:
            counters.insert(0, counter("connections", live[0].rate if live else 0,
                                       lim.connections, float(lim.connections_minutes)))
        if lim.simultaneous:
            counters.insert(1 if lim.connections else 0, counter(
                "simultaneous", live[0].established if live else 0, lim.simultaneous, None))
        return Facts(
            ip=key, key=seen["key"], running=True, whitelist_entry=w, whitelist_origin=origin,
            trusted_entry=seen["trusted_network"], exempt_until=seen["exempt_until"],
            exempt_by=tuple(seen["exempt_users"]), block=block,
            live_evidence=tuple(engine_evidence(windows, self.lines)),
            counters=tuple(counters),
        )

    def past(self, facts: Facts) -> tuple[Record, ...]:
        """The history rows of the address and of the range blocked over it (a thread's job:
        it reads the disk)."""
        nets = [facts.block["ip"]] if facts.block and facts.block["ip"] != facts.key else []
        return tuple(self.history.query(ip=facts.key, nets=nets, limit=HISTORY_SHOWN))


def covering_block(current: Iterable[Any], net: Network,
                   now: float | None = None) -> dict[str, Any] | None:
    """The block in force on net: its own, else the narrowest range that holds it (one
    expired by ``now``, not swept away yet, is not in force)."""
    found = None
    for s in current:
        if s.net.version != net.version or not net.subnet_of(s.net):  # type: ignore[arg-type]
            continue
        if now is not None and s.expires <= now:
            continue
        if found is None or s.net.prefixlen > found.net.prefixlen:
            found = s
    if found is None:
        return None
    return {"ip": network_key(found.net), "reason": found.reason, "origin": found.source,
            "expires": found.expires, "drops": found.drops, "note": found.note}
