"""What the kernel side needs from the host: headers for BCC, tracefs, bpffs."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
from pathlib import Path

# Where `make setup` merges Debian's generic headers when the running kernel has none.
FALLBACK_HEADERS = Path("/var/lib/dynscreen/kernel-headers/current")
TRACEFS = Path("/sys/kernel/tracing")
BPF_FS_MAGIC = 0xCAFE4A11


class HostError(Exception):
    """The host lacks something dynscreen needs; the message says how to fix it."""


def find_kernel_headers() -> Path | None:
    """BCC_KERNEL_SOURCE, else the running kernel's headers, else setup's merged tree."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        return Path(env)
    own = Path(f"/lib/modules/{platform.release()}/build")
    if (own / "include").exists():
        return own
    if (FALLBACK_HEADERS / "include").exists():
        return FALLBACK_HEADERS
    return None


def ensure_headers() -> Path:
    """Point BCC at kernel headers, or explain how to get some."""
    path = find_kernel_headers()
    if path is None:
        raise HostError(
            f"no kernel headers for kernel {platform.release()}: run `sudo make setup` "
            f"(or `apt-get install linux-headers-{platform.release()}`)"
        )
    if not (path / "include").exists():
        raise HostError(f"BCC_KERNEL_SOURCE={path} has no include/ folder")
    if Path(f"/lib/modules/{platform.release()}/build") != path:
        os.environ["BCC_KERNEL_SOURCE"] = str(path)
    return path


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


def fs_type(path: Path) -> int | None:
    """The statfs magic of the file system holding path (None if it does not exist)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = _Statfs()
    if libc.statfs(str(path).encode(), ctypes.byref(buf)) != 0:
        return None
    return buf.f_type & 0xFFFFFFFF


def _mount(fstype: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", fstype, fstype, str(target)], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        raise HostError(f"cannot mount {fstype} at {target}: {r.stderr.strip()}")


def ensure_tracefs() -> None:
    """BCC reads tracepoint formats from tracefs while compiling."""
    if (TRACEFS / "events").exists():
        return
    _mount("tracefs", TRACEFS)


def ensure_bpffs(pin_dir: Path) -> None:
    """Pins need a bpffs: mount one at pin_dir's parent when it is not one already."""
    parent = pin_dir.parent
    if fs_type(parent) != BPF_FS_MAGIC:
        _mount("bpf", parent)
    pin_dir.mkdir(parents=True, exist_ok=True)


CGROUP2_SUPER_MAGIC = 0x63677270


SYSFS_MAGIC = 0x62656572
CGROUP_DIR = Path("/sys/fs/cgroup")


def cgroup2_root() -> Path | None:
    """The root of the cgroup v2 hierarchy, where the handshake-counting sock_ops program
    is attached (there it sees every socket of the host): where it is mounted (on a
    hybrid host /sys/fs/cgroup/unified). `ip netns exec` remounts /sys, leaving
    /sys/fs/cgroup an empty sysfs folder in its own mount namespace: cgroup2 is mounted
    there, as tracefs is (nothing outside that namespace sees it). None when there is
    no cgroup2 at all."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        # mountinfo: id parent major:minor root mountpoint ... - fstype source options
        if fields[sep + 1] == "cgroup2" and fields[3] == "/":
            path = Path(fields[4])
            if fs_type(path) == CGROUP2_SUPER_MAGIC:
                return path
    if fs_type(CGROUP_DIR) == SYSFS_MAGIC:
        try:
            _mount("cgroup2", CGROUP_DIR)
        except HostError:
            return None
        if fs_type(CGROUP_DIR) == CGROUP2_SUPER_MAGIC:
            return CGROUP_DIR
    return None
