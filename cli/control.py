"""`dynscreen reload` and `dynscreen detach`: steer the running daemon."""

from __future__ import annotations

import typer

from dynscreen.cli import client
from dynscreen.cli.app import app

# Detaching removes the XDP program from every interface and unpins the maps:
# slower than a lookup, so it gets more time than an ordinary request.
DETACH_TIMEOUT = 60.0


@app.command("reload")
def reload(ctx: typer.Context) -> None:
    """Make the daemon re-read its config, whitelist and block file (same as SIGHUP)."""
    result = client.request(ctx, "reload")
    config = result.get("config") if isinstance(result, dict) else None
    typer.echo(f"reloaded {config}" if config else "reloaded (built-in defaults)")


@app.command("detach")
def detach(ctx: typer.Context) -> None:
    """Save the block file, remove XDP and the pinned maps: screening off until `run`.
    Without a daemon, as root: removes them from the kernel directly."""
    try:
        result = client.request(ctx, "detach", timeout=DETACH_TIMEOUT)
    except client.NoDaemon as why:
        from dynscreen.cli import offline  # the pins' reader: only without a daemon
        result = {"detached": offline.detach(ctx, why)}
    ifaces = result.get("detached") if isinstance(result, dict) else None
    where = ", ".join(str(i) for i in ifaces) if ifaces else "no interface"
    typer.echo(f"detached from {where}; screening is off until the next `dynscreen run`")
