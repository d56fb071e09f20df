"""What a valid config names that this host does not have: `check-config`'s warnings.

A config can be valid and still screen nothing here: an interface that does not
exist, a log file nobody writes (Debian 12 has no rsyslog by default, so no
/var/log/mail.log), a journal unit that is not installed or that never logs
(Debian's postfix.service is a placeholder running /bin/true). Each is a warning,
not an error: the interface may come later, the file may be created, the unit may be
installed after the config is written; the config is still the one the daemon takes.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import socket
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from dynscreen.control.config import Config, LogSource
from dynscreen.control.logs.journal import normalize_unit

# Where systemd looks for unit files (admin, runtime, distribution; merged /usr or not).
UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/run/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
)
# Units that may be placeholders logging nothing of the server's, and the one that does:
# Debian's and Ubuntu's postfix.service runs /bin/true, the master runs in postfix@-.
PLACEHOLDER_UNITS = {"postfix.service": "postfix@-.service"}


def interface_exists(name: str) -> bool:
    """In this network namespace (what `run` would attach to)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _unit_files(dirs: Iterable[Path]) -> set[str]:
    names: set[str] = set()
    for d in dirs:
        try:
            names.update(p.name for p in d.iterdir())
        except OSError:
            continue
    return names


def unit_installed(unit: str, dirs: Iterable[Path] = UNIT_DIRS) -> bool:
    """A unit file for it (an instance through its template; a glob through any match)."""
    files = _unit_files(dirs)
    unit = normalize_unit(unit)
    if any(ch in unit for ch in "*?["):
        return any(fnmatch.fnmatchcase(f, unit) for f in files)
    if unit in files:
        return True
    base, at, rest = unit.partition("@")
    return bool(at) and f"{base}@.{rest.rsplit('.', 1)[-1]}" in files


def is_placeholder(unit: str, dirs: Iterable[Path] = UNIT_DIRS) -> bool:
    """The unit's installed file starts nothing but /bin/true."""
    for d in dirs:
        try:
            text = (d / unit).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        starts = [ln.split("=", 1)[1].strip() for ln in text.splitlines()
                  if ln.strip().startswith("ExecStart=")]
        return bool(starts) and all(s.lstrip("-@+!:") in ("/bin/true", "/usr/bin/true")
                                    for s in starts)
    return False


def _default_route() -> str | None:
    from dynscreen.control.dataplane.links import default_route_interface

    return default_route_interface()


def host_warnings(
    config: Config,
    *,
    unit_dirs: Iterable[Path] = UNIT_DIRS,
    default_route: Callable[[], str | None] = _default_route,
    journalctl: str = "journalctl",
    discovered: Sequence[str] | None = None,
) -> list[str]:
    """One sentence per thing the config names that this host lacks (empty: all seen).

    ``discovered``: discovery's warnings when the caller has run it already (with no
    [[logs]] table, what discovery finds is no warning; finding nothing is).
    """
    out: list[str] = []
    ifaces = config.screening.interfaces
    for name in ifaces:
        if not interface_exists(name):
            out.append(f"screening.interfaces: interface {name!r} does not exist on this host")
    try:
        route = default_route() if not ifaces else ""
    except Exception:  # (netlink refused, pyroute2's own errors): unknown, so no warning
        route = ""
    if route is None:
        out.append("screening.interfaces is empty and this host has no default route: "
                   "`dynscreen run` needs an interface (screening.interfaces or --iface)")
    if config.logs is None:
        if discovered is None:
            from dynscreen.control.logs.discover import discover  # (it imports this module)

            discovered = discover().warnings
        out.extend(discovered)
    else:
        out.extend(log_warnings(config.logs, unit_dirs=unit_dirs, journalctl=journalctl))
    pw = config.fleet.password_file
    if config.fleet.enabled and pw and not os.access(pw, os.R_OK):
        out.append(f"fleet.password_file {pw} cannot be read: `dynscreen run` will not start")
    return out


def log_warnings(
    sources: Iterable[LogSource],
    *,
    unit_dirs: Iterable[Path] = UNIT_DIRS,
    journalctl: str = "journalctl",
) -> list[str]:
    """One sentence per configured log source this host lacks (the daemon logs them too)."""
    out: list[str] = []
    dirs = tuple(unit_dirs)
    journal_missing = shutil.which(journalctl) is None
    for i, src in enumerate(sources, 1):
        where = f"[[logs]] #{i}"
        if src.path is not None:
            if not Path(src.path).exists():
                out.append(
                    f"{where}: log file {src.path} does not exist: the daemon waits for it "
                    "and screens no log signals from it until it appears (without rsyslog, "
                    "the mail servers log to the journal: journal = \"postfix@-.service\")"
                )
            continue
        unit = normalize_unit(src.journal or "")
        if journal_missing:
            out.append(f"{where}: journal unit {unit}: journalctl is not installed here")
        elif unit in PLACEHOLDER_UNITS and is_placeholder(unit, dirs):
            out.append(f"{where}: journal unit {unit} logs nothing of the server here: "
                       f"its messages are under {PLACEHOLDER_UNITS[unit]}")
        elif not unit_installed(unit, dirs):
            out.append(f"{where}: journal unit {unit} is not installed on this host")
    return out
