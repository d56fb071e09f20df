"""`dynscreen check-config [FILE]`: validate a config before the daemon or a reload meets it.

An invalid config is an error (exit 2). A valid one whose interfaces, log files or
journal units this host does not have is accepted with warnings (exit 0, on stderr;
`"warnings"` in --json): the daemon would start, and screen less than the config says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

import dynscreen.cli.app as cli_app
from dynscreen.cli.app import app, globals_of
from dynscreen.control.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from dynscreen.control.logs.discover import LogSources


@app.command("check-config")
def check_config(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(
            help="config to check (default: --config, DYNSCREEN_CONFIG, else the default path)",
            show_default=False,
            metavar="FILE",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine output")] = False,
) -> None:
    """Validate a config (errors name the key, the value and the file), then warn about
    what it names that this host lacks (interfaces, log files, journal units)."""
    path = file if file is not None else globals_of(ctx).config_path()
    shown = str(path) if path is not None else None
    try:
        config = load_config(path)
    except ConfigError as e:
        if as_json:
            typer.echo(json.dumps({"ok": False, "file": shown, **_error(e)}))
        else:
            # Printed here, not raised as UserError: the message quotes TOML
            # ([[logs]], "[::1]:25") that must reach the terminal verbatim.
            typer.echo(f"dynscreen: {e}", err=True)
        raise typer.Exit(2) from None
    # Imported here: the host checks (the journal reader: asyncio), log discovery and the
    # policy server (asyncio, http) are not every command's start-up cost.
    from dynscreen.control.dovecotpolicy import setup_notes
    from dynscreen.control.hostcheck import host_warnings
    from dynscreen.control.logs.discover import log_sources

    logs = log_sources(config)
    warnings = host_warnings(config, discovered=logs.warnings)

    dovecot, dovecot_warnings = setup_notes(config)
    warnings += dovecot_warnings
    if as_json:
        typer.echo(json.dumps({"ok": True, "file": shown, "warnings": warnings,
                               "logs": log_rows(logs), "config": config.to_dict()}))
        return
    if path is None:
        default = cli_app.DEFAULT_CONFIG
        typer.echo(f"ok: built-in defaults (no config file: {default} does not exist)")
    else:
        typer.echo(f"ok: {path}")
    for line in summary(config):
        typer.echo(f"  {line}")
    how = "discovered (no [[logs]] table)" if logs.discovered else "from [[logs]]"
    typer.echo(f"  log sources, {how}:" if logs.sources else f"  log sources, {how}: none")
    for row in log_rows(logs):
        why = f"  ({row['why']})" if row.get("why") else ""
        typer.echo(f"    {row['format']} {row['source']}{why}")
    for line in dovecot:
        typer.echo(f"  {line}")
    for warning in warnings:
        typer.echo(f"dynscreen: warning: {warning}", err=True)


def _error(e: ConfigError) -> dict[str, object]:
    """The error for --json: the full message, plus its parts for a script to point at."""
    out: dict[str, object] = {"error": str(e), "key": e.key}
    if e.line is not None:
        out["line"] = e.line
        out["column"] = e.column
    return out


def summary(config: Config) -> list[str]:
    """A few lines saying what this config will do, for a human checking an edit."""
    s = config.screening
    lim = s.limits

    def limit(n: int, what: str) -> str:
        return f"{what} {n}" if n else f"{what} off"

    state = "enabled" if s.enabled else "DISABLED"
    ifaces = ", ".join(s.interfaces) if s.interfaces else "default-route interface"
    block = f"block {s.block_minutes} min"
    if s.escalation.escalate:
        block += f", doubling up to {s.escalation.max_block_minutes} min"
    connections = (
        f"connections {lim.connections}/{lim.connections_minutes} min"
        if lim.connections
        else "connections off"
    )
    return [
        f"screening: {state}, mode {s.mode}, xdp {s.xdp_mode}, on {ifaces}",
        "ports: " + " ".join(str(p) for p in s.ports),
        "limits: "
        + ", ".join(
            [
                connections,
                limit(lim.simultaneous, "simultaneous"),
                limit(lim.syn_per_second, "syn/s"),
            ]
        ),
        f"log limits per {lim.window_minutes} min: "
        + ", ".join(
            [
                limit(lim.auth_failures, "auth failures"),
                limit(lim.failed_rcpts, "failed rcpts"),
                limit(lim.rsets, "rsets"),
            ]
        ),
        f"{block}, whitelist {len(s.whitelist)} entries",
    ]


def log_rows(logs: LogSources) -> list[dict[str, object]]:
    """The sources the daemon would follow, as check-config shows them."""
    return [{"source": src.name, "format": src.format, "discovered": logs.discovered,
             **({"why": logs.reasons[src.name]} if src.name in logs.reasons else {})}
            for src in logs.sources]
