"""The modules mypyc compiles (setup.py), and whether their builds are current.

A compiled module is a C extension next to its source, and Python imports the
extension first: after an edit to the source, a stale build would run instead.
``make setup`` rebuilds when this says so, and the test suite refuses to start on
a stale build. Without a build (no compiler, DYNSCREEN_PURE=1) the sources run
as they are.

Usage: python -m dynscreen.control.native [--fresh]   (exit 1: a build is missing or stale)
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# Modules of dynscreen.control compiled by setup.py: the log pipeline's hot path.
MODULES = (
    "engine",
    "spray",
    "aggregate",
    "replay",
    "logs.parse",
    "logs.postfix",
    "logs.dovecot",
    "logs.exim",
    "logs.header",
    "logs.signals",
    "logs.stamps",
)
GROUP = "native"  # mypyc's shared library for the group: dynscreen.control.native__mypyc
HERE = Path(__file__).resolve().parent


def source(module: str) -> Path:
    """The source file of one of MODULES."""
    return HERE.joinpath(*module.split(".")).with_suffix(".py")


def built(module: str) -> Path | None:
    """The extension built from it, if there is one."""
    base = HERE.joinpath(*module.split("."))
    for suffix in EXTENSION_SUFFIXES:
        path = base.with_name(base.name + suffix)
        if path.exists():
            return path
    return None


def status() -> dict[str, str]:
    """Each module's build: "compiled", "missing" or "stale" (its source is newer than
    the group's shared library, which holds the compiled code of every module: a
    module's own extension is a stub that the build leaves alone when unchanged)."""
    shared = built(f"{GROUP}__mypyc")
    out = {}
    for module in MODULES:
        if built(module) is None or shared is None:
            out[module] = "missing"
        elif source(module).stat().st_mtime > shared.stat().st_mtime:
            out[module] = "stale"
        else:
            out[module] = "compiled"
    out[f"{GROUP}__mypyc"] = "missing" if shared is None else "compiled"
    return out


def main(argv: list[str]) -> int:
    states = status()
    for module, state in states.items():
        if "--fresh" not in argv or state != "compiled":
            print(f"dynscreen.control.{module}: {state}")
    return 0 if all(s == "compiled" for s in states.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
