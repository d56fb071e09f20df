"""The repository stands alone: no file in it reads or cites anything beside it.

A fresh clone in an empty directory must pass its own tests, so no test, doc or
script may point at a sibling folder (the development setup's shared notes and
corpus) or at a design page that is not in the repository (docs/design.md is).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Built from parts so that this file does not match itself.
FORBIDDEN = [
    "../" + "shared",
    "shared/" + "corpus",
    "/work/" + "shared",
    "/work/" + "main",
]
DESIGN_CITATION = re.compile(r"(?<![\w/])" + "DESIGN" + r"\.md")
SKIP_DIRS = {".git", ".venv", "build", ".pytest_cache", ".ruff_cache", "__pycache__",
             ".vagrant", "dynscreen.egg-info"}


def tracked_files() -> list[Path]:
    """git's files (tracked, and new ones not ignored); in a copy without .git, every file."""
    r = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=False,
    )
    if r.returncode == 0 and r.stdout:
        return [ROOT / name for name in r.stdout.decode().split("\0") if name]
    return [p for p in ROOT.rglob("*")
            if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)]


def test_nothing_reads_or_cites_outside_the_repository() -> None:
    files = tracked_files()
    assert ROOT / "docs" / "design.md" in files
    hits = []
    for path in files:
        if not path.is_file() or path.suffix in (".so", ".gz", ".png"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(ROOT)
        for n, line in enumerate(text.splitlines(), 1):
            if any(f in line for f in FORBIDDEN):
                hits.append(f"{rel}:{n}: {line.strip()}")
            if DESIGN_CITATION.search(line):
                hits.append(f"{rel}:{n}: cites a design page outside the repo "
                            f"(the design is docs/design.md): {line.strip()}")
    assert hits == []
