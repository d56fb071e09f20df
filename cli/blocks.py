"""Manual blocks: `dynscreen block`, `unblock` and `blocks edit` (the block file in $EDITOR)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from dynscreen.cli import client
from dynscreen.cli.app import OperationFailed, UserError, app, err
from dynscreen.control.config import MAX_MINUTES

blocks_app = typer.Typer(help="The block file: current blocks, editable.", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")


@app.command("block")
def block(
    ctx: typer.Context,
    addr: Annotated[str, typer.Argument(metavar="ADDR", help="an address or a CIDR range")],
    minutes: Annotated[
        float | None,
        typer.Option("--minutes", help="how long (default: the config's block_minutes)"),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="a note kept with the block (the reason is manual)"),
    ] = None,
) -> None:
    """Block an address or range by hand."""
    addr = client.check_network(addr)
    if minutes is not None and not 0 < minutes <= MAX_MINUTES:
        raise UserError(f"--minutes must be more than 0 and at most {MAX_MINUTES}, got {minutes:g}")
    if reason is not None and any(ord(c) < 32 or ord(c) == 127 for c in reason):
        raise UserError("--reason must be a single line without control characters")
    result = client.request(ctx, "block", addr=addr, minutes=minutes, note=reason)
    b = result.get("block") if isinstance(result, dict) else None
    if not isinstance(b, dict):
        typer.echo(f"blocked {addr}")
        return
    line = f"blocked {b.get('ip', addr)} for {client.minutes(b.get('minutes_left'))} min"
    line += f" ({b.get('reason', 'manual')}"
    line += f": {b['note']})" if b.get("note") else ")"
    typer.echo(line)


@app.command("unblock")
def unblock(
    ctx: typer.Context,
    addr: Annotated[
        str | None, typer.Argument(metavar="ADDR", help="an address or a CIDR range")
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="remove every block")] = False,
) -> None:
    """Remove a block, or all of them (each source starts afresh). Without a daemon,
    as root: from the kernel's pinned maps and the block file."""
    if (addr is None) == (not every):
        raise UserError("name an address to unblock, or --all (not both)")
    if addr is not None:
        addr = client.check_network(addr)
    try:
        if every:
            result = client.request(ctx, "unblock", all=True)
        else:
            result = client.request(ctx, "unblock", addr=addr)
    except client.NoDaemon as why:
        from dynscreen.cli import offline  # the pins' reader: only without a daemon
        gone = offline.unblock(ctx, why, addr)
        result = {"removed": bool(gone), "unblocked": gone}
    if every:
        gone = result.get("unblocked") if isinstance(result, dict) else None
        n = len(gone) if isinstance(gone, list) else 0
        typer.echo(f"unblocked {n} block{'' if n == 1 else 's'}")
        return
    if not (isinstance(result, dict) and result.get("removed")):
        raise OperationFailed(f"no block for {addr}")
    typer.echo(f"unblocked {addr}")


@blocks_app.command("edit")
def edit(ctx: typer.Context) -> None:
    """Open $EDITOR on the block file; the daemon checks the edit before applying it."""
    current = client.request(ctx, "blocks_text")
    if not isinstance(current, dict) or not isinstance(current.get("text"), str):
        raise OperationFailed("unexpected reply from the daemon: no block file text")
    original: str = current["text"]
    fd, name = tempfile.mkstemp(prefix="dynscreen-blocks-", suffix=".txt")
    copy = Path(name)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(original)
    keep = False
    try:
        while True:
            try:
                _run_editor(copy)
            except OperationFailed as e:
                if _read(copy) != original:
                    keep = True
                    raise OperationFailed(f"{e}\nyour edited copy is kept in {copy}") from None
                raise
            edited = _read(copy)
            if edited == original:
                typer.echo("no changes; nothing applied")
                return
            try:
                result = _apply(ctx, original, edited, current.get("path"))
            except UserError as e:
                keep = True
                if not _interactive():
                    raise UserError(
                        f"edit refused: {e}\nyour edited copy is kept in {copy}"
                    ) from None
                err.print(f"dynscreen: edit refused: {e}", markup=False)
                err.print(f"your edited copy is kept in {copy}", markup=False)
                if not typer.confirm("re-open the editor?", default=True):
                    raise UserError(
                        f"nothing applied; your edited copy is kept in {copy}"
                    ) from None
                keep = False
                continue
            except OperationFailed as e:
                keep = True
                raise OperationFailed(f"{e}\nyour edited copy is kept in {copy}") from None
            typer.echo(_applied(result, current.get("path")))
            return
    except KeyboardInterrupt:
        if not keep and copy.exists() and _read(copy) != original:
            keep = True
            err.print(f"\ninterrupted; your edited copy is kept in {copy}", markup=False)
        raise
    finally:
        if not keep:
            copy.unlink(missing_ok=True)


def edit_request(original: str, edited: str) -> dict[str, str]:
    """The edit as the change it makes, for `blocks_apply`.

    ``text`` is the edited text with the lines it left as they were blanked
    (line numbers stay, so errors name the line in the editor); ``base`` holds
    the lines of the original that the edit removed or changed. The daemon
    applies just that: a block made while the editor was open stays.
    """
    before = set(original.split("\n"))
    after = edited.split("\n")
    kept = set(after)
    text = "\n".join("" if line in before else line for line in after)
    base = "\n".join(line for line in original.split("\n") if line not in kept)
    return {"text": text, "base": base}


def _apply(ctx: typer.Context, original: str, edited: str, path: Any) -> Any:
    """Check the whole edit here (duplicates with untouched lines too), then send the change."""
    from dynscreen.control.blockfile import BlockFileError, parse_block_file  # (only when run)

    try:
        parse_block_file(edited, str(path or "the block file"))
    except BlockFileError as e:
        raise UserError(str(e)) from None
    return client.request(ctx, "blocks_apply", **edit_request(original, edited))


def editor_command() -> list[str]:
    """$EDITOR, else $VISUAL, else Debian's `editor` alternative, else vi."""
    for var in ("EDITOR", "VISUAL"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                words = shlex.split(value)
            except ValueError as e:
                raise UserError(f"cannot parse ${var} {value!r}: {e}") from None
            if words:
                return words
    return ["editor"] if shutil.which("editor") else ["vi"]


def _run_editor(path: Path) -> None:
    cmd = [*editor_command(), str(path)]
    try:
        rc = subprocess.run(cmd).returncode
    except OSError as e:
        raise OperationFailed(
            f"cannot run the editor {cmd[0]!r}: {e.strerror or e}; set $EDITOR"
        ) from None
    if rc != 0:
        raise OperationFailed(f"the editor exited with status {rc}; nothing applied")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise OperationFailed(f"cannot read the edited copy {path}: {e.strerror or e}") from None


def _interactive() -> bool:
    """Offer to re-open the editor only to someone at a terminal."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _applied(result: Any, path: Any) -> str:
    if not isinstance(result, dict):
        return "applied"
    counts = {k: int(result.get(k) or 0) for k in ("added", "removed", "changed")}
    where = f" to {path}" if path else ""
    if not any(counts.values()):
        return f"applied{where}: no block changed"
    return f"applied{where}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
