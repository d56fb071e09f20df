"""One block's source as one small typed value: the key the kernel, the index and the file share.

A ``SourceKey`` is an address range in the kernel's own 128-bit space (IPv4 as
``::ffff:a.b.c.d``, its prefix length plus 96), packed in one int:
``address << 8 | prefix length``. So a block's source costs one int instead of
an ``ipaddress`` network (a dict, two address objects: ~10 times the memory),
compares and hashes at C speed, decodes from a kernel key without building any
object on the way, and "does this range cover that one" is two shifts.

It is an ``int`` (immutable, hashable); the type says what the int means. The
``ipaddress`` networks the rest of the code uses convert both ways
(``from_network``/``network``), and ``text`` is the form the CLI and the block
file show (``addr.network_key``: an IPv4 /32 bare, everything else as a CIDR).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from socket import AF_INET6, inet_ntoa, inet_ntop

from dynscreen.control.addr import Network, parse_network

_MAPPED = 0xFFFF << 32  # ::ffff:0:0, where IPv4 lives in the kernel's 128-bit space
_ALL = (1 << 128) - 1


class SourceKey(int):
    """A source network: ``addr128 << 8 | plen`` (plen counted in the 128-bit space)."""

    __slots__ = ()

    @classmethod
    def of(cls, addr128: int, plen: int) -> SourceKey:
        """The key of a range given in the kernel's space (host bits are masked off)."""
        if not 0 <= plen <= 128 or not 0 <= addr128 <= _ALL:
            raise ValueError(f"not a 128-bit range: {addr128:#x}/{plen}")
        mask = _ALL ^ ((1 << (128 - plen)) - 1)
        return cls((addr128 & mask) << 8 | plen)

    @classmethod
    def from_network(cls, net: Network | IPv4Address | IPv6Address) -> SourceKey:
        """The key of an ipaddress network (or of one address: a /32 or /128)."""
        if isinstance(net, IPv4Address):
            return cls((_MAPPED | int(net)) << 8 | 128)
        if isinstance(net, IPv6Address):
            return cls(int(net) << 8 | 128)
        if isinstance(net, IPv4Network):
            return cls((_MAPPED | int(net.network_address)) << 8 | (96 + net.prefixlen))
        return cls(int(net.network_address) << 8 | net.prefixlen)

    @classmethod
    def parse(cls, text: str) -> SourceKey:
        """An address or CIDR range as the CLI and the block file take it (ValueError if bad)."""
        return cls.from_network(parse_network(text))

    @property
    def addr128(self) -> int:
        return int(self) >> 8

    @property
    def plen(self) -> int:
        """Prefix length in the 128-bit space (an IPv4 /24 is 120)."""
        return int(self) & 0xFF

    @property
    def is_ipv4(self) -> bool:
        return is_ipv4(int(self))

    @property
    def prefixlen(self) -> int:
        """Prefix length as the user writes it (an IPv4 /24 is 24)."""
        return self.plen - 96 if self.is_ipv4 else self.plen

    def network(self) -> Network:
        v = int(self)
        if is_ipv4(v):
            return IPv4Network(((v >> 8) & 0xFFFFFFFF, (v & 0xFF) - 96))
        return IPv6Network((v >> 8, v & 0xFF))

    @property
    def text(self) -> str:
        return key_text(int(self))

    def covers(self, other: int) -> bool:
        """Whether this range holds all of ``other`` (a range covers itself)."""
        return covers(int(self), int(other))

    def __str__(self) -> str:
        return key_text(int(self))

    def __repr__(self) -> str:
        return f"SourceKey({key_text(int(self))!r})"


# Plain-int forms of the same questions: the index stores keys as bare ints (16 bytes less
# each than a SourceKey object) and asks these in its loops.


def is_ipv4(key: int) -> bool:
    """A range in ::ffff:0:0/96 at least that long is IPv4 (shorter ones cannot sit inside)."""
    return (key & 0xFF) >= 96 and (key >> 40) == 0xFFFF


def covers(outer: int, inner: int) -> bool:
    op, ip = outer & 0xFF, inner & 0xFF
    return op <= ip and (outer >> (136 - op)) == (inner >> (136 - op))


def overlaps(a: int, b: int) -> bool:
    """Two prefixes overlap exactly when the shorter covers the longer."""
    return covers(a, b) or covers(b, a)


def key_text(key: int) -> str:
    """``addr.network_key`` of the key's network, without building the network.

    IPv6 text comes from inet_ntop (the same RFC 5952 form as ipaddress) except when
    the upper 80 bits are zero, where inet_ntop writes a dotted IPv4 tail and
    ipaddress does not.
    """
    plen = key & 0xFF
    addr = key >> 8
    if plen >= 96 and addr >> 32 == 0xFFFF:
        text = inet_ntoa((addr & 0xFFFFFFFF).to_bytes(4, "big"))
        return text if plen == 128 else f"{text}/{plen - 96}"
    if addr >> 48:
        return f"{inet_ntop(AF_INET6, addr.to_bytes(16, 'big'))}/{plen}"
    return f"{IPv6Address(addr)}/{plen}"


def order_key(key: int) -> tuple[int, int]:
    """The block file's order (IPv4 first, then by address, then prefix) as a sort key."""
    return (0 if is_ipv4(key) else 1, key)
