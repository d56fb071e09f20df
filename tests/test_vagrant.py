"""vagrant/: the Vagrantfile is valid and the lab scripts are well-formed.

Nothing is booted: `vagrant validate --ignore-provider` parses the Vagrantfile and
checks every machine's config without libvirt or VirtualBox (offline, with the update
check off; HOME, where Vagrant keeps its ~/.vagrant.d, and its machine-state folder
in a temporary folder, so the repository is left as it was).
The end-to-end scenarios themselves need the two VMs: `make test-vagrant`
(scripts/test-vagrant.sh, with the box of scripts/vagrant-box.sh); see vagrant/README.md.
"""

from __future__ import annotations

import os
import py_compile
import re
import subprocess
from pathlib import Path

import pytest

from conftest import have, require

REPO = Path(__file__).resolve().parents[1]
VAGRANT_DIR = REPO / "vagrant"
BOX_SCRIPT = REPO / "scripts" / "vagrant-box.sh"
RUN_SCRIPT = REPO / "scripts" / "test-vagrant.sh"
SCRIPTS = [
    VAGRANT_DIR / "e2e.sh",
    VAGRANT_DIR / "provision" / "gateway.sh",
    VAGRANT_DIR / "provision" / "attacker.sh",
    VAGRANT_DIR / "provision" / "mail-auth.sh",
    BOX_SCRIPT,
    RUN_SCRIPT,
]


def _bash_array(script: Path, name: str) -> list[str]:
    """The words of a `NAME=( ... )` array in a shell script (comments and lines joined)."""
    text = script.read_text()
    m = re.search(rf"^\s*{name}=\(([^)]*)\)", text, re.M)
    assert m, f"no {name}=( ... ) in {script.name}"
    return m.group(1).split()


def test_vagrantfile_validates(tmp_path: Path) -> None:
    require(have("vagrant"), "vagrant is not installed (make setup-dev installs it)")
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


# shellcheck: tests/test_setup_scripts.py checks every shell script, these too.


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


@pytest.mark.parametrize("provision", ["gateway.sh", "attacker.sh"])
def test_box_holds_what_provisioning_installs(provision: str) -> None:
    """`make test-vagrant` isolates the VMs from everything but the host: a package the
    provisioning needs and the box lacks would send it to apt, and fail there."""
    box = set(_bash_array(BOX_SCRIPT, "BASE_PKGS")) | set(_bash_array(BOX_SCRIPT, "LAB_PKGS"))
    wanted = set(_bash_array(VAGRANT_DIR / "provision" / provision, "pkgs"))
    assert wanted, provision
    assert wanted <= box, f"not in the box: {sorted(wanted - box)}"


def _package_relations(field: str) -> set[str]:
    """The package names debian/control's binary stanza gives in FIELD, for amd64
    (substitutions such as ${shlibs:Depends} left out)."""
    stanza = (REPO / "debian" / "control").read_text().split("\nPackage: dynscreen", 1)[1]
    m = re.search(rf"^{field}:(.*(?:\n[ \t].*)*)", stanza, re.M)
    assert m, f"no {field} in debian/control"
    names = set()
    for rel in m.group(1).split(","):
        rel = rel.strip()
        if not rel or rel.startswith("${") or ("[" in rel and "[amd64]" not in rel):
            continue
        names.add(rel.split()[0])
    return names


def test_box_holds_what_the_package_depends_on() -> None:
    """The gateway installs the project's .deb with apt on the isolated network of
    `make test-vagrant`: each package it depends on (and recommends: the kernel headers
    BCC compiles against) must be in the box, or apt would go looking for it."""
    setup = (REPO / "scripts" / "setup.sh").read_text().replace("\\\n", " ")
    lists = (re.findall(r"^\s*apt_install\s+([^\n;&|]*)", setup, re.M)
             + re.findall(r"^\s*\w*PKGS=\(([^)]*)\)", setup, re.M))
    setup_words = {w for w in " ".join(lists).split() if re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", w)}
    box = (set(_bash_array(BOX_SCRIPT, "BASE_PKGS")) | set(_bash_array(BOX_SCRIPT, "LAB_PKGS"))
           | setup_words)
    # ${dynscreen:Python} is Debian's python3 (debian/rules).
    wanted = _package_relations("Depends") | _package_relations("Recommends") | {"python3"}
    assert {"python3-bpfcc", "libbpfcc", "iproute2", "linux-headers-amd64"} <= wanted
    assert wanted <= box, f"not in the box: {sorted(wanted - box)}"


def test_cleanup_knows_the_lab_domains() -> None:
    """test-vagrant.sh removes the lab's domains by name when `vagrant destroy` fails:
    vagrant-libvirt names them <folder>_<machine>, for every machine the Vagrantfile defines."""
    vagrantfile = (VAGRANT_DIR / "Vagrantfile").read_text()
    machines = re.findall(r'config\.vm\.define "([^"]+)"', vagrantfile)
    assert sorted(machines) == ["attacker", "gateway"]
    assert sorted(_bash_array(RUN_SCRIPT, "LAB_DOMAINS")) == sorted(
        f"{VAGRANT_DIR.name}_{m}" for m in machines)


def test_make_targets_run_the_scripts() -> None:
    r = subprocess.run(["make", "-n", "-C", str(REPO), "vagrant-box", "test-vagrant",
                        "E2E_ARGS=flood"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "bash scripts/vagrant-box.sh" in r.stdout, r.stdout
    assert "bash scripts/test-vagrant.sh flood" in r.stdout, r.stdout
