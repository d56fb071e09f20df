"""`status`, `unblock` and `detach` while no daemon runs: the kernel's pins, the block file.

Why: a stopped daemon leaves the XDP program attached and enforcing its blocks
(docs/design.md, Lifecycle). An administrator must still see them, lift one, or
turn screening off, without starting the daemon first. As root, these commands
open the maps pinned at [daemon].pin_path; the block file keeps the notes, and an
unblock is written to it too (else the next start would put the block back).
"""

from __future__ import annotations

import json
import os
import time
from ipaddress import IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynscreen.cli.app import OperationFailed, UserError, globals_of
from dynscreen.control import blockfile, blockstatus
from dynscreen.control.addr import network_key, parse_network, source_of
from dynscreen.control.blockindex import BlockIndex
from dynscreen.control.config import Config, ConfigError, load_config
from dynscreen.control.dataplane import abi
from dynscreen.control.dataplane.pins import PinnedMaps, PinsMissing, attached_interfaces
from dynscreen.control.fleet import url as fleet_url
from dynscreen.control.sourcekey import SourceKey

if TYPE_CHECKING:  # (cli.client imports this module's callers: no cycle at run time)
    from dynscreen.cli.client import NoDaemon, Target


def _config(target: Target, why: NoDaemon) -> Config:
    path = None if isinstance(target, (str, os.PathLike)) else globals_of(target).config_path()
    try:
        return load_config(path)
    except ConfigError as e:
        raise OperationFailed(f"{why}; the pinned maps cannot be read either: {e}") from None


def _pins(cfg: Config, why: NoDaemon) -> PinnedMaps:
    """The pins, or the no-daemon message saying why they cannot help."""
    if os.geteuid() != 0:
        raise OperationFailed(f"{why} (as root, this command reads the kernel's pinned maps "
                              "while no daemon runs)")
    try:
        return PinnedMaps(cfg.daemon.pin_path)
    except PinsMissing:
        raise OperationFailed(f"{why}; nothing of dynscreen is in the kernel either (no pinned "
                              f"maps at {cfg.daemon.pin_path})") from None
    except OSError as e:
        raise OperationFailed(f"{why}; the pinned maps at {cfg.daemon.pin_path} cannot be "
                              f"read: {e}") from None


def _block_file(cfg: Config) -> tuple[blockfile.BlockFile, list[blockfile.BlockEntry] | None]:
    bf = blockfile.BlockFile(cfg.daemon.state_file)
    try:
        return bf, bf.load()
    except blockfile.BlockFileError:
        return bf, None


def status(target: Target, why: NoDaemon, *, limit: int = blockstatus.LIMIT,
           all: bool = False, ip: str | None = None, reason: str | None = None,
           source: str | None = None) -> dict[str, Any]:
    """The daemon's status reply, from the pins: what the kernel enforces right now.

    The same view as the daemon's (control/blockstatus.py), from an index built from
    the pinned maps (batch lookups) with the block file's notes."""
    cfg = _config(target, why)
    now = time.time()
    index = BlockIndex(time.time)
    with _pins(cfg, why) as pins:
        kcfg = pins.config()
        index.load((r for r in pins.block_rows() if r.expires > now), made_at=now)
        counters = pins.counters()
        prefix = kcfg.ipv6_prefix or cfg.screening.ipv6_prefix
    bf = blockfile.BlockFile(cfg.daemon.state_file)
    try:
        rows = bf.load_rows()
    except blockfile.BlockFileError:
        rows = []
    for r in rows:
        if r.note:
            index.set_note(SourceKey(r.source), r.note)
    try:
        q = blockstatus.StatusQuery(
            limit=limit, show_all=all, reason=reason, origin=source,
            ip=None if ip is None else SourceKey.from_network(_source(ip, prefix)))
    except ValueError as e:
        raise UserError(str(e)) from None
    if q.show_all:
        head, texts = blockstatus.every_block(index, index.snapshot(), q, now)
        shown: dict[str, Any] = {**head, "blocks": json.loads("".join(texts))}
    else:
        shown = blockstatus.summary(index, q, now)
    return {
        **shown,
        "counters": counters,
        "mode": "monitor" if kcfg.flags & abi.F_MONITOR else "enforce",
        "enabled": bool(kcfg.flags & abi.F_ENABLED),
        "interfaces": attached_interfaces(cfg.daemon.pin_path),
        "started": None,
        "logs": [],
        # Nothing is shared without the daemon (the URL is shown without credentials).
        "fleet": {"state": "off", "redis": fleet_url.shown(cfg.fleet.redis)
                  if cfg.fleet.redis else "", "members": []},
        "daemon": {"running": False, "pin_path": str(cfg.daemon.pin_path),
                   "message": str(why)},
    }


def _source(text: str, ipv6_prefix: int) -> Any:
    """As the daemon reads an address: an IPv6 address stands for its source prefix."""
    try:
        net = parse_network(text)
    except ValueError as e:
        raise UserError(f"invalid address or CIDR range {text!r}: {e}") from None
    if isinstance(net, IPv6Network) and net.prefixlen == 128 and "/" not in text:
        return source_of(net.network_address, ipv6_prefix)
    return net


def unblock(target: Target, why: NoDaemon, addr: str | None) -> list[str]:
    """Remove one block (addr) or all (None) from the kernel and the block file."""
    cfg = _config(target, why)
    with _pins(cfg, why) as pins:
        if addr is None:
            nets = [b.source for b in pins.blocks()]
        else:
            nets = [_source(addr, pins.config().ipv6_prefix or cfg.screening.ipv6_prefix)]
        removed = [n for n in nets if pins.remove_block(n)]
    bf, entries = _block_file(cfg)
    if entries is None:
        raise OperationFailed(
            f"removed from the kernel: {', '.join(map(network_key, removed)) or 'nothing'}; "
            f"but the block file {bf.path} is not valid, so the next start may restore them: "
            "fix it (dynscreen blocks edit needs the daemon; edit the file by hand)")
    now = time.time()
    gone = set(nets) if addr is not None else {e.net for e in entries}
    kept = [e for e in entries if e.net not in gone]
    if len(kept) != len(entries):
        bf.save(kept, now)
    # A block only the file held (after a reboot emptied the kernel) was one too.
    removed += [e.net for e in entries if e.net in gone and e.net not in removed
                and e.expires > now]
    return [network_key(n) for n in removed]


def detach(target: Target, why: NoDaemon) -> list[str]:
    """Remove the XDP program from every interface running it, and the pins."""
    from dynscreen.control.dataplane.loader import DataPlane, DataPlaneError

    cfg = _config(target, why)
    if os.geteuid() != 0:
        raise OperationFailed(f"{why} (as root, detach works on the kernel directly while no "
                              "daemon runs)")
    ifaces = list(attached_interfaces(cfg.daemon.pin_path))
    if not ifaces and not (cfg.daemon.pin_path / "blocks").exists():
        raise OperationFailed(f"{why}; nothing of dynscreen is in the kernel either (no XDP "
                              f"program attached, no pinned maps at {cfg.daemon.pin_path})")
    try:
        DataPlane(pin_path=Path(cfg.daemon.pin_path)).detach(ifaces, unpin=True)
    except DataPlaneError as e:
        raise OperationFailed(str(e)) from None
    return ifaces
