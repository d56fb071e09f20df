"""vagrant/: the Vagrantfile is valid and the lab scripts are well-formed.

Nothing is booted: `vagrant validate --ignore-provider` parses the Vagrantfile and
checks every machine's config without libvirt or VirtualBox (offline, with the update
check off; HOME, where Vagrant keeps its ~/.vagrant.d, and its machine-state folder
in a temporary folder, so the repository is left as it was).
The end-to-end scenarios themselves need the two VMs: see vagrant/README.md.
"""

from __future__ import annotations

import os
import py_compile
import subprocess
from pathlib import Path

import pytest

from conftest import have, require

VAGRANT_DIR = Path(__file__).resolve().parents[1] / "vagrant"
SCRIPTS = [
    VAGRANT_DIR / "e2e.sh",
    VAGRANT_DIR / "provision" / "gateway.sh",
    VAGRANT_DIR / "provision" / "attacker.sh",
]


def test_vagrantfile_validates(tmp_path: Path) -> None:
    require(have("vagrant"), "vagrant is not installed (apt-get install vagrant)")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        # Machine state (vagrant/.vagrant) goes to the temporary folder too.
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),
        "VAGRANT_NO_COLOR": "1",
        "LANG": "C.UTF-8",
    }
    had_state = (VAGRANT_DIR / ".vagrant").exists()
    r = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT_DIR, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "validated successfully" in out, out
    # Both machines were checked, not only the primary one.
    for vm in ("gateway", "attacker"):
        assert f"{vm}:" in out, out
    boxes = tmp_path / ".vagrant.d" / "boxes"
    assert not boxes.exists() or not any(boxes.iterdir()), "validate must not fetch a box"
    assert (VAGRANT_DIR / ".vagrant").exists() == had_state, "vagrant/.vagrant was created"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script: Path) -> None:
    require(have("shellcheck"), "shellcheck is not installed (make setup-dev installs it)")
    r = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_attack_helper_compiles(tmp_path: Path) -> None:
    py_compile.compile(str(VAGRANT_DIR / "attack.py"), cfile=str(tmp_path / "attack.pyc"),
                       doraise=True)


def test_gateway_config_is_valid(tmp_path: Path) -> None:
    """The config provision/gateway.sh installs passes the project's own validation."""
    from dynscreen.control.config import load_config

    cfg = tmp_path / "dynscreen.toml"
    cfg.write_text((VAGRANT_DIR / "gateway.toml").read_text().replace("@IFACE@", "eth1"))
    conf = load_config(cfg)
    assert conf.screening.interfaces == ("eth1",)
    assert [(s.format, s.journal) for s in conf.logs] == [
        ("postfix", "postfix@-.service"), ("dovecot", "dovecot.service")]
