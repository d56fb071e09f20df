"""Follow the screened interfaces' addresses (netlink) into the data plane's local set.

Why: the socket tracepoint counts connections only to the local addresses in
the data plane's ``local_addrs`` set. Read once at start, an address added
later (a failover VIP, a new IPv6 address) would never be counted, and the
rate and simultaneous limits would be silently off for it.

How: an rtnetlink socket (pyroute2) joined to the IPv4 and IPv6 address
groups wakes us on every RTM_NEWADDR / RTM_DELADDR; we then read the
interfaces' addresses again and hand the whole set to the data plane (which
adds and removes the difference). Re-reading rather than applying each event
means a lost event (socket buffer overrun) or an interface renamed or
re-created costs nothing: the next event, or the read right after binding,
puts things right.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR

from dynscreen.control.dataplane.links import interface_addresses

log = logging.getLogger("dynscreen.addresses")

Address = IPv4Address | IPv6Address
ADDRESS_EVENTS = ("RTM_NEWADDR", "RTM_DELADDR")


class AddressWatch:
    """Keeps apply(addresses) equal to the addresses of ifaces(); run() is the endless task."""

    def __init__(
        self,
        ifaces: Callable[[], Iterable[str]],
        apply: Callable[[list[Address]], None],
        *,
        initial: Iterable[Address] = (),
        read: Callable[[Iterable[str]], list[Address]] = interface_addresses,
    ) -> None:
        self._ifaces = ifaces
        self._apply = apply
        self._read = read
        self._have: set[Address] = set(initial)
        self._wake: asyncio.Event | None = None
        self.changes = 0  # times the set changed after start (for tests and status)

    def current(self) -> list[str]:
        """The local addresses in force, as text (for `status`)."""
        return sorted(map(str, self._have), key=lambda a: (":" in a, a))

    def poke(self) -> None:
        """Read the addresses again soon (after a reload changed the interfaces)."""
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Listen for address changes until cancelled; an error ends it (the supervisor
        restarts it, and the read after binding catches up)."""
        ipr = AsyncIPRoute()
        self._wake = asyncio.Event()
        try:
            await ipr.bind(groups=RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            listener = asyncio.create_task(self._listen(ipr))
            try:
                await self.resync()  # what changed between start-up's read and the bind
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    await self.resync()
                    if listener.done():
                        listener.result()  # raises what ended it
                        raise RuntimeError("the netlink listener ended")
            finally:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
        finally:
            self._wake = None
            ipr.close()

    async def _listen(self, ipr: AsyncIPRoute) -> None:
        try:
            while True:
                async for msg in ipr.get():
                    if msg.get("event") in ADDRESS_EVENTS and self._wake is not None:
                        self._wake.set()
        finally:
            if self._wake is not None:
                self._wake.set()  # let run() see that we ended

    async def resync(self) -> None:
        """Read the interfaces' addresses (in a thread: pyroute2's sync API) and apply them."""
        names = list(self._ifaces())
        addrs = await asyncio.to_thread(self._read, names)
        now = set(addrs)
        if now == self._have:
            return
        added, gone = now - self._have, self._have - now
        self._apply(sorted(now, key=lambda a: (a.version, int(a))))
        self._have = now
        self.changes += 1
        log.info("local addresses on %s changed:%s%s", ", ".join(names),
                 f" +{', +'.join(map(str, sorted(added, key=str)))}" if added else "",
                 f" -{', -'.join(map(str, sorted(gone, key=str)))}" if gone else "")
