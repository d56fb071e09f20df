"""The pinned maps, opened by their pins without loading the program: the CLI while no
daemon runs (`status`, `unblock`, `detach` as root).

Why not DataPlane: loading compiles the program (clang, kernel headers: seconds);
reading the blocks the kernel still enforces needs only the maps it holds, through
the bpf syscall on their pins. The layouts are abi's, shared with the program.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from dynscreen.control.dataplane import abi, bpfsys
from dynscreen.control.dataplane.loader import PROG_NAME, KernelBlock, mono_ns, to_unix

Network = IPv4Network | IPv6Network
_lib: ctypes.CDLL | None = None


def _libbpf() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
        for name in ("bpf_map_get_next_key", "bpf_map_lookup_elem", "bpf_map_update_elem",
                     "bpf_map_delete_elem"):
            getattr(lib, name).restype = ctypes.c_int
        lib.bpf_map_get_next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                            ctypes.c_uint64]
        lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.libbpf_num_possible_cpus.restype = ctypes.c_int
        _lib = lib
    return _lib


class PinsMissing(Exception):
    """No pinned block table at the pin path: nothing of dynscreen is in the kernel."""


class PinnedMaps:
    """The maps a daemon left pinned; closed with close() or a with block."""

    def __init__(self, pin_path: Path) -> None:
        self.pin_path = pin_path
        if not (pin_path / "blocks").exists():
            raise PinsMissing(f"no pinned maps at {pin_path}")
        self._fds: dict[str, int] = {}

    def __enter__(self) -> PinnedMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, name: str) -> int:
        if name not in self._fds:
            self._fds[name] = bpfsys.obj_get(str(self.pin_path / name))
        return self._fds[name]

    # ---- raw access ----------------------------------------------------------------------

    def _keys(self, name: str, key_type: type[ctypes.Structure]) -> Iterator[bytes]:
        fd = self._fd(name)
        cur = key_type()
        nxt = key_type()
        first = True
        while True:
            rc = _libbpf().bpf_map_get_next_key(fd, None if first else ctypes.byref(cur),
                                                ctypes.byref(nxt))
            if rc < 0:
                return  # ENOENT: the last key
            yield bytes(nxt)
            ctypes.memmove(ctypes.byref(cur), ctypes.byref(nxt), ctypes.sizeof(key_type))
            first = False

    def _lookup(self, name: str, key: bytes, size: int) -> bytes | None:
        buf = ctypes.create_string_buffer(size)
        kbuf = ctypes.create_string_buffer(key, len(key))
        if _libbpf().bpf_map_lookup_elem(self._fd(name), kbuf, buf) < 0:
            return None
        return buf.raw

    def _update(self, name: str, key: bytes, value: bytes) -> None:
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(value, len(value))
        if _libbpf().bpf_map_update_elem(self._fd(name), kbuf, vbuf, 0) < 0:
            err = ctypes.get_errno()
            raise bpfsys.BpfError(err, f"update {self.pin_path / name}: {os.strerror(err)}")

    def _delete(self, name: str, key: bytes) -> bool:
        kbuf = ctypes.create_string_buffer(key, len(key))
        return _libbpf().bpf_map_delete_elem(self._fd(name), kbuf) == 0

    # ---- reading -------------------------------------------------------------------------

    def config(self) -> abi.Config:
        raw = self._lookup("config", bytes(ctypes.c_uint32(0)), ctypes.sizeof(abi.Config))
        return abi.Config.from_buffer_copy(raw) if raw else abi.Config()

    def counters(self) -> dict[str, int]:
        """The kernel's counters, summed over the CPUs (a per-CPU array)."""
        ncpu = max(_libbpf().libbpf_num_possible_cpus(), 1)
        out: dict[str, int] = {}
        for i, name in enumerate(abi.COUNTERS):
            raw = self._lookup("counters", bytes(ctypes.c_uint32(i)), 8 * ncpu)
            values = (ctypes.c_uint64 * ncpu).from_buffer_copy(raw) if raw else []
            out[name] = int(sum(values))
        return out

    def blocks(self) -> list[KernelBlock]:
        """Blocks still in force (the kernel ignores expired ones; they stay until swept)."""
        now = mono_ns()
        prefix = self.config().ipv6_prefix or 64
        out = []
        for name, key_type in (("blocks", abi.Key), ("cidr_blocks", abi.LpmKey)):
            for key in self._keys(name, key_type):
                raw = self._lookup(name, key, ctypes.sizeof(abi.Block))
                if raw is None:
                    continue
                b = abi.Block.from_buffer_copy(raw)
                if b.expires <= now:
                    continue
                if key_type is abi.LpmKey:
                    net = abi.network_of_lpm(abi.LpmKey.from_buffer_copy(key))
                else:
                    net = abi.source_of_key(abi.Key.from_buffer_copy(key), prefix)
                out.append(KernelBlock(net, to_unix(b.expires), abi.REASONS.get(b.reason, "?"),
                                       abi.ORIGINS.get(b.origin, "?"), b.drops,
                                       key_type is abi.LpmKey))
        return out

    def block_rows(self) -> Iterator[Any]:
        """Every entry of both tables as blocktable.KernelRow, with batch lookups (a million
        blocks in seconds; blocks() costs syscalls per entry). Expired ones included."""
        from dynscreen.control.dataplane.blocktable import read_blocks

        return read_blocks(self._fd("blocks"), self._fd("cidr_blocks"),
                           self.config().ipv6_prefix or 64)

    # ---- editing -------------------------------------------------------------------------

    def _blocks_changed(self) -> None:
        """As DataPlane.blocks_changed: the attached program's blocked-source caches must
        not keep dropping the source just unblocked."""
        raw = self._lookup("config", bytes(ctypes.c_uint32(0)), ctypes.sizeof(abi.Config))
        if raw is None:
            return
        cfg = abi.Config.from_buffer_copy(raw)
        cfg.block_gen += 1
        self._update("config", bytes(ctypes.c_uint32(0)), bytes(cfg))

    def remove_block(self, net: Network) -> bool:
        """As DataPlane.remove_block: the entry goes, a source starts afresh."""
        prefix = self.config().ipv6_prefix or 64
        if net.prefixlen == (32 if isinstance(net, IPv4Network) else prefix):
            key = bytes(abi.key_for(net))
            if not self._delete("blocks", key):
                return False
            self._blocks_changed()
            raw = self._lookup("track", key, ctypes.sizeof(abi.Track))
            if raw is not None:
                tr = abi.Track.from_buffer_copy(raw)
                tr.cur = tr.prev = tr.syn = 0
                tr.win_start = mono_ns()
                self._update("track", key, bytes(tr))
            return True
        if not self._delete("cidr_blocks", bytes(abi.lpm_key_for(net))):
            return False
        cfg = self.config()
        cfg.cidr_blocks = sum(1 for _ in self._keys("cidr_blocks", abi.LpmKey))
        cfg.block_gen += 1  # the attached program's caches may hold the range's sources
        self._update("config", bytes(ctypes.c_uint32(0)), bytes(cfg))
        return True


def attached_interfaces(pin_path: Path) -> dict[str, str]:
    """Interfaces running the dynscreen program whose maps are pinned at pin_path, and in
    which mode (this namespace). Another instance's program (other pins) is not ours;
    with no pins left, any program of dynscreen's name is."""
    from pyroute2 import IPRoute

    from dynscreen.control.dataplane.links import xdp_state

    ours: int | None = None
    if (pin_path / "blocks").exists():
        fd = bpfsys.obj_get(str(pin_path / "blocks"))
        try:
            ours = bpfsys.map_info_fd(fd).id
        finally:
            os.close(fd)
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    out: dict[str, str] = {}
    for name in names:
        state = xdp_state(name)
        if state is None or not state[0]:
            continue
        with contextlib.suppress(OSError):  # the program went away meanwhile
            prog, maps = bpfsys.prog_name_and_maps(state[0])
            if prog == PROG_NAME and (ours is None or ours in maps):
                out[name] = state[1]
    return out
