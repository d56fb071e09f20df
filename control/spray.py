"""How many distinct sources failed on one account lately: the password-spraying signal.

A spraying attack tries one account from thousands of addresses, a few guesses
each, so that no per-address limit ever trips. What gives it away is the number
of *distinct* sources failing on the account within a window. Counting them
exactly costs memory per source; an attacker with a botnet decides how many, so
the count is exact up to ``cap`` sources and beyond that a HyperLogLog estimate
(1024 one-byte registers per time bucket: about 3% standard error, a few KiB
per account however large the botnet).

Pure and typed (compiled with the engine by mypyc); the caller passes the clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from hashlib import blake2b
from typing import Final

EXACT_CAP: Final = 1024  # sources counted exactly, per account, before the estimate takes over
SAMPLE: Final = 20  # sources kept by name for the postmaster's notice
_P: Final = 10  # HyperLogLog precision: 2**_P registers
_M: Final = 1 << _P
_REST: Final = 64 - _P  # hash bits left for the rank
_ALPHA: Final = 0.7213 / (1.0 + 1.079 / _M)
_BUCKETS: Final = 4  # the window in HyperLogLog mode is this many buckets (+ the current one)


def _hash(source: str) -> int:
    """A 64-bit hash that is the same in every process (replay runs give the same counts)."""
    return int.from_bytes(blake2b(source.encode(), digest_size=8).digest(), "big")


class DistinctSources:
    """The distinct sources seen within ``span`` seconds: exact, then estimated.

    In estimate mode the window is kept as buckets of ``span / 4`` seconds, so
    a source is forgotten between ``span`` and ``1.25 * span`` after it was
    last seen (the exact mode forgets it at ``span``, as the other windows do).
    """

    __slots__ = ("span", "cap", "exact", "front", "front_key", "buckets", "sample", "estimate")

    def __init__(self, span: float, cap: int = EXACT_CAP) -> None:
        self.span = span
        self.cap = cap
        self.exact: OrderedDict[str, float] | None = OrderedDict()  # source -> last seen
        # The oldest entry of ``exact`` (inf: none): a failure looks at it, not at the
        # OrderedDict, to learn that nothing left the window (almost always so).
        self.front = math.inf
        self.front_key = ""
        self.buckets: list[tuple[float, bytearray]] = []  # (bucket start, registers)
        self.sample: list[str] = []
        self.estimate = -1  # the estimate while no register or bucket changed; -1: none

    def add(self, source: str, now: float) -> int:
        """Count a failure from ``source`` at ``now``; the distinct sources in the window."""
        exact = self.exact
        if exact is not None:
            if self.front <= now - self.span:
                self._trim(exact, now - self.span)
            empty = not exact
            if empty:
                self.sample.clear()  # a new attack: its own sources go in the notice
            if len(self.sample) < SAMPLE and source not in self.sample:
                self.sample.append(source)
            exact[source] = now
            exact.move_to_end(source)
            if empty or source == self.front_key:  # (the oldest entry changed)
                self.front_key, self.front = next(iter(exact.items()))
            if len(exact) <= self.cap:
                return len(exact)
            for name, ts in exact.items():  # too many to name: estimate from here on
                self._register(name, ts)
            self.exact = None
            self.front = math.inf
            self.front_key = ""
            return self.count(now)
        self._register(source, now)
        return self.count(now)

    def count(self, now: float) -> int:
        """The distinct sources in the window (exact, or the estimate)."""
        exact = self.exact
        if exact is not None:
            if self.front <= now - self.span:
                self._trim(exact, now - self.span)
            return len(exact)
        self._expire(now)
        if not self.buckets:
            self.exact = OrderedDict()  # the attack is over: exact again
            self.estimate = -1
            return 0
        if self.estimate < 0:
            merged = bytearray(_M)
            for _, regs in self.buckets:
                for i in range(_M):
                    if regs[i] > merged[i]:
                        merged[i] = regs[i]
            self.estimate = _estimate(merged)
        return self.estimate

    def _trim(self, exact: OrderedDict[str, float], cutoff: float) -> None:
        """Forget the exact entries last seen at ``cutoff`` or before (the oldest first)."""
        while exact:
            key, ts = next(iter(exact.items()))
            if ts > cutoff:
                self.front_key = key
                self.front = ts
                return
            exact.popitem(last=False)
        self.front = math.inf
        self.front_key = ""

    def _register(self, source: str, ts: float) -> None:
        width = self.span / _BUCKETS
        start = math.floor(ts / width) * width
        buckets = self.buckets
        regs: bytearray | None = None
        for bstart, bregs in reversed(buckets):  # the newest, almost always
            if bstart == start:
                regs = bregs
                break
            if bstart < start:
                break
        if regs is None:
            regs = bytearray(_M)
            buckets.append((start, regs))
            buckets.sort(key=lambda b: b[0])  # (a new bucket changes no estimate)
        h = _hash(source)
        index = h >> _REST
        rest = h & ((1 << _REST) - 1)
        rank = _REST - rest.bit_length() + 1
        if rank > regs[index]:
            regs[index] = rank
            self.estimate = -1
        self._expire(ts)

    def _expire(self, now: float) -> None:
        width = self.span / _BUCKETS
        cutoff = now - self.span
        while self.buckets and self.buckets[0][0] + width <= cutoff:
            self.buckets.pop(0)
            self.estimate = -1

    def names(self) -> tuple[str, ...]:
        """Some of the sources, by name (the first seen), for a notice."""
        return tuple(self.sample)


def _estimate(regs: bytearray) -> int:
    """HyperLogLog's estimate (Flajolet et al. 2007), linear counting for small counts."""
    total = 0.0
    zeros = 0
    for i in range(_M):  # (by index: mypyc cannot iterate a bytearray)
        r = regs[i]
        total += 2.0 ** -r
        if r == 0:
            zeros += 1
    e = _ALPHA * _M * _M / total
    if e <= 2.5 * _M and zeros:
        e = _M * math.log(_M / zeros)
    return round(e)
