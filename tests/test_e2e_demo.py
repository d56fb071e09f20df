"""`make demo` (`python -m dynscreen.control.lab demo`): it runs, it stops every attacker
and never the honest user, and it leaves nothing behind: not at its end, not on Ctrl-C
or SIGTERM, and after a SIGKILL the next lab sweeps up what it left."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_lab import IMAP, SMTP, SUBMISSION, assert_dropped, connects, have_mail_servers
from rich.console import Console

from dynscreen.control.lab import demo as demo_module
from dynscreen.control.lab.lab import REGISTRY, sweep_stale_labs
from dynscreen.control.lab.mail import USERS
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


class ProbedDemo(demo_module.Demo):
    """The demo, run in this process: once its clients are done and before its summary (and
    its own verdict), each client's address is tried from outside the demo, while the lab
    still stands."""

    probes: dict[str, str]

    def _summary(self) -> int:
        self.probes = {}
        lab = self.lab
        blocks = {b["ip"]: b for b in lab.status()["blocks"]}
        for a in self.actors:
            port = {"imap-guesser": IMAP, "harvester": SMTP, "flooder": SMTP}.get(a.name)
            if port is None:
                continue
            reason = blocks.get(a.src, {}).get("reason")
            # each attacker: dropped on the port it attacked and on another screened one
            for p in (port, SUBMISSION):
                assert_dropped(lab, a.src, p)
            self.probes[a.name] = f"dropped ({reason})"
        # bob's guesser is stopped by the freeze: bob, with his password, cannot send
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            lab.send_mail(lab.honest[3], "alice", subject="bob, frozen",
                          login=("bob", USERS["bob"]))
        self.probes["bob-guesser"] = "bob frozen"
        dave = self.actors[0]
        assert dave.honest and connects(lab, dave.src, SUBMISSION) \
            and connects(lab, dave.src, IMAP), "the honest user still connects"
        self.probes["dave"] = "connects"
        return super()._summary()


def test_the_demo_stops_every_attacker_and_never_the_honest_user(tmp_path: Path) -> None:
    require_bpf()
    require(have_mail_servers(), "needs Debian's postfix and dovecot: run `sudo make setup`")
    out = tmp_path / "demo.out"
    with out.open("w") as f:
        d = ProbedDemo(Console(file=f, width=132))
        rc = d.run()
    text = out.read_text()
    assert d.probes == {"imap-guesser": "dropped (auth_failures)",
                        "harvester": "dropped (failed_rcpts)",
                        "flooder": "dropped (connections)",
                        "bob-guesser": "bob frozen", "dave": "connects"}, text
    assert rc == 0, text
    assert "every attacker was stopped; the honest user never was." in text
    assert "lab removed: no namespace, link, pinned map, process or file left." in text
    assert not d.lab.leftovers()


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
