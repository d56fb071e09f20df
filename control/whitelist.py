"""The whitelist in force: the config's ranges plus the runtime ones (`dynscreen allow`).

One room holds every part of it, so they cannot drift apart: the runtime
list and its file (control/whitelistfile.py), the kernel's whitelist map, the
engine's view, and the blocks a whitelisting lifts. Every change goes to the
kernel and the engine in the same step, and runtime changes to the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from dynscreen.control import ctlproto, whitelistfile
from dynscreen.control.addr import Network, network_key
from dynscreen.control.blocklist import BlockList

log = logging.getLogger("dynscreen")


class WhitelistPlane(Protocol):
    """What the whitelist needs of the data plane."""

    def sync_whitelist(self, nets: list[Network]) -> tuple[int, int]: ...


class WhitelistEngine(Protocol):
    """What the whitelist needs of the engine."""

    def set_whitelist(self, networks: list[Network]) -> None: ...


def _inside(net: Network, outer: Network) -> bool:
    return net.version == outer.version and net.subnet_of(outer)  # type: ignore[arg-type]


class Whitelist:
    """Config and runtime whitelist, kept in the kernel, the engine and the file."""

    def __init__(self, config: list[Network], path: Path, dp: WhitelistPlane,
                 engine: WhitelistEngine, blocks: BlockList) -> None:
        self.config = list(config)
        self.path = path
        self.runtime: list[Network] = []
        self.dp = dp
        self.engine = engine
        self.blocks = blocks
        # told of each block lifted because the whitelist covers it: (block, whitelisted by)
        self.on_lift: Callable[[Network, str, Network], None] | None = None
        self.watchers: list[Callable[[Network, bool], None]] = []  # runtime adds, removals

    def all(self) -> list[Network]:
        return self.config + self.runtime

    def load(self, config: list[Network] | None = None) -> int:
        """Start-up and reload: read the file (a bad one is logged and the runtime list left
        as it was), push the whole list to kernel and engine, lift the blocks inside it."""
        if config is not None:
            self.config = list(config)
        try:
            self.runtime = list(whitelistfile.load(self.path))
        except whitelistfile.WhitelistFileError as e:
            log.error("%s (runtime whitelist left as it was)", e)
        self._push()
        return self.lift_covered()

    def _push(self) -> None:
        self.dp.sync_whitelist(self.all())
        self.engine.set_whitelist(self.runtime)

    def covering(self, net: Network) -> Network | None:
        """The whitelisted range that overlaps net (either inside the other), if any."""
        for w in self.all():
            if _inside(net, w) or _inside(w, net):
                return w
        return None

    def inside(self, net: Network) -> list[Network]:
        """The whitelisted ranges strictly inside net (their sessions are spared)."""
        return [w for w in self.all() if w != net and _inside(w, net)]

    def lift_covered(self) -> int:
        """Lift every block that lies inside the whitelist; how many (logged)."""
        wl = self.all()
        n = 0
        for b in self.blocks.inside(wl):  # asked of the block index, not a walk of all
            net = b.source.network()
            w = next((w for w in wl if _inside(net, w)), None)
            if w is not None and self.blocks.remove(b.source):
                n += 1
                log.warning("unblocked %s (%s): whitelisted by %s", b.source,
                            b.reason, network_key(w))
                if self.on_lift is not None:
                    self.on_lift(net, b.reason, w)
        return n

    def rows(self) -> list[dict[str, str]]:
        rows = [{"cidr": network_key(n), "source": "config"} for n in self.config]
        rows += [{"cidr": network_key(n), "source": "runtime"} for n in self.runtime]
        return rows

    def add(self, net: Network) -> int:
        """`allow add`: whitelist net (kernel, engine, file), lift the blocks it covers."""
        if net not in self.runtime and net not in self.config:
            self.runtime.append(net)
            self._save()
            log.warning("whitelisted %s", network_key(net))
            for watch in self.watchers:
                watch(net, True)
        return self.lift_covered()

    def remove(self, net: Network) -> None:
        """`allow remove`: only a runtime entry; the config's are the config file's."""
        if net in self.config and net not in self.runtime:
            raise ctlproto.RequestError(
                f"{network_key(net)} is whitelisted by the config file: edit "
                "[screening].whitelist and reload")
        if net not in self.runtime:
            raise ctlproto.OperationError(f"{network_key(net)} is not on the whitelist")
        self.runtime.remove(net)
        self._save()
        log.warning("removed %s from the whitelist", network_key(net))
        for watch in self.watchers:
            watch(net, False)

    def _save(self) -> None:
        self._push()
        try:
            whitelistfile.save(self.path, self.runtime)
        except OSError as e:
            raise ctlproto.OperationError(
                f"whitelist changed but not saved to {self.path}: {e}") from None
