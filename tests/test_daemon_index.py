"""The daemon's block index against the real kernel: adoption, lost events, exact expiry.

The daemon answers every question about blocks from its own index (control/blockindex.py)
and walks the kernel's tables only at start and on reconciliation. These tests put
blocks into the pinned maps behind its back, as a lost ring-buffer event would leave
them, and check that none stays unknown to it.

Run as root under `flock /tmp/dynscreen-netns.lock` (CI=true: no skipping).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Iterator

import pytest
from daemonlab import DaemonLab
from netns import NetLab, wait_for

from dynscreen.control.dataplane import abi, blocktable
from dynscreen.control.dataplane.pins import PinnedMaps
from dynscreen.control.sourcekey import SourceKey

from conftest import require_bpf

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]

MANY = 100_000


@pytest.fixture
def dl() -> Iterator[DaemonLab]:
    require_bpf()
    lab = NetLab().open()
    d = DaemonLab(lab, "max_blocks = 200000\n")
    try:
        yield d
    finally:
        d.close()
        lab.close()


def behind_its_back(dl: DaemonLab, n: int, first: int = 0x0A000000) -> list[SourceKey]:
    """n kernel blocks written straight into the pinned maps: no ring-buffer event."""
    now = time.time()
    rows = [blocktable.KernelRow(SourceKey((((0xFFFF << 32) | (first + i)) << 8) | 128),
                                 now + 3600, 0, "connections", "kernel") for i in range(n)]
    with PinnedMaps(dl.lab.pin) as pins:
        blocktable.write_blocks(pins._fd("blocks"), pins._fd("cidr_blocks"), rows, 64)
    return [r.source for r in rows]


def lose_an_event(dl: DaemonLab) -> None:
    """Make the kernel's events_lost counter grow, as a full ring buffer does."""
    ncpu = max(ctypes.CDLL("libbpf.so.1").libbpf_num_possible_cpus(), 1)
    i = abi.COUNTERS.index("events_lost")
    with PinnedMaps(dl.lab.pin) as pins:
        key = bytes(ctypes.c_uint32(i))
        raw = pins._lookup("counters", key, 8 * ncpu)
        values = list((ctypes.c_uint64 * ncpu).from_buffer_copy(raw)) if raw else [0] * ncpu
        values[0] += 1
        pins._update("counters", key, bytes((ctypes.c_uint64 * ncpu)(*values)))


def count(dl: DaemonLab) -> int:
    return int(dl.result("status", limit=0)["block_count"])


def test_a_lost_event_is_recovered_and_many_blocks_are_adopted_after_sigkill(
        dl: DaemonLab) -> None:
    dl.start()
    dl.result("block", addr="203.0.113.5", minutes=30, note="ticket 9")
    keys = behind_its_back(dl, MANY)
    time.sleep(1.5)
    assert count(dl) == 1, "no walk of the kernel without a reason"
    lose_an_event(dl)
    assert wait_for(lambda: count(dl) == MANY + 1, timeout=20), count(dl)
    hit = dl.result("status", ip=str(keys[MANY // 2]))["blocks"]
    assert [(b["ip"], b["source"]) for b in hit] == [(str(keys[MANY // 2]), "kernel")]
    assert dl.result("status", limit=0)["daemon"]["kernel_resyncs"] >= 1
    # SIGKILL: no last save. The pins survive; the restart adopts them all, with the note
    # the block command noted before it replied.
    dl.stop(signal.SIGKILL)
    t = time.monotonic()
    dl.start()
    started = time.monotonic() - t
    assert count(dl) == MANY + 1
    (b,) = dl.result("status", ip="203.0.113.5")["blocks"]
    assert (b["note"], b["source"]) == ("ticket 9", "manual")
    assert started < 30, started
    every = dl.raw(b'{"cmd": "status", "all": true}\n')
    assert every["ok"] and len(every["result"]["blocks"]) == MANY + 1


def test_expiry_is_exact_and_leaves_the_kernel(dl: DaemonLab) -> None:
    dl.start()
    made = time.time()
    dl.result("block", addr="198.51.100.20", minutes=0.05)  # 3 s
    dl.result("block", addr="198.51.100.21", minutes=30)
    key = SourceKey.parse("198.51.100.20")

    def in_kernel() -> bool:
        with PinnedMaps(dl.lab.pin) as pins:
            return any(b.source == key.network() for b in pins.blocks())
    assert in_kernel()
    while time.time() < made + 2.5:
        assert dl.result("status", ip="198.51.100.20")["blocks"], "gone before its time"
        time.sleep(0.2)
    assert wait_for(lambda: not dl.result("status", ip="198.51.100.20")["blocks"], timeout=3)
    gone = time.time() - made
    assert gone < 3 + 1.5, gone  # the sweep runs every second
    with PinnedMaps(dl.lab.pin) as pins:
        left = {str(SourceKey.from_network(b.source)) for b in pins.blocks()}
        rows = {str(r.source) for r in pins.block_rows()}
    assert "198.51.100.20" not in rows, "swept from the kernel too"
    assert left == {"198.51.100.21"} and count(dl) == 1
    assert os.path.exists(dl.state)
