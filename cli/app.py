"""The `dynscreen` command: options before the command, then one command per module.

Exit codes (DESIGN.md): 0 ok, 1 operation failed, 2 usage or invalid input.
No traceback for a user error: commands raise UserError / OperationFailed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

DEFAULT_CONFIG = Path("/etc/dynscreen/dynscreen.toml")

app = typer.Typer(
    name="dynscreen",
    help="Dynamic connection screening for Linux mail gateways.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
# Messages quote what the user or the daemon said: never read as markup or emoji codes.
err = Console(stderr=True, highlight=False, markup=False, emoji=False)


class UserError(Exception):
    """Invalid input from the user: exit code 2, message on stderr."""


class OperationFailed(Exception):
    """The operation could not be done: exit code 1, message on stderr."""


@dataclass
class Globals:
    """What the options before the command say."""

    config: Path | None
    socket: Path | None

    def config_path(self) -> Path | None:
        """--config, else DYNSCREEN_CONFIG, else the default path if it exists, else None."""
        if self.config is not None:
            return self.config
        env = os.environ.get("DYNSCREEN_CONFIG")
        if env:
            return Path(env)
        return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


@app.callback()
def _options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="config file (default /etc/dynscreen/dynscreen.toml, env DYNSCREEN_CONFIG)",
        ),
    ] = None,
    socket: Annotated[
        Path | None,
        typer.Option("--socket", help="control socket of the daemon (env DYNSCREEN_SOCKET)"),
    ] = None,
) -> None:
    ctx.obj = Globals(config=config, socket=socket)


def globals_of(ctx: typer.Context) -> Globals:
    """The Globals of this invocation (also when a command is called directly in tests)."""
    root = ctx.find_root()
    obj = root.obj
    if isinstance(obj, Globals):
        return obj
    return Globals(config=None, socket=None)


def main() -> None:
    """Entry point: map user errors and failures to exit codes without tracebacks."""
    try:
        app(standalone_mode=True)
    except UserError as e:
        err.print(f"dynscreen: {e}", markup=False, soft_wrap=True)
        sys.exit(2)
    except OperationFailed as e:
        err.print(f"dynscreen: {e}", markup=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


# Command modules register themselves on `app` when imported.
from dynscreen.cli import commands  # noqa: E402,F401
