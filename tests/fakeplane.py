"""A data plane without a kernel: the calls the daemon's parts make, kept in dicts.

For the rooms that must run without BPF (commands, decisions, the heartbeat
thread, the loop-stall meter); the kernel's own behaviour is tested against
the real maps elsewhere (test_xdp, test_daemon).
"""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from dynscreen.control.dataplane.blocktable import KernelRow
from dynscreen.control.dataplane.loader import BlockTableFull, KernelBlock, KernelEvent
from dynscreen.control.sourcekey import SourceKey

Network = IPv4Network | IPv6Network


class FakePlane:
    """Blocks, whitelist, exemptions and heartbeat stamps in memory."""

    adopted = False

    def __init__(self, max_blocks: int = 1000) -> None:
        self.blocks: dict[Network, KernelBlock] = {}
        self.max_blocks = max_blocks
        self.attached: dict[str, str] = {"fake0": "generic"}
        self.whitelisted: list[Network] = []
        self.exempted: dict[Network, float] = {}
        self.local: list[Any] = []
        self.events: list[KernelEvent] = []
        self.stamps: list[float] = []  # monotonic times of heartbeat stamps
        self.stamp_threads: set[str] = set()
        self.closed = False

    def add_block(self, net: Network, until: float, reason: str, origin: str) -> None:
        self.add_blocks([(net, until, reason, origin)])

    def add_blocks(self, blocks: list[tuple[Network, float, str, str]]) -> None:
        for net, until, reason, origin in blocks:
            if net not in self.blocks and len(self.blocks) >= self.max_blocks:
                raise BlockTableFull(f"the block table is full ({self.max_blocks})")
            self.blocks[net] = KernelBlock(net, until, reason, origin, 0,
                                           net.prefixlen not in (32, 64))

    def remove_block(self, net: Network) -> bool:
        return self.blocks.pop(net, None) is not None

    def list_blocks(self, *, include_expired: bool = False) -> list[KernelBlock]:
        now = time.time()
        return [b for b in self.blocks.values() if include_expired or b.expires > now]

    def sweep_expired(self) -> list[KernelBlock]:
        now = time.time()
        gone = [b for b in self.blocks.values() if b.expires <= now]
        for b in gone:
            del self.blocks[b.source]
        return gone

    # the block list's bulk calls (blocktable.KernelBlockTable's shape)

    def read_rows(self) -> list[Any]:
        return [KernelRow(SourceKey.from_network(b.source), b.expires, b.drops, b.reason,
                          b.origin) for b in self.blocks.values()]

    def read_drops(self) -> dict[int, int]:
        return {int(r.source): r.drops for r in self.read_rows() if r.drops}

    def write_rows(self, rows: list[Any], meanwhile: Any = None) -> None:
        self.add_blocks([(SourceKey(r.source).network(), r.expires, r.reason, r.origin)
                         for r in rows])
        if meanwhile is not None:
            meanwhile()

    def delete_rows(self, sources: list[int]) -> int:
        return sum(self.remove_block(SourceKey(s).network()) for s in sources)

    def sync_whitelist(self, nets: Any) -> tuple[int, int]:
        self.whitelisted = list(nets)
        return 0, 0

    def exempt(self, source: Network, until: float) -> None:
        self.exempted[source] = until

    def sweep_exempt(self) -> int:
        return 0

    def set_local_addrs(self, addrs: Any) -> None:
        self.local = list(addrs)

    def counters(self) -> dict[str, int]:
        return {"packets": 0}

    def sources(self) -> list[Any]:
        return []

    def poll_events(self, timeout_ms: int = 0) -> list[KernelEvent]:
        out, self.events = self.events, []
        return out

    def heartbeat(self) -> None:
        self.stamps.append(time.monotonic())

    def heartbeat_stamper(self) -> Any:
        def stamp() -> None:
            self.stamp_threads.add(threading.current_thread().name)
            self.heartbeat()
        return stamp

    def close(self) -> None:
        self.closed = True
