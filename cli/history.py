"""`dynscreen history`: what dynscreen did, and why, from its history database.

Through the daemon when one answers; without one, the database is read directly
(read-only), so last week's blocks are there after a crash or while it is stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from dynscreen.cli import client
from dynscreen.cli.app import OperationFailed, UserError, app, globals_of
from dynscreen.control.config import Config, ConfigError, load_config


def config_of(ctx: typer.Context) -> Config:
    """The config, for what the offline reads need (history file, IPv6 prefix)."""
    try:
        return load_config(globals_of(ctx).config_path())
    except ConfigError as e:
        raise OperationFailed(f"no daemon answers and the config cannot be read: {e}") from None


def address_key(text: str, ipv6_prefix: int) -> str:
    """An address as the history names it: its source (an IPv6 address: its prefix)."""
    # (control.history, sqlite3 and threads, is imported where used: not every command's
    # start-up cost)
    from dynscreen.control.history import source_text

    try:
        return source_text(text, ipv6_prefix)
    except ValueError as e:
        raise UserError(f"invalid address or CIDR range {text!r}: {e}") from None


def offline_rows(path: Path, **filters: Any) -> list[dict[str, Any]]:
    from dynscreen.control.history import HistoryError, read

    try:
        return [r.to_json() for r in read(path, **filters)]
    except HistoryError as e:
        raise OperationFailed(str(e)) from None


def rows(ctx: typer.Context, filters: dict[str, Any], ip: str | None) -> list[dict[str, Any]]:
    """History rows through the daemon, else from the file (read-only)."""
    try:
        asked = {**filters, "ip": ip} if ip is not None else filters
        return client.listing(client.request(ctx, "history", **asked), "rows")
    except client.NoDaemon:
        pass
    cfg = config_of(ctx)
    if ip is not None:
        filters = {**filters, "ip": address_key(ip, cfg.screening.ipv6_prefix)}
    return offline_rows(cfg.daemon.history_file, **filters)


@app.command("history")
def history(
    ctx: typer.Context,
    ip: Annotated[str | None, typer.Option("--ip", metavar="ADDR",
                                           help="only this address or range")] = None,
    user: Annotated[str | None, typer.Option("--user", metavar="USER",
                                             help="only this account")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="WHEN", help="only since then: 30m, 2h, 7d, or an ISO date")] = None,
    reason: Annotated[str | None, typer.Option(
        "--reason", metavar="REASON", help="only this reason (auth_failures, manual, ...)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per row")] = False,
) -> None:
    """Every block, unblock, expiry, freeze, unfreeze and protection, with reason and origin.

    Works without a daemon too: the history database is read directly."""
    filters: dict[str, Any] = {}
    if ip is not None:
        client.check_network(ip)
    if user is not None:
        filters["user"] = user
    if reason is not None:
        filters["reason"] = reason
    if since is not None:
        from dynscreen.control.history import parse_since

        try:
            filters["since"] = parse_since(since, time.time())
        except ValueError as e:
            raise UserError(str(e)) from None
    found = rows(ctx, filters, ip)
    if as_json:
        for r in found:
            typer.echo(json.dumps(r))
        return
    out = client.console()
    if not found:
        out.print("nothing in the history matches", markup=False)
        return
    out.print(table(found))


def table(found: list[dict[str, Any]]) -> Any:
    t = client.table("TIME", "ACTION", "ADDRESS/ACCOUNT", "REASON", "ORIGIN", "DETAIL")
    for r in found:
        who = r.get("ip") or r.get("user")
        if r.get("ip") and r.get("user"):
            who = f"{r['user']} ({r['ip']})"
        t.add_row(client.when(r.get("time")), client.text(r.get("action")), client.text(who),
                  client.text(r.get("reason")), client.text(r.get("origin")), detail(r))
    return t


def detail(row: dict[str, Any]) -> str:
    """What else a row says: minutes, a note or protocol, how much evidence."""
    parts = []
    if row.get("minutes"):
        parts.append(f"{client.minutes(row['minutes'])} min")
    if row.get("detail"):
        parts.append(str(row["detail"]))
    evidence = row.get("evidence") or []
    if evidence:
        parts.append(f"{len(evidence)} line{'s' if len(evidence) != 1 else ''} of evidence")
    return "; ".join(parts) or "-"
