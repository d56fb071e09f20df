"""Compile, load, attach and adopt the BPF programs; the Python API over their maps.

The only module that imports bcc. Maps are pinned under pin_path (created
there, or adopted when a previous run left them, or re-pinned from the
program still attached to an interface), so blocks outlive the control plane
and the XDP program keeps enforcing them while no daemon runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from dynscreen.control.config import MAX_MINUTES
from dynscreen.control.dataplane import abi, bpfsys, kernel
from dynscreen.control.dataplane.links import xdp_state

Network = IPv4Network | IPv6Network

PROG_NAME = "xdp_screen"
# bcc's function name -> the label of dynscreen_kernel_program_skips_total{program}.
SKIPPABLE_PROGRAMS = {PROG_NAME: PROG_NAME, "ds_handshake": "ds_handshake",
                      "tracepoint__sock__inet_sock_set_state": "inet_sock_set_state"}
# Maps shared with a previous run through pins (the ring buffer is per run).
PINNED_MAPS = (
    "ports", "config", "heartbeat", "counters", "blocks", "cidr_blocks",
    "whitelist", "exempt", "track", "local_addrs",
)
# Tick lengths (TICK_NSEC) of the kernel's possible HZ: 100, 250, 300, 1000.
TICK_NS = tuple((10**9 + hz // 2) // hz for hz in (100, 250, 300, 1000))
# Pinned maps whose whole content the loader writes at every start (configure, set_ports,
# the heartbeat; counters are statistics), with their (key, value, entries) shape: a pin of
# another shape, left by an older dynscreen, is replaced rather than adopted.
REBUILT_MAPS = {
    "ports": (4, 8, 1024),
    "config": (4, ctypes.sizeof(abi.Config), 1),
    "heartbeat": (4, 8, 1),
    "counters": (4, 8, abi.NCOUNTERS),
}
# The block filter: about 16 bits per block-table entry (a full table sets 6% of them),
# between 2^16 and 2^27 bits (16 MiB for its two halves).
FILTER_BITS_PER_BLOCK = 16
FILTER_BITS_RANGE = (16, 27)
# How long a program just replaced on an interface may still be running (XDP runs in
# softirq without sleeping: microseconds) before the table is read to arm the filter.
FILTER_GRACE_SECONDS = 0.05
HEARTBEAT_SECONDS = 1.0
EVENTS_PER_POLL = 128  # kernel events taken in one poll (a flood: the rest next turn; ~30 us each)
HEARTBEAT_TIMEOUT_SECONDS = 10.0
NEVER = 2**64 - 1

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}


class DataPlaneError(Exception):
    """Loading, attaching or a map operation failed; the message is for the administrator."""


class BlockTableFull(DataPlaneError):
    """The block table holds max_blocks entries: the new block is refused."""


@dataclass(frozen=True)
class KernelBlock:
    """One entry of the block table or of the CIDR trie."""

    source: Network
    expires: float          # Unix time
    reason: str
    origin: str
    drops: int
    cidr: bool


@dataclass(frozen=True)
class KernelEvent:
    """A block the kernel made (or could not make: table_full)."""

    source: Network
    expires: float | None
    reason: str
    count: int
    monitor: bool
    table_full: bool
    tracepoint: bool


@dataclass(frozen=True)
class SourceState:
    """Per-source live state for `dynscreen top`."""

    source: Network
    established: int
    rate: int
    syn_per_second: int


def mono_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def to_mono(unix: float) -> int:
    """A Unix time as the kernel's CLOCK_MONOTONIC ns (clamped to the table's range)."""
    if unix == float("inf"):
        return NEVER
    v = mono_ns() + int((unix - time.time()) * 1e9)
    return max(0, min(v, NEVER))


def to_unix(mono: int) -> float:
    """A kernel expiry as Unix time, never later than the longest block from now.

    The table may hold "never" (the maximum) or any other far value, written by
    an older version or by hand: read back cut, it is a time every caller can
    show, compare and write to the block file.
    """
    now = time.time()
    return min(now + (mono - mono_ns()) / 1e9, now + MAX_MINUTES * 60)


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """libbcc writes compiler errors and verifier logs to fd 2: keep them for the message."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def _tail(lines: list[str], n: int = 12) -> str:
    useful = [ln for ln in lines if ln.strip()]
    return "\n".join(useful[-n:])


def bpf_source() -> tuple[str, Path]:
    """The program text and the folder holding dynscreen.h (shipped as package data)."""
    pkg = resources.files("dynscreen.bpf")
    folder = Path(str(pkg))
    return (folder / "dynscreen.c").read_text(), folder


def _disarm(config_fd: int, value_size: int) -> None:
    """Clear the filter flag of a config whose pin is being replaced (an upgrade): the
    program still attached keeps that config, and would otherwise go on trusting its block
    filter and blocked-source cache, which no longer hear of this control plane's changes
    (the flags lead every layout of the config)."""
    raw = bpfsys.array_lookup(config_fd, 0, value_size)
    if raw is None or len(raw) < 4:
        return
    flags = int.from_bytes(raw[:4], sys.byteorder)
    if flags & abi.F_FILTER:
        bpfsys.array_update(config_fd, 0,
                            (flags & ~abi.F_FILTER).to_bytes(4, sys.byteorder) + raw[4:])


class DataPlane:
    """The loaded programs and their maps."""

    def __init__(
        self,
        *,
        pin_path: Path | None,
        max_blocks: int = 1_000_000,
        max_tracked: int = 1_000_000,
        ipv6_prefix: int = 64,
        tracepoint: bool = True,
        source: str | None = None,
    ) -> None:
        self.pin_path = pin_path
        self.source = source  # another program text (tests of error reporting)
        self.max_blocks = max_blocks
        self.max_tracked = max_tracked
        self.ipv6_prefix = ipv6_prefix
        self.tracepoint = tracepoint
        self.bpf = None
        self.prog_fd = -1
        self._handshake_link = -1  # the sock_ops link (counts handshakes), while loaded
        self.attached: dict[str, str] = {}
        self.adopted = False
        self._events: list[KernelEvent] = []
        self._ring_open = False
        self.clock: tuple[int, int] = (0, 0)  # (jiffy_ns, jiffies_base_ns); 0: coarse clock
        self.replaced: list[str] = []  # pinned maps of an older layout, replaced at load
        self._ports: frozenset[int] = frozenset()
        lo, hi = FILTER_BITS_RANGE
        self.filter_bits = max(lo, min(hi, (max_blocks * FILTER_BITS_PER_BLOCK - 1).bit_length()))
        # The control plane's half of the block filter, as written to the kernel.
        self._filter = array("Q", bytes(8 << (self.filter_bits - 6)))
        self.filter_armed = False
        # Serialises the read-modify-writes of the config entry (block_gen must never go back).
        self._config_lock = threading.RLock()

    # ---- loading -------------------------------------------------------------------------

    def load(self, adopt_from: Iterable[str] = ()) -> None:
        """Compile and load; adopt pinned maps (or re-pin those of an attached program)."""
        if os.geteuid() != 0:
            raise DataPlaneError("loading BPF programs needs root (CAP_BPF, CAP_NET_ADMIN)")
        try:
            kernel.ensure_headers()
            if self.tracepoint:
                kernel.ensure_tracefs()
            if self.pin_path is not None:
                kernel.ensure_bpffs(self.pin_path)
        except kernel.HostError as e:
            raise DataPlaneError(str(e)) from None
        if self.pin_path is not None:
            for iface in adopt_from:
                self._repin_from(iface)
            self.adopted = (self.pin_path / "blocks").exists()
            self._check_pins()
        text, folder = bpf_source()
        if self.source is not None:
            text = self.source
        cflags = [
            f"-I{folder}",
            f"-DDS_MAX_BLOCKS={self.max_blocks}",
            f"-DDS_MAX_TRACKED={self.max_tracked}",
            f"-DDS_FILTER_BITS={self.filter_bits}",
            f"-DDS_IPV6_PREFIX={self.ipv6_prefix}",
            "-Wno-macro-redefined",
        ]
        if self.pin_path is not None:
            cflags.append(f'-DDS_PIN="{self.pin_path}"')
        cgroup = None
        if self.tracepoint:
            cflags.append("-DDS_WITH_TRACEPOINT")
            cgroup = kernel.cgroup2_root()
            if cgroup is not None:
                cflags.append("-DDS_WITH_SOCKOPS")
        from bcc import BPF  # the one place bcc is imported

        failure: Exception | None = None
        with _stderr_captured() as log:
            try:
                self.bpf = BPF(text=text.encode(), cflags=cflags)
                self._fn = self.bpf.load_func(PROG_NAME.encode(), BPF.XDP)
            except Exception as e:  # bcc raises bare Exception for compile and verifier errors
                failure = e
        if failure is not None:
            raise DataPlaneError(
                f"the BPF program did not load: {failure}\n--- compiler/verifier says ---\n"
                f"{_tail(log)}"
            )
        self.prog_fd = self._fn.fd
        if cgroup is not None:
            self._count_handshakes(cgroup)
        self.clock = self._calibrate_clock()
        # A config adopted from a previous run may say "armed" about that run's filter.
        self._config_flag(abi.F_FILTER, False)
        self.arm_filter()
        # Blocked-source caches of a program made before (sharing the pinned config) start
        # over: this control plane may change the table before that program is replaced.
        self.blocks_changed()

    def _count_handshakes(self, cgroup: Path) -> None:
        """Attach the handshake counter (sock_ops, `ds_handshake`) to the cgroup v2 root by
        a link this process holds: it goes when the process does, as the tracepoint."""
        from bcc import BPF

        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            failure: Exception | None = None
            with _stderr_captured() as log:
                try:
                    fn = self.bpf.load_func(b"ds_handshake", BPF.SOCK_OPS)
                except Exception as e:  # bcc raises bare Exception for verifier errors
                    failure = e
            if failure is not None:
                raise DataPlaneError(f"the handshake counter did not load: {failure}\n"
                                     f"{_tail(log)}")
            try:
                self._handshake_link = bpfsys.link_create(
                    fn.fd, fd, bpfsys.BPF_CGROUP_SOCK_OPS,
                    f"attach the handshake counter (sock_ops) to the cgroup root {cgroup}")
            except bpfsys.BpfError as e:
                raise DataPlaneError(str(e)) from None
        finally:
            os.close(fd)

    def _calibrate_clock(self) -> tuple[int, int]:
        """XDP's clock: (jiffy_ns, jiffies_base_ns) so that jiffies * jiffy_ns + base is
        CLOCK_MONOTONIC ns at the last tick, as the coarse clock reads it.

        A probe program reads jiffies and the coarse clock back to back. Their ratio over a
        few ticks gives the tick length (one of TICK_NS); the base is the least of the
        samples' differences, so a tick landing between the two reads, which makes one
        sample a tick later, never puts the clock ahead. When the ratio fits no known tick
        (a kernel doing something unexpected), XDP keeps the coarse clock: (0, 0)."""
        from bcc import BPF

        with _stderr_captured():
            probe = self.bpf.load_func(b"ds_clock_probe", BPF.XDP)
        frame = bytes(64)

        def sample() -> tuple[int, int]:
            j, c = struct.unpack_from("<QQ", bpfsys.prog_test_run(probe.fd, frame).data)
            return j, c

        samples = [sample()]
        end = time.monotonic() + 0.5
        while samples[-1][0] - samples[0][0] < 8 and time.monotonic() < end:
            time.sleep(0.005)
            samples.append(sample())
        (j0, c0), (j1, c1) = samples[0], samples[-1]
        if j1 <= j0:
            return (0, 0)
        per = (c1 - c0) / (j1 - j0)
        tick = min(TICK_NS, key=lambda t: abs(t - per))
        if abs(tick - per) > tick * 0.02:
            return (0, 0)
        base = min(c - j * tick for j, c in samples)
        return (tick, base % 2**64)

    def _check_pins(self) -> None:
        """A pinned block table of another size cannot be adopted silently; a pinned map the
        loader rewrites whole (an older dynscreen's config or counters of another layout) is
        replaced: its pin is removed, and the program still attached keeps its own copy until
        the new one replaces it."""
        assert self.pin_path is not None
        for name, shape in REBUILT_MAPS.items():
            rpin = self.pin_path / name
            if not rpin.exists():
                continue
            fd = bpfsys.obj_get(str(rpin))
            try:
                info = bpfsys.map_info_fd(fd)
                if (info.key_size, info.value_size, info.max_entries) != shape:
                    if name == "config":
                        _disarm(fd, info.value_size)
                    rpin.unlink()
                    self.replaced.append(name)
            finally:
                os.close(fd)
        pin = self.pin_path / "blocks"
        if not pin.exists():
            return
        fd = bpfsys.obj_get(str(pin))
        try:
            info = bpfsys.map_info_fd(fd)
        finally:
            os.close(fd)
        if info.max_entries != self.max_blocks or info.key_size != ctypes.sizeof(abi.Key) \
                or info.value_size != ctypes.sizeof(abi.Block):
            raise DataPlaneError(
                f"the pinned block table at {pin} holds {info.max_entries} entries "
                f"(key {info.key_size} B, value {info.value_size} B) but max_blocks is "
                f"{self.max_blocks}: save the blocks and run `dynscreen detach` first, or set "
                f"max_blocks = {info.max_entries}"
            )

    def _repin_from(self, iface: str) -> None:
        """Pins gone but our program still attached: pin its maps again, by id."""
        assert self.pin_path is not None
        if (self.pin_path / "blocks").exists():
            return
        state = xdp_state(iface)
        if state is None or state[0] == 0:
            return
        name, map_ids = bpfsys.prog_name_and_maps(state[0])
        if name != PROG_NAME:
            return
        for map_id in map_ids:
            fd = bpfsys.map_fd_by_id(map_id)
            try:
                info = bpfsys.map_info_fd(fd)
                if info.name in PINNED_MAPS and not (self.pin_path / info.name).exists():
                    bpfsys.obj_pin(fd, str(self.pin_path / info.name))
            finally:
                os.close(fd)

    def table(self, name: str):  # noqa: ANN201 - a bcc table
        if self.bpf is None:
            raise DataPlaneError("the data plane is not loaded")
        return self.bpf[name.encode()]

    # ---- attaching -----------------------------------------------------------------------

    def attach(self, ifaces: Iterable[str], mode: str = "auto") -> dict[str, str]:
        """Attach to each interface; replace our own program in the mode in use, atomically."""
        from bcc import BPF

        for iface in ifaces:
            try:
                socket.if_nametoindex(iface)
            except OSError:
                raise DataPlaneError(f"interface {iface!r} does not exist") from None
            state = xdp_state(iface)
            modes: list[str]
            if state is not None and state[0]:
                name, _ = bpfsys.prog_name_and_maps(state[0])
                if name != PROG_NAME:
                    raise DataPlaneError(
                        f"interface {iface} already runs XDP program {name!r} (id {state[0]}); "
                        "dynscreen will not replace another program"
                    )
                modes = [state[1]]
            elif mode == "auto":
                modes = ["native", "generic"]
            else:
                modes = [mode]
            errors = []
            for m in modes:
                with _stderr_captured() as log:
                    try:
                        BPF.attach_xdp(iface.encode(), self._fn, _MODE_FLAGS[m])
                    except Exception as e:
                        errors.append(f"{m}: {e} {_tail(log, 3)}".strip())
                        continue
                self.attached[iface] = m
                break
            else:
                raise DataPlaneError(f"cannot attach XDP to {iface}: " + "; ".join(errors))
        if not self.filter_armed:
            time.sleep(FILTER_GRACE_SECONDS)  # the program replaced may still be finishing
            self.arm_filter()
        return dict(self.attached)

    def detach(self, ifaces: Iterable[str] | None = None, *, unpin: bool = False) -> None:
        """Remove the XDP program (ours only) and, with unpin, the pinned maps."""
        from bcc import BPF

        targets = list(ifaces) if ifaces is not None else list(self.attached)
        for iface in targets:
            state = xdp_state(iface)
            if state is None or not state[0]:
                self.attached.pop(iface, None)
                continue
            name, _ = bpfsys.prog_name_and_maps(state[0])
            if name != PROG_NAME:
                continue
            with _stderr_captured():
                BPF.remove_xdp(iface.encode(), _MODE_FLAGS.get(state[1], 0))
            self.attached.pop(iface, None)
        if unpin and self.pin_path is not None:
            remove_pins(self.pin_path)

    def close(self) -> None:
        """Release the programs (the attached XDP program stays: the kernel holds it)."""
        if self._handshake_link >= 0:
            os.close(self._handshake_link)
            self._handshake_link = -1
        if self.bpf is not None:
            with _stderr_captured():
                self.bpf.cleanup()
            self.bpf = None

    # ---- configuration -------------------------------------------------------------------

    def configure(
        self,
        *,
        enabled: bool = True,
        monitor: bool = False,
        close_session: bool = True,
        ports: Iterable[int] = (25, 465, 587, 110, 995, 143, 993),
        connections: int = 60,
        connections_minutes: float = 1,
        simultaneous: int = 20,
        syn_per_second: int = 50,
        block_minutes: float = 10,
        heartbeat_timeout: float | None = HEARTBEAT_TIMEOUT_SECONDS,
        local_addrs: Iterable[IPv4Address | IPv6Address] | None = None,
    ) -> None:
        """Push the screening settings into the kernel (ports, limits, flags)."""
        self.set_ports(ports)
        cfg = abi.Config()
        cfg.flags = (abi.F_ENABLED if enabled else 0) | (abi.F_MONITOR if monitor else 0) | (
            abi.F_CLOSE_SESSION if close_session else 0)
        cfg.conn_limit = connections
        cfg.conn_window_ns = int(connections_minutes * 60e9)
        cfg.simul_limit = simultaneous
        cfg.syn_per_sec = syn_per_second
        cfg.block_ns = int(block_minutes * 60e9)
        cfg.heartbeat_timeout_ns = int(heartbeat_timeout * 1e9) if heartbeat_timeout else 0
        for i, w in enumerate(abi.v6_mask(self.ipv6_prefix)):
            cfg.v6mask[i] = w
        cfg.ipv6_prefix = self.ipv6_prefix
        cfg.cidr_blocks = sum(1 for _ in self.table("cidr_blocks"))
        cfg.jiffy_ns, cfg.jiffies_base_ns = self.clock
        if self._whitelist_has_v6():
            cfg.flags |= abi.F_WHITELIST_V6
        if self.filter_armed:
            cfg.flags |= abi.F_FILTER
        with self._config_lock:
            cfg.block_gen = self._block_gen() + 1
            self._write("config", 0, cfg)
        if local_addrs is not None:
            self.set_local_addrs(local_addrs)

    def configure_from(self, config, local_addrs=None) -> None:  # noqa: ANN001
        """configure() from a dynscreen.control.config.Config."""
        s = config.screening
        lim = s.limits
        self.configure(
            enabled=s.enabled, monitor=s.mode == "monitor", close_session=s.close_session,
            ports=s.ports, connections=lim.connections,
            connections_minutes=lim.connections_minutes, simultaneous=lim.simultaneous,
            syn_per_second=lim.syn_per_second, block_minutes=s.block_minutes,
            local_addrs=local_addrs,
        )

    def _write(self, name: str, index: int, value: ctypes.Structure) -> None:
        t = self.table(name)
        t[t.Key(index)] = t.Leaf.from_buffer_copy(bytes(value))

    def read_config(self) -> abi.Config:
        t = self.table("config")
        return abi.Config.from_buffer_copy(bytes(t[t.Key(0)]))

    def set_ports(self, ports: Iterable[int]) -> None:
        words = [0] * 1024
        plist = frozenset(ports)
        for p in plist:
            if not 0 < p < 65536:
                raise DataPlaneError(f"port {p} is out of range")
            words[p >> 6] |= 1 << (p & 63)
        old = self._bitmap_words()
        t = self.table("ports")
        for i, w in enumerate(words):
            if old[i] != w:
                t[t.Key(i)] = t.Leaf(w)
        self._ports = plist

    def _bitmap_words(self) -> list[int]:
        t = self.table("ports")
        return [t[t.Key(i)].value for i in range(1024)]

    def screened_ports(self) -> frozenset[int]:
        words = self._bitmap_words()
        return frozenset(i * 64 + b for i, w in enumerate(words) if w for b in range(64)
                         if w >> b & 1)

    def set_local_addrs(self, addrs: Iterable[IPv4Address | IPv6Address]) -> None:
        """The local addresses whose server sockets the tracepoint counts."""
        self._sync_set("local_addrs", {bytes(abi.key_for(a)) for a in addrs})

    def _sync_set(self, name: str, want: set[bytes]) -> tuple[int, int]:
        """Make a map used as a set hold exactly these raw keys: (added, removed)."""
        t = self.table(name)
        have = {bytes(k) for k in t}
        for raw in have - want:
            del t[t.Key.from_buffer_copy(raw)]
        for raw in want - have:
            t[t.Key.from_buffer_copy(raw)] = t.Leaf(1)
        return len(want - have), len(have - want)

    def heartbeat(self) -> None:
        """Stamp the heartbeat; while it is fresh the kernel applies the live limits."""
        t = self.table("heartbeat")
        t[t.Key(0)] = t.Leaf(mono_ns())

    def heartbeat_stamper(self) -> Callable[[], None]:
        """A heartbeat stamp another thread may call: the map handle is looked up here, once;
        each stamp is then one map update (a syscall through ctypes, GIL released), which
        is safe beside the loop's own calls. Valid until close()."""
        t = self.table("heartbeat")
        key, leaf = t.Key(0), t.Leaf

        def stamp() -> None:
            t[key] = leaf(mono_ns())
        return stamp

    # ---- the block filter ----------------------------------------------------------------

    def _filter_sharers(self) -> list[int]:
        """Programs other than ours that use our block table (an older program still
        attached to another interface): they add blocks without our filter's bits."""
        blocks_id = bpfsys.map_info_fd(self.table("blocks").map_fd).id
        filter_id = bpfsys.map_info_fd(self.table("block_filter").map_fd).id
        out = []
        for pid in bpfsys.prog_ids():
            try:
                _, maps = bpfsys.prog_name_and_maps(pid)
            except bpfsys.BpfError:
                continue  # unloaded meanwhile
            if blocks_id in maps and filter_id not in maps:
                out.append(pid)
        return out

    def filter_mark(self, raw_keys: Iterable[bytes]) -> None:
        """Set the control plane's filter bits of these raw keys: owed by every writer of the
        block table, before the entries are written (add_blocks does it)."""
        f, bits, changed = self._filter, self.filter_bits, set()
        for raw in raw_keys:
            slot = abi.filter_slot(raw, bits)
            w, bit = slot >> 6, 1 << (slot & 63)
            if not f[w] & bit:
                f[w] |= bit
                changed.add(w)
        self._filter_write(sorted(changed))

    def _filter_write(self, words: list[int]) -> None:
        if not words:
            return
        fd = self.table("block_filter").map_fd
        bpfsys.map_update_batch(fd, struct.pack(f"={len(words)}I", *words),
                                struct.pack(f"={len(words)}Q", *(self._filter[w] for w in words)),
                                len(words))

    def arm_filter(self) -> bool:
        """Rebuild the control plane's half of the block filter from the table and let the
        program trust it (skip the hash lookup for a source whose bit is clear). Refused
        (False) while another program uses the table: its blocks would lack their bits."""
        if self.filter_armed:
            return True
        if self._filter_sharers():
            return False
        fd = self.table("blocks").map_fd
        ksize, vsize = ctypes.sizeof(abi.Key), ctypes.sizeof(abi.Block)
        f = array("Q", bytes(len(self._filter) * 8))
        bits, fs = self.filter_bits, abi.filter_slot
        for chunk in bpfsys.map_walk(fd, ksize, vsize):
            keys = chunk.keys
            for i in range(0, len(keys), ksize):
                slot = fs(keys[i:i + ksize], bits)
                f[slot >> 6] |= 1 << (slot & 63)
        self._filter = f
        self._filter_write(list(range(len(f))))
        self._config_flag(abi.F_FILTER, True)
        self.filter_armed = True
        return True

    def _config_flag(self, flag: int, on: bool) -> None:
        """Set or clear one config flag in place: the flags lead every layout of the config
        (a pin of an older, shorter one may be adopted before configure() replaces it)."""
        with self._config_lock:
            t = self.table("config")
            raw = bytearray(bytes(t[t.Key(0)]))
            flags = int.from_bytes(raw[:4], sys.byteorder)
            want = flags | flag if on else flags & ~flag
            if want != flags:
                raw[:4] = want.to_bytes(4, sys.byteorder)
                t[t.Key(0)] = t.Leaf.from_buffer_copy(bytes(raw))

    def _block_gen(self) -> int:
        t = self.table("config")
        raw = bytes(t[t.Key(0)])
        if len(raw) < ctypes.sizeof(abi.Config):  # an older layout, replaced by configure()
            return 0
        return abi.Config.from_buffer_copy(raw).block_gen

    def blocks_changed(self) -> None:
        """Raise config.block_gen: owed by every writer of the block table after it removes
        or rewrites an entry, so that no CPU's blocked-source cache keeps dropping a source
        on what the table said before (dynscreen.h)."""
        with self._config_lock:
            t = self.table("config")
            raw = bytes(t[t.Key(0)])
            if len(raw) < ctypes.sizeof(abi.Config):
                return  # an older layout: no cache reads it
            cfg = abi.Config.from_buffer_copy(raw)
            cfg.block_gen += 1
            t[t.Key(0)] = t.Leaf.from_buffer_copy(bytes(cfg))

    def cached_drops(self) -> dict[bytes, int]:
        """Drops the blocked-source caches hold and have not yet added to the block entries,
        by raw 16-byte key, summed over the CPUs: the readers of drops add them. As the
        kernel hands them over: only to the block they were counted on (its expiry
        unchanged), never to one removed and made again."""
        t = self.table("bcache")
        held: dict[tuple[bytes, int], int] = {}
        ranged: dict[tuple[bytes, int], int] = {}
        for i in range(abi.BCACHE_SLOTS):
            for leaf in t[t.Key(i)]:
                e = abi.BCache.from_buffer_copy(bytes(leaf))
                if e.gen and e.drops:
                    into = ranged if e.plen else held
                    k = (bytes(e.addr), e.expires)
                    into[k] = into.get(k, 0) + e.drops
        out: dict[bytes, int] = {}
        blocks = self.table("blocks")
        for (raw, expires), n in held.items():
            try:
                b = abi.Block.from_buffer_copy(bytes(blocks[blocks.Key.from_buffer_copy(raw)]))
            except KeyError:
                continue
            if b.expires == expires:
                out[raw] = out.get(raw, 0) + n
        if ranged:
            self._range_cached_drops(ranged, out)
        return out

    def _range_cached_drops(self, ranged: dict[tuple[bytes, int], int],
                            out: dict[bytes, int]) -> None:
        """Range entries' drops (by full address) go, as the kernel hands them over, to the
        range the trie matches for the address (the longest), if its expiry is the one
        copied; keyed in out by the range's 20-byte trie key."""
        ranges: dict[tuple[int, int], tuple[bytes, int]] = {}
        for k, v in self.table("cidr_blocks").items():
            lk = abi.LpmKey.from_buffer_copy(bytes(k))
            addr = int.from_bytes(bytes(lk.addr), "big")
            ranges[(lk.prefixlen, addr)] = (bytes(k), abi.Block.from_buffer_copy(bytes(v)).expires)
        plens = sorted({p for p, _ in ranges}, reverse=True)
        full = (1 << 128) - 1
        for (raw, expires), n in ranged.items():
            addr = int.from_bytes(raw, "big")
            for p in plens:
                hit = ranges.get((p, addr & (full ^ (full >> p))))
                if hit is not None:
                    if hit[1] == expires:
                        out[hit[0]] = out.get(hit[0], 0) + n
                    break

    # ---- blocks --------------------------------------------------------------------------

    def _is_source(self, net: Network) -> bool:
        if isinstance(net, IPv4Network):
            return net.prefixlen == 32
        return net.prefixlen == self.ipv6_prefix

    def _block_leaf(self, t, until: float, reason: str, origin: str, drops: int = 0):  # noqa: ANN001,ANN202
        b = abi.Block()
        b.expires = to_mono(until)
        b.reason = abi.REASON_IDS[reason]
        b.origin = abi.ORIGIN_IDS[origin]
        b.drops = drops
        return t.Leaf.from_buffer_copy(bytes(b))

    def add_block(self, net: Network, until: float, reason: str, origin: str) -> None:
        """Block a source (hash) or a range (LPM trie) until a Unix time."""
        self.add_blocks([(net, until, reason, origin)])

    def add_blocks(self, blocks: Iterable[tuple[Network, float, str, str]]) -> None:
        """Bulk form of add_block: one batched update for the hash entries."""
        hashed, ranged = [], []
        for net, until, reason, origin in blocks:
            (hashed if self._is_source(net) else ranged).append((net, until, reason, origin))
        t = self.table("blocks")
        if hashed:
            keys = (t.Key * len(hashed))()
            leaves = (t.Leaf * len(hashed))()
            raw = [bytes(abi.key_for(net)) for net, *_ in hashed]
            for i, (_net, until, reason, origin) in enumerate(hashed):
                keys[i] = t.Key.from_buffer_copy(raw[i])
                leaves[i] = self._block_leaf(t, until, reason, origin)
            self.filter_mark(raw)  # the bits before the entries: never a clear bit for one
            try:
                if len(hashed) > 1:
                    t.items_update_batch(keys, leaves)
                else:
                    t[keys[0]] = leaves[0]
            except Exception as e:
                if len(t) >= self.max_blocks:
                    raise BlockTableFull(
                        f"the block table is full ({self.max_blocks} entries, max_blocks): "
                        f"block of {hashed[0][0]} refused"
                    ) from None
                raise DataPlaneError(f"cannot add block: {e}") from None
            self.blocks_changed()  # an existing entry may have been rewritten
            for net, *_ in hashed:
                self.reset_source(net)
        if ranged:
            c = self.table("cidr_blocks")
            for net, until, reason, origin in ranged:
                try:
                    c[c.Key.from_buffer_copy(bytes(abi.lpm_key_for(net)))] = self._block_leaf(
                        c, until, reason, origin)
                except Exception as e:
                    raise DataPlaneError(f"cannot add range block {net}: {e}") from None
            self._sync_cidr_count()

    def remove_block(self, net: Network) -> bool:
        """Remove a block; the source starts afresh. False when there was none."""
        if self._is_source(net):
            t = self.table("blocks")
            k = t.Key.from_buffer_copy(bytes(abi.key_for(net)))
            try:
                del t[k]
            except KeyError:
                return False
            self.blocks_changed()
            self.reset_source(net)
            return True
        c = self.table("cidr_blocks")
        try:
            del c[c.Key.from_buffer_copy(bytes(abi.lpm_key_for(net)))]
        except KeyError:
            return False
        self._sync_cidr_count()
        return True

    def block_drops(self, nets: Iterable[Network]) -> dict[Network, int]:
        """The kernel's drop counts of these blocks, one lookup each: `status` shows its few
        blocks' counts as of now, not as of the last periodic walk."""
        out: dict[Network, int] = {}
        pending: dict[bytes, int] | None = None
        for net in nets:
            if self._is_source(net):
                t = self.table("blocks")
                raw = bytes(abi.key_for(net))
                if pending is None:
                    pending = self.cached_drops()
            else:
                t = self.table("cidr_blocks")
                raw = bytes(abi.lpm_key_for(net))
            try:
                out[net] = abi.Block.from_buffer_copy(bytes(t[t.Key.from_buffer_copy(raw)])).drops
            except KeyError:
                continue
            if not self._is_source(net) and pending is None:
                pending = self.cached_drops()
            out[net] += (pending or {}).get(raw, 0)
        return out

    def _sync_cidr_count(self) -> None:
        with self._config_lock:
            cfg = self.read_config()
            cfg.cidr_blocks = sum(1 for _ in self.table("cidr_blocks"))
            # Every writer of the trie calls this after its change: the blocked-source
            # caches must not keep dropping on a range removed or rewritten.
            cfg.block_gen += 1
            self._write("config", 0, cfg)

    def reset_source(self, net: Network) -> None:
        """Forget a source's rate and SYN state (its established count stays true)."""
        t = self.table("track")
        k = t.Key.from_buffer_copy(bytes(abi.key_for(net)))
        try:
            v = abi.Track.from_buffer_copy(bytes(t[k]))
        except KeyError:
            return
        v.cur = v.prev = v.syn = 0
        v.win_start = mono_ns()
        t[k] = t.Leaf.from_buffer_copy(bytes(v))

    def list_blocks(self, *, include_expired: bool = False) -> list[KernelBlock]:
        now = mono_ns()
        out = []
        pending = self.cached_drops()
        for name, cidr in (("blocks", False), ("cidr_blocks", True)):
            for k, v in self.table(name).items():
                b = abi.Block.from_buffer_copy(bytes(v))
                if not include_expired and b.expires <= now:
                    continue
                if cidr:
                    net = abi.network_of_lpm(abi.LpmKey.from_buffer_copy(bytes(k)))
                else:
                    net = abi.source_of_key(abi.Key.from_buffer_copy(bytes(k)), self.ipv6_prefix)
                b.drops += pending.get(bytes(k), 0)  # what the caches have not handed over
                out.append(KernelBlock(net, to_unix(b.expires), abi.REASONS.get(b.reason, "?"),
                                       abi.ORIGINS.get(b.origin, "?"), b.drops, cidr))
        return out

    def sweep_expired(self) -> list[KernelBlock]:
        """Delete expired entries (the kernel already ignores them) and return them."""
        gone = [b for b in self.list_blocks(include_expired=True) if b.expires <= time.time()]
        for b in gone:
            self.remove_block(b.source)
        return gone

    # ---- whitelist, exemptions -----------------------------------------------------------

    def sync_whitelist(self, nets: Iterable[Network]) -> tuple[int, int]:
        """Make the whitelist trie equal the given set: (added, removed)."""
        changed = self._sync_set("whitelist", {bytes(abi.lpm_key_for(n)) for n in nets})
        cfg = self.read_config()
        flags = cfg.flags & ~abi.F_WHITELIST_V6
        if self._whitelist_has_v6():
            flags |= abi.F_WHITELIST_V6
        if flags != cfg.flags:
            cfg.flags = flags
            self._write("config", 0, cfg)
        return changed

    def _whitelist_has_v6(self) -> bool:
        """Whether a hit on an IPv6 prefix block must ask the whitelist (F_WHITELIST_V6).

        ::1 does not count: the kernel drops a packet from a loopback source arriving on
        any other interface before it could open a session, so XDP's answer for it does not
        matter, and leaving it out keeps the default whitelist from costing every IPv6
        drop a trie lookup."""
        for k in self.table("whitelist"):
            net = abi.network_of_lpm(abi.LpmKey.from_buffer_copy(bytes(k)))
            if isinstance(net, IPv6Network) and net != IPv6Network("::1/128"):
                return True
        return False

    def whitelist(self) -> list[Network]:
        return [abi.network_of_lpm(abi.LpmKey.from_buffer_copy(bytes(k)))
                for k in self.table("whitelist")]

    def exempt(self, source: Network, until: float) -> None:
        """No rate or concurrency block for this source until a Unix time."""
        t = self.table("exempt")
        t[t.Key.from_buffer_copy(bytes(abi.key_for(source)))] = t.Leaf(to_mono(until))

    def sweep_exempt(self) -> int:
        t = self.table("exempt")
        now = mono_ns()
        old = [k for k, v in t.items() if v.value <= now]
        for k in old:
            del t[k]
        return len(old)

    # ---- reading -------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The kernel's counters, and (abi.PROGRAM_SKIPS + program) how often the kernel skipped
        each of this plane's programs instead of running it."""
        t = self.table("counters")
        out = {}
        for i, name in enumerate(abi.COUNTERS):
            out[name] = int(sum(t.getvalue(t.Key(i))))
        for program, n in self.program_skips().items():
            out[abi.PROGRAM_SKIPS + program] = n
        return out

    def program_skips(self) -> dict[str, int]:
        """By program: the runs the kernel skipped (bpf_prog_info.recursion_misses). Only a
        tracing program is ever skipped (the socket tracepoint, on a CPU where another
        tracing program runs or a bpf() map call paused them): with no sock_ops program,
        each skip is a handshake or an end left uncounted."""
        out: dict[str, int] = {}
        funcs = getattr(self.bpf, "funcs", None) or {}
        for raw, fn in list(funcs.items()):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            label = SKIPPABLE_PROGRAMS.get(name)
            if label is not None:
                with contextlib.suppress(OSError):
                    out[label] = bpfsys.prog_recursion_misses_fd(fn.fd)
        return out

    def sources(self) -> list[SourceState]:
        """Live per-source state (the busiest first) for `dynscreen top`."""
        now = mono_ns()
        out = []
        for k, v in self.table("track").items():
            tr = abi.Track.from_buffer_copy(bytes(v))
            w = self.read_config().conn_window_ns or 1
            e = now - tr.win_start
            if e >= 2 * w:
                rate = 0
            elif e >= w:
                rate = tr.cur * (2 * w - e) // w
            else:
                rate = tr.prev * (w - e) // w + tr.cur if e >= 0 else tr.cur
            syn = tr.syn & abi.SYN_COUNT if now - tr.syn_start < 1_000_000_000 else 0
            net = abi.source_of_key(abi.Key.from_buffer_copy(bytes(k)), self.ipv6_prefix)
            out.append(SourceState(net, max(tr.established, 0), rate, syn))
        out.sort(key=lambda s: (s.rate, s.established), reverse=True)
        return out

    def set_established(self, counts: dict[Network, int]) -> None:
        """Seed established counts (from inet_diag); sources not listed get 0."""
        t = self.table("track")
        want = {bytes(abi.key_for(n)): c for n, c in counts.items()}
        now = mono_ns()
        for k, v in list(t.items()):
            raw = bytes(k)
            tr = abi.Track.from_buffer_copy(bytes(v))
            c = want.pop(raw, 0)
            if tr.established != c:
                tr.established = c
                t[k] = t.Leaf.from_buffer_copy(bytes(tr))
        for raw, c in want.items():
            tr = abi.Track()
            tr.win_start = tr.syn_start = now
            tr.established = c
            t[t.Key.from_buffer_copy(raw)] = t.Leaf.from_buffer_copy(bytes(tr))

    def established(self) -> dict[Network, int]:
        out = {}
        for k, v in self.table("track").items():
            tr = abi.Track.from_buffer_copy(bytes(v))
            if tr.established > 0:
                out[abi.source_of_key(abi.Key.from_buffer_copy(bytes(k)),
                                      self.ipv6_prefix)] = tr.established
        return out

    def _on_event(self, _ctx, data, size) -> int:  # noqa: ANN001
        ev = abi.Event.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(abi.Event)))
        self._events.append(KernelEvent(
            source=abi.source_of_key(abi.Key.from_buffer_copy(bytes(ev.addr)), self.ipv6_prefix),
            expires=None if ev.flags & abi.EV_TABLE_FULL else to_unix(ev.expires),
            reason=abi.REASONS.get(ev.reason, "?"),
            count=ev.count,
            monitor=bool(ev.flags & abi.EV_MONITOR),
            table_full=bool(ev.flags & abi.EV_TABLE_FULL),
            tracepoint=bool(ev.flags & abi.EV_TRACEPOINT),
        ))
        # Negative stops libbpf's consumption after this record: the rest waits in the ring
        # for the next poll, so one poll in a flood is a bounded piece of the loop's time.
        return -1 if len(self._events) >= EVENTS_PER_POLL else 0

    def poll_events(self, timeout_ms: int = 0) -> list[KernelEvent]:
        """Kernel-made blocks since the last call (waits up to timeout_ms for the first), at
        most EVENTS_PER_POLL: a full answer means more are waiting."""
        if not self._ring_open:
            self.table("events").open_ring_buffer(self._on_event)
            self._ring_open = True
        self.bpf.ring_buffer_poll(timeout_ms)
        out, self._events = self._events, []
        return out


def remove_pins(pin_path: Path) -> None:
    """Unpin every map of ours (the kernel frees them once no program uses them)."""
    if not pin_path.exists():
        return
    for name in PINNED_MAPS:
        with contextlib.suppress(FileNotFoundError):
            (pin_path / name).unlink()
    with contextlib.suppress(OSError):
        pin_path.rmdir()
