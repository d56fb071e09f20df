"""Interfaces as the data plane needs them: XDP state, addresses, the default route."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def off_loop(fn: Callable[P, R]) -> Callable[P, R]:
    """pyroute2's synchronous sockets run their own event loop, which cannot start inside
    a running one: called from the daemon's loop, do the (short) work in a thread."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        with ThreadPoolExecutor(1) as ex:
            return ex.submit(fn, *args, **kwargs).result()

    return wrapper

# IFLA_XDP_ATTACHED, as the kernel's number or pyroute2's name for it
_ATTACHED_MODES: dict[int | str, str] = {
    1: "native", 2: "generic", 3: "offload",
    "xdp": "native", "xdpdrv": "native", "xdpgeneric": "generic", "xdpoffload": "offload",
}


@off_loop
def xdp_state(iface: str) -> tuple[int, str] | None:
    """(program id, mode) of the XDP program on an interface; (0, "") when none; None if no link."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=iface)
        if not idx:
            return None
        link = ipr.get_links(idx[0])[0]
    xdp = link.get_attr("IFLA_XDP")
    if xdp is None:
        return (0, "")
    attached = xdp.get_attr("IFLA_XDP_ATTACHED") or 0
    if not attached or attached == "none":
        return (0, "")
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") or 0
    if not prog_id:
        prog_id = xdp.get_attr("IFLA_XDP_DRV_PROG_ID") or xdp.get_attr("IFLA_XDP_SKB_PROG_ID") or 0
    return (prog_id, _ATTACHED_MODES.get(attached, "native"))


@off_loop
def interface_addresses(ifaces: Iterable[str]) -> list[IPv4Address | IPv6Address]:
    """Every address configured on the given interfaces."""
    from pyroute2 import IPRoute

    out: list[IPv4Address | IPv6Address] = []
    with IPRoute() as ipr:
        for name in ifaces:
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                continue
            for msg in ipr.get_addr(index=idx[0]):
                a = msg.get_attr("IFA_ADDRESS")
                if a:
                    out.append(ip_address(a.split("%")[0]))
    return out


@off_loop
def default_route_interface() -> str | None:
    """The interface of the IPv4 default route (else IPv6), what `make run` screens."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for family in (2, 10):
            for route in ipr.get_default_routes(family=family):
                oif = route.get_attr("RTA_OIF")
                if oif is None:
                    mp = route.get_attr("RTA_MULTIPATH")
                    if mp:
                        oif = mp[0]["oif"]
                if oif is not None:
                    links = ipr.get_links(oif)
                    if links:
                        return links[0].get_attr("IFLA_IFNAME")
    return None
