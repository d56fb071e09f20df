"""Build hook: the log pipeline's hot modules compiled to C with mypyc.

``dynscreen replay`` reads millions of lines and a busy gateway's follower
thousands a second; the parsers, the engine and the replay loop are plain typed
Python, and mypyc turns that same source into C extensions (about twice the
speed). Nothing else changes: without a compiler, or with DYNSCREEN_PURE=1, the
package is the pure-Python source and behaves the same, only slower.

The source folders are not named as their packages (``control/`` holds
``dynscreen.control``), so mypy reads them through a staging tree of symlinks
under ``build/`` that spells the package path out.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# The modules compiled: control/native.py names them (and tells whether a build is current).
NATIVE = runpy.run_path(str(ROOT / "control" / "native.py"))


def _staged() -> Path:
    """build/mypyc-src/dynscreen/{control,cli,bpf} -> the source folders."""
    top = ROOT / "build" / "mypyc-src" / "dynscreen"
    top.mkdir(parents=True, exist_ok=True)
    for name in ("control", "cli", "bpf"):
        link = top / name
        if link.is_symlink() and link.resolve() != ROOT / name:
            link.unlink()  # (a moved checkout)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(ROOT / name, top), target_is_directory=True)
    return top.parent


def native_modules() -> list:
    """mypyc's extensions, or none (pure Python) when it cannot or should not build."""
    if os.environ.get("DYNSCREEN_PURE") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("dynscreen: mypyc not available: pure-Python build", file=sys.stderr)
        return []
    base = _staged()
    os.environ["MYPYPATH"] = str(base)
    rel = os.path.relpath(base / "dynscreen" / "control", ROOT)
    return mypycify(
        [
            "--follow-imports=silent",
            "--ignore-missing-imports",
            "--explicit-package-bases",
            *(f"{rel}/{m.replace('.', '/')}.py" for m in NATIVE["MODULES"]),
        ],
        opt_level="3",
        group_name=f"dynscreen.control.{NATIVE['GROUP']}",
    )


class AllOrNone(build_ext):
    """Every compiled module or none: a host without a C compiler or Python's headers
    installs the source, which runs the same (make setup insists on the build)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # (CompileError, LinkError, a missing compiler: all alike)
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            print(f"dynscreen: compiling failed ({e}): pure-Python build", file=sys.stderr)


setup(ext_modules=native_modules(), cmdclass={"build_ext": AllOrNone})
