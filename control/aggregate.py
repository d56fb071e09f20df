"""Which blocked sources share a network prefix: the rule that blocks a whole range.

An attacker with a rented /24 rotates through its addresses, and each address
alone stays one block among many; when ``threshold`` sources inside one IPv4
``/v4`` or IPv6 ``/v6`` prefix were blocked within ``span`` seconds, the prefix
itself is the offender (IPv6: only when ``/v6`` is wider than a source, ``v6`` 0
otherwise). This room only counts; the engine decides whether the
prefix may be blocked (nothing it must spare lies inside) and for how long.

Pure and typed (compiled with the engine by mypyc); the caller passes the clock.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict


class Member:
    """One blocked source inside a prefix: when it was blocked and until when."""

    __slots__ = ("ts", "until")

    def __init__(self, ts: float, until: float) -> None:
        self.ts = ts
        self.until = until


class PrefixCounter:
    """Recent blocks per prefix, at most ``limit`` prefixes (the least recent go first)."""

    __slots__ = ("threshold", "v4", "v6", "span", "limit", "groups", "known", "front", "front_ts")

    def __init__(self, threshold: int, v4: int, v6: int, span: float, limit: int) -> None:
        self.threshold = threshold
        self.v4 = v4
        self.v6 = v6
        self.span = span
        self.limit = limit
        self.groups: OrderedDict[str, OrderedDict[str, Member]] = OrderedDict()
        self.known: dict[str, str] = {}  # source key -> its prefix (the same few recur)
        # The first group of ``groups`` and its newest member's time (inf: no group), so
        # that expire(), every tick, learns that nothing is stale without a look.
        self.front = ""
        self.front_ts = math.inf

    def prefix_of(self, key: str) -> str:
        """The prefix (CIDR text) a source key (an IPv4 address or an IPv6 prefix) lies in;
        "" for an IPv6 source when IPv6 is not aggregated."""
        found = self.known.get(key)
        if found is None:
            if len(self.known) >= 65536:
                self.known.clear()
            found = self.known[key] = self._prefix_of(key)
        return found

    def _prefix_of(self, key: str) -> str:
        if ":" not in key:
            parts = key.split(".")
            value = 0
            for part in parts:
                value = value << 8 | int(part)
            mask = (0xFFFFFFFF << (32 - self.v4)) & 0xFFFFFFFF
            net = value & mask
            return f"{net >> 24}.{net >> 16 & 255}.{net >> 8 & 255}.{net & 255}/{self.v4}"
        if self.v6 <= 0:
            return ""
        text, _, bits = key.partition("/")
        try:  # (an IPv6 source key: its address and prefix length, as ipaddress writes them)
            addr = ipaddress.IPv6Address(text)
            length = int(bits) if bits else 128
        except ValueError:
            addr = None
            length = 0
        if addr is None or not 0 <= length <= 128 or int(addr) >> (128 - length) << (
            128 - length
        ) != int(addr):  # (anything odd: the general way)
            source = ipaddress.ip_network(key, strict=False)
            if self.v6 >= source.prefixlen:
                return ""
            return str(source.supernet(new_prefix=self.v6))
        if self.v6 >= length:
            return ""
        net = int(addr) >> (128 - self.v6) << (128 - self.v6)
        return f"{ipaddress.IPv6Address(net)}/{self.v6}"

    def add(self, key: str, ts: float, until: float) -> tuple[str, list[Member]] | None:
        """Note a block of ``key``; the prefix and its recent members once they reach the
        threshold (the group then starts afresh: a prefix block holds them all)."""
        if self.threshold <= 0:
            return None
        prefix = self.prefix_of(key)
        if not prefix:
            return None
        groups = self.groups
        members = groups.get(prefix)
        if members is None:
            if len(groups) >= self.limit:
                groups.popitem(last=False)
                self.front = ""  # (the first group left)
            members = groups[prefix] = OrderedDict()
        else:
            groups.move_to_end(prefix)
        members[key] = Member(ts, until)
        members.move_to_end(key)
        cutoff = ts - self.span
        while members and next(iter(members.values())).ts <= cutoff:
            members.popitem(last=False)
        if len(members) < self.threshold:
            if not self.front or prefix == self.front:
                self._front()
            return None
        found = list(members.values())
        del groups[prefix]
        self._front()
        return prefix, found

    def _front(self) -> None:
        """Learn the first group again (after it may have changed)."""
        if self.groups:
            prefix, members = next(iter(self.groups.items()))
            self.front = prefix
            self.front_ts = next(reversed(members.values())).ts if members else -math.inf
        else:
            self.front = ""
            self.front_ts = math.inf

    def expire(self, now: float) -> None:
        """Forget prefixes whose newest member left the window (the oldest-used first)."""
        cutoff = now - self.span
        if self.front_ts > cutoff:  # (the first group is not stale: nothing is to look at)
            return
        groups = self.groups
        while groups:
            members = next(iter(groups.values()))
            if members and next(reversed(members.values())).ts > cutoff:
                break
            groups.popitem(last=False)
        self._front()
