"""`dynscreen allow add|remove|list`: the whitelist, never screened."""

from __future__ import annotations

from typing import Annotated

import typer

from dynscreen.cli import client
from dynscreen.cli.app import app

allow_app = typer.Typer(
    help="The whitelist: addresses and ranges never screened (runtime changes persist).",
    no_args_is_help=True,
)
app.add_typer(allow_app, name="allow")

Cidr = Annotated[str, typer.Argument(metavar="CIDR", help="an address or a CIDR range")]


@allow_app.command("add")
def add(ctx: typer.Context, cidr: Cidr) -> None:
    """Whitelist an address or range (kept in whitelist_file across restarts)."""
    cidr = client.check_network(cidr)
    result = client.request(ctx, "allow_add", cidr=cidr)
    entries = client.listing(result, "whitelist")
    unblocked = result.get("unblocked") if isinstance(result, dict) else None
    lifted = f"; unblocked {unblocked}" if isinstance(unblocked, int) else ""
    typer.echo(f"allowed {cidr} ({_count(len(entries))} in the whitelist){lifted}")


@allow_app.command("remove")
def remove(ctx: typer.Context, cidr: Cidr) -> None:
    """Take a runtime entry off the whitelist (entries from the config stay)."""
    cidr = client.check_network(cidr)
    result = client.request(ctx, "allow_remove", cidr=cidr)
    entries = client.listing(result, "whitelist")
    typer.echo(f"removed {cidr} ({_count(len(entries))} left in the whitelist)")


@allow_app.command("list")
def list_(
    ctx: typer.Context,
    as_json: client.JsonFlag = False,
) -> None:
    """The whitelist, from the config and added at run time."""
    result = client.request(ctx, "allow_list")
    if as_json:
        client.print_json(result)
        return
    entries = client.listing(result, "whitelist")
    out = client.console()
    if not entries:
        out.print("the whitelist is empty", markup=False)
        return
    t = client.table("CIDR", "SOURCE")
    for e in entries:
        t.add_row(client.text(e.get("cidr")), client.text(e.get("source")))
    out.print(t)


def _count(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"
