"""Talking to the daemon: find its control socket, send one request, map the reply.

Every client command goes through :func:`request`, so that a missing daemon, a
permission problem or a refused request reads the same everywhere and ends in
the exit code docs/design.md promises (2 invalid input, 1 operation failed).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.style import StyleType
from rich.table import Table
from rich.text import Text

from dynscreen.cli.app import Globals, OperationFailed, UserError, globals_of
from dynscreen.control import ctlproto
from dynscreen.control.addr import parse_network
from dynscreen.control.config import read_socket_path

DEFAULT_SOCKET = Path("/run/dynscreen/control.sock")
TIMEOUT = 10.0  # seconds for one request; `top` polls, so a stuck daemon must not hang it
MAX_REPLY = 256 << 20  # a status with a million blocks fits; a runaway stream does not
UNIX_PATH_MAX = 107

Target = typer.Context | Globals | Path | str
JsonFlag = Annotated[bool, typer.Option("--json", help="print the daemon's result as JSON")]


def socket_path(target: typer.Context | Globals) -> Path:
    """--socket, else DYNSCREEN_SOCKET, else the config's [daemon].socket, else the default.

    The config is read only for its socket key, so that `status` and `reload`
    still find the daemon when the file on disk has a mistake elsewhere.
    """
    g = target if isinstance(target, Globals) else globals_of(target)
    if g.socket is not None:
        return g.socket
    env = os.environ.get("DYNSCREEN_SOCKET")
    if env:
        return Path(env)
    configured = read_socket_path(g.config_path())
    return configured if configured is not None else DEFAULT_SOCKET


def _resolve(target: Target) -> Path:
    # Typer hands commands a plain click Context, not always a typer.Context: test for paths.
    if isinstance(target, (str, os.PathLike)):
        return Path(target)
    return socket_path(target)


class NoDaemon(OperationFailed):
    """No daemon answers at the socket: `status`, `unblock` and `detach` then work on
    the kernel's pinned maps (as root); the others cannot."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no daemon at {path} — start it with `systemctl start dynscreen` "
                         "(the service) or `dynscreen run`")
        self.path = path


def no_daemon(path: Path) -> NoDaemon:
    return NoDaemon(path)


def request(target: Target, cmd: str, *, timeout: float = TIMEOUT, **args: Any) -> Any:
    """Send one command with its arguments and return the reply's result.

    Raises UserError when the daemon calls the request invalid (reply code 2)
    and OperationFailed when it could not be carried out or no daemon answered.
    """
    path = _resolve(target)
    line = ctlproto.encode({"cmd": cmd, **args})
    if len(line) > ctlproto.MAX_REQUEST:
        raise UserError(
            f"request too large for the daemon ({len(line)} bytes, limit {ctlproto.MAX_REQUEST})"
        )
    if len(os.fsencode(str(path))) > UNIX_PATH_MAX:
        raise UserError(f"socket path too long ({UNIX_PATH_MAX} bytes at most): {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        _connect(sock, path)
        try:
            sock.sendall(line)
            raw = _read_line(sock, path)
        except TimeoutError:
            raise OperationFailed(
                f"the daemon at {path} did not answer within {timeout:g} s"
            ) from None
        except OSError as e:
            raise OperationFailed(
                f"lost the connection to the daemon at {path}: {e.strerror or e}"
            ) from None
    finally:
        sock.close()
    return _result(raw, path)


def connect(sock: socket.socket, path: Path) -> None:
    """Connect to the daemon's socket; NoDaemon or OperationFailed say why not."""
    _connect(sock, path)


def request_result(raw: bytes, path: Path) -> Any:
    """A reply line's result, or its error raised (UserError / OperationFailed)."""
    return _result(raw, path)


def _connect(sock: socket.socket, path: Path) -> None:
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        raise no_daemon(path) from None
    except PermissionError:
        raise OperationFailed(
            f"permission denied on {path}: the control socket needs root (try sudo)"
        ) from None
    except TimeoutError:
        raise OperationFailed(f"the daemon at {path} did not accept within the timeout") from None
    except OSError as e:
        if e.errno in (errno.ENOTSOCK, errno.ECONNREFUSED, errno.ENOENT):
            raise no_daemon(path) from None
        raise OperationFailed(f"cannot connect to {path}: {e.strerror or e}") from None


def _read_line(sock: socket.socket, path: Path) -> bytes:
    """The reply line; a reply cut short (the daemon died, or detached) is a failure."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            got = "no reply" if size == 0 else f"a truncated reply ({size} bytes)"
            raise OperationFailed(f"the daemon at {path} closed the connection with {got}")
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REPLY:
            raise OperationFailed(f"the daemon at {path} sent an oversized reply")


def _result(raw: bytes, path: Path) -> Any:
    try:
        reply = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise OperationFailed(f"garbled reply from the daemon at {path}") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise OperationFailed(f"garbled reply from the daemon at {path}")
    if reply["ok"]:
        if "result" not in reply:
            raise OperationFailed(f"garbled reply from the daemon at {path}: no result")
        return reply["result"]
    message = str(reply.get("error") or "the daemon refused the request")
    if reply.get("code") == 2:
        raise UserError(message)
    raise OperationFailed(message)


def check_network(text: str, what: str = "address or CIDR range") -> str:
    """A quick exit-2 for a typo before bothering the daemon (which checks again)."""
    try:
        parse_network(text)
    except ValueError as e:
        raise UserError(f"invalid {what} {text!r}: {e}") from None
    return text.strip()


# --- output helpers shared by the client commands ---


def console() -> Console:
    """Rich output on stdout; wide when piped so that no column is cut for grep or a log.

    Markup and emoji codes are off: what the commands print holds names a client chose
    (accounts, notes, log file names), and ``[/x]`` must print as it is, not raise.
    """
    probe = Console(highlight=False, markup=False, emoji=False)
    if probe.is_terminal or os.environ.get("COLUMNS"):
        return probe
    return Console(highlight=False, markup=False, emoji=False, width=200)


def literal(value: str) -> Text:
    """Text shown as it is: no markup, no emoji codes, and control characters (an
    escape sequence would drive the terminal) written out as ``\\x1b``."""
    if not value.isprintable():
        value = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)
    return Text(value)


class LiteralTable(Table):
    """A table whose text cells are :func:`literal`: every client command's tables show
    values from outside (account names, notes, addresses, log file names)."""

    def add_row(
        self,
        *renderables: RenderableType | None,
        style: StyleType | None = None,
        end_section: bool = False,
    ) -> None:
        super().add_row(
            *(literal(r) if isinstance(r, str) else r for r in renderables),
            style=style,
            end_section=end_section,
        )


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def table(*columns: str, right: Iterable[str] = ()) -> Table:
    """A plain table in the style of all client commands; `right` names numeric columns."""
    t = LiteralTable(show_edge=False, box=None, header_style="bold", pad_edge=False)
    numeric = set(right)
    for name in columns:
        t.add_column(name, justify="right" if name in numeric else "left", overflow="fold")
    return t


def minutes(value: Any) -> str:
    """Minutes left as an admin reads them: 12.5, 0.3, or '-' when none."""
    if value is None:
        return "-"
    try:
        m = float(value)
    except (TypeError, ValueError):
        return str(value)
    if m >= 100:
        return f"{m:.0f}"
    return f"{m:.1f}"


def when(value: Any) -> str:
    """A time from the daemon (unix seconds or ISO text) as local time; '-' when none."""
    if value is None or value == "":
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return str(value)


def text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def listing(value: Any, key: str) -> list[dict[str, Any]]:
    """A list of objects from a result, or a clear failure if the daemon sent something else."""
    if not isinstance(value, dict) or not isinstance(value.get(key), list):
        raise OperationFailed(f"unexpected reply from the daemon: no {key!r} list")
    return [item for item in value[key] if isinstance(item, dict)]
