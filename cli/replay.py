"""`dynscreen replay LOG...`: what the configured rules would have done with these logs."""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dynscreen.cli import client
from dynscreen.cli.app import app, globals_of
from dynscreen.control.config import Config, ConfigError, load_config
from dynscreen.control.decisions import Block, Exempt, Freeze, Notify, Protect, Spare
from dynscreen.control.replay import (
    SIMULATION_NOTE,
    LogFileError,
    OutputError,
    Summary,
    replay,
    summary_line,
)

_EXIT_USAGE = 2
_EXIT_NOTHING_UNDERSTOOD = 1
MAX_ROWS = 50  # rows of a summary table; --json has everything
SHOWN_CHARS = 120  # of a not-understood line shown as an example


@app.command("replay")
def replay_command(
    ctx: typer.Context,
    logs: Annotated[
        list[str],
        typer.Argument(
            help="mail logs (Postfix, Dovecot, Exim; .gz too; - for standard input), "
            "merged in time order",
            metavar="LOG",
            show_default=False,
        ),
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="config to apply (default: the global --config, DYNSCREEN_CONFIG, "
            "the default path if it exists, else the built-in defaults)",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print every event and decision as JSON lines, "
                           "then a summary line")
    ] = False,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="exit 0 even when no line was understood")
    ] = False,
) -> None:
    """Offline dry run: the events in the logs and the decisions the rules would take.

    Exit 1, with a warning, when no line of the logs was understood (unless
    --allow-empty): the input is likely not a mail log (`journalctl -o json`?).
    """
    path = config if config is not None else globals_of(ctx).config_path()
    try:
        cfg = load_config(path)
    except ConfigError as e:
        _fail(str(e))
    # Nothing the replay builds is cyclic: the collector would only rescan the
    # engine's state again and again as it grows.
    gc.disable()
    try:
        if as_json:
            stats = _json(cfg, logs)
        else:
            started = time.monotonic()
            stats = replay(cfg, logs)
            _report(stats, cfg.screening.enabled, path, time.monotonic() - started)
    except LogFileError as e:
        _fail(str(e))
    finally:
        gc.enable()
    _nothing_understood(stats, allow_empty)


def _nothing_understood(stats: Summary, allow_empty: bool) -> None:
    """A warning for each file of which no line was understood; exit 1 when that is
    every line of every file, unless --allow-empty."""
    for f in stats.files_not_understood():
        lines = stats.file_outcomes[f]
        n = sum(lines)
        what = "it has no lines" if n == 0 else (
            f"none of its {n} line(s) is a Postfix, Dovecot or Exim log line")
        if any(e[0] == f and e[2].startswith("{") for e in stats.missed):
            what += " (JSON: `journalctl -o json` output?)"
        typer.echo(f"dynscreen: warning: nothing in {f} was understood: {what}. Replay the "
                   "mail log itself, or `journalctl -o short-iso` output", err=True)
    if stats.signal_lines + stats.understood_lines == 0 and not allow_empty:
        raise typer.Exit(_EXIT_NOTHING_UNDERSTOOD)


def _fail(message: str) -> None:
    # Echoed, not raised as UserError: the message may quote TOML ([[logs]]) that
    # rich markup would eat, and it must reach the terminal verbatim.
    typer.echo(f"dynscreen: {message}", err=True)
    raise typer.Exit(_EXIT_USAGE)


def _json(cfg: Config, logs: list[str]) -> Summary:
    out = sys.stdout
    try:
        stats = replay(cfg, logs, write=out.write)
        out.write(summary_line(stats))
        out.flush()
        return stats
    except (BrokenPipeError, OutputError) as e:
        error = e.error if isinstance(e, OutputError) else e
        if not isinstance(error, BrokenPipeError):
            typer.echo(f"dynscreen: cannot write the output: {e}", err=True)
            raise typer.Exit(1) from None
        # The reader went away (| head): not an error of ours; keep Python quiet at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        raise typer.Exit(0) from None


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _report(stats: Summary, enabled: bool, path: Path | None, seconds: float) -> None:
    out = client.console()
    where = str(path) if path is not None else "built-in defaults"
    out.print(
        f"replayed {stats.lines} lines of {len(stats.files)} file(s) in {seconds:.1f} s, "
        f"config: {where}",
        markup=False,
    )
    if stats.first_ts is not None:
        out.print(f"log time: {_when(stats.first_ts)} to {_when(stats.last_ts)}", markup=False)
    if not enabled:
        out.print("screening is disabled in this config: the rules decide nothing", markup=False)
    _outcomes(out, stats)
    out.print()

    t = client.table("EVENT", "LINES", "COUNT", right=("LINES", "COUNT"))
    for kind, n in stats.events.items():
        t.add_row(kind, str(n), str(stats.counts.get(kind, 0)))
    out.print(t)
    out.print()

    blocks = [d for d in stats.decisions if isinstance(d, Block)]
    _top(out, stats, blocks)
    _blocks(out, blocks)
    _accounts(out, [d for d in stats.decisions if isinstance(d, Freeze | Notify)])
    _protected(out, [d for d in stats.decisions if isinstance(d, Protect)])
    _spared(out, [d for d in stats.decisions if isinstance(d, Spare)])
    exempts = [d for d in stats.decisions if isinstance(d, Exempt)]
    if exempts:
        sources = {d.ip for d in exempts}
        out.print(
            f"exemptions after SMTP AUTH: {len(exempts)}, of {len(sources)} source(s)",
            markup=False,
        )
    out.print(f"note: {SIMULATION_NOTE}", markup=False, style="dim")


def _outcomes(out: Console, stats: Summary) -> None:
    """What was understood of the lines, by format, and a few of the lines that were not."""
    out.print(
        f"lines: {stats.signal_lines} with a signal, {stats.understood_lines} understood "
        f"without one, {stats.not_understood_lines} not understood",
        markup=False,
    )
    parts = []
    for name, (signal, understood, missed) in stats.formats.items():
        n = signal + understood + missed
        if n:
            parts.append(f"{name} {n}" + (f" ({signal} with a signal)" if signal else ""))
    if parts:
        out.print(f"by format: {', '.join(parts)}", markup=False)
    if stats.missed:
        out.print("not understood, for example:", markup=False)
        for f, lineno, text, length in stats.missed:
            out.print(f"  {f}:{lineno}: {_shown(text, length)}", markup=False, soft_wrap=True)


def _shown(text: str, length: int) -> str:
    """A log line as the summary quotes it: escaped (repr) and cut, with what was cut."""
    cut = text[:SHOWN_CHARS]
    return repr(cut) + (f" (+{length - len(cut)} chars)" if length > len(cut) else "")


def _top(out: Console, stats: Summary, blocks: list[Block]) -> None:
    top = stats.top()
    if not top:
        return
    blocks_of: dict[str, int] = {}
    for b in blocks:
        blocks_of[b.ip] = blocks_of.get(b.ip, 0) + 1
    numbers = ("AUTH FAIL", "FAILED RCPT", "RSET", "CONNECTS", "BLOCKS")
    t = client.table("SOURCE", *numbers, right=numbers)
    for key, s in top:
        counts = (s.auth_failures, s.failed_rcpts, s.rsets, s.connections, blocks_of.get(key, 0))
        t.add_row(key, *(str(n) for n in counts))
    out.print("top sources", markup=False, style="bold")
    out.print(t)
    out.print(
        "(signals as logged: an attempt that Postfix, Dovecot and pam each describe is "
        "one attempt to the rules)",
        markup=False,
        style="dim",
    )
    out.print()


def _tipped_by(d: Block | Protect | Spare | Freeze | Notify) -> str:
    """The log line that tipped a decision, as every table names it."""
    return f"{d.file}:{d.line}" if d.file else "-"


def _section(out: Console, heading: str, t: Table, total: int) -> None:
    """A titled list of decisions: heading, the table of the first MAX_ROWS, the rest counted."""
    out.print(heading, markup=False, style="bold")
    out.print(t)
    _more(out, total)


def _more(out: Console, total: int) -> None:
    """Every list's tail: how many the table left out (--json has them), then a blank line."""
    if total > MAX_ROWS:
        out.print(f"... and {total - MAX_ROWS} more (--json lists them all)", markup=False)
    out.print()


def _blocks(out: Console, blocks: list[Block]) -> None:
    if not blocks:
        out.print("blocks: none", markup=False)
        out.print()
        return
    by_reason: dict[str, int] = {}
    for b in blocks:
        by_reason[b.reason] = by_reason.get(b.reason, 0) + 1
    head = ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items()))
    out.print(f"blocks the rules would make: {len(blocks)} ({head})", markup=False, style="bold")
    t = client.table(
        "SOURCE", "REASON", "MIN", "FIRST SIGNAL", "BLOCKED AT", "EVIDENCE", "TIPPED BY",
        right=("MIN", "EVIDENCE"),
    )
    shown = blocks[:MAX_ROWS]
    for b in shown:
        t.add_row(
            b.ip, b.reason, str(b.minutes), _when(b.first_ts), _when(b.ts), str(b.count),
            _tipped_by(b),
        )
    out.print(t)
    if any(b.reason == "prefix" for b in shown):
        out.print("(a prefix block's EVIDENCE: the blocked sources inside it that led to it)",
                  markup=False, style="dim")
    _more(out, len(blocks))


def _protected(out: Console, rows: list[Protect]) -> None:
    if not rows:
        return
    users = {d.user for d in rows}
    t = client.table("USER", "SOURCES", "MIN", "AT", "SOME SOURCES", "TIPPED BY",
                     right=("SOURCES", "MIN"))
    for d in rows[:MAX_ROWS]:
        t.add_row(d.user, str(d.sources), str(d.minutes), _when(d.ts), ", ".join(d.sample[:4]),
                  _tipped_by(d))
    _section(out, f"accounts under a spraying attack: {len(rows)} protection(s) of {len(users)} "
             "account(s) (strangers failing on them are blocked: reason spray)", t, len(rows))


def _spared(out: Console, rows: list[Spare]) -> None:
    if not rows:
        return
    t = client.table("SOURCE", "LIMIT", "COUNT", "TRUSTED AS", "AT", "TIPPED BY",
                     right=("COUNT",))
    for d in rows[:MAX_ROWS]:
        t.add_row(d.ip, d.reason, str(d.count), d.trusted, _when(d.ts),
                  _tipped_by(d))
    _section(out, f"spared as trusted senders: {len(rows)}, of {len({d.ip for d in rows})} "
             "source(s) (they reached a limit; trusted_senders / trusted_networks keep them "
             "unblocked)", t, len(rows))


def _accounts(out: Console, rows: list[Freeze | Notify]) -> None:
    if not rows:
        return
    t = client.table(
        "ACTION", "USER", "SERVICE", "FAILURES", "SOURCE", "AT", "TIPPED BY", right=("FAILURES",)
    )
    for d in rows[:MAX_ROWS]:
        t.add_row(
            d.action, d.user, d.service or "-", str(d.count), d.source or "-", _when(d.ts),
            _tipped_by(d),
        )
    _section(out, "accounts", t, len(rows))
