"""`dynscreen status`: what is blocked right now and what the screening has done.

At a million blocks the default view is the counts by reason plus the newest
and the most dropping ``--limit`` blocks; ``--all`` lists every one, and with
``--json`` the daemon's reply is copied to stdout as it streams in.
"""

from __future__ import annotations

import socket
import sys
import time
from collections import defaultdict
from typing import Annotated, Any, BinaryIO

import typer

from dynscreen.cli import client
from dynscreen.cli.app import OperationFailed, app
from dynscreen.control import ctlproto

# Blocks shown without --limit or --all: the daemon's own default (control/blockstatus.py
# LIMIT; a test keeps them equal), written here so that importing the block index is not
# every command's start-up cost.
LIMIT = 50
STATUS_TIMEOUT = 120.0  # seconds: `status --all` at a million blocks streams ~120 MB


@app.command("status")
def status(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=0, help="blocks shown, newest first "
                                       "(and as many of the most dropping)")] = LIMIT,
    show_all: Annotated[bool, typer.Option("--all", help="every block, newest first")] = False,
    ip: Annotated[str | None, typer.Option(
        "--ip", metavar="ADDR", help="only blocks holding this address or inside this range")
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="only blocks for this reason")
                      ] = None,
    source: Annotated[str | None, typer.Option(
        "--source", help="only blocks from here: kernel, logs, manual, file")] = None,
    as_json: client.JsonFlag = False,
) -> None:
    """Counters, log sources and the newest blocks (address, reason, minutes left, drops).

    With no daemon running, as root: what the kernel still enforces, from the pins."""
    args: dict[str, Any] = {"limit": limit}
    if show_all:
        args["all"] = True
    for key, val in (("ip", ip), ("reason", reason), ("source", source)):
        if val is not None:
            args[key] = val
    if as_json and show_all:
        try:  # a million blocks: passed through as the daemon sends them, not re-encoded
            stream_result(ctx, "status", sys.stdout.buffer, **args)
            return
        except client.NoDaemon as why:
            from dynscreen.cli import offline  # the pins' reader: only without a daemon
            result = offline.status(ctx, why, **args)
    else:
        try:
            result = client.request(ctx, "status", timeout=STATUS_TIMEOUT, **args)
        except client.NoDaemon as why:
            from dynscreen.cli import offline  # the pins' reader: only without a daemon
            result = offline.status(ctx, why, **args)
    if as_json:
        client.print_json(result)
        return
    show(result)


def show(result: dict[str, Any]) -> None:
    blocks = client.listing(result, "blocks")
    out = client.console()
    for line in summary(result, blocks):
        out.print(client.literal(line))
    logs = result.get("logs")
    if isinstance(logs, list) and logs:
        out.print()
        out.print(log_table(logs))
    for warning in result.get("warnings") or ():
        out.print(client.literal(f"warning: {warning}"))
    out.print()
    total = result.get("block_count", len(blocks))
    if not blocks:
        out.print("no blocks" if not total else "no blocks match", markup=False)
        return
    out.print(block_table(blocks))
    shown = f"{len(blocks)} block{'' if len(blocks) == 1 else 's'}"
    if isinstance(total, int) and total > len(blocks):
        shown += f" shown, the newest of {total} (--limit N, --all)"
    out.print(shown, markup=False)
    dropping = client.listing(result, "most_dropping") if "most_dropping" in result else []
    if dropping:
        out.print()
        out.print("most dropping:", markup=False)
        out.print(block_table(dropping))


def block_table(blocks: list[dict[str, Any]]) -> Any:
    fleet = any("origin" in b for b in blocks)  # the member that made each block
    t = client.table(
        "ADDRESS", "REASON", "NOTE", "MIN LEFT", "DROPS", "SOURCE", *(("ORIGIN",) if fleet else ()),
        right=("MIN LEFT", "DROPS")
    )
    for b in blocks:
        t.add_row(
            client.text(b.get("ip")),
            client.text(b.get("reason")),
            client.text(b.get("note")),
            client.minutes(b.get("minutes_left")),
            client.text(b.get("drops", 0)),
            client.text(b.get("source")),
            *((client.text(b.get("origin")),) if fleet else ()),
        )
    return t


_OK = b'{"ok":true,"result":'


def stream_result(ctx: typer.Context, cmd: str, out: BinaryIO, **args: Any) -> None:
    """Send one command and copy its result's JSON to ``out`` as it arrives (a reply of
    100 MB is neither held whole nor parsed); an error reply is raised as request() does."""
    path = client.socket_path(ctx)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(STATUS_TIMEOUT)
        client.connect(sock, path)
        sock.sendall(ctlproto.encode({"cmd": cmd, **args}))
        head = b""
        while len(head) < len(_OK) and (chunk := sock.recv(1 << 16)):
            head += chunk
        if not head.startswith(_OK):
            rest = head
            while not rest.endswith(b"\n") and (chunk := sock.recv(1 << 16)):
                rest += chunk
            client.request_result(rest.rstrip(b"\n"), path)  # raises the daemon's error
            raise OperationFailed(f"garbled reply from the daemon at {path}")
        pending = head[len(_OK):]
        while True:
            if pending.endswith(b"}\n"):
                out.write(pending[:-2])
                break
            out.write(pending[:-2])
            pending = pending[-2:]
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise OperationFailed(f"the daemon at {path} closed the connection with a "
                                      "truncated reply")
            pending += chunk
        out.write(b"\n")
        out.flush()
    except TimeoutError:
        raise OperationFailed(f"the daemon at {path} did not answer within "
                              f"{STATUS_TIMEOUT:g} s") from None
    finally:
        sock.close()


def log_table(logs: list[Any]) -> Any:
    """One row per followed log source: is it read, how much, how long since a line."""
    t = client.table("LOG SOURCE", "FORMAT", "STATE", "LINES", "LAST LINE",
                     right=("LINES", "LAST LINE"))
    for src in logs:
        if not isinstance(src, dict):
            continue
        age = src.get("last_line_age_s")
        state = client.text(src.get("state"))
        if src.get("error"):
            state += f": {src['error']}"
        t.add_row(client.text(src.get("source")), client.text(src.get("format")), state,
                  client.text(src.get("lines", 0)),
                  _ago(age))
    return t


def summary(result: dict[str, Any], blocks: list[dict[str, Any]]) -> list[str]:
    """A few lines: is screening on, where, and what it has passed and dropped."""
    daemon = result.get("daemon")
    lines: list[str] = []
    if isinstance(daemon, dict) and daemon.get("running") is False:
        lines.append("daemon not running: the kernel keeps enforcing these blocks (read from "
                     f"the pinned maps at {daemon.get('pin_path', '?')}); log signals are not "
                     "screened until `systemctl start dynscreen` or `dynscreen run`")
    enabled = result.get("enabled", True)
    mode = result.get("mode", "?")
    state = "enabled" if enabled else "DISABLED"
    if mode == "monitor":
        mode = "monitor (counting only, nothing is dropped)"
    ifaces = result.get("interfaces") or {}
    if isinstance(ifaces, dict):
        where = ", ".join(f"{name} ({how})" for name, how in ifaces.items()) or "none"
    else:
        where = ", ".join(str(i) for i in ifaces) or "none"
    head = f"screening {state}, mode {mode}, on {where}"
    started = result.get("started")
    if isinstance(started, (int, float)) and started > 0:
        head += f", up {_uptime(time.time() - started)}"
    lines.append(head)

    counters = result.get("counters")
    if not isinstance(counters, dict):
        counters = {}
    drops = {k[5:]: v for k, v in counters.items() if k.startswith("drop_") and v}
    total = sum(v for v in drops.values() if isinstance(v, int))
    traffic = f"passed {counters.get('passed', 0)}, dropped {total}"
    if drops:
        traffic += ": " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in drops.items())
    lines.append(traffic)

    counts = result.get("blocks_by_reason")
    if isinstance(counts, dict):  # kept by the daemon's index: every block, not those shown
        if counts:
            lines.append(f"{result.get('block_count', sum(counts.values()))} blocks by "
                         "reason: " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items())))
    else:
        by_reason: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for b in blocks:
            entry = by_reason[str(b.get("reason"))]
            entry[0] += 1
            d = b.get("drops")
            entry[1] += d if isinstance(d, int) else 0
        if by_reason:
            lines.append(
                "blocks by reason: "
                + ", ".join(f"{r} {n} ({d} drops)" for r, (n, d) in sorted(by_reason.items()))
            )
    shown = {"passed"} | {f"drop_{k}" for k in drops}
    other = {k: v for k, v in counters.items() if k not in shown and not k.startswith("drop_")}
    other = {k: v for k, v in other.items() if v}
    if other:
        lines.append("counters: " + ", ".join(f"{k} {v}" for k, v in other.items()))
    lines += _fleet(result.get("fleet"))
    lines += _attention(result.get("daemon"))
    return lines


def _fleet(fleet: object) -> list[str]:
    """The fleet's state and its members, when this gateway is one."""
    if not isinstance(fleet, dict) or fleet.get("state") in (None, "off"):
        return []
    members = [m for m in fleet.get("members") or () if isinstance(m, dict)]
    seen = ", ".join(f"{m.get('name')} ({_ago(m.get('last_seen_s'))}, "
                     f"{m.get('blocks_made', 0)} blocks made)" for m in members)
    if fleet.get("state") == "connected":
        head = f"fleet: connected to {fleet.get('redis')} as {fleet.get('name')}"
    else:
        head = (f"warning: fleet DEGRADED: Redis {fleet.get('redis')} unreachable "
                f"({fleet.get('last_error')}): screening alone, {fleet.get('queued', 0)} "
                "change(s) queued")
    return [head + (f"; members: {seen}" if seen else "")]


def _attention(daemon: object) -> list[str]:
    """What the administrator must see: setup warnings, failures, tasks being restarted."""
    if not isinstance(daemon, dict):
        return []
    out = [f"warning: {w}" for w in daemon.get("warnings") or [] if isinstance(w, str)]
    for p in daemon.get("problems") or []:
        if isinstance(p, dict):
            out.append(f"error ({p.get('count')}x): {p.get('message')}")
    tasks = daemon.get("tasks")
    for name, t in (tasks.items() if isinstance(tasks, dict) else ()):
        if isinstance(t, dict) and t.get("restarts"):
            out.append(f"task {name}: {t.get('state')}, restarted {t.get('restarts')}x, "
                       f"last error: {t.get('last_error')}")
    return out


def _ago(age: Any) -> str:
    if not isinstance(age, (int, float)):
        return "never"
    return f"{int(age)} s ago" if age < 60 else f"{_uptime(age)} ago"


def _uptime(seconds: float) -> str:
    s = max(int(seconds), 0)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    mins = s // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {mins} min"
    return f"{mins} min"
