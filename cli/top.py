"""`dynscreen top`: a live view of the busiest sources, like top(1) for the mail ports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from dynscreen.cli import client
from dynscreen.cli.app import app


@app.command("top")
def top(
    ctx: typer.Context,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="seconds between refreshes")
    ] = 1.0,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, help="stop after N refreshes (default: until Ctrl-C)"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="sources shown")] = 20,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one snapshot as JSON and exit")
    ] = False,
) -> None:
    """Live view of the top sources: connection rate, concurrent connections, drops."""
    if as_json:
        client.print_json(_snapshot(ctx, limit))
        return
    out = client.console()
    try:
        if out.is_terminal:
            with Live(console=out, auto_refresh=False, screen=False) as live:
                for snap in _polls(ctx, limit, interval, count):
                    live.update(render(snap, limit, interval), refresh=True)
        else:
            # Piped: one table per refresh, a log a script can read, not cursor games.
            for snap in _polls(ctx, limit, interval, count):
                out.print(render(snap, limit, interval))
                out.print()
    except KeyboardInterrupt:
        return


def _snapshot(ctx: typer.Context, limit: int) -> dict[str, Any]:
    """The daemon's `top` result, busiest first, at most `limit` sources.

    `limit` goes to the daemon (it reads it, default 50) and is applied here as
    well, so that the view stays right with a daemon that ignores it.
    """
    result = client.request(ctx, "top", limit=limit)
    snap = dict(result)
    snap["sources"] = client.listing(result, "sources")[:limit]
    return snap


def _polls(
    ctx: typer.Context, limit: int, interval: float, count: int | None
) -> Iterator[dict[str, Any]]:
    n = 0
    while True:
        yield _snapshot(ctx, limit)
        n += 1
        if count is not None and n >= count:
            return
        time.sleep(interval)


def render(snap: dict[str, Any], limit: int, interval: float) -> RenderableType:
    """The header line and the table of sources, blocked ones in red."""
    counters = snap.get("counters")
    if not isinstance(counters, dict):
        counters = {}
    dropped = sum(v for k, v in counters.items() if k.startswith("drop_") and isinstance(v, int))
    n = len(snap["sources"])
    head = Text(
        f"dynscreen top  {time.strftime('%H:%M:%S')}  {n} busiest source{'' if n == 1 else 's'}"
        f" (limit {limit})  "
        f"passed {counters.get('passed', 0)}, dropped {dropped}  "
        f"every {interval:g} s, Ctrl-C quits",
        style="bold",
    )
    if not snap["sources"]:
        return Group(head, Text("no active sources"))
    t = client.table(
        "SOURCE",
        "RATE",
        "CONCURRENT",
        "SYN/S",
        "DROPS",
        "BLOCK",
        right=("RATE", "CONCURRENT", "SYN/S", "DROPS"),
    )
    for s in snap["sources"]:
        blocked = bool(s.get("blocked"))
        state = ""
        if blocked:
            state = f"blocked: {client.text(s.get('reason'))}"
            if s.get("minutes_left") is not None:
                state += f", {client.minutes(s.get('minutes_left'))} min left"
        t.add_row(
            client.text(s.get("ip")),
            client.text(s.get("rate", 0)),
            client.text(s.get("established", 0)),
            client.text(s.get("syn_per_second", 0)),
            client.text(s.get("drops", 0)),
            state,
            style="red" if blocked else None,
        )
    return Group(head, t)
