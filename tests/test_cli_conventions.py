"""The everyday conventions of `dynscreen`: --version, -h on every command, and help
whose placeholders read as values (`--json`, `--minutes MINUTES`), not Python types."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version

import pytest

from dynscreen.cli.app import command

TYPE_PLACEHOLDER = re.compile(r"<(bool|str|int|float|path|list\[[^\]]*\]|[a-z]+ range)>")


def _paths(cmd: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        out += _paths(sub, (*prefix, name))
    return out


COMMANDS = _paths(command())


def _run(args: list[str], capsys: pytest.CaptureFixture[str],
         monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")
    try:
        command()(args, prog_name="dynscreen", standalone_mode=True)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().out


def test_version() -> None:
    r = subprocess.run([sys.executable, "-c", "from dynscreen.cli.app import main; main()",
                        "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"dynscreen {version('dynscreen')}\n"
    assert re.fullmatch(r"dynscreen \d+\.\d+\.\d+\n", r.stdout)


def test_every_command_is_covered() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"", "status", "run", "check-config", "allow add", "blocks edit",
            "accounts unfreeze", "replay"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "dynscreen")
def test_short_help_and_value_placeholders(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, short = _run([*path, "-h"], capsys, monkeypatch)
    assert code == 0
    code, long = _run([*path, "--help"], capsys, monkeypatch)
    assert code == 0
    assert short == long and "Usage: dynscreen" in short
    assert "-h" in short
    assert TYPE_PLACEHOLDER.search(short) is None, short


def test_boolean_options_are_flags() -> None:
    """A yes/no option takes no value and has no --no- twin."""
    def walk(cmd: object) -> list[object]:
        params = list(getattr(cmd, "params", []))
        for sub in getattr(cmd, "commands", {}).values():
            params += walk(sub)
        return params

    bools = [p for p in walk(command()) if getattr(p, "type_descriptor", None) is not None
             and p.type_descriptor.annotation is bool]
    assert bools
    for p in bools:
        assert p.is_flag and not p.secondary_opts, p.opts


def test_placeholders_in_help(capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, text = _run(["block", "-h"], capsys, monkeypatch)
    assert re.search(r"--minutes\s+MINUTES", text)
    _, text = _run(["-h"], capsys, monkeypatch)
    assert re.search(r"--config\s+FILE", text) and re.search(r"--socket\s+PATH", text)
    assert re.search(r"--version\s+print the version", text)
    _, text = _run(["status", "-h"], capsys, monkeypatch)
    assert re.search(r"--json\s+print", text)
