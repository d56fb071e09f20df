"""The `dynscreen` command: options before the command, then one command per module.

Exit codes (docs/design.md): 0 ok, 1 operation failed, 2 usage or invalid input.
No traceback for a user error: commands raise UserError / OperationFailed.
The everyday conventions: `--version`, `-h` as `--help` on every command, and help
whose placeholders read as values (`--json`, `--minutes MINUTES`), not Python types.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main
from rich.console import Console
from typer.core import TyperArgument, TyperOption

DEFAULT_CONFIG = Path("/etc/dynscreen/dynscreen.toml")

app = typer.Typer(
    name="dynscreen",
    help="Dynamic connection screening for Linux mail gateways.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Inherited by every command's context: `dynscreen status -h` as well.
    context_settings={"help_option_names": ["-h", "--help"]},
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


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's, through the package metadata)."""
    # Imported here: importlib.metadata (email, zipfile) is not every command's start-up cost.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dynscreen")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"dynscreen {package_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="config file (default /etc/dynscreen/dynscreen.toml, env DYNSCREEN_CONFIG)",
        ),
    ] = None,
    socket: Annotated[
        Path | None,
        typer.Option("--socket", metavar="PATH",
                     help="control socket of the daemon (env DYNSCREEN_SOCKET)"),
    ] = None,
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True,
                     help="print the version and exit"),
    ] = False,
) -> None:
    ctx.obj = Globals(config=config, socket=socket)


def globals_of(ctx: typer.Context) -> Globals:
    """The Globals of this invocation (also when a command is called directly in tests)."""
    root = ctx.find_root()
    obj = root.obj
    if isinstance(obj, Globals):
        return obj
    return Globals(config=None, socket=None)


def _value_placeholders(cmd: Any) -> None:
    """Typer's help shows each parameter's Python type (`--json <bool>`, `ADDR <str>`):
    here a flag shows no placeholder (it takes no value), a value option its declared
    metavar or its own name (`--minutes MINUTES`), an argument only its name."""

    def plain(param: Any) -> Any:
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = "" if param.is_flag else param.name.upper()
        elif isinstance(param, TyperArgument):
            param.display_type_rich = lambda ctx: None
        return param

    for param in cmd.params:
        plain(param)
    help_option = cmd.get_help_option  # made per context, with -h from context_settings
    cmd.get_help_option = lambda ctx: plain(help_option(ctx))
    for sub in getattr(cmd, "commands", {}).values():
        _value_placeholders(sub)


def command() -> Any:
    """The `dynscreen` command as main() runs it (help conventions applied)."""
    cmd = typer.main.get_command(app)
    _value_placeholders(cmd)
    return cmd


def main() -> None:
    """Entry point: map user errors and failures to exit codes without tracebacks."""
    try:
        command()(prog_name="dynscreen", standalone_mode=True)
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
