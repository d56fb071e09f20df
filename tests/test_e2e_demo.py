"""`make demo` (`python -m dynscreen.control.lab demo`): it runs, it stops every attacker
and never the honest user, and it leaves nothing behind: not at its end, not on Ctrl-C
or SIGTERM, and after a SIGKILL the next lab sweeps up what it left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_lab import have_mail_servers

from dynscreen.control.lab.lab import REGISTRY, sweep_stale_labs
from dynscreen.control.lab.netns import wait_for

from conftest import require, require_bpf

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    require_bpf()
    require(have_mail_servers(), "needs Debian's postfix and dovecot: run `sudo make setup-dev`")
    d = Demo(tmp_path / "demo.out")
    try:
        yield d
    finally:
        d.kill()
        sweep_stale_labs()


class Demo:
    def __init__(self, out: Path) -> None:
        self.out = out
        with out.open("w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dynscreen.control.lab", "demo"],
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                # Ctrl-C must reach it as KeyboardInterrupt even if ours is ignored
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        self.tag = str(self.proc.pid % 100000)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_up(self, timeout: float = 60) -> None:
        assert wait_for(lambda: "exempt" in self.text() or self.proc.poll() is not None,
                        timeout=timeout, step=0.2), self.text()
        assert self.proc.poll() is None, self.text()

    def leftovers(self) -> list[str]:
        left = [ns for ns in os.listdir("/run/netns") if self.tag in ns] \
            if os.path.isdir("/run/netns") else []
        if (REGISTRY / f"{self.tag}.json").exists():
            left.append("registry entry")
        if Path(f"/run/dltest-bpf-{self.tag}").exists():
            left.append("bpffs")
        return left

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_the_demo_stops_every_attacker_and_never_the_honest_user(demo: Demo) -> None:
    start = time.monotonic()
    rc = demo.proc.wait(150)
    took = time.monotonic() - start
    text = demo.text()
    assert rc == 0, text
    assert took < 120, f"the demo took {took:.0f} s"
    for reason in ("auth_failures", "failed_rcpts", "connections"):
        assert reason in text
    assert "bob@example.test frozen" in text
    assert "every attacker was stopped; the honest user never was." in text
    assert "lab removed: no namespace, link, pinned map, process or file left." in text
    assert not demo.leftovers()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_demo_cleans_up_when_interrupted(demo: Demo, sig: int) -> None:
    demo.wait_up()
    demo.proc.send_signal(sig)
    rc = demo.proc.wait(60)
    assert rc in (130, 128 + sig), demo.text()
    assert "lab removed: no namespace" in demo.text()
    assert not demo.leftovers()


def test_a_killed_lab_is_swept_by_the_next_one(demo: Demo) -> None:
    demo.wait_up()
    demo.kill()
    assert demo.leftovers(), "SIGKILL leaves the lab behind"
    removed = sweep_stale_labs()
    assert any(f"dlgw{demo.tag}" in r for r in removed), removed
    assert not demo.leftovers()
