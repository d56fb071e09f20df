"""Shared fixtures. Tests that need root, BPF or namespaces run under CI=true, else may skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionstart(session: pytest.Session) -> None:
    """A compiled module older than its source would be tested instead of the source."""
    from dynscreen.control import native

    stale = [m for m, state in native.status().items() if state == "stale"]
    if stale:
        pytest.exit(
            f"compiled modules older than their source: {', '.join(stale)}; "
            "run `make setup` to rebuild them (control/native.py)",
            returncode=2,
        )


def require(condition: bool, reason: str) -> None:
    """Skip when a host capability is missing, except under CI=true, where that fails."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and this test cannot run: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (BPF, network namespaces)")


def require_bpf() -> None:
    require_root()
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "bcc is not importable: run `sudo make setup`")
    from dynscreen.control.dataplane import kernel

    require(kernel.find_kernel_headers() is not None, "no kernel headers: run `sudo make setup`")


@pytest.fixture(scope="session")
def xdp_plane() -> Iterator[object]:
    """One loaded XDP program (no tracepoint, no pins) shared by the unit tests."""
    require_bpf()
    from dynscreen.control.dataplane.loader import DataPlane

    dp = DataPlane(pin_path=None, max_blocks=4096, max_tracked=4096, tracepoint=False)
    dp.load()
    yield dp
    dp.close()


@pytest.fixture
def dp(xdp_plane: object) -> object:
    """The shared program with every map emptied and the default test config pushed."""
    d = xdp_plane
    for name in ("blocks", "cidr_blocks", "whitelist", "exempt", "track", "local_addrs"):
        t = d.table(name)
        for k in list(iter(t)):  # bcc LPM tries have no len()
            del t[k]
    d.table("counters").clear()
    d.poll_events(0)
    d.configure(heartbeat_timeout=None)
    return d


def run_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
