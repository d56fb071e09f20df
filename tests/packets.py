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


# ---- added for tests/test_xdp.py ------------------------------------------------------------

ETH_ARP = 0x0806
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
NEXTHDR_HOP = 0
NEXTHDR_ROUTING = 43
NEXTHDR_FRAGMENT = 44
NEXTHDR_DEST = 60
MF = 0x2000  # IPv4 "more fragments" flag (in the frag argument of ipv4())


def udp(sport: int = 40000, dport: int = 25, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp_echo(payload: bytes = b"ping") -> bytes:
    """ICMP (or ICMPv6: same layout) echo request, checksum left zero."""
    return struct.pack("!BBHHH", 8, 0, 0, 1, 1) + payload


def arp_request(sender: str = "192.0.2.7", target: str = "192.0.2.1") -> bytes:
    """A whole Ethernet ARP request frame."""
    body = struct.pack("!HHBBH6s4s6s4s", 1, ETH_IP, 6, 4, 1, b"\x02\x00\x00\x00\x00\x02",
                       ipaddress.IPv4Address(sender).packed, bytes(6),
                       ipaddress.IPv4Address(target).packed)
    return eth(ETH_ARP, body)


def with_ihl(frame: bytes, ihl: int, l3: int = 14) -> bytes:
    """The frame with the IPv4 header's IHL field (at offset l3) overwritten."""
    b = bytearray(frame)
    b[l3] = (b[l3] & 0xF0) | (ihl & 0x0F)
    return bytes(b)


def v4_frame(src: str, l4: bytes, proto: int = PROTO_TCP, options: bytes = b"", frag: int = 0,
             vlans: tuple[int, ...] = ()) -> bytes:
    return eth(ETH_IP, ipv4(src, proto=proto, payload=l4, options=options, frag=frag),
               vlans=vlans)


def v6_ext_frame(src: str, exts: tuple[int | tuple[int, int], ...] = (),
                 l4: bytes | None = None, l4_proto: int = PROTO_TCP, frag_offset: int = 0,
                 more: bool = False, vlans: tuple[int, ...] = ()) -> bytes:
    """IPv6 behind a chain of extension headers, then l4 (a TCP SYN to port 25 by default).

    exts holds NEXTHDR_HOP / NEXTHDR_ROUTING / NEXTHDR_DEST (or (type, length8) to size one)
    and NEXTHDR_FRAGMENT (offset/more from frag_offset/more).
    """
    if l4 is None:
        l4 = tcp()
    items = [(e, 0) if isinstance(e, int) else e for e in exts]
    types = [t for t, _ in items] + [l4_proto]
    body = b""
    for (t, length8), nxt in zip(items, types[1:], strict=True):
        if t == NEXTHDR_FRAGMENT:
            body += frag_hdr(nxt, frag_offset, more)
        else:
            body += ext(nxt, length8)
    first = types[0]
    return eth(ETH_IPV6, ipv6(src, nexthdr=first, payload=body + l4), vlans=vlans)
