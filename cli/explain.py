"""`dynscreen explain ADDR`: why an address is blocked, or how close it is to it.

Through the daemon: whitelist, trust, exemption, the block in force, the log lines
that made it, the live counters against each limit, and the past from the history.
Without a daemon: what the files hold (the config's whitelist and the runtime one,
the pins as root, else the block file, and the history); the live counters are the
daemon's, so they are missing, and the answer says so.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from dynscreen.cli import client
from dynscreen.cli.app import app
from dynscreen.cli.history import address_key, config_of
from dynscreen.control.addr import Network, network_key, parse_network
from dynscreen.control.config import Config


@app.command("explain")
def explain(
    ctx: typer.Context,
    addr: Annotated[str, typer.Argument(metavar="ADDR", help="an address or CIDR range")],
    as_json: client.JsonFlag = False,
) -> None:
    """Why ADDR is blocked (the log lines that did it), or how close it is to its limits.

    Also whether it is whitelisted, trusted or exempt, and its past blocks."""
    client.check_network(addr)
    try:
        result = client.request(ctx, "explain", addr=addr)
    except client.NoDaemon as why:
        result = offline(config_of(ctx), addr, str(why))
    if as_json:
        client.print_json(result)
        return
    show(result)


def offline(cfg: Config, addr: str, why: str) -> dict[str, Any]:
    """The answer from the files alone."""
    # Imported here, as only this needs them: the block list (the data plane's loader),
    # the history (sqlite3) are not every command's start-up cost.
    from dynscreen.control import whitelistfile
    from dynscreen.control.explain import HISTORY_SHOWN, Facts, covering_block, report
    from dynscreen.control.history import HistoryError, read

    now = time.time()
    key = address_key(addr, cfg.screening.ipv6_prefix)
    net = parse_network(key)
    notes = [f"{why}: the live counters and exemptions are unknown; what follows is what "
             "the files hold"]
    config_wl = list(cfg.screening.whitelist)
    try:
        runtime_wl = whitelistfile.load(cfg.daemon.whitelist_file)
    except whitelistfile.WhitelistFileError as e:
        runtime_wl = []
        notes.append(str(e))
    entry = next((w for w in config_wl + list(runtime_wl) if _overlap(net, w)), None)
    trusted = next((network_key(n) for n in cfg.screening.trusted_networks
                    if n.version == net.version and net.subnet_of(n)), None)  # type: ignore[arg-type]
    block = covering_block(_blocks(cfg, notes), net)
    facts = Facts(ip=key, key=key, running=False, whitelist_entry=entry,
                  whitelist_origin=None if entry is None else
                  ("config" if entry in config_wl else "runtime"),
                  trusted_entry=trusted, block=block)
    nets = [block["ip"]] if block and block["ip"] != key else []
    try:
        facts.history = tuple(read(cfg.daemon.history_file, ip=key, nets=nets,
                                   limit=HISTORY_SHOWN))
    except HistoryError as e:
        notes.append(str(e))
    facts.notes = tuple(notes)
    return report(facts, now)


def _overlap(a: Network, b: Network) -> bool:
    return a.version == b.version and (a.subnet_of(b) or b.subnet_of(a))  # type: ignore[arg-type]


def _blocks(cfg: Config, notes: list[str]) -> list[Any]:
    """The blocks in force: the kernel's (root, pins present), else the block file's."""
    from dynscreen.control import blockfile

    entries: list[blockfile.BlockEntry] = []
    try:
        entries = blockfile.BlockFile(cfg.daemon.state_file).load() or []
    except (blockfile.BlockFileError, OSError) as e:
        notes.append(f"block file: {e}")
    noted = {e.net: e.note for e in entries}
    if os.geteuid() == 0:
        from dynscreen.control.dataplane.pins import PinnedMaps, PinsMissing

        try:
            with PinnedMaps(cfg.daemon.pin_path) as pins:
                return [SimpleNamespace(net=b.source, reason=b.reason, source=b.origin,
                                        expires=b.expires, drops=b.drops,
                                        note=noted.get(b.source)) for b in pins.blocks()]
        except PinsMissing:
            notes.append(f"no pinned maps at {cfg.daemon.pin_path}: blocks from the block file")
        except OSError as e:
            notes.append(f"the pinned maps cannot be read ({e}): blocks from the block file")
    now = time.time()
    return [SimpleNamespace(net=e.net, reason=e.reason, source=e.source, expires=e.expires,
                            drops=None, note=e.note) for e in entries if e.expires > now]


def show(r: dict[str, Any]) -> None:
    """The answer for a person: the verdict first, then evidence, counters, history."""
    out = client.console()
    lit = client.literal
    source = f" (source {r.get('source')})" if r.get("source") != r.get("ip") else ""
    out.print(lit(f"{r.get('ip')}{source}"))
    entry = r.get("whitelist_entry")
    out.print(lit("  whitelisted: " + (f"yes, by {entry} ({r.get('whitelist_origin')})"
                                      if r.get("whitelisted") else "no")))
    out.print(lit("  trusted:     " + (f"yes, by {r.get('trusted_entry')}"
                                      if r.get("trusted") else "no")))
    if r.get("exempt"):
        by = ", ".join(r.get("exempt_by") or []) or "a successful SMTP AUTH"
        out.print(lit(f"  exempt:      yes, until {client.when(r.get('exempt_until'))} "
                      f"(login by {by})"))
    else:
        out.print(lit("  exempt:      no"))
    b = r.get("block")
    if b:
        whose = f" on {b['ip']}" if b.get("ip") != r.get("source") else ""
        drops = f", {b['drops']} packets dropped" if b.get("drops") is not None else ""
        note = f", note: {b['note']}" if b.get("note") else ""
        out.print(lit(f"  blocked:     yes{whose}: {b.get('reason')} ({b.get('origin')}), "
                      f"made {client.when(b.get('made_at'))}, until "
                      f"{client.when(b.get('expires'))}{drops}{note}"), soft_wrap=True)
    else:
        out.print(lit("  blocked:     no"))
    evidence = r.get("evidence") or []
    if evidence:
        out.print()
        out.print(lit("evidence (the lines that led to the block):" if b else
                      "evidence (the lines counted now):"))
        for e in evidence:  # where on one line, the line itself under it: nothing folded
            limit = f"  [{e['limit']}]" if e.get("limit") else ""
            out.print(lit(f"  {client.when(e.get('time'))}  {e.get('source')}:{e.get('line')}"
                          f"{limit}"), soft_wrap=True)
            out.print(lit(f"    {client.text(e.get('text'))}"), soft_wrap=True)
    counters = r.get("counters") or []
    if counters:
        out.print()
        t = client.table("LIMIT", "COUNT", "MAX", "WINDOW", right=("COUNT", "MAX"))
        for c in counters:
            minutes = c.get("window_minutes")
            t.add_row(client.text(c.get("limit")), f"{c.get('count')}", f"{c.get('max')}",
                      f"{minutes:g} min" if minutes else "at once")
        out.print(t)
    history = r.get("history") or []
    if history:
        from dynscreen.cli.history import table

        out.print()
        out.print("history:", markup=False)
        out.print(table(history))
    for note in r.get("notes") or []:
        out.print(lit(f"note: {note}"), soft_wrap=True)
