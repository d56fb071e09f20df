"""What the Debian package (debian/, `make deb`) ships, checked without building it.

The package's /etc/dynscreen/dynscreen.toml and dynscreen.toml(5) are generated from the
config model (control/conffile.py); dynscreen(8) is hand-written; the unit is
control/dynscreen.service with ExecStart=/usr/sbin/dynscreen. Building the package takes
minutes and PyPI, so `make deb` (which runs lintian) is its own check, not part of these.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from dynscreen.cli.app import app
from dynscreen.control import conffile
from dynscreen.control.config import Config, parse_config

from conftest import have, require, require_root

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
DEBIAN = REPO / "debian"
MAN8 = REPO / "docs" / "man" / "dynscreen.8"
MAN5_TEMPLATE = REPO / "docs" / "man" / "dynscreen.toml.5.in"
UNIT = REPO / "control" / "dynscreen.service"
VENV_DYNSCREEN = Path(sys.prefix) / "bin" / "dynscreen"
KEY_LINE = re.compile(r"^#(\w+ = .*)$")


def uncommented(text: str) -> str:
    """The conffile with every commented-out key (and [[logs]] header) switched on."""
    out = []
    for line in text.splitlines():
        m = KEY_LINE.match(line)
        if m:
            out.append(m.group(1))
        elif line == "#[[logs]]":
            out.append("[[logs]]")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


# ---- /etc/dynscreen/dynscreen.toml ----------------------------------------------------


def test_conffile_as_installed_sets_nothing() -> None:
    text = conffile.conffile()
    assert parse_config(text, "dynscreen.toml") == Config()


def test_conffile_holds_every_key_at_its_default() -> None:
    """Switched on line by line, the file is the defaults exactly: no key missing, none extra."""
    data = tomllib.loads(uncommented(conffile.conffile()))
    defaults = Config().to_dict()
    logs = data.pop("logs")
    assert data == defaults
    # The examples shown under [[logs]] are a valid config, journal first.
    examples = parse_config(uncommented(conffile.conffile()), "dynscreen.toml").logs
    assert examples is not None
    assert [(s.format, s.journal or str(s.path)) for s in examples] == [
        ("postfix", "postfix@-.service"), ("dovecot", "dovecot.service"),
        ("auto", "/var/log/mail.log")]
    assert len(logs) == 3


def test_every_key_is_described_and_every_description_is_a_key() -> None:
    keys = set()
    for section, section_keys in conffile.sections():
        keys.add(section)
        keys.update(k.full for k in section_keys)
    assert set(conffile.DESCRIPTIONS) == keys


def test_a_key_without_description_stops_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    trimmed = dict(conffile.DESCRIPTIONS)
    del trimmed["screening.limits.rsets"]
    monkeypatch.setattr(conffile, "DESCRIPTIONS", trimmed)
    with pytest.raises(conffile.MissingDescription, match="screening.limits.rsets"):
        conffile.conffile()
    assert conffile.main(["conffile"]) == 1


# ---- man pages ------------------------------------------------------------------------


def rendered_warnings(page: Path) -> str:
    """What groff (-ww: all warnings) and man -l say on stderr while rendering `page`."""
    require(have("groff") and have("man"), "groff or man is missing (packages groff-base, man-db)")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80", "MAN_KEEP_STDERR": "1"}
    g = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True,
                       text=True, env=env, timeout=60, check=False)
    m = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                       env=env, timeout=60, check=False)
    assert g.returncode == 0 and m.returncode == 0, g.stderr + m.stderr
    assert m.stdout.strip(), f"man -l {page} rendered nothing"
    return g.stderr + m.stderr


def test_dynscreen_8_renders_without_warnings() -> None:
    assert rendered_warnings(MAN8) == ""


def test_dynscreen_toml_5_renders_without_warnings(tmp_path: Path) -> None:
    page = tmp_path / "dynscreen.toml.5"
    page.write_text(conffile.man_page(MAN5_TEMPLATE.read_text()))
    assert rendered_warnings(page) == ""
    text = page.read_text()
    for _section, keys in conffile.sections():
        for key in keys:
            assert f"\\fB{key.name}\\fR" in text, key.full


def test_dynscreen_8_names_every_command() -> None:
    text = MAN8.read_text().replace("\\-", "-")
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    missing = [name for name in commands if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert missing == []


# ---- the unit, as packaged ------------------------------------------------------------


def test_unit_verifies_with_the_packaged_execstart(tmp_path: Path) -> None:
    """`systemd-analyze verify` with ExecStart=/usr/sbin/dynscreen as the package has it: in a
    private mount namespace, /usr/sbin is a tmpfs holding only that command (the venv's)."""
    require_root()
    require(have("systemd-analyze") and have("unshare"), "systemd-analyze or unshare is missing")
    require(VENV_DYNSCREEN.exists(), f"{VENV_DYNSCREEN} is missing: run `make setup`")
    assert "\nExecStart=/usr/sbin/dynscreen run\n" in UNIT.read_text()
    unit = tmp_path / "dynscreen.service"
    unit.write_text(UNIT.read_text())
    script = (f"mount -t tmpfs tmpfs /usr/sbin && ln -s {VENV_DYNSCREEN} /usr/sbin/dynscreen"
              f" && exec systemd-analyze verify {unit}")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=120, check=False)
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "dynscreen.service" in line]
    assert ours == []


# ---- debian/ --------------------------------------------------------------------------


def test_changelog_version_is_the_project_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    m = re.match(r"dynscreen \(([^)]+)\) ", first)
    assert m and m.group(1) == project


def test_every_runtime_dependency_is_pinned() -> None:
    """debian/python-constraints.txt pins what pyproject.toml asks for (for this Python)."""
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pinned = {norm(line.split("==")[0]) for line in
              (DEBIAN / "python-constraints.txt").read_text().splitlines()
              if line and not line.startswith("#")}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {norm(re.split(r"[<>=!;\[ ]", d)[0]) for d in deps if "python_version <" not in d}
    assert wanted - pinned == set()


def test_bash_completion_is_generated() -> None:
    require(VENV_DYNSCREEN.exists(), f"{VENV_DYNSCREEN} is missing: run `make setup`")
    r = subprocess.run([str(VENV_DYNSCREEN)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "_DYNSCREEN_COMPLETE": "source_bash"}, check=False)
    assert re.search(r"^complete .*-F _dynscreen_completion dynscreen$", r.stdout, re.M)
