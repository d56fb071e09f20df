"""Seed the kernel's established counts from the sockets that already exist.

The tracepoint counts transitions from the moment it is attached, so a
restarted control plane attaches first, then sets each source's count to what
inet_diag reports: connections opened while it was away are counted, closed
ones are not, and none twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from dynscreen.control.addr import source_of
from dynscreen.control.dataplane.links import off_loop

TCP_ESTABLISHED = 1


@off_loop
def established_by_source(
    ports: Iterable[int],
    local_addrs: Iterable[IPv4Address | IPv6Address],
    ipv6_prefix: int = 64,
) -> dict[IPv4Network | IPv6Network, int]:
    """Server-side established TCP connections on screened ports, per source."""
    from pyroute2 import DiagSocket

    portset = set(ports)
    locals_ = {_plain(a) for a in local_addrs}
    counts: Counter[IPv4Network | IPv6Network] = Counter()
    with DiagSocket() as ds:
        ds.bind()
        for family in (2, 10):
            for msg in ds.get_sock_stats(family=family, states=1 << TCP_ESTABLISHED):
                if msg["idiag_sport"] not in portset:
                    continue
                if _plain(ip_address(msg["idiag_src"])) not in locals_:
                    continue
                counts[source_of(msg["idiag_dst"], ipv6_prefix)] += 1
    return dict(counts)


def _plain(a: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    if isinstance(a, IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a
