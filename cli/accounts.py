"""`dynscreen accounts list|unfreeze`: accounts frozen after repeated auth failures."""

from __future__ import annotations

from typing import Annotated

import typer

from dynscreen.cli import client
from dynscreen.cli.app import OperationFailed, UserError, app

accounts_app = typer.Typer(
    help="Frozen accounts: they still receive mail but cannot send.", no_args_is_help=True
)
app.add_typer(accounts_app, name="accounts")


@accounts_app.command("list")
def list_(
    ctx: typer.Context,
    as_json: client.JsonFlag = False,
) -> None:
    """Frozen accounts, with the session that got each one frozen."""
    result = client.request(ctx, "accounts_list")
    if as_json:
        client.print_json(result)
        return
    accounts = client.listing(result, "accounts")
    out = client.console()
    if not accounts:
        out.print("no frozen accounts", markup=False)
        return
    t = client.table(
        "ACCOUNT",
        "SINCE",
        "UNTIL",
        "PROTOCOL",
        "SOURCE ADDRESS",
        "SESSION",
        "FAILURES",
        right=("FAILURES",),
    )
    for a in accounts:
        until = a.get("until")
        t.add_row(
            client.text(a.get("user")),
            client.when(a.get("since")),
            client.when(until) if until not in (None, "", 0) else "until unfrozen",
            client.text(a.get("service")),
            client.text(a.get("ip")),
            client.text(a.get("session")),
            client.text(a.get("failures")),
        )
    out.print(t)


@accounts_app.command("unfreeze")
def unfreeze(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(metavar="USER", help="the account, as listed")],
) -> None:
    """Let a frozen account send mail again."""
    user = user.strip()
    if not user or any(ord(c) < 32 or ord(c) == 127 for c in user):
        raise UserError("USER must be a non-empty account name on one line")
    result = client.request(ctx, "accounts_unfreeze", user=user)
    if not (isinstance(result, dict) and result.get("removed")):
        raise OperationFailed(f"account {user} is not frozen")
    typer.echo(f"unfroze {user}")
