"""ctypes mirror of bpf/dynscreen.h (tests/test_abi.py checks they agree).

Also the conversions between Python's ipaddress objects and the kernel's
16-byte source keys (IPv4 as ::ffff:a.b.c.d, IPv6 masked to the prefix).
"""

from __future__ import annotations

import ctypes
import ipaddress
import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

REASONS = {
    1: "connections",
    2: "simultaneous",
    3: "auth_failures",
    4: "failed_rcpts",
    5: "rsets",
    6: "manual",
    7: "spray",
    8: "prefix",
}
REASON_IDS = {v: k for k, v in REASONS.items()}
ORIGINS = {1: "kernel", 2: "logs", 3: "manual", 4: "file"}
ORIGIN_IDS = {v: k for k, v in ORIGINS.items()}

F_ENABLED = 1 << 0
F_MONITOR = 1 << 1
F_CLOSE_SESSION = 1 << 2
F_WHITELIST_V6 = 1 << 3
F_FILTER = 1 << 4

# DataPlane.counters() keys of the kernel's per-program skip counts (recursion_misses):
# this prefix + the program's label (not a kernel counter: read from bpf_prog_info).
PROGRAM_SKIPS = "program_skips_"
BCACHE_SLOTS = 256  # the blocked-source cache's entries per CPU (dynscreen.h)
BCACHE_FLUSH = 64   # drops an entry holds before adding them to the block's entry
FILTER_MULT = 0x9E3779B1  # ds_filter_slot's multiplier (the block filter, dynscreen.h)

SYN_ASKED = 1 << 31
SYN_SPARED = 1 << 30
SYN_COUNT = SYN_SPARED - 1

EV_MONITOR = 1 << 0
EV_TABLE_FULL = 1 << 1
EV_TRACEPOINT = 1 << 2

COUNTERS = (
    "passed",
    "drop_blocked",
    "drop_session",
    "drop_syn_cap",
    "drop_rate",
    "drop_simultaneous",
    "monitor_pass",
    "parse_fail",
    "blocks_made",
    "table_full",
    "events_lost",
    "paused",
    "whitelist_pass",
    "exempt_pass",
    "tp_opened",
    "tp_closed",
    "fragment",
    "drop_fragment",
    "track_fail",
)
NCOUNTERS = len(COUNTERS)

_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_WORDS = struct.Struct("=4I")


class Key(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint32 * 4)]


class LpmKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint32 * 4)]


class Block(ctypes.Structure):
    _fields_ = [
        ("expires", ctypes.c_uint64),
        ("drops", ctypes.c_uint64),
        ("reason", ctypes.c_uint32),
        ("origin", ctypes.c_uint32),
    ]


class Track(ctypes.Structure):
    _fields_ = [
        ("win_start", ctypes.c_uint64),
        ("syn_start", ctypes.c_uint64),
        ("cur", ctypes.c_uint32),
        ("prev", ctypes.c_uint32),
        ("syn", ctypes.c_uint32),
        ("established", ctypes.c_int32),
    ]


class Config(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("conn_limit", ctypes.c_uint32),
        ("conn_window_ns", ctypes.c_uint64),
        ("simul_limit", ctypes.c_uint32),
        ("syn_per_sec", ctypes.c_uint32),
        ("block_ns", ctypes.c_uint64),
        ("heartbeat_timeout_ns", ctypes.c_uint64),
        ("v6mask", ctypes.c_uint32 * 4),
        ("cidr_blocks", ctypes.c_uint32),
        ("ipv6_prefix", ctypes.c_uint32),
        ("jiffy_ns", ctypes.c_uint64),
        ("jiffies_base_ns", ctypes.c_uint64),
        ("block_gen", ctypes.c_uint64),
    ]


class Event(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint32 * 4),
        ("expires", ctypes.c_uint64),
        ("reason", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("count", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class BCache(ctypes.Structure):
    """One entry of the per-CPU blocked-source cache (ds_bcache)."""

    _fields_ = [
        ("addr", ctypes.c_uint32 * 4),
        ("expires", ctypes.c_uint64),
        ("gen", ctypes.c_uint64),
        ("drops", ctypes.c_uint64),
        ("plen", ctypes.c_uint32),  # 0: a block-table entry; 128: a range block's (full address)
        ("pad", ctypes.c_uint32),
    ]


STRUCTS: dict[str, type[ctypes.Structure]] = {
    "ds_key": Key,
    "ds_lpm_key": LpmKey,
    "ds_block": Block,
    "ds_track": Track,
    "ds_config": Config,
    "ds_event": Event,
    "ds_bcache": BCache,
}


def _addr16(addr: IPv4Address | IPv6Address) -> bytes:
    if isinstance(addr, IPv4Address):
        return _MAPPED_PREFIX + addr.packed
    return addr.packed


def _fill(addr_field: ctypes.Array, raw: bytes) -> None:
    ctypes.memmove(addr_field, raw, 16)


def key_for(net: IPv4Network | IPv6Network | IPv4Address | IPv6Address) -> Key:
    """The block-table key of a source (an IPv4 address or an IPv6 prefix network)."""
    addr = net.network_address if isinstance(net, IPv4Network | IPv6Network) else net
    k = Key()
    _fill(k.addr, _addr16(addr))
    return k


def lpm_key_for(net: IPv4Network | IPv6Network) -> LpmKey:
    """The LPM-trie key of a range: IPv4 ranges live under ::ffff:0:0/96."""
    k = LpmKey()
    if isinstance(net, IPv4Network):
        k.prefixlen = 96 + net.prefixlen
    else:
        k.prefixlen = net.prefixlen
    _fill(k.addr, _addr16(net.network_address))
    return k


def _addr_of(raw: bytes) -> IPv4Address | IPv6Address:
    if raw[:12] == _MAPPED_PREFIX:
        return IPv4Address(raw[12:])
    return IPv6Address(raw)


def source_of_key(k: Key, ipv6_prefix: int) -> IPv4Network | IPv6Network:
    """Inverse of key_for: IPv4 keys as /32, IPv6 keys as their prefix network."""
    addr = _addr_of(bytes(k.addr))
    if isinstance(addr, IPv4Address):
        return IPv4Network(addr)
    return IPv6Network((addr, ipv6_prefix), strict=False)


def network_of_lpm(k: LpmKey) -> IPv4Network | IPv6Network:
    """Inverse of lpm_key_for."""
    addr = _addr_of(bytes(k.addr))
    if isinstance(addr, IPv4Address):
        return IPv4Network((addr, k.prefixlen - 96))
    return IPv6Network((addr, k.prefixlen))


def filter_slot(raw_key: bytes, bits: int) -> int:
    """ds_filter_slot: the block-filter bit (of 2^bits) of a 16-byte key as stored."""
    a, b, c, d = _WORDS.unpack(raw_key)
    return ((a ^ b ^ c ^ d) * FILTER_MULT & 0xFFFFFFFF) >> (32 - bits)


def v6_mask(prefix: int) -> tuple[int, int, int, int]:
    """The IPv6 prefix mask as four 32-bit words in network byte order, as stored."""
    mask = ipaddress.IPv6Network(("::", prefix)).netmask.packed
    return tuple(int.from_bytes(mask[i : i + 4], "little") for i in range(0, 16, 4))  # type: ignore[return-value]
