"""`dynscreen check-config`: exit 0 with a summary, exit 2 naming file, key and value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import dynscreen.cli.app as cli_app
from dynscreen.cli.app import app

GOOD = """
[screening]
mode = "monitor"
ports = [25, 587]
[screening.limits]
auth_failures = 3
"""

BAD = """
[screening.limits]
auth_failures = "five"
"""


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The machine's /etc/dynscreen and DYNSCREEN_CONFIG must not leak into these tests."""
    monkeypatch.delenv("DYNSCREEN_CONFIG", raising=False)
    monkeypatch.setattr(cli_app, "DEFAULT_CONFIG", tmp_path / "no-such-dir" / "dynscreen.toml")


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def write(tmp_path: Path, text: str, name: str = "dynscreen.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_file(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.touch()
    # Interfaces and logs this host has: no warnings (test below).
    text = GOOD.replace('mode = "monitor"', 'mode = "monitor"\ninterfaces = ["lo"]')
    path = write(tmp_path, text + f'[[logs]]\nformat = "postfix"\npath = "{log}"\n')
    result = run("check-config", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"ok: {path}"
    assert "mode monitor" in result.stdout
    assert "ports: 25 587" in result.stdout
    assert "auth failures 3" in result.stdout
    assert result.stderr == ""


def test_invalid_file_exit_2_names_key_value_file(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    result = run("check-config", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert str(path) in result.stderr
    assert "screening.limits.auth_failures" in result.stderr
    assert '"five"' in result.stderr
    assert "Traceback" not in result.output


def test_toml_quoting_reaches_the_terminal_verbatim(tmp_path: Path) -> None:
    path = write(tmp_path, "[logs]\npath = '/var/log/mail.log'\n")
    result = run("check-config", str(path))
    assert result.exit_code == 2
    assert "[[logs]]" in result.stderr and "[logs]" in result.stderr


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[screening]\nports = [25,,]\n")
    result = run("check-config", str(path))
    assert result.exit_code == 2
    assert f"{path}: line 2, column" in result.stderr


def test_missing_file_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    result = run("check-config", str(path))
    assert result.exit_code == 2
    assert f"{path}: cannot read the config" in result.stderr
    assert "Traceback" not in result.output


def test_default_is_the_global_config_path(tmp_path: Path) -> None:
    good, bad = write(tmp_path, GOOD, "good.toml"), write(tmp_path, BAD, "bad.toml")
    assert run("--config", str(good), "check-config").exit_code == 0
    assert run("--config", str(bad), "check-config").exit_code == 2
    result = run("check-config", env={"DYNSCREEN_CONFIG": str(bad)})
    assert result.exit_code == 2 and str(bad) in result.stderr
    # FILE given wins over --config
    assert run("--config", str(bad), "check-config", str(good)).exit_code == 0


def test_no_config_checks_the_built_in_defaults() -> None:
    result = run("check-config")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: built-in defaults")
    assert "mode enforce" in result.stdout


def test_json_ok(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = run("check-config", "--json", str(path))
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["file"] == str(path)
    assert data["config"]["screening"]["ports"] == [25, 587]
    assert data["config"]["screening"]["limits"]["auth_failures"] == 3
    assert data["config"]["screening"]["limits"]["connections"] == 60


def test_json_defaults() -> None:
    result = run("check-config", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["ok"] is True and data["file"] is None
    assert data["config"]["daemon"]["socket"] == "/run/dynscreen/control.sock"


def test_json_error(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    result = run("check-config", "--json", str(path))
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["file"] == str(path)
    assert data["key"] == "screening.limits.auth_failures"
    assert str(path) in data["error"] and '"five"' in data["error"]


def test_json_syntax_error_has_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a = \n")
    data = json.loads(run("check-config", "--json", str(path)).stdout)
    assert data["ok"] is False and data["line"] == 1 and data["key"] is None


def test_installed_command(tmp_path: Path) -> None:
    """The real entry point: exit codes and no traceback, through `main`."""
    exe = Path(sys.executable).parent / "dynscreen"
    if not exe.exists():
        pytest.skip("dynscreen is not installed in this environment")
    bad, good = write(tmp_path, BAD, "bad.toml"), write(tmp_path, GOOD, "good.toml")
    failed = subprocess.run([exe, "check-config", bad], capture_output=True, text=True)
    assert failed.returncode == 2
    assert "screening.limits.auth_failures" in failed.stderr
    assert "Traceback" not in failed.stderr + failed.stdout
    passed = subprocess.run([exe, "check-config", good], capture_output=True, text=True)
    assert passed.returncode == 0 and passed.stdout.startswith(f"ok: {good}")


def test_what_the_host_lacks_is_a_warning_not_an_error(tmp_path: Path) -> None:
    """A valid config naming an interface, a log file and a journal unit this host does
    not have: exit 0, one warning each on stderr (and in --json), distinct from errors."""
    path = write(tmp_path, f"""
[screening]
interfaces = ["lo", "nosuch0"]
[[logs]]
format = "postfix"
path = "{tmp_path / 'no-such.log'}"
[[logs]]
format = "exim"
journal = "no-such-dynscreen-test"
""")
    result = run("check-config", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"ok: {path}"
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("dynscreen: warning: ")]
    assert len(warnings) == 3, result.stderr
    assert "'nosuch0' does not exist" in warnings[0]
    assert f"{tmp_path / 'no-such.log'} does not exist" in warnings[1]
    assert "no-such-dynscreen-test.service is not installed" in warnings[2]
    assert "'lo'" not in result.stderr

    out = run("check-config", "--json", str(path))
    assert out.exit_code == 0
    doc = json.loads(out.stdout)
    assert doc["ok"] is True and len(doc["warnings"]) == 3
    assert doc["warnings"][0] == warnings[0].removeprefix("dynscreen: warning: ")
