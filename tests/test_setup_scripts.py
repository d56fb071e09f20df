"""make setup (the runtime) and make setup-dev (tests, lab, benchmarks) keep the host as it was.

setup-dev runs against fake apt-get, dpkg, systemctl and update-rc.d commands in a copy
of the script: what it would do to a real host is read from what it asked them, and
nothing on this host changes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import have, require

ROOT = Path(__file__).resolve().parents[1]
# Every shell script of the repository (the lab's vagrant/ ones too), for shellcheck.
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + sorted((ROOT / "vagrant").rglob("*.sh")) + [
    ROOT / ".ci" / "run"
]
DEV_ONLY = {"postfix", "dovecot-core", "dovecot-imapd", "dovecot-pop3d", "fail2ban",
            "systemd-journal-remote", "vagrant", "shellcheck", "exim4", "swaks"}


def _apt_words(script: Path) -> set[str]:
    """The packages a setup script names (apt_install lines, *PKGS=( ... ) arrays)."""
    text = script.read_text().replace("\\\n", " ")
    words: list[str] = []
    for m in re.finditer(r"^\s*apt_install\s+([^\n;&|]*)", text, re.M):
        words += m.group(1).split()
    for m in re.finditer(r"^\s*\w*PKGS=\(([^)]*)\)", text, re.M):
        words += m.group(1).split()
    return {w for w in words if re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", w)}


def test_setup_installs_the_runtime_only() -> None:
    runtime = _apt_words(ROOT / "scripts" / "setup.sh")
    assert {"python3-bpfcc", "libbpfcc", "iproute2", "python3-venv", "gcc"} <= runtime
    assert runtime & DEV_ONLY == set()
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert "'.[compile]'" in text and "[dev]" not in text  # no pytest/ruff in a runtime venv
    dev = _apt_words(ROOT / "scripts" / "setup-dev.sh")
    assert {"postfix", "fail2ban", "vagrant", "shellcheck", "systemd-journal-remote"} <= dev


def test_make_targets_use_the_right_setup() -> None:
    rules = dict(re.findall(r"^([\w-]+):[ \t]*([^\n=]*)$", (ROOT / "Makefile").read_text(), re.M))
    assert rules["run"].split() == ["setup"]
    assert rules["setup-dev"].split() == ["setup"]
    for target in ("test", "demo", "bench"):
        assert rules[target].split() == ["setup-dev"], target
    assert "make test\n" in (ROOT / ".ci" / "run").read_text()


FAKE_APT = r"""#!/bin/bash
echo "apt-get $*" >> "$FAKE/calls"
case "$1" in
  update) exit 0 ;;
  -s)
    shift 3  # -s install --no-install-recommends
    for p in "$@"; do
      echo "Inst $p (1.0 Debian:12/stable [all])"
      [ "$p" = postfix ] && [ -e "$FAKE/exim" ] && echo "Remv exim4-daemon-light [4.96-15]"
      [ "$p" = fail2ban ] && echo "Inst python3-systemd (235-1 Debian:12/stable [amd64])"
      [ "$p" = fail2ban ] && echo "Inst libc6 [2.36-9] (2.36-9+deb12u9 Debian:12/stable [amd64])"
    done
    exit 0 ;;
  install)
    "$SETUP_DEV_POLICY_RC_D" fail2ban start; echo "policy-rc.d: $?" >> "$FAKE/calls"
    for p in "$@"; do [[ "$p" == -* ]] || touch "$FAKE/installed-$p"; done ;;
esac
"""
FAKE_DPKG_QUERY = r"""#!/bin/bash
p=${*: -1}
[ -e "$FAKE/installed-$p" ] && { echo -n "install ok installed"; exit 0; }
exit 1
"""
FAKE_DPKG = r"""#!/bin/bash
[ "$1" = -L ] || exit 1
case "$2" in
  fail2ban) printf '%s\n' /usr/bin/fail2ban-client "$FAKE/etc/init.d/fail2ban" \
              /lib/systemd/system/fail2ban.service ;;
  postfix) printf '%s\n' /lib/systemd/system/postfix.service /lib/systemd/system/postfix@.service ;;
  python3-systemd) echo /usr/lib/python3/dist-packages/systemd/__init__.py ;;
  libc6) echo /lib/systemd/system/libc-was-here.service ;;
esac
"""
RECORD = '#!/bin/bash\necho "$(basename "$0") $*" >> "$FAKE/calls"\n'
# debconf-set-selections reads its stdin (a fake that did not would SIGPIPE the writer).
RECORD_STDIN = RECORD + "cat > /dev/null\n"


def _fake_host(tmp_path: Path, *, exim: bool, systemd: bool) -> tuple[Path, dict[str, str]]:
    """A copy of setup-dev.sh in a repository of its own, and fake system commands."""
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    (fake / "etc" / "init.d").mkdir(parents=True)
    for name, body in {"apt-get": FAKE_APT, "dpkg-query": FAKE_DPKG_QUERY, "dpkg": FAKE_DPKG,
                       "id": "#!/bin/bash\necho 0\n", "systemctl": RECORD,
                       "update-rc.d": RECORD, "debconf-set-selections": RECORD_STDIN}.items():
        (fake / "bin" / name).write_text(body)
        (fake / "bin" / name).chmod(0o755)
    init = fake / "etc" / "init.d" / "fail2ban"
    init.write_text(RECORD)
    init.chmod(0o755)
    (fake / "calls").touch()
    if exim:
        (fake / "exim").touch()
    for p in ("dovecot-core", "systemd-journal-remote", "vagrant"):  # installed before
        (fake / f"installed-{p}").touch()
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup-dev.sh", repo / "scripts")
    (repo / "pyproject.toml").write_text("")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to("/bin/true")
    (repo / ".venv" / ".installed-dev").touch()
    os.utime(repo / "pyproject.toml", (1, 1))
    if systemd:
        (fake / "systemd-run").mkdir()
    env = {**os.environ, "FAKE": str(fake), "PATH": f"{fake / 'bin'}:{os.environ['PATH']}",
           "SETUP_DEV_POLICY_RC_D": str(fake / "policy-rc.d"),
           "SETUP_DEV_SYSTEMD_RUN": str(fake / "systemd-run")}
    return repo, env


def _run(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(repo / "scripts" / "setup-dev.sh")], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_setup_dev_refuses_to_replace_the_mta(tmp_path: Path) -> None:
    """On an Exim host Postfix would remove Exim: stop, say so, install nothing."""
    repo, env = _fake_host(tmp_path, exim=True, systemd=True)
    r = _run(repo, env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "postfix would remove exim4-daemon-light" in r.stderr, r.stderr
    assert "never removes or replaces" in r.stderr
    calls = (Path(env["FAKE"]) / "calls").read_text().splitlines()
    assert [c for c in calls if c.startswith("apt-get install")] == [], calls
    assert not any(c.startswith(("systemctl", "debconf", "update-rc.d")) for c in calls), calls
    assert not Path(env["SETUP_DEV_POLICY_RC_D"]).exists()


@pytest.mark.parametrize("systemd", [True, False], ids=["systemd", "sysv"])
def test_setup_dev_installs_without_starting_anything(tmp_path: Path, systemd: bool) -> None:
    """Nothing starts during the install; what it installed is left disabled and stopped;
    packages installed before (and upgraded ones) are not touched."""
    repo, env = _fake_host(tmp_path, exim=False, systemd=systemd)
    r = _run(repo, env)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = (Path(env["FAKE"]) / "calls").read_text().splitlines()
    installs = [c for c in calls if c.startswith("apt-get install")]
    assert len(installs) == 1
    assert set(installs[0].split()) >= {"postfix", "dovecot-imapd", "fail2ban", "shellcheck"}
    assert "dovecot-core" not in installs[0].split()
    assert "policy-rc.d: 101" in calls  # the guard denied every start during the install
    assert not Path(env["SETUP_DEV_POLICY_RC_D"]).exists()  # and was removed after it
    assert "debconf-set-selections " in calls
    if systemd:
        assert "systemctl disable --now fail2ban.service" in calls
        assert "systemctl disable --now postfix.service" in calls
    else:
        assert "systemctl disable fail2ban.service" in calls
        assert "fail2ban stop" in calls
    assert "update-rc.d fail2ban disable" in calls
    assert not any("postfix@" in c or "libc" in c or "dovecot" in c
                   for c in calls if not c.startswith("apt-get")), calls


def test_setup_dev_does_nothing_when_done(tmp_path: Path) -> None:
    repo, env = _fake_host(tmp_path, exim=True, systemd=True)
    for p in _apt_words(ROOT / "scripts" / "setup-dev.sh"):
        (Path(env["FAKE"]) / f"installed-{p}").touch()
    r = _run(repo, env)
    assert r.returncode == 0, r.stderr
    assert (Path(env["FAKE"]) / "calls").read_text() == ""


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script: Path) -> None:
    require(have("shellcheck"), "shellcheck is not installed (make setup-dev installs it)")
    # -x from the repository's root: the VM and box scripts source scripts/vm-lib.sh
    r = subprocess.run(["shellcheck", "-x", str(script.relative_to(ROOT))], cwd=ROOT,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
