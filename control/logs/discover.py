"""Which logs this host writes: the sources the daemon follows when the config names none.

Why discover: a stock Debian 12 has no rsyslog, so the classic /var/log/mail.log
does not exist and a fixed default screens nothing, silently. The mail servers
log to the journal there, under their systemd units; where journald runs, the
journal is preferred over a syslog file even when both exist: its _SYSTEMD_UNIT
field is set by journald from the sender's cgroup, which a local user cannot
forge, while anyone may write a "postfix/smtpd[1]:" line to syslog.

The rules, per server:
- Postfix: the journal of its instance units (Debian's ``postfix@-.service``, or
  whichever ``postfix@*.service`` instances the unit folders, the generator's
  ``.wants`` links or the journal itself show); ``postfix.service`` only where it
  is not a placeholder (Debian's runs /bin/true).
- Dovecot: the journal of ``dovecot.service``.
- Exim: its own main log (``/var/log/exim4/mainlog``) where it exists: Exim writes
  it itself, not through syslog, and sends nothing of its traffic to the journal
  by default; else the journal of ``exim4.service``.
- Without journald (or for a server the journal does not cover): the classic files
  where they exist, ``/var/log/mail.log`` and ``/var/log/maillog`` read as ``auto``
  (Postfix and Dovecot lines side by side), ``/var/log/dovecot.log``.
Nothing found is a warning, never silence.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dynscreen.control.config import Config, LogSource
from dynscreen.control.hostcheck import UNIT_DIRS, is_placeholder, log_warnings

JOURNAL_RUN = Path("/run/systemd/journal")
"""journald's runtime folder: it exists exactly when journald runs."""

GENERATOR_DIRS = (Path("/run/systemd/generator"), Path("/run/systemd/generator.late"))
"""Where generators put units and links (Debian's postfix-instance-generator: the
``postfix.service.wants/postfix@-.service`` link)."""

MAIL_LOGS = (Path("/var/log/mail.log"), Path("/var/log/maillog"))
DOVECOT_LOGS = (Path("/var/log/dovecot.log"),)
EXIM_LOGS = (Path("/var/log/exim4/mainlog"), Path("/var/log/exim/main.log"))

JOURNAL_FIELD_TIMEOUT = 10.0
"""Seconds allowed for ``journalctl --field``: a huge journal must not stall a start."""


@dataclass(frozen=True)
class LogSources:
    """The sources the daemon follows, whether they were discovered, and what is wrong."""

    sources: tuple[LogSource, ...]
    discovered: bool
    warnings: tuple[str, ...] = ()
    reasons: dict[str, str] = field(default_factory=dict)  # source name -> why it was chosen


def _unit_names(dirs: Iterable[Path]) -> set[str]:
    """Unit files and the units linked from ``*.wants``/``*.requires`` folders."""
    names: set[str] = set()
    for d in dirs:
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        for p in entries:
            names.add(p.name)
            if p.name.endswith((".wants", ".requires")):
                try:
                    names.update(q.name for q in p.iterdir())
                except OSError:
                    continue
    return names


def journal_units(journalctl: str = "journalctl") -> set[str]:
    """The units the journal holds entries of (empty when it cannot be asked)."""
    exe = shutil.which(journalctl)
    if exe is None:
        return set()
    try:
        out = subprocess.run(
            [exe, "--field=_SYSTEMD_UNIT", "--quiet", "--no-pager"],
            capture_output=True, text=True, timeout=JOURNAL_FIELD_TIMEOUT, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {ln.strip() for ln in out.stdout.splitlines() if ln.strip()}


def _postfix_units(installed: set[str], logged: set[str], dirs: tuple[Path, ...]) -> list[str]:
    instances = sorted(
        u for u in installed | logged
        if fnmatch.fnmatchcase(u, "postfix@?*.service")
    )
    if instances:
        return instances
    if "postfix@.service" in installed:
        return ["postfix@-.service"]  # the default instance of the template
    if "postfix.service" in installed and not is_placeholder("postfix.service", dirs):
        return ["postfix.service"]
    return []


def _existing(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if p.is_file()]


def discover(
    *,
    journal_run: Path | None = None,
    unit_dirs: Iterable[Path] | None = None,
    mail_logs: Iterable[Path] | None = None,
    dovecot_logs: Iterable[Path] | None = None,
    exim_logs: Iterable[Path] | None = None,
    logged_units: Callable[[], set[str]] | None = None,
    journalctl: str = "journalctl",
) -> LogSources:
    """What this host's mail servers write, by the rules of the module doc (each place
    to look defaults to this module's constant, read at the call)."""
    journal_run = journal_run or JOURNAL_RUN
    dirs = tuple(unit_dirs if unit_dirs is not None else UNIT_DIRS + GENERATOR_DIRS)
    mail_logs = tuple(mail_logs if mail_logs is not None else MAIL_LOGS)
    dovecot_logs = tuple(dovecot_logs if dovecot_logs is not None else DOVECOT_LOGS)
    exim_logs = tuple(exim_logs if exim_logs is not None else EXIM_LOGS)
    installed = _unit_names(dirs)
    journald = journal_run.is_dir() and shutil.which(journalctl) is not None
    logged = (logged_units or (lambda: journal_units(journalctl)))() if journald else set()
    out: list[LogSource] = []
    reasons: dict[str, str] = {}

    def add(src: LogSource, why: str) -> None:
        out.append(src)
        reasons[src.name] = why

    covered: set[str] = set()
    exim_files = _existing(exim_logs)
    for path in exim_files[:1]:
        add(LogSource(format="exim", path=str(path)), "Exim's own main log")
        covered.add("exim")
    if journald:
        for unit in _postfix_units(installed, logged, dirs):
            add(LogSource(format="postfix", journal=unit), "Postfix's unit, in the journal")
            covered.add("postfix")
        for unit, fmt in (("dovecot.service", "dovecot"), ("exim4.service", "exim"),
                          ("exim.service", "exim")):
            if fmt in covered or not (unit in installed or unit in logged):
                continue
            add(LogSource(format=fmt, journal=unit), f"{unit}, in the journal")
            covered.add(fmt)
    if "dovecot" not in covered:
        for path in _existing(dovecot_logs)[:1]:
            add(LogSource(format="dovecot", path=str(path)), "Dovecot's own log file")
            covered.add("dovecot")
    if not {"postfix", "dovecot"} <= covered:
        for path in _existing(mail_logs)[:1]:
            add(LogSource(format="auto", path=str(path)),
                "the syslog mail log" + (" (no journald here)" if not journald else ""))
    warnings: tuple[str, ...] = ()
    if not out:
        looked = ", ".join(str(p) for p in (*mail_logs, *dovecot_logs, *exim_logs))
        where = ("journald runs, but no unit of Postfix (postfix@*.service), Dovecot "
                 "(dovecot.service) or Exim (exim4.service) is installed or in the journal"
                 if journald else f"journald does not run here ({journal_run} is missing)")
        warnings = (
            f"no mail log found: {where}, and none of {looked} exists: no log signals "
            "are screened (authentication failures, failed recipients, RSETs); name the "
            "sources in [[logs]] tables",
        )
    return LogSources(tuple(out), discovered=True, warnings=warnings, reasons=reasons)


def log_sources(config: Config, **where: object) -> LogSources:
    """The config's [[logs]] (each missing one a warning), or, with none, discovery's."""
    if config.logs is None:
        return discover(**where)  # type: ignore[arg-type]
    unit_dirs = where.get("unit_dirs", UNIT_DIRS)
    warnings = log_warnings(config.logs, unit_dirs=unit_dirs)  # type: ignore[arg-type]
    if not config.logs:
        warnings.append("logs = [] names no log source: no log signals are screened")
    return LogSources(config.logs, discovered=False, warnings=tuple(warnings))
