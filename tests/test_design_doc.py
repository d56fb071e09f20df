"""docs/design.md agrees with the code where a machine can tell: the config defaults
block is the built-in defaults, and the command table names the CLI's commands."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from dynscreen.cli.app import command
from dynscreen.control.config import default_config, parse_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_config_block_is_the_built_in_defaults() -> None:
    block = re.search(r"```toml\n(.*?)```", _section("Config contract (TOML)"), re.S)
    assert block is not None
    assert tomllib.loads(block[1]) == default_config().to_dict()
    assert parse_config(block[1], str(DOC)) == default_config()


def test_command_table_names_every_command() -> None:
    table = _section("CLI contract (`dynscreen`)")
    documented = set(re.findall(r"^\| `dynscreen ([a-z-]+)", table, re.M))
    documented |= set(re.findall(r"` / `([a-z-]+) ", table))  # "block ... / unblock ADDR"
    assert documented == set(command().commands), documented
