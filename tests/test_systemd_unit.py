"""control/dynscreen.service: systemd accepts it, and its hardening leaves BPF working.

`systemd-analyze verify` needs the ExecStart binary to exist, so it checks a copy
pointing at the virtualenv's `dynscreen`. The units named in Before= (postfix,
dovecot, exim4) are not installed here and need not be: Before= only orders, so
systemd says nothing about them, and any line about another unit is not ours to judge.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dynscreen.control.config import Daemon

from conftest import have, require, require_bpf

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "control" / "dynscreen.service"
VENV_DYNSCREEN = Path(sys.prefix) / "bin" / "dynscreen"
MAIL_UNITS = {"postfix.service", "postfix@-.service", "dovecot.service", "exim4.service"}

# Every syscall of the data plane at work, measured with `strace -f` on tests/dpagent.py
# (BCC compile and load, XDP attach, pins, the tracepoint, map reads and writes, ring
# buffer, inet_diag seeding, detach), plus what the daemon's asyncio loop, inotify
# log follower, sockets and children add. The unit's filter must allow them all.
MEASURED = """
    access arch_prctl bind bpf brk chdir clock_nanosleep clone3 close close_range dup dup2
    epoll_create1 epoll_ctl epoll_wait execve exit_group fcntl futex getcwd getdents64
    getegid geteuid getgid getpeername getpid getrandom getsockname getsockopt gettid getuid
    ioctl lseek mkdir mmap mount mprotect mremap munmap newfstatat openat perf_event_open
    pipe2 poll prctl pread64 prlimit64 read readlink recvfrom recvmsg rmdir rseq
    rt_sigaction rt_sigprocmask sendto set_robust_list set_tid_address setsockopt socket
    socketpair statfs sysinfo uname unlink vfork wait4 write
    accept4 connect eventfd2 fchmod fdatasync fsync ftruncate inotify_add_watch
    inotify_init1 inotify_rm_watch listen pidfd_open rename renameat2 sendmsg waitid
"""
SYSCALLS = frozenset(MEASURED.split())


def directives(text: str) -> list[tuple[str, str, str, int]]:
    """(section, key, value, line number) for each assignment, in order, as systemd reads them."""
    out = []
    section = ""
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"line {n} is neither a section, a comment nor Key=Value: {raw!r}"
        assert not line.endswith("\\"), f"line {n}: continuation lines make this test blind"
        out.append((section, key.strip(), value.strip(), n))
    return out


def settings(section: str) -> dict[str, list[str]]:
    """Values of each key of `section`, every assignment kept (systemd's lists accumulate)."""
    got: dict[str, list[str]] = {}
    for sec, key, value, _ in directives(UNIT.read_text()):
        if sec == section:
            got.setdefault(key, []).append(value)
    return got


def one(section: str, key: str) -> str:
    values = settings(section).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times"
    return values[0]


def words(section: str, key: str) -> set[str]:
    return {w for v in settings(section).get(key, []) for w in v.split()}


# ---- what systemd says ----------------------------------------------------------------


def verify(text: str, tmp_path: Path) -> tuple[int, list[str]]:
    """Exit code of `systemd-analyze verify` on `text`, and its lines about our unit."""
    require(have("systemd-analyze"), "systemd-analyze is missing (package systemd)")
    require(VENV_DYNSCREEN.exists(), f"{VENV_DYNSCREEN} is missing: run `make setup`")
    copy = tmp_path / "dynscreen.service"
    copy.write_text(text.replace("ExecStart=/usr/sbin/dynscreen ",
                                 f"ExecStart={VENV_DYNSCREEN} "))
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                       text=True, timeout=60, check=False)
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "dynscreen.service" in line]
    return r.returncode, ours


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    code, ours = verify(UNIT.read_text(), tmp_path)
    assert ours == []
    assert code == 0


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The filter above is not blind: a bad value and an unknown key in our unit show."""
    text = UNIT.read_text().replace("ProtectHome=read-only", "ProtectHome=maybe\nProtectFoo=yes")
    _, ours = verify(text, tmp_path)
    assert any("protect home" in line.lower() and "maybe" in line for line in ours), ours
    assert any("ProtectFoo" in line for line in ours), ours


@functools.cache
def syscall_group(name: str) -> frozenset[str]:
    """A `@group` of systemd's syscall filter, nested groups expanded."""
    r = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                       text=True, timeout=60, check=True)
    found: set[str] = set()
    for line in r.stdout.splitlines():
        item = line.strip()
        if not line.startswith((" ", "\t")) or not item or item.startswith("#"):
            continue
        found |= syscall_group(item) if item.startswith("@") else {item}
    return frozenset(found)


def test_syscall_filter_allows_bpf_and_what_the_daemon_does() -> None:
    require(have("systemd-analyze"), "systemd-analyze is missing (package systemd)")
    allowed: set[str] = set()
    for item in words("Service", "SystemCallFilter"):
        assert not item.startswith("~"), "a deny list: this test reads an allow list"
        allowed |= syscall_group(item) if item.startswith("@") else {item}
    assert len(syscall_group("@system-service")) > 100  # the group was really expanded
    assert {"bpf", "perf_event_open", "mount"} <= allowed
    assert sorted(SYSCALLS - allowed) == []


# ---- what the unit says ---------------------------------------------------------------


def test_runs_the_daemon_and_stops_it_gently() -> None:
    assert one("Service", "ExecStart") == "/usr/sbin/dynscreen run"
    assert one("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Service", "KillSignal") == "SIGTERM"
    assert one("Service", "Restart") == "on-failure"
    assert one("Service", "RestartSec")
    assert one("Service", "RestartPreventExitStatus") == "2"  # invalid config: CLI exit code 2
    assert one("Service", "LimitMEMLOCK") == "infinity"
    assert one("Install", "WantedBy") == "multi-user.target"


def test_directories_match_the_config_defaults() -> None:
    d = Daemon()
    run = Path("/run") / one("Service", "RuntimeDirectory")
    state = Path("/var/lib") / one("Service", "StateDirectory")
    assert d.socket.parent == run
    assert {d.state_file.parent, d.whitelist_file.parent, d.frozen_file.parent,
            d.history_file.parent} == {state}
    assert one("Service", "ConfigurationDirectory") == "dynscreen"  # /etc/dynscreen/dynscreen.toml
    rw = {w.lstrip("-") for w in words("Service", "ReadWritePaths")}
    assert d.pin_path.parent == Path("/sys/fs/bpf")
    assert str(d.pin_path.parent) in rw


def test_screens_before_the_mail_servers_without_pulling_them_in() -> None:
    assert words("Unit", "Before") >= MAIL_UNITS
    pulls = set().union(*(words("Unit", k) for k in ("Wants", "Requires", "BindsTo", "Requisite")))
    assert not pulls & MAIL_UNITS
    assert "network-online.target" in words("Unit", "After")
    assert "network-online.target" in words("Unit", "Wants")


def test_hardening_keeps_what_bpf_needs() -> None:
    caps = words("Service", "CapabilityBoundingSet")
    assert {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"} <= caps
    assert "CAP_SYS_MODULE" not in caps
    # The recommended policy socket: made in Postfix's private directory, given to postfix.
    assert {"CAP_DAC_OVERRIDE", "CAP_CHOWN"} <= caps
    rw = {w.lstrip("-") for w in words("Service", "ReadWritePaths")}
    assert "/var/spool/postfix/private" in rw
    assert {"AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6"} <= words(
        "Service", "RestrictAddressFamilies")
    service = settings("Service")
    # Each of these breaks the daemon (see the unit's comments): never "yes".
    for key in ("ProtectKernelTunables", "ProtectKernelModules", "MemoryDenyWriteExecute",
                "PrivateNetwork", "PrivateUsers", "DynamicUser"):
        assert service.get(key, ["no"]) == ["no"], key
    assert one("Service", "NoNewPrivileges") == "yes"
    assert one("Service", "ProtectSystem") == "strict"


def test_every_service_setting_is_explained() -> None:
    """Each [Service] assignment sits in a block of lines that starts with a comment."""
    lines = UNIT.read_text().splitlines()
    for section, key, _, n in directives(UNIT.read_text()):
        if section != "Service":
            continue
        i = n - 2  # the line above, 0-based
        while i >= 0 and lines[i].strip() and not lines[i].lstrip().startswith("#"):
            i -= 1
        assert i >= 0 and lines[i].lstrip().startswith("#"), f"line {n}: {key}= has no comment"


def _notify_socket(path: str) -> socket.socket:
    """What systemd listens on for a Type=notify service: a datagram socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(60)
    return s


@pytest.mark.root
@pytest.mark.tracepoint
def test_type_notify_needs_the_daemon_to_say_ready(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With Type=notify, a daemon that never sends READY=1 is killed at TimeoutStartSec:
    the real daemon, given $NOTIFY_SOCKET as systemd gives it, says READY=1 once its
    control socket answers, and STOPPING=1 on SIGTERM."""
    assert one("Service", "Type") == "notify"
    require_bpf()
    from daemonlab import DaemonLab
    from netns import NetLab

    path = str(tmp_path / "notify.sock")
    sock = _notify_socket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)  # `ip netns exec` passes it on
    lab = NetLab().open()
    dl = DaemonLab(lab)
    try:
        dl.start(wait=False)
        try:
            first = sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no READY=1 in 60 s: {dl.read_output()}") from None
        assert first == b"READY=1", first
        assert dl.req("ping")["ok"], "READY=1 came before the control socket answered"
        assert dl.stop() == 0
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        sock.close()
        dl.close()
        lab.close()


def test_sd_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd may give an abstract address (@name)."""
    from dynscreen.control.daemon import sd_notify

    name = f"dynscreen-test-notify-{os.getpid()}"
    sock = _notify_socket("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        sd_notify(b"READY=1")
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()
