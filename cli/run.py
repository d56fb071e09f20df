"""`dynscreen run`: the daemon in the foreground."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dynscreen.cli.app import app, globals_of


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    iface: Annotated[
        list[str] | None,
        typer.Option("--iface", "-i", help="interface to screen (repeat; default: the config's, "
                     "else the default-route interface)"),
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="read the logs from their start, not their end")
    ] = False,
) -> None:
    """Run the daemon in the foreground (SIGHUP reloads, SIGTERM stops; blocks stay enforced)."""
    from dynscreen.control.daemon import Options, run

    opts = Options(config_path=globals_of(ctx).config_path(), ifaces=tuple(iface or ()),
                   from_start=from_start)
    sys.exit(run(opts))
