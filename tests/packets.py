"""Crafted frames for BPF_PROG_TEST_RUN: Ethernet (+VLAN), IPv4 (+options), IPv6 (+ext), TCP."""

from __future__ import annotations

import ipaddress
import struct

SYN = 0x02
ACK = 0x10
FIN = 0x01
RST = 0x04
PSH = 0x08

ETH_IP = 0x0800
ETH_IPV6 = 0x86DD
VLAN = 0x8100
QINQ = 0x88A8


def tcp(sport: int = 40000, dport: int = 25, flags: int = SYN, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload


def ipv4(src: str, dst: str = "192.0.2.1", proto: int = 6, payload: bytes = b"",
         options: bytes = b"", frag: int = 0) -> bytes:
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, 0, total, 1, frag, 64, proto, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return hdr + options + payload


def ipv6(src: str, dst: str = "2001:db8::1", nexthdr: int = 6, payload: bytes = b"") -> bytes:
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(payload), nexthdr, 64,
                      ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return hdr + payload


def ext(nexthdr: int, length8: int = 0) -> bytes:
    """A hop-by-hop / routing / destination-options header of (length8 + 1) * 8 bytes."""
    body = bytes((length8 + 1) * 8 - 2)
    return struct.pack("!BB", nexthdr, length8) + body


def frag_hdr(nexthdr: int, offset: int = 0, more: bool = False) -> bytes:
    return struct.pack("!BBHI", nexthdr, 0, (offset << 3) | int(more), 7)


def eth(ethertype: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    head = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02"
    tags = b""
    types = [QINQ if len(vlans) == 2 else VLAN, VLAN][: len(vlans)]
    for tpid, vid in zip(types, vlans, strict=True):
        tags += struct.pack("!H", tpid) + struct.pack("!H", vid)
    return head + tags + struct.pack("!H", ethertype) + payload


def v4_syn(src: str, dport: int = 25, flags: int = SYN, **kw: object) -> bytes:
    return eth(ETH_IP, ipv4(src, payload=tcp(dport=dport, flags=flags)), **kw)  # type: ignore[arg-type]


def v6_syn(src: str, dport: int = 25, flags: int = SYN, **kw: object) -> bytes:
    return eth(ETH_IPV6, ipv6(src, payload=tcp(dport=dport, flags=flags)), **kw)  # type: ignore[arg-type]
