"""Addresses as dynscreen keys them: IPv4 as itself, IPv6 per prefix.

One place decides what "the same source" means, so the kernel, the engine,
the block file and the CLI agree: an IPv4-mapped IPv6 address
(``::ffff:192.0.2.1``, what a dual-stack listener reports) is the IPv4
address, and an IPv6 address stands for its ``/prefix`` network.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


def parse_address(text: str) -> Address:
    """Parse an address as a log writes it: brackets, ``%zone`` and mapped forms allowed."""
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    if s.lower().startswith("ipv6:"):  # Postfix writes [IPv6:2001:db8::1] in some places
        s = s[5:]
    s = s.split("%", 1)[0]
    addr = ipaddress.ip_address(s)
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def normalize(text: str) -> str:
    """The canonical text of an address (IPv4-mapped IPv6 becomes IPv4)."""
    return str(parse_address(text))


def source_of(addr: Address | str, ipv6_prefix: int = 64) -> Network:
    """The network that stands for this address in all per-source accounting."""
    if isinstance(addr, str):
        addr = parse_address(addr)
    if isinstance(addr, IPv6Address):
        if addr.ipv4_mapped is not None:
            return IPv4Network(addr.ipv4_mapped)
        return IPv6Network((addr, ipv6_prefix), strict=False)
    return IPv4Network(addr)


def source_key(addr: Address | str, ipv6_prefix: int = 64) -> str:
    """Text form of :func:`source_of`: ``192.0.2.1`` or ``2001:db8:1:2::/64``."""
    net = source_of(addr, ipv6_prefix)
    if isinstance(net, IPv4Network) and net.prefixlen == 32:
        return str(net.network_address)
    return str(net)


def parse_network(text: str) -> Network:
    """Parse an address or CIDR range (host bits must be zero); mapped IPv6 becomes IPv4."""
    s = text.strip()
    if "/" not in s:
        addr = parse_address(s)
        return ipaddress.ip_network(addr)
    net = ipaddress.ip_network(s, strict=True)
    if isinstance(net, IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return IPv4Network((mapped, net.prefixlen - 96))
    return net


def network_key(net: Network) -> str:
    """Text form of a network as dynscreen shows it (a /32 IPv4 as a bare address)."""
    if isinstance(net, IPv4Network) and net.prefixlen == 32:
        return str(net.network_address)
    return str(net)
