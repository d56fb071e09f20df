"""Interfaces as the data plane needs them: XDP state, addresses, the default route."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address

# IFLA_XDP_ATTACHED, as the kernel's number or pyroute2's name for it
_ATTACHED_MODES: dict[int | str, str] = {
    1: "native", 2: "generic", 3: "offload",
    "xdp": "native", "xdpdrv": "native", "xdpgeneric": "generic", "xdpoffload": "offload",
}


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
