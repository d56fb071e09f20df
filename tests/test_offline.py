"""`status`, `unblock` and `detach` with no daemon: real pinned maps on a bpffs of our own."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path

import pytest
from fakedaemon import invoke
from netns import sh

from dynscreen.control import blockfile
from dynscreen.control.dataplane import links
from dynscreen.control.dataplane.loader import DataPlane
from dynscreen.control.dataplane.pins import PinnedMaps, attached_interfaces

from conftest import require_bpf

pytestmark = pytest.mark.root


@dataclass
class Stopped:
    """What a daemon leaves when it stops: a program attached, its maps pinned, a block file."""

    dp: DataPlane
    pin: Path
    link: str
    state: Path
    config: Path
    env: dict[str, str]

    def cli(self, *args: str):  # noqa: ANN201
        return invoke("--config", str(self.config), *args, env=self.env)


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[Stopped]:
    require_bpf()
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    sh("mount", "-t", "bpf", "bpf", str(mnt))
    link = f"dsoff{os.getpid() % 10000}"
    sh("ip", "link", "del", link, check=False)
    sh("ip", "link", "add", link, "type", "bridge")
    pin = mnt / "dynscreen"
    dp = DataPlane(pin_path=pin, max_blocks=64, max_tracked=64, ipv6_prefix=56,
                   tracepoint=False)
    try:
        dp.load()
        dp.configure(monitor=True)
        dp.attach([link], "generic")
        now = time.time()
        dp.add_block(ip_network("192.0.2.7/32"), now + 600, "auth_failures", "logs")
        dp.add_block(ip_network("2001:db8:0:100::/56"), now + 1200, "connections", "kernel")
        dp.add_block(ip_network("198.51.100.0/24"), now + 900, "manual", "manual")
        dp.add_block(ip_network("192.0.2.99/32"), now - 1, "auth_failures", "logs")  # expired
        state = tmp_path / "blocks.dat"
        bf = blockfile.BlockFile(state)
        bf.save([blockfile.BlockEntry(ip_network("192.0.2.7/32"), now + 600, "auth_failures",
                                      "noisy", "logs"),
                 blockfile.BlockEntry(ip_network("198.51.100.0/24"), now + 900, "manual",
                                      "a scanner range", "manual")], now)
        dp.close()  # the daemon is gone; the kernel keeps program and maps
        config = tmp_path / "dynscreen.toml"
        config.write_text(f'[screening]\nipv6_prefix = 56\n[daemon]\npin_path = "{pin}"\n'
                          f'state_file = "{state}"\n')
        env = {"DYNSCREEN_SOCKET": str(tmp_path / "none.sock")}
        yield Stopped(dp, pin, link, state, config, env)
    finally:
        dp.detach([link], unpin=True)
        sh("ip", "link", "del", link, check=False)
        sh("umount", str(mnt), check=False)


def test_pinned_maps_read_what_the_daemon_wrote(stopped: Stopped) -> None:
    with PinnedMaps(stopped.pin) as pins:
        got = {str(b.source): (b.reason, b.origin, b.cidr) for b in pins.blocks()}
        assert got == {"192.0.2.7/32": ("auth_failures", "logs", False),
                       "2001:db8:0:100::/56": ("connections", "kernel", False),
                       "198.51.100.0/24": ("manual", "manual", True)}
        assert pins.config().ipv6_prefix == 56
        assert set(pins.counters()) >= {"passed", "drop_blocked"}
    assert attached_interfaces(stopped.pin) == {stopped.link: "generic"}


def test_status_without_the_daemon(stopped: Stopped) -> None:
    out = stopped.cli("status", "--json")
    assert out.exit_code == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["daemon"]["running"] is False
    assert status["mode"] == "monitor" and status["enabled"] is True
    assert status["interfaces"] == {stopped.link: "generic"}
    assert status["logs"] == []
    rows = {b["ip"]: b for b in status["blocks"]}
    assert set(rows) == {"192.0.2.7", "2001:db8:0:100::/56", "198.51.100.0/24"}
    assert (rows["192.0.2.7"]["note"], rows["192.0.2.7"]["source"]) == ("noisy", "logs")
    assert rows["198.51.100.0/24"]["note"] == "a scanner range"
    assert 9.5 < rows["192.0.2.7"]["minutes_left"] <= 10
    assert "passed" in status["counters"]
    out = stopped.cli("status")
    assert out.exit_code == 0
    assert out.stdout.startswith("daemon not running: the kernel keeps enforcing these blocks")
    assert "a scanner range" in out.stdout and "3 blocks" in out.stdout


def test_unblock_without_the_daemon_edits_kernel_and_block_file(stopped: Stopped) -> None:
    out = stopped.cli("unblock", "192.0.2.7")
    assert (out.exit_code, out.stdout) == (0, "unblocked 192.0.2.7\n"), out.stderr
    # an IPv6 address stands for its source prefix, as with the daemon
    assert stopped.cli("unblock", "2001:db8:0:1ff::1").exit_code == 0
    assert stopped.cli("unblock", "192.0.2.200").exit_code == 1  # none: said so
    with PinnedMaps(stopped.pin) as pins:
        assert [str(b.source) for b in pins.blocks()] == ["198.51.100.0/24"]
    saved = blockfile.BlockFile(stopped.state).load()
    assert [str(e.net) for e in saved] == ["198.51.100.0/24"]  # the next start restores none
    out = stopped.cli("unblock", "--all")
    assert (out.exit_code, out.stdout) == (0, "unblocked 1 block\n")
    with PinnedMaps(stopped.pin) as pins:
        assert pins.blocks() == [] and pins.config().cidr_blocks == 0
    assert blockfile.BlockFile(stopped.state).load() == []
    assert stopped.cli("unblock").exit_code == 2


def test_detach_without_the_daemon(stopped: Stopped) -> None:
    out = stopped.cli("detach")
    assert out.exit_code == 0, out.stderr
    assert stopped.link in out.stdout
    assert links.xdp_state(stopped.link) == (0, "")
    assert not (stopped.pin / "blocks").exists()
    out = stopped.cli("status")
    assert out.exit_code == 1 and "no pinned maps at" in out.stderr
    out = stopped.cli("detach")
    assert out.exit_code == 1 and "nothing of dynscreen is in the kernel" in out.stderr
