"""Real hosts for tests: a gateway and a client network namespace joined by veth.

The lab itself lives in the product (``dynscreen.control.lab.netns``: ``make demo``
uses it); this module re-exports it for the tests and adds the Agent, which runs
tests/dpagent.py in the gateway namespace.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynscreen.control.lab.netns import (  # noqa: F401  (re-exported for the tests)
    CL2_V4,
    CL_V4,
    CL_V6,
    GW_V4,
    GW_V6,
    Client,
    NetLab,
    Server,
    inside,
    sh,
    wait_for,
)

from conftest import have, require, require_bpf


@pytest.fixture(name="lab")
def lab_fixture() -> Iterator[NetLab]:
    """A fresh gateway/client namespace pair per test; a test module imports this to use
    the ``lab`` fixture."""
    require_bpf()
    require(have("ip") and have("ss"), "needs iproute2 (ip, ss)")
    lab = NetLab().open()
    try:
        yield lab
    finally:
        lab.close()


@contextlib.contextmanager
def own_bpffs(tag: str) -> Iterator[Path]:
    """A bpffs of a test's own under /run (outside /sys, which `ip netns exec` replaces):
    the pin folder inside it, its pins removed and the mount gone after."""
    from dynscreen.control.dataplane.loader import remove_pins

    require_bpf()
    fs = Path(f"/run/dstest-{tag}")
    fs.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "bpf", "bpf", str(fs))
    try:
        yield fs / "pins"
    finally:
        remove_pins(fs / "pins")
        sh("umount", "-l", str(fs), check=False)
        fs.rmdir()


class Agent:
    """tests/dpagent.py in the gateway namespace: the data plane as a control plane runs it."""

    def __init__(self, lab: NetLab, *args: str) -> None:
        py = str(Path(__file__).resolve().parents[1] / ".venv/bin/python")
        agent = str(Path(__file__).with_name("dpagent.py"))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.gw, py, agent, "--pin", str(lab.pin),
             "--iface", lab.gw_if, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        lab.procs.append(self.proc)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("ready"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"agent did not start: {line!r} {err}")
        self.ready = line.split(None, 1)[1].strip() if " " in line else ""

    def ask(self, op: str, **kw: object) -> object:
        import json

        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"agent died: {self.proc.stderr.read() if self.proc.stderr else ''}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("quit")
        self.proc.wait(5)
