"""The compiled log pipeline (setup.py, control/native.py) against its own source.

mypyc builds the parsers, the engine and the replay loop from the same typed
source that runs uncompiled; this checks that the build is there and current
(under CI=true), and that the source run as plain Python gives the same replay,
byte for byte, as the build.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from dynscreen.control import native
from dynscreen.control.config import Config
from dynscreen.control.replay import replay

from conftest import require

REPO = Path(__file__).resolve().parents[1]


def _compiled() -> bool:
    return all(s == "compiled" for s in native.status().values())


def test_build_is_there_and_current() -> None:
    require(_compiled(), f"the log pipeline is not compiled: {native.status()}")
    for name in native.MODULES:
        module = importlib.import_module(f"dynscreen.control.{name}")
        assert module.__file__ is not None
        assert module.__file__.endswith(tuple(EXTENSION_SUFFIXES)), name


def test_status_sees_a_stale_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "control"
    (here / "logs").mkdir(parents=True)
    for name in native.MODULES:
        native_src = here.joinpath(*name.split(".")).with_suffix(".py")
        native_src.write_text("")
    monkeypatch.setattr(native, "HERE", here)
    assert set(native.status().values()) == {"missing"}
    suffix = EXTENSION_SUFFIXES[0]
    for name in (*native.MODULES, f"{native.GROUP}__mypyc"):
        base = here.joinpath(*name.split("."))
        base.with_name(base.name + suffix).write_text("")
    assert set(native.status().values()) == {"compiled"}
    src = native.source("logs.parse")
    shared = native.built(f"{native.GROUP}__mypyc")
    assert shared is not None
    t = shared.stat().st_mtime
    os.utime(src, (t + 10, t + 10))
    assert native.status()["logs.parse"] == "stale"
    assert native.main(["--fresh"]) == 1


def test_source_replays_as_the_build(tmp_path: Path) -> None:
    """The same JSON from the uncompiled source as from the build."""
    require(_compiled(), "the log pipeline is not compiled: nothing to compare")
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from loggen import write_log
    finally:
        sys.path.pop(0)
    log = tmp_path / "mail.log"
    write_log(str(log), 30_000, seed=5)
    built: list[str] = []
    replay(Config(), [str(log)], write=built.append)

    # The package's source alone (no extensions), first on the path.
    pure = tmp_path / "pure" / "dynscreen"
    shutil.copytree(
        REPO / "control", pure / "control", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    (pure / "__init__.py").write_text("")
    code = (
        "import sys\n"
        "from dynscreen.control import engine, replay\n"
        "from dynscreen.control.logs import parse\n"
        "assert all(m.__file__.endswith('.py') for m in (engine, replay, parse))\n"
        "from dynscreen.control.config import Config\n"
        "replay.replay(Config(), [sys.argv[1]], write=sys.stdout.write)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(log)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(pure.parent)},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "".join(built)
    assert run.stdout.count('"type": "decision"') > 10
