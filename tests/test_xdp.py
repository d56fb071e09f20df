"""Unit tests of the XDP program through BPF_PROG_TEST_RUN with crafted frames.

Every test asserts the verdict, the counters (the whole set of non-zero
counters, so an unexpected one shows) and the map state. The shared program
(conftest `dp`) has its maps emptied and the default config pushed before
each test; tests needing another build (IPv6 prefix, a tiny block table) load
their own DataPlane.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest

from dynscreen.control.addr import source_of
from dynscreen.control.dataplane import abi, bpfsys
from dynscreen.control.dataplane.loader import BlockTableFull, DataPlane, mono_ns, to_unix
from dynscreen.control.heartbeat import HeartbeatThread

from conftest import require_bpf
from packets import (
    ACK,
    ETH_ARP,
    ETH_IPV6,
    FIN,
    MF,
    NEXTHDR_DEST,
    NEXTHDR_FRAGMENT,
    NEXTHDR_HOP,
    NEXTHDR_ROUTING,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    PSH,
    RST,
    SYN,
    arp_request,
    eth,
    icmp_echo,
    ipv6,
    tcp,
    udp,
    v4_frame,
    v4_syn,
    v6_ext_frame,
    v6_syn,
    with_ihl,
)

pytestmark = pytest.mark.root

XDP_DROP, XDP_PASS = 1, 2
SEC = 1_000_000_000
MIN = 60 * SEC

A = "198.51.100.7"        # the misbehaving IPv4 source
B = "198.51.100.8"        # an innocent neighbour
V6 = "2001:db8:1:2::99"   # an IPv6 source (its /64 is 2001:db8:1:2::/64)
V6_SAME = "2001:db8:1:2::1234"
V6_OTHER = "2001:db8:1:3::1"


# ---- helpers --------------------------------------------------------------------------------


def run(dp, frame: bytes) -> int:
    return bpfsys.prog_test_run(dp.prog_fd, frame).retval


def nonzero(dp) -> dict[str, int]:
    return {k: v for k, v in dp.counters().items() if v}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def src(addr: str, prefix: int = 64) -> IPv4Network | IPv6Network:
    return source_of(addr, prefix)


def _tkey(table, source) -> object:
    return table.Key.from_buffer_copy(bytes(abi.key_for(source)))


def set_track(dp, source, **fields: int) -> None:
    """Write a source's track entry (win_start/syn_start default to now)."""
    tr = abi.Track()
    tr.win_start = tr.syn_start = mono_ns()
    for k, v in fields.items():
        setattr(tr, k, v)
    t = dp.table("track")
    t[_tkey(t, source)] = t.Leaf.from_buffer_copy(bytes(tr))


def get_track(dp, source) -> abi.Track | None:
    t = dp.table("track")
    try:
        return abi.Track.from_buffer_copy(bytes(t[_tkey(t, source)]))
    except KeyError:
        return None


def put_block(dp, source, expires: int, reason: str = "manual", origin: str = "manual",
              drops: int = 0) -> None:
    """Write a block-table entry directly (expires in CLOCK_MONOTONIC ns), with its filter
    bit first and the block generation raised after, as every writer of the table owes."""
    dp.filter_mark([bytes(abi.key_for(source))])
    b = abi.Block()
    b.expires, b.drops = expires, drops
    b.reason, b.origin = abi.REASON_IDS[reason], abi.ORIGIN_IDS[origin]
    t = dp.table("blocks")
    t[_tkey(t, source)] = t.Leaf.from_buffer_copy(bytes(b))
    dp.blocks_changed()  # owed too: an entry may have been rewritten


def get_block(dp, source) -> abi.Block | None:
    t = dp.table("blocks")
    try:
        return abi.Block.from_buffer_copy(bytes(t[_tkey(t, source)]))
    except KeyError:
        return None


def block(dp, net: str, seconds: float = 600, reason: str = "manual",
          origin: str = "manual") -> None:
    dp.add_block(ip_network(net), time.time() + seconds, reason, origin)


def set_heartbeat(dp, value: int) -> None:
    t = dp.table("heartbeat")
    t[t.Key(0)] = t.Leaf(value)


def drops_of(dp, net: str) -> int:
    [b] = [b for b in dp.list_blocks() if b.source == ip_network(net)]
    return b.drops


def empty_maps(d) -> None:
    for name in ("blocks", "cidr_blocks", "whitelist", "exempt", "track", "local_addrs"):
        t = d.table(name)
        for k in list(iter(t)):
            del t[k]
    d.table("counters").clear()
    d.poll_events(0)


@contextlib.contextmanager
def own_plane(**kw) -> Iterator[DataPlane]:
    """A separately built program (compiling costs about a second)."""
    require_bpf()
    d = DataPlane(pin_path=None, tracepoint=False, **{"max_tracked": 256, **kw})
    d.load()
    try:
        empty_maps(d)
        d.configure(heartbeat_timeout=None)
        yield d
    finally:
        d.close()


# ---- parsing: families, VLANs, what is not ours ---------------------------------------------

VLAN_CASES = pytest.mark.parametrize("vlans", [(), (100,), (100, 200)],
                                     ids=["untagged", "vlan", "qinq"])


@VLAN_CASES
def test_ipv4_blocked_syn_dropped_other_passes(dp, vlans):
    block(dp, f"{A}/32")
    assert run(dp, v4_syn(A, vlans=vlans)) == XDP_DROP
    assert nonzero(dp) == {"drop_blocked": 1}
    assert drops_of(dp, f"{A}/32") == 1
    assert run(dp, v4_syn(B, vlans=vlans)) == XDP_PASS
    assert nonzero(dp) == {"drop_blocked": 1, "passed": 1}
    tr = get_track(dp, src(B))
    assert tr is not None and (tr.syn, tr.cur, tr.prev, tr.established) == (1, 0, 0, 0)
    assert get_track(dp, src(A)) is None, "a blocked source's SYN creates no track state"


@VLAN_CASES
def test_ipv6_blocked_syn_dropped_other_passes(dp, vlans):
    block(dp, "2001:db8:1:2::/64")
    assert run(dp, v6_syn(V6, vlans=vlans)) == XDP_DROP
    assert nonzero(dp) == {"drop_blocked": 1}
    assert run(dp, v6_syn(V6_OTHER, vlans=vlans)) == XDP_PASS
    assert nonzero(dp) == {"drop_blocked": 1, "passed": 1}
    assert get_track(dp, src(V6_OTHER)) is not None
    assert drops_of(dp, "2001:db8:1:2::/64") == 1


@pytest.mark.parametrize("frame", [
    pytest.param(v4_frame(A, udp(), proto=PROTO_UDP), id="udp4"),
    pytest.param(v4_frame(A, icmp_echo(), proto=PROTO_ICMP), id="icmp4"),
    pytest.param(v4_frame(A, udp(), proto=PROTO_UDP, vlans=(7,)), id="udp4-vlan"),
    pytest.param(eth(ETH_IPV6, ipv6(V6, nexthdr=PROTO_UDP, payload=udp())), id="udp6"),
    pytest.param(eth(ETH_IPV6, ipv6(V6, nexthdr=PROTO_ICMPV6, payload=icmp_echo())), id="icmp6"),
    pytest.param(v6_ext_frame(V6, (NEXTHDR_HOP, NEXTHDR_DEST), l4=udp(), l4_proto=PROTO_UDP),
                 id="udp6-behind-ext"),
    pytest.param(arp_request(A), id="arp"),
    pytest.param(arp_request(A)[:14], id="arp-truncated"),
    pytest.param(eth(0x88CC, bytes(40)), id="lldp"),
])
def test_not_tcp_passes_untouched(dp, frame):
    block(dp, f"{A}/32")
    block(dp, "2001:db8:1:2::/64")
    assert run(dp, frame) == XDP_PASS
    assert nonzero(dp) == {}
    assert all(b.drops == 0 for b in dp.list_blocks())
    assert list(dp.table("track").items()) == []


@pytest.mark.parametrize("dport", [80, 22, 24, 26, 0, 65535])
def test_unscreened_port_passes_with_no_counter_change(dp, dport):
    block(dp, f"{A}/32")
    for frame in (v4_syn(A, dport=dport), v4_syn(A, dport=dport, flags=ACK),
                  v6_syn(V6, dport=dport), v4_syn(B, dport=dport)):
        assert run(dp, frame) == XDP_PASS
    assert nonzero(dp) == {}
    assert drops_of(dp, f"{A}/32") == 0
    assert list(dp.table("track").items()) == []


def test_configured_ports_bitmap_edges(dp):
    ports = (1, 63, 64, 127, 128, 2525, 65535)
    dp.configure(ports=ports, heartbeat_timeout=None)
    assert dp.screened_ports() == frozenset(ports)
    block(dp, f"{A}/32")
    for p in ports:
        assert run(dp, v4_syn(A, dport=p)) == XDP_DROP, p
    for p in (25, 62, 65, 126, 129, 2524, 2526, 65534):
        assert run(dp, v4_syn(A, dport=p)) == XDP_PASS, p
    assert nonzero(dp) == {"drop_blocked": len(ports)}


def test_disabled_passes_everything_uncounted(dp):
    dp.configure(enabled=False, heartbeat_timeout=None, syn_per_second=1, connections=1)
    block(dp, f"{A}/32")
    set_track(dp, src(B), cur=100, established=100)
    for frame in (v4_syn(A), v4_syn(A, flags=ACK), v6_syn(V6), v4_syn(B), v4_syn(B)):
        assert run(dp, frame) == XDP_PASS
    assert nonzero(dp) == {}
    assert drops_of(dp, f"{A}/32") == 0
    assert len(dp.list_blocks()) == 1
    assert dp.poll_events(0) == []


# ---- truncation at every header boundary ---------------------------------------------------

TRUNCATION_FRAMES = {
    "v4": lambda: v4_syn(A),
    "v4-vlan": lambda: v4_syn(A, vlans=(100,)),
    "v4-qinq": lambda: v4_syn(A, vlans=(100, 200)),
    "v4-options": lambda: v4_frame(A, tcp(), options=b"\x01" * 8),
    "v6": lambda: v6_syn(V6),
    "v6-ext": lambda: v6_ext_frame(V6, (NEXTHDR_HOP, (NEXTHDR_ROUTING, 1), NEXTHDR_DEST,
                                        NEXTHDR_FRAGMENT)),
    "v6-ext-vlan": lambda: v6_ext_frame(V6, (NEXTHDR_HOP, (NEXTHDR_DEST, 2)), vlans=(5,)),
}


@pytest.mark.parametrize("name", sorted(TRUNCATION_FRAMES))
def test_truncated_at_every_byte_never_drops_and_counts_parse_fail(dp, name):
    block(dp, f"{A}/32")
    block(dp, "2001:db8:1:2::/64")
    frame = TRUNCATION_FRAMES[name]()
    assert run(dp, frame) == XDP_DROP, "the whole frame is dropped: the source is blocked"
    before = dp.counters()
    for cut in range(14, len(frame)):
        assert run(dp, frame[:cut]) == XDP_PASS, f"cut at {cut} of {len(frame)}"
        after = dp.counters()
        assert delta(before, after) == {"parse_fail": 1}, f"cut at {cut} of {len(frame)}"
        before = after
    assert sum(b.drops for b in dp.list_blocks()) == 1
    assert list(dp.table("track").items()) == []


def test_runt_frames_are_refused_by_test_run(dp):
    """Below an Ethernet header BPF_PROG_TEST_RUN itself refuses (EINVAL)."""
    with pytest.raises(OSError):
        bpfsys.prog_test_run(dp.prog_fd, v4_syn(A)[:13])
    assert nonzero(dp) == {}


@pytest.mark.parametrize("frame", [
    pytest.param(v4_frame(A, b"", proto=PROTO_UDP), id="udp4-no-l4"),
    pytest.param(v4_frame(A, b"", proto=PROTO_ICMP, vlans=(1, 2)), id="icmp4-qinq-no-l4"),
    pytest.param(eth(ETH_IPV6, ipv6(V6, nexthdr=PROTO_UDP)), id="udp6-no-l4"),
    pytest.param(v6_ext_frame(V6, (NEXTHDR_HOP,), l4=b"", l4_proto=PROTO_UDP), id="udp6-ext"),
    pytest.param(eth(ETH_ARP, b""), id="arp-header-only"),
])
def test_not_tcp_ip_is_not_a_parse_failure_even_when_short(dp, frame):
    assert run(dp, frame) == XDP_PASS
    assert nonzero(dp) == {}


# ---- IPv4 header length, IPv6 extension headers, fragments ----------------------------------


@pytest.mark.parametrize("ihl", range(6, 16))
def test_ipv4_options_parsed(dp, ihl):
    block(dp, f"{A}/32")
    opts = b"\x01" * ((ihl - 5) * 4)  # NOPs: read as TCP they would be port 257
    assert run(dp, v4_frame(A, tcp(), options=opts)) == XDP_DROP
    assert run(dp, v4_frame(A, tcp(flags=ACK), options=opts)) == XDP_DROP
    assert run(dp, v4_frame(B, tcp(), options=opts)) == XDP_PASS
    assert nonzero(dp) == {"drop_blocked": 1, "drop_session": 1, "passed": 1}


def test_ipv4_options_not_mistaken_for_tcp(dp):
    """Options whose bytes 2-3 read as port 25: the real TCP header (port 80) decides."""
    block(dp, f"{A}/32")
    opts = b"\x01\x01\x00\x19" + b"\x01" * 4
    assert run(dp, v4_frame(A, tcp(dport=80), options=opts)) == XDP_PASS
    assert nonzero(dp) == {}


@pytest.mark.parametrize("ihl", range(0, 5))
def test_ipv4_ihl_below_5_is_malformed(dp, ihl):
    block(dp, f"{A}/32")
    frame = with_ihl(v4_syn(A), ihl)
    assert run(dp, frame) == XDP_PASS
    assert run(dp, with_ihl(v4_syn(A, vlans=(3,)), ihl, l3=18)) == XDP_PASS
    assert nonzero(dp) == {"parse_fail": 2}
    assert drops_of(dp, f"{A}/32") == 0


EXT_CHAINS = {
    "hop": (NEXTHDR_HOP,),
    "routing": (NEXTHDR_ROUTING,),
    "dest": (NEXTHDR_DEST,),
    "fragment": (NEXTHDR_FRAGMENT,),
    "long-dest": ((NEXTHDR_DEST, 5),),
    "all": (NEXTHDR_HOP, NEXTHDR_DEST, (NEXTHDR_ROUTING, 2), NEXTHDR_FRAGMENT, NEXTHDR_DEST),
    "six": (NEXTHDR_HOP,) + (NEXTHDR_DEST,) * 5,
}


@pytest.mark.parametrize("name", sorted(EXT_CHAINS))
def test_ipv6_extension_headers_skipped(dp, name):
    block(dp, "2001:db8:1:2::/64")
    chain = EXT_CHAINS[name]
    assert run(dp, v6_ext_frame(V6, chain)) == XDP_DROP
    assert run(dp, v6_ext_frame(V6_SAME, chain, l4=tcp(flags=ACK | PSH))) == XDP_DROP
    assert run(dp, v6_ext_frame(V6_OTHER, chain)) == XDP_PASS
    assert run(dp, v6_ext_frame(V6, chain, l4=tcp(dport=80))) == XDP_PASS
    assert nonzero(dp) == {"drop_blocked": 1, "drop_session": 1, "passed": 1}
    assert drops_of(dp, "2001:db8:1:2::/64") == 2


def test_ipv4_non_first_fragment_passes_and_counts_fragment(dp):
    for frag in (1, 185, MF | 185, 0x1FFF):
        assert run(dp, v4_frame(A, bytes(40), frag=frag)) == XDP_PASS
    assert nonzero(dp) == {"fragment": 4}


def test_ipv4_first_fragment_is_screened(dp):
    block(dp, f"{A}/32")
    assert run(dp, v4_frame(A, tcp(), frag=MF)) == XDP_DROP
    assert run(dp, v4_frame(A, tcp(), frag=0x4000)) == XDP_DROP  # DF set: not a fragment
    assert run(dp, v4_frame(B, tcp(), frag=MF)) == XDP_PASS
    assert run(dp, v4_frame(A, tcp(dport=80), frag=MF)) == XDP_PASS  # its port is seen
    assert nonzero(dp) == {"drop_blocked": 2, "passed": 1}


def test_ipv6_non_first_fragment_passes_and_counts_fragment(dp):
    for chain, more in (((NEXTHDR_FRAGMENT,), False), ((NEXTHDR_FRAGMENT,), True),
                        ((NEXTHDR_HOP, NEXTHDR_FRAGMENT), True)):
        frame = v6_ext_frame(V6, chain, l4=bytes(24), frag_offset=3, more=more)
        assert run(dp, frame) == XDP_PASS
    assert nonzero(dp) == {"fragment": 3}


def test_ipv6_first_fragment_is_screened(dp):
    block(dp, "2001:db8:1:2::/64")
    assert run(dp, v6_ext_frame(V6, (NEXTHDR_FRAGMENT,), frag_offset=0, more=True)) == XDP_DROP
    assert run(dp, v6_ext_frame(V6_OTHER, (NEXTHDR_FRAGMENT,), more=True)) == XDP_PASS
    assert nonzero(dp) == {"drop_blocked": 1, "passed": 1}


# ---- fragments and unwalkable chains of a blocked source (no port to check) -----------------

# Packets that carry no TCP header XDP could read: the kernel reassembles (or walks) them
# into a segment for the mail server, so a blocked source's are dropped, whatever the port.
LONG_CHAIN = (NEXTHDR_HOP,) + (NEXTHDR_DEST,) * 8
UNSCREENABLE = {
    "v4-non-first": lambda s: v4_frame(s, bytes(40), frag=185),
    "v4-non-first-last": lambda s: v4_frame(s, bytes(40), frag=1),
    "v4-non-first-more": lambda s: v4_frame(s, bytes(40), frag=MF | 0x1FFF),
    "v4-first-short-tcp": lambda s: v4_frame(s, tcp()[:8], frag=MF),
    "v4-first-no-tcp": lambda s: v4_frame(s, b"", frag=MF),
    "v4-options-non-first": lambda s: v4_frame(s, bytes(16), options=b"\x01" * 4, frag=3),
    "v4-vlan-non-first": lambda s: v4_frame(s, bytes(16), frag=3, vlans=(7, 8)),
    "v6-non-first": lambda s: v6_ext_frame(s, (NEXTHDR_FRAGMENT,), l4=bytes(24),
                                           frag_offset=3),
    "v6-non-first-more": lambda s: v6_ext_frame(s, (NEXTHDR_HOP, NEXTHDR_FRAGMENT),
                                                l4=bytes(24), frag_offset=3, more=True),
    "v6-first-short-tcp": lambda s: v6_ext_frame(s, (NEXTHDR_FRAGMENT,), l4=tcp()[:12],
                                                 more=True),
    "v6-long-chain": lambda s: v6_ext_frame(s, LONG_CHAIN),
    "v6-long-chain-vlan": lambda s: v6_ext_frame(s, LONG_CHAIN, vlans=(9,)),
}
# What each passes as when its source is not blocked.
UNSCREENABLE_PASS = {name: "parse_fail" if "long-chain" in name else "fragment"
                     for name in UNSCREENABLE}


def _sources(name: str) -> tuple[str, str]:
    """(an address of a blocked source, an address of another one) for a frame kind."""
    return (V6_SAME, V6_OTHER) if name.startswith("v6") else (A, B)


@pytest.mark.parametrize("name", sorted(UNSCREENABLE))
def test_unscreenable_packet_of_a_blocked_source_is_dropped(dp, name):
    block(dp, f"{A}/32")
    block(dp, "2001:db8:1:2::/64")
    blocked, other = _sources(name)
    assert run(dp, UNSCREENABLE[name](blocked)) == XDP_DROP
    assert nonzero(dp) == {"drop_fragment": 1}
    assert sum(b.drops for b in dp.list_blocks()) == 1
    assert run(dp, UNSCREENABLE[name](other)) == XDP_PASS
    assert nonzero(dp) == {"drop_fragment": 1, UNSCREENABLE_PASS[name]: 1}
    assert list(dp.table("track").items()) == [], "no connection state for a fragment"


@pytest.mark.parametrize("name", sorted(UNSCREENABLE))
def test_unscreenable_packet_of_a_cidr_blocked_source_is_dropped(dp, name):
    block(dp, "198.51.100.0/29")       # A (.7) inside, B (.8) outside
    block(dp, "2001:db8:1:2::/63")     # a range block, not a /64 source block
    blocked, other = _sources(name)
    assert run(dp, UNSCREENABLE[name](blocked)) == XDP_DROP
    assert run(dp, UNSCREENABLE[name](other.replace("1:3::", "1:4::"))) == XDP_PASS
    assert nonzero(dp) == {"drop_fragment": 1, UNSCREENABLE_PASS[name]: 1}
    assert sum(b.drops for b in dp.list_blocks()) == 1


@pytest.mark.parametrize("name", sorted(UNSCREENABLE))
def test_unscreenable_packet_of_a_whitelisted_address_inside_a_block_passes(dp, name):
    block(dp, "2001:db8:1:2::/64")
    block(dp, "198.51.100.0/24")
    dp.sync_whitelist([ip_network("2001:db8:1:2::5/128"), ip_network(f"{A}/32")])
    blocked, _ = _sources(name)
    spared = "2001:db8:1:2::5" if name.startswith("v6") else A
    assert run(dp, UNSCREENABLE[name](spared)) == XDP_PASS
    assert nonzero(dp) == {"whitelist_pass": 1}
    neighbour = "2001:db8:1:2::6" if name.startswith("v6") else "198.51.100.9"
    assert run(dp, UNSCREENABLE[name](neighbour)) == XDP_DROP
    assert nonzero(dp) == {"whitelist_pass": 1, "drop_fragment": 1}


def test_unscreenable_packet_honours_the_ipv6_prefix():
    with own_plane(ipv6_prefix=48) as d:
        block(d, "2001:db8:1::/48")
        frame = UNSCREENABLE["v6-non-first"]
        assert run(d, frame("2001:db8:1:ffff::1")) == XDP_DROP
        assert run(d, frame("2001:db8:2::1")) == XDP_PASS
        assert nonzero(d) == {"drop_fragment": 1, "fragment": 1}


def test_unscreenable_packet_of_a_blocked_source_modes(dp):
    block(dp, f"{A}/32")
    frame = UNSCREENABLE["v4-non-first"](A)
    dp.configure(close_session=False, heartbeat_timeout=None)
    assert run(dp, frame) == XDP_DROP, "a fragment may hold a SYN: dropped without close_session"
    dp.configure(monitor=True, heartbeat_timeout=None)
    assert run(dp, frame) == XDP_PASS
    dp.configure(enabled=False, heartbeat_timeout=None)
    assert run(dp, frame) == XDP_PASS
    assert nonzero(dp) == {"drop_fragment": 1, "monitor_pass": 1}


def test_expired_block_lets_fragments_pass(dp):
    put_block(dp, src(A), mono_ns() - SEC)
    assert run(dp, UNSCREENABLE["v4-non-first"](A)) == XDP_PASS
    assert nonzero(dp) == {"fragment": 1}


def test_short_tcp_header_without_fragmentation_stays_malformed(dp):
    block(dp, f"{A}/32")
    block(dp, "2001:db8:1:2::/64")
    assert run(dp, v4_frame(A, tcp()[:8])) == XDP_PASS
    assert run(dp, v4_frame(A, tcp()[:8], frag=0x4000)) == XDP_PASS  # DF only
    # An IPv6 atomic fragment (offset 0, M clear) is a whole packet.
    assert run(dp, v6_ext_frame(V6, (NEXTHDR_FRAGMENT,), l4=tcp()[:12])) == XDP_PASS
    assert nonzero(dp) == {"parse_fail": 3}


# ---- verdicts of blocks ---------------------------------------------------------------------


@pytest.mark.parametrize("flags", [ACK, ACK | PSH, FIN | ACK, RST, SYN | ACK],
                         ids=["ack", "psh-ack", "fin-ack", "rst", "syn-ack"])
def test_blocked_session_packets_dropped_with_close_session(dp, flags):
    block(dp, f"{A}/32")
    assert run(dp, v4_syn(A, flags=flags)) == XDP_DROP
    assert run(dp, v4_syn(B, flags=flags)) == XDP_PASS
    assert nonzero(dp) == {"drop_session": 1, "passed": 1}
    assert drops_of(dp, f"{A}/32") == 1
    assert get_track(dp, src(B)) is None, "only SYNs create track state"


def test_blocked_session_packets_pass_without_close_session(dp):
    dp.configure(close_session=False, heartbeat_timeout=None)
    block(dp, f"{A}/32")
    block(dp, "2001:db8:1:2::/64")
    assert run(dp, v4_syn(A, flags=ACK)) == XDP_PASS
    assert run(dp, v6_syn(V6, flags=ACK | PSH)) == XDP_PASS
    assert nonzero(dp) == {"passed": 2}
    assert run(dp, v4_syn(A)) == XDP_DROP, "new connections are still refused"
    assert nonzero(dp) == {"passed": 2, "drop_blocked": 1}
    assert drops_of(dp, f"{A}/32") == 1


def test_block_drops_counter_grows(dp):
    block(dp, f"{A}/32")
    for flags in (SYN, SYN, ACK, SYN, RST):
        assert run(dp, v4_syn(A, flags=flags)) == XDP_DROP
    assert drops_of(dp, f"{A}/32") == 5
    assert nonzero(dp) == {"drop_blocked": 3, "drop_session": 2}


def test_expired_block_passes(dp):
    put_block(dp, src(A), mono_ns() - SEC)
    dp.add_block(ip_network("2001:db8:1:2::/64"), time.time() - 5, "manual", "manual")
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert run(dp, v4_syn(A, flags=ACK)) == XDP_PASS
    assert run(dp, v6_syn(V6)) == XDP_PASS
    assert nonzero(dp) == {"passed": 3}
    assert dp.list_blocks() == []
    assert all(b.drops == 0 for b in dp.list_blocks(include_expired=True))
    assert get_block(dp, src(A)).drops == 0


def test_block_expiry_is_exact(dp):
    """A block expiring a moment from now drops now and passes once past (coarse clock)."""
    put_block(dp, src(A), mono_ns() + 300_000_000)
    assert run(dp, v4_syn(A)) == XDP_DROP
    time.sleep(0.35)
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert nonzero(dp) == {"drop_blocked": 1, "passed": 1}


def test_xdp_clock_is_calibrated_jiffies(dp):
    """XDP reads jiffies (one inlined load) scaled by the loader's calibration."""
    from dynscreen.control.dataplane.loader import TICK_NS

    tick, base = dp.clock
    assert tick in TICK_NS
    cfg = dp.read_config()
    assert (cfg.jiffy_ns, cfg.jiffies_base_ns) == (tick, base)


@pytest.mark.parametrize("attempt", range(5))
def test_xdp_clock_is_never_ahead_and_at_most_a_tick_behind(dp, attempt):
    """A block expiring 1 ms from now still drops (the clock is not ahead of CLOCK_MONOTONIC);
    one that expired two ticks ago passes (it lags by less than a tick)."""
    tick = dp.clock[0]
    put_block(dp, src(A), mono_ns() + 1_000_000)
    put_block(dp, src(B), mono_ns() - 2 * tick - 1_000_000)
    assert run(dp, v4_syn(A)) == XDP_DROP
    assert run(dp, v4_syn(B)) == XDP_PASS


def test_monitor_mode_passes_but_counts(dp):
    dp.configure(monitor=True, heartbeat_timeout=None)
    block(dp, f"{A}/32")
    block(dp, "2001:db8:1:2::/64")
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert run(dp, v4_syn(A, flags=ACK)) == XDP_PASS
    assert run(dp, v6_syn(V6)) == XDP_PASS
    assert nonzero(dp) == {"monitor_pass": 3}
    assert drops_of(dp, f"{A}/32") == 2, "drops are counted (not done) in monitor mode"
    assert drops_of(dp, "2001:db8:1:2::/64") == 1


# ---- IPv6 per prefix, IPv4-mapped -----------------------------------------------------------


def test_ipv6_block_is_per_prefix(dp):
    block(dp, "2001:db8:1:2::/64")
    assert [b.source for b in dp.list_blocks()] == [ip_network("2001:db8:1:2::/64")]
    assert run(dp, v6_syn("2001:db8:1:2::99")) == XDP_DROP
    assert run(dp, v6_syn("2001:db8:1:2:ffff:ffff:ffff:ffff")) == XDP_DROP
    assert run(dp, v6_syn("2001:db8:1:3::1")) == XDP_PASS
    assert run(dp, v6_syn("2001:db8:1:1:ffff:ffff:ffff:ffff")) == XDP_PASS
    assert nonzero(dp) == {"drop_blocked": 2, "passed": 2}
    assert get_track(dp, src("2001:db8:1:3::1")) is not None
    assert get_track(dp, src("2001:db8:1:3::abcd")) is not None, "track is per /64 too"


def test_ipv6_prefix_is_configurable(xdp_plane):
    with own_plane(ipv6_prefix=48, max_blocks=64) as d:
        assert d.read_config().ipv6_prefix == 48
        d.add_block(ip_network("2001:db8:1::/48"), time.time() + 60, "manual", "manual")
        assert not any(b.cidr for b in d.list_blocks()), "a /48 is a source: the hash table"
        assert run(d, v6_syn("2001:db8:1:2::99")) == XDP_DROP
        assert run(d, v6_syn("2001:db8:1:ffff::1")) == XDP_DROP
        assert run(d, v6_syn("2001:db8:2::1")) == XDP_PASS
        assert nonzero(d) == {"drop_blocked": 2, "passed": 1}
        # A kernel block is made per /48 as well.
        d.configure(connections=2, heartbeat_timeout=None)
        set_track(d, src("2001:db8:7::", 48), cur=2)
        assert run(d, v6_syn("2001:db8:7:abcd::5")) == XDP_DROP
        [ev] = d.poll_events(100)
        assert ev.source == ip_network("2001:db8:7::/48")
        assert ip_network("2001:db8:7::/48") in [b.source for b in d.list_blocks()]
        # With /48 sources a /64 is a range: the LPM trie.
        d.add_block(ip_network("2001:db8:9:1::/64"), time.time() + 60, "manual", "manual")
        assert d.read_config().cidr_blocks == 1
        assert run(d, v6_syn("2001:db8:9:1::5")) == XDP_DROP
        assert run(d, v6_syn("2001:db8:9:2::5")) == XDP_PASS


def test_ipv4_mapped_ipv6_counts_as_the_ipv4_address(dp):
    block(dp, f"{A}/32")
    assert run(dp, v6_syn(f"::ffff:{A}")) == XDP_DROP
    assert run(dp, v6_syn(f"::ffff:{A}", flags=ACK)) == XDP_DROP
    assert run(dp, v6_syn(f"::ffff:{B}")) == XDP_PASS
    assert run(dp, v6_syn("2001:db8::c633:6407")) == XDP_PASS  # same low 32 bits, not mapped
    assert nonzero(dp) == {"drop_blocked": 1, "drop_session": 1, "passed": 2}
    assert drops_of(dp, f"{A}/32") == 2
    assert get_track(dp, src(B)) is not None, "tracked under the IPv4 key"


def test_ipv4_mapped_source_trips_the_ipv4_rate_limit(dp):
    dp.configure(connections=3, heartbeat_timeout=None)
    set_track(dp, src(A), cur=3)
    assert run(dp, v6_syn(f"::ffff:{A}")) == XDP_DROP
    [ev] = dp.poll_events(100)
    assert ev.source == ip_network(f"{A}/32")
    assert get_block(dp, src(A)) is not None


# ---- whitelist and exemptions ---------------------------------------------------------------


def test_whitelisted_address_inside_blocked_prefix_passes(dp):
    block(dp, "2001:db8:1:2::/64")
    dp.sync_whitelist([ip_network("2001:db8:1:2::5/128")])
    assert run(dp, v6_syn("2001:db8:1:2::5")) == XDP_PASS
    assert run(dp, v6_syn("2001:db8:1:2::5", flags=ACK)) == XDP_PASS
    assert nonzero(dp) == {"whitelist_pass": 2}
    assert run(dp, v6_syn("2001:db8:1:2::6")) == XDP_DROP
    assert nonzero(dp) == {"whitelist_pass": 2, "drop_blocked": 1}
    assert drops_of(dp, "2001:db8:1:2::/64") == 1


def test_whitelisted_range_inside_blocked_prefix_passes(dp):
    block(dp, "2001:db8:1:2::/64")
    dp.sync_whitelist([ip_network("2001:db8:1:2:aaaa::/80")])
    assert run(dp, v6_syn("2001:db8:1:2:aaaa::7")) == XDP_PASS
    assert run(dp, v6_syn("2001:db8:1:2:aaab::7")) == XDP_DROP
    assert nonzero(dp) == {"whitelist_pass": 1, "drop_blocked": 1}


@pytest.mark.parametrize("wl", [f"{A}/32", "198.51.100.0/24", "0.0.0.0/0"])
def test_whitelisted_ipv4_never_blocked_by_kernel_limits(dp, wl):
    dp.configure(connections=3, simultaneous=2, heartbeat_timeout=None)
    dp.sync_whitelist([ip_network(wl)])
    set_track(dp, src(A), cur=3, established=2)
    assert run(dp, v4_syn(A)) == XDP_PASS
    # The rate check and the simultaneous check each hit the whitelist.
    assert nonzero(dp) == {"exempt_pass": 2, "passed": 1}
    assert dp.list_blocks() == []
    assert dp.poll_events(50) == []
    tr = get_track(dp, src(A))
    assert (tr.cur, tr.established, tr.syn) == (3, 2, 1), "state kept: nothing was blocked"


def test_whitelisted_ipv6_address_exempt_but_its_prefix_is_not(dp):
    dp.configure(connections=3, heartbeat_timeout=None)
    dp.sync_whitelist([ip_network("2001:db8:1:2::5/128")])
    set_track(dp, src(V6), cur=3)
    assert run(dp, v6_syn("2001:db8:1:2::5")) == XDP_PASS
    assert nonzero(dp) == {"exempt_pass": 1, "passed": 1}
    assert dp.list_blocks() == []
    assert run(dp, v6_syn("2001:db8:1:2::6")) == XDP_DROP
    assert [(b.source, b.reason, b.origin) for b in dp.list_blocks()] == [
        (ip_network("2001:db8:1:2::/64"), "connections", "kernel")]
    # ... and the whitelisted address still passes the new prefix block.
    assert run(dp, v6_syn("2001:db8:1:2::5")) == XDP_PASS
    assert nonzero(dp) == {"exempt_pass": 1, "passed": 1, "drop_rate": 1, "blocks_made": 1,
                           "whitelist_pass": 1}


def test_exempt_source_not_blocked_by_kernel_limits(dp):
    dp.configure(connections=3, simultaneous=2, heartbeat_timeout=None)
    dp.exempt(ip_network(f"{A}/32"), time.time() + 600)
    dp.exempt(ip_network("2001:db8:1:2::/64"), time.time() + 600)
    set_track(dp, src(A), cur=3)
    set_track(dp, src(V6), established=2)
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert run(dp, v6_syn(V6_SAME)) == XDP_PASS
    assert nonzero(dp) == {"exempt_pass": 2, "passed": 2}
    assert dp.list_blocks() == []
    assert dp.poll_events(50) == []


def test_exempt_does_not_lift_an_existing_block(dp):
    block(dp, f"{A}/32")
    dp.exempt(ip_network(f"{A}/32"), time.time() + 600)
    assert run(dp, v4_syn(A)) == XDP_DROP
    assert nonzero(dp) == {"drop_blocked": 1}


def test_expired_exemption_no_longer_protects(dp):
    dp.configure(connections=3, heartbeat_timeout=None)
    dp.exempt(ip_network(f"{A}/32"), time.time() - 1)
    set_track(dp, src(A), cur=3)
    assert run(dp, v4_syn(A)) == XDP_DROP
    assert nonzero(dp) == {"drop_rate": 1, "blocks_made": 1}
    [ev] = dp.poll_events(100)
    assert (ev.source, ev.reason) == (ip_network(f"{A}/32"), "connections")


def test_ipv6_whitelist_flag_follows_the_whitelist(dp):
    """A hit on an IPv6 prefix block asks the whitelist only while it holds an IPv6 entry
    (::1 aside: a loopback source never arrives on another interface)."""
    block(dp, "2001:db8:1:2::/64")
    dp.sync_whitelist([ip_network("127.0.0.0/8"), ip_network("::1/128")])
    assert not dp.read_config().flags & abi.F_WHITELIST_V6
    dp.sync_whitelist([ip_network("::1/128"), ip_network("2001:db8:1:2::5/128")])
    assert dp.read_config().flags & abi.F_WHITELIST_V6
    dp.configure(heartbeat_timeout=None)  # a reload keeps it
    assert dp.read_config().flags & abi.F_WHITELIST_V6
    assert run(dp, v6_syn("2001:db8:1:2::5")) == XDP_PASS
    dp.sync_whitelist([ip_network("::1/128")])
    assert not dp.read_config().flags & abi.F_WHITELIST_V6
    assert run(dp, v6_syn("2001:db8:1:2::5")) == XDP_DROP
    assert nonzero(dp) == {"whitelist_pass": 1, "drop_blocked": 1}


# ---- CIDR blocks ----------------------------------------------------------------------------


def test_cidr_blocks_live_in_the_trie_and_count_is_kept(dp):
    assert dp.read_config().cidr_blocks == 0
    block(dp, "203.0.113.0/24")
    assert dp.read_config().cidr_blocks == 1
    block(dp, "2001:db8:aa::/48")
    assert dp.read_config().cidr_blocks == 2
    assert sorted((str(b.source), b.cidr) for b in dp.list_blocks()) == [
        ("2001:db8:aa::/48", True), ("203.0.113.0/24", True)]
    assert list(dp.table("blocks").items()) == []
    dp.configure(heartbeat_timeout=None)
    assert dp.read_config().cidr_blocks == 2, "configure keeps the count"

    assert run(dp, v4_syn("203.0.113.77")) == XDP_DROP
    assert run(dp, v4_syn("203.0.113.0", flags=ACK)) == XDP_DROP
    assert run(dp, v6_syn("::ffff:203.0.113.9")) == XDP_DROP
    assert run(dp, v6_syn("2001:db8:aa:5::1")) == XDP_DROP
    assert run(dp, v4_syn("203.0.114.1")) == XDP_PASS
    assert run(dp, v6_syn("2001:db8:ab::1")) == XDP_PASS
    assert nonzero(dp) == {"drop_blocked": 3, "drop_session": 1, "passed": 2}
    assert drops_of(dp, "203.0.113.0/24") == 3
    assert drops_of(dp, "2001:db8:aa::/48") == 1

    assert dp.remove_block(ip_network("203.0.113.0/24")) is True
    assert dp.read_config().cidr_blocks == 1
    assert run(dp, v4_syn("203.0.113.77")) == XDP_PASS
    assert dp.remove_block(ip_network("2001:db8:aa::/48")) is True
    assert dp.read_config().cidr_blocks == 0
    assert run(dp, v6_syn("2001:db8:aa:5::1")) == XDP_PASS
    assert dp.remove_block(ip_network("2001:db8:aa::/48")) is False
    assert dp.list_blocks() == []


def test_expired_cidr_block_passes(dp):
    dp.add_block(ip_network("203.0.113.0/24"), time.time() - 1, "manual", "manual")
    assert dp.read_config().cidr_blocks == 1
    assert run(dp, v4_syn("203.0.113.77")) == XDP_PASS
    assert nonzero(dp) == {"passed": 1}


def test_cidr_block_monitor_mode(dp):
    dp.configure(monitor=True, heartbeat_timeout=None)
    block(dp, "203.0.113.0/24")
    assert run(dp, v4_syn("203.0.113.77")) == XDP_PASS
    assert nonzero(dp) == {"monitor_pass": 1}
    assert drops_of(dp, "203.0.113.0/24") == 1


def test_whitelisted_address_inside_cidr_block_passes(dp):
    block(dp, "203.0.113.0/24")
    dp.sync_whitelist([ip_network("203.0.113.5/32")])
    assert run(dp, v4_syn("203.0.113.5")) == XDP_PASS
    assert run(dp, v4_syn("203.0.113.6")) == XDP_DROP
    assert drops_of(dp, "203.0.113.0/24") == 1


def test_whitelisted_address_inside_cidr_block_counts_whitelist_pass(dp):
    block(dp, "203.0.113.0/24")
    dp.sync_whitelist([ip_network("203.0.113.5/32")])
    assert run(dp, v4_syn("203.0.113.5", flags=ACK)) == XDP_PASS
    assert nonzero(dp) == {"whitelist_pass": 1}


# ---- connection-rate limit ------------------------------------------------------------------

X = 5


def test_rate_limit_trips_blocks_and_reports(dp):
    dp.configure(connections=X, connections_minutes=1, block_minutes=10, heartbeat_timeout=None)
    set_track(dp, src(A), cur=X, established=1)
    assert run(dp, v4_syn(A)) == XDP_DROP
    assert nonzero(dp) == {"drop_rate": 1, "blocks_made": 1}
    [b] = dp.list_blocks()
    assert (b.source, b.reason, b.origin, b.cidr, b.drops) == (
        ip_network(f"{A}/32"), "connections", "kernel", False, 1)
    assert time.time() + 600 - 2 < b.expires <= time.time() + 600 + 1
    [ev] = dp.poll_events(100)
    assert (ev.source, ev.reason, ev.count) == (ip_network(f"{A}/32"), "connections", X + 1)
    assert (ev.monitor, ev.table_full, ev.tracepoint) == (False, False, False)
    assert ev.expires == pytest.approx(b.expires, abs=1)
    tr = get_track(dp, src(A))
    assert (tr.cur, tr.prev, tr.syn, tr.established) == (0, 0, 0, 1)
    # Now blocked: the next SYN and session packets are refused by the block.
    assert run(dp, v4_syn(A)) == XDP_DROP
    assert run(dp, v4_syn(A, flags=ACK)) == XDP_DROP
    assert nonzero(dp) == {"drop_rate": 1, "blocks_made": 1, "drop_blocked": 1,
                           "drop_session": 1}
    assert drops_of(dp, f"{A}/32") == 3
    assert dp.poll_events(0) == []
    assert run(dp, v4_syn(B)) == XDP_PASS, "another source is not affected"


def test_rate_limit_below_x_passes(dp):
    dp.configure(connections=X, heartbeat_timeout=None)
    set_track(dp, src(A), cur=X - 1)
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert nonzero(dp) == {"passed": 1}
    assert dp.list_blocks() == []
    assert dp.poll_events(50) == []
    assert get_track(dp, src(A)).cur == X - 1, "XDP does not count handshakes"


def test_rate_limit_ipv6_blocks_the_prefix(dp):
    dp.configure(connections=X, heartbeat_timeout=None)
    set_track(dp, src(V6), cur=X)
    assert run(dp, v6_syn(V6_SAME)) == XDP_DROP
    [ev] = dp.poll_events(100)
    assert (ev.source, ev.count) == (ip_network("2001:db8:1:2::/64"), X + 1)
    assert run(dp, v6_syn(V6)) == XDP_DROP
    assert run(dp, v6_syn(V6_OTHER)) == XDP_PASS
    assert nonzero(dp) == {"drop_rate": 1, "blocks_made": 1, "drop_blocked": 1, "passed": 1}


@pytest.mark.parametrize("cur,prev,elapsed,verdict", [
    (0, X, 0.5, XDP_PASS),         # X * 0.5 of the previous window still counts
    (X // 2 + 1, X, 0.5, XDP_DROP),  # + the current window's reaches X
    (X, 0, 0.99, XDP_DROP),
    (0, X, 1.5, XDP_PASS),         # the current window is over: prev no longer counts
    (X, 0, 1.5, XDP_PASS),         # the last window weighs 0.5: X * 0.5
    (2 * X, 0, 1.25, XDP_DROP),    # ... 2X * 0.75
    (X, 0, 1.01, XDP_PASS),        # ... X * 0.99 rounds down below X
    (100 * X, 100 * X, 2.0, XDP_PASS),  # two windows old: nothing counts
])
def test_rate_limit_sliding_window(dp, cur, prev, elapsed, verdict):
    dp.configure(connections=X, connections_minutes=1, heartbeat_timeout=None)
    set_track(dp, src(A), cur=cur, prev=prev, win_start=mono_ns() - int(elapsed * MIN))
    assert run(dp, v4_syn(A)) == verdict
    if verdict == XDP_DROP:
        assert nonzero(dp) == {"drop_rate": 1, "blocks_made": 1}
        assert len(dp.poll_events(100)) == 1
    else:
        assert nonzero(dp) == {"passed": 1}
        assert dp.list_blocks() == []


def test_rate_limit_off_with_zero(dp):
    dp.configure(connections=0, simultaneous=0, heartbeat_timeout=None)
    set_track(dp, src(A), cur=10_000, prev=10_000, established=10_000)
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert nonzero(dp) == {"passed": 1}


def test_rate_limit_in_monitor_mode(dp):
    dp.configure(connections=X, monitor=True, heartbeat_timeout=None)
    set_track(dp, src(A), cur=X)
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert nonzero(dp) == {"monitor_pass": 1, "blocks_made": 1}
    [ev] = dp.poll_events(100)
    assert ev.monitor is True and ev.reason == "connections"
    [b] = dp.list_blocks()
    assert b.origin == "kernel"
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert nonzero(dp) == {"monitor_pass": 2, "blocks_made": 1}


def test_rate_limit_reblocks_over_an_expired_entry(dp):
    dp.configure(connections=X, heartbeat_timeout=None)
    put_block(dp, src(A), mono_ns() - SEC, drops=7)
    set_track(dp, src(A), cur=X)
    assert run(dp, v4_syn(A)) == XDP_DROP
    assert nonzero(dp) == {"drop_rate": 1, "blocks_made": 1}
    b = get_block(dp, src(A))
    assert (abi.REASONS[b.reason], abi.ORIGINS[b.origin], b.drops) == ("connections", "kernel", 1)
    assert b.expires > mono_ns()


# ---- simultaneous limit ---------------------------------------------------------------------


def test_simultaneous_limit_trips(dp):
    dp.configure(connections=1000, simultaneous=3, heartbeat_timeout=None)
    set_track(dp, src(A), established=3)
    assert run(dp, v4_syn(A)) == XDP_DROP
    assert nonzero(dp) == {"drop_simultaneous": 1, "blocks_made": 1}
    [b] = dp.list_blocks()
    assert (b.source, b.reason, b.origin) == (ip_network(f"{A}/32"), "simultaneous", "kernel")
    [ev] = dp.poll_events(100)
    assert (ev.reason, ev.count, ev.table_full) == ("simultaneous", 4, False)
    tr = get_track(dp, src(A))
    assert (tr.cur, tr.prev, tr.syn, tr.established) == (0, 0, 0, 3)


def test_simultaneous_below_limit_passes(dp):
    dp.configure(connections=1000, simultaneous=3, heartbeat_timeout=None)
    set_track(dp, src(A), established=2)
    set_track(dp, src(B), established=-1)  # a transient negative count is "none"
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert run(dp, v4_syn(B)) == XDP_PASS
    assert nonzero(dp) == {"passed": 2}
    assert dp.poll_events(50) == []


# ---- SYN cap --------------------------------------------------------------------------------


def test_syn_cap_drops_excess_without_block(dp):
    dp.configure(syn_per_second=3, heartbeat_timeout=None)
    verdicts = [run(dp, v4_syn(A)) for _ in range(6)]
    assert verdicts == [XDP_PASS] * 3 + [XDP_DROP] * 3
    assert nonzero(dp) == {"passed": 3, "drop_syn_cap": 3}
    assert dp.list_blocks() == []
    assert dp.poll_events(50) == []
    assert get_track(dp, src(A)).syn & abi.SYN_COUNT == 6
    # Per source: another one is not affected; non-SYN packets do not count.
    assert run(dp, v4_syn(B)) == XDP_PASS
    assert run(dp, v4_syn(A, flags=ACK)) == XDP_PASS
    assert get_track(dp, src(A)).syn & abi.SYN_COUNT == 6
    assert dp.sources()[0].syn_per_second in (6, 1)  # `top` reads the count, not the flags


def test_syn_cap_second_rolls_over(dp):
    dp.configure(syn_per_second=2, heartbeat_timeout=None)
    set_track(dp, src(A), syn=2, syn_start=mono_ns() - SEC // 2)
    assert run(dp, v4_syn(A)) == XDP_DROP
    set_track(dp, src(A), syn=50, syn_start=mono_ns() - SEC - SEC // 10)
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert get_track(dp, src(A)).syn == 1
    assert nonzero(dp) == {"drop_syn_cap": 1, "passed": 1}


def test_syn_cap_ipv6_per_prefix(dp):
    dp.configure(syn_per_second=2, heartbeat_timeout=None)
    frames = [v6_syn(f"2001:db8:1:2::{i}") for i in range(1, 5)]
    assert [run(dp, f) for f in frames] == [XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]
    assert nonzero(dp) == {"passed": 2, "drop_syn_cap": 2}


# Spoofing SYNs with a whitelisted or exempt address must not starve that host: the cap
# applies only to sources the whitelist and the exemption say to screen.


@pytest.mark.parametrize("wl", [f"{A}/32", "198.51.100.0/24"])
def test_syn_cap_spares_a_whitelisted_source(dp, wl):
    dp.configure(syn_per_second=3, heartbeat_timeout=None)
    dp.sync_whitelist([ip_network(wl)])
    assert [run(dp, v4_syn(A)) for _ in range(10)] == [XDP_PASS] * 10
    assert nonzero(dp) == {"passed": 10, "exempt_pass": 7}
    assert get_track(dp, src(A)).syn == 10 | abi.SYN_ASKED | abi.SYN_SPARED
    # Someone else is capped as before (asked once, then dropped from the cache).
    assert [run(dp, v4_syn("192.0.2.77")) for _ in range(5)] == [XDP_PASS] * 3 + [XDP_DROP] * 2
    assert get_track(dp, src("192.0.2.77")).syn == 5 | abi.SYN_ASKED
    assert nonzero(dp) == {"passed": 13, "exempt_pass": 7, "drop_syn_cap": 2}
    assert dp.list_blocks() == []


def test_syn_cap_spares_an_exempt_source(dp):
    dp.configure(syn_per_second=2, heartbeat_timeout=None)
    dp.exempt(ip_network(f"{A}/32"), time.time() + 600)
    dp.exempt(ip_network("2001:db8:1:2::/64"), time.time() + 600)
    assert [run(dp, v4_syn(A)) for _ in range(6)] == [XDP_PASS] * 6
    assert [run(dp, v6_syn(f"2001:db8:1:2::{i}")) for i in range(1, 7)] == [XDP_PASS] * 6
    assert nonzero(dp) == {"passed": 12, "exempt_pass": 8}
    # An expired exemption spares no more (a new second: the cached answer is gone).
    dp.exempt(ip_network(f"{A}/32"), time.time() - 1)
    set_track(dp, src(A), syn=2, syn_start=mono_ns() - 2 * SEC)
    assert [run(dp, v4_syn(A)) for _ in range(4)] == [XDP_PASS] * 2 + [XDP_DROP] * 2


@pytest.mark.parametrize("order", ["neighbours-first", "whitelisted-first"])
def test_syn_cap_whitelisted_address_inside_a_flooded_prefix(dp, order):
    """The cap counts per /64; the whitelist answers per address, so each SYN over the cap
    asks it: neither the neighbours' answer nor the whitelisted host's is kept for the other."""
    dp.configure(syn_per_second=2, heartbeat_timeout=None)
    dp.sync_whitelist([ip_network("2001:db8:1:2::5/128")])
    host, spoofed = v6_syn("2001:db8:1:2::5"), v6_syn("2001:db8:1:2::6")
    first, second = (spoofed, host) if order == "neighbours-first" else (host, spoofed)
    for _ in range(4):
        run(dp, first)
    assert [run(dp, host) for _ in range(3)] == [XDP_PASS] * 3
    assert [run(dp, spoofed) for _ in range(3)] == [XDP_DROP] * 3
    assert run(dp, second) == (XDP_PASS if second is host else XDP_DROP)


def test_syn_cap_off_and_monitor(dp):
    dp.configure(syn_per_second=0, heartbeat_timeout=None)
    assert all(run(dp, v4_syn(A)) == XDP_PASS for _ in range(30))
    dp.configure(syn_per_second=1, monitor=True, heartbeat_timeout=None)
    set_track(dp, src(A), syn=1)
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert nonzero(dp) == {"passed": 30, "monitor_pass": 1}


# ---- heartbeat ------------------------------------------------------------------------------


@pytest.mark.parametrize("stamp", ["never", "stale"])
def test_stale_heartbeat_pauses_limits_but_not_blocks(dp, stamp):
    dp.configure(connections=X, simultaneous=2, syn_per_second=3, heartbeat_timeout=10)
    set_heartbeat(dp, 0 if stamp == "never" else mono_ns() - 11 * SEC)
    block(dp, f"{B}/32")
    set_track(dp, src(A), cur=X, established=2)
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert nonzero(dp) == {"paused": 1, "passed": 1}
    assert [b.source for b in dp.list_blocks()] == [ip_network(f"{B}/32")]
    assert dp.poll_events(50) == []
    assert run(dp, v4_syn(B)) == XDP_DROP, "existing blocks are enforced"
    assert run(dp, v4_syn(B, flags=ACK)) == XDP_DROP
    # The SYN cap needs no live counting: it still applies.
    assert [run(dp, v4_syn(A)) for _ in range(3)] == [XDP_PASS, XDP_PASS, XDP_DROP]
    assert nonzero(dp) == {"paused": 3, "passed": 3, "drop_blocked": 1, "drop_session": 1,
                           "drop_syn_cap": 1}


def test_fresh_heartbeat_resumes_limits(dp):
    dp.configure(connections=X, heartbeat_timeout=10)
    set_heartbeat(dp, 0)
    set_track(dp, src(A), cur=X)
    assert run(dp, v4_syn(A)) == XDP_PASS
    dp.heartbeat()
    # Immediately: the coarse kernel clock lags the stamp, which must still count as fresh.
    assert run(dp, v4_syn(A)) == XDP_DROP
    assert nonzero(dp) == {"paused": 1, "passed": 1, "drop_rate": 1, "blocks_made": 1}
    [ev] = dp.poll_events(100)
    assert ev.reason == "connections"


def test_heartbeat_stamp_ahead_of_kernel_clock_is_fresh(dp):
    """Loop until no clock tick fell between the stamp and the run: the SYN then saw a
    heartbeat from its own future (coarse clock), which must not read as stale."""
    dp.configure(connections=X, heartbeat_timeout=10)
    clock_monotonic_coarse = 6
    for _ in range(50):
        set_track(dp, src(A), cur=X)
        dp.heartbeat()
        hb = dp.table("heartbeat")[dp.table("heartbeat").Key(0)].value
        verdict = run(dp, v4_syn(A))
        seen = time.clock_gettime_ns(clock_monotonic_coarse)
        if verdict == XDP_DROP:
            dp.remove_block(ip_network(f"{A}/32"))
        if seen < hb:
            break
    assert verdict == XDP_DROP
    assert nonzero(dp).get("paused", 0) == 0


def test_heartbeat_timeout_off_never_pauses(dp):
    dp.configure(connections=X, heartbeat_timeout=None)
    set_heartbeat(dp, 0)
    set_track(dp, src(A), cur=X)
    assert run(dp, v4_syn(A)) == XDP_DROP
    assert nonzero(dp) == {"drop_rate": 1, "blocks_made": 1}


# ---- block table full -----------------------------------------------------------------------


def test_block_table_full(xdp_plane):
    with own_plane(max_blocks=4) as d:
        d.configure(connections=X, heartbeat_timeout=None)
        for i in range(4):
            d.add_block(ip_network(f"192.0.2.{i + 1}/32"), time.time() + 600, "manual", "manual")
        assert len(d.list_blocks()) == 4
        set_track(d, src(A), cur=X)
        assert run(d, v4_syn(A)) == XDP_PASS
        assert nonzero(d) == {"table_full": 1, "passed": 1}
        assert ip_network(f"{A}/32") not in [b.source for b in d.list_blocks()]
        [ev] = d.poll_events(100)
        assert (ev.source, ev.reason, ev.table_full, ev.expires, ev.count) == (
            ip_network(f"{A}/32"), "connections", True, None, X + 1)
        # Python's add_block refuses with a clear error, nothing else changes.
        with pytest.raises(BlockTableFull, match="max_blocks"):
            d.add_block(ip_network(f"{B}/32"), time.time() + 600, "manual", "manual")
        assert len(d.list_blocks()) == 4
        # Existing blocks can still be extended, and still drop.
        d.add_block(ip_network("192.0.2.1/32"), time.time() + 1200, "manual", "manual")
        assert run(d, v4_syn("192.0.2.1")) == XDP_DROP
        # Ranges live in the trie and are not limited by max_blocks.
        d.add_block(ip_network("203.0.113.0/24"), time.time() + 600, "manual", "manual")
        assert run(d, v4_syn("203.0.113.9")) == XDP_DROP
        # Room again after a removal: the kernel blocks the source.
        assert d.remove_block(ip_network("192.0.2.4/32"))
        set_track(d, src(A), cur=X)
        assert run(d, v4_syn(A)) == XDP_DROP
        assert get_block(d, src(A)) is not None


def test_block_table_full_of_expired_entries_reuses_the_source_slot(xdp_plane):
    with own_plane(max_blocks=4) as d:
        d.configure(connections=X, heartbeat_timeout=None)
        for i in range(3):
            put_block(d, src(f"192.0.2.{i + 1}"), mono_ns() + 600 * SEC)
        put_block(d, src(A), mono_ns() - SEC)  # expired, still in the table
        set_track(d, src(A), cur=X)
        assert run(d, v4_syn(A)) == XDP_DROP
        assert nonzero(d) == {"drop_rate": 1, "blocks_made": 1}


# ---- add/remove from Python resets the source -----------------------------------------------


@pytest.mark.parametrize("source", [f"{A}/32", "2001:db8:1:2::/64"])
def test_add_and_remove_block_reset_the_source(dp, source):
    net = ip_network(source)
    set_track(dp, net, cur=4, prev=3, syn=7, established=2, win_start=mono_ns() - 10 * SEC)
    dp.add_block(net, time.time() + 600, "auth_failures", "logs")
    tr = get_track(dp, net)
    assert (tr.cur, tr.prev, tr.syn, tr.established) == (0, 0, 0, 2)
    assert tr.win_start >= mono_ns() - 5 * SEC
    set_track(dp, net, cur=4, prev=3, syn=7, established=2)
    assert dp.remove_block(net) is True
    tr = get_track(dp, net)
    assert (tr.cur, tr.prev, tr.syn, tr.established) == (0, 0, 0, 2)
    assert dp.remove_block(net) is False


def test_unblocked_source_starts_afresh_in_the_kernel(dp):
    dp.configure(connections=X, heartbeat_timeout=None)
    set_track(dp, src(A), cur=X)
    assert run(dp, v4_syn(A)) == XDP_DROP
    assert dp.remove_block(ip_network(f"{A}/32"))
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert nonzero(dp) == {"drop_rate": 1, "blocks_made": 1, "passed": 1}


def test_add_block_without_track_state_creates_none(dp):
    block(dp, f"{A}/32")
    assert get_track(dp, src(A)) is None
    assert dp.remove_block(ip_network(f"{A}/32"))
    assert get_track(dp, src(A)) is None


def test_kernel_event_ipv6_addresses_unmasked_are_not_used(dp):
    """The event and the block carry the prefix key, never the full address."""
    dp.configure(connections=X, heartbeat_timeout=None)
    set_track(dp, src(V6), cur=X)
    assert run(dp, v6_syn("2001:db8:1:2:dead:beef:1:2")) == XDP_DROP
    [ev] = dp.poll_events(100)
    assert ev.source == ip_network("2001:db8:1:2::/64")
    t = dp.table("blocks")
    [k] = [bytes(k) for k in t]
    assert k == ip_address("2001:db8:1:2::").packed
    assert to_unix(get_block(dp, src(V6)).expires) > time.time()


def test_ipv6_chain_longer_than_the_walk_counts_parse_fail(dp):
    block(dp, "2001:db8:1:2::/64")
    chain = (NEXTHDR_HOP,) + (NEXTHDR_DEST,) * 8
    assert run(dp, v6_ext_frame(V6_OTHER, chain)) == XDP_PASS
    assert nonzero(dp) == {"parse_fail": 1}


def test_heartbeat_thread_keeps_the_limits_live_while_the_loop_is_blocked(dp):
    """The daemon stamps from a thread of its own: an event loop held for longer than the
    kernel's heartbeat timeout (here 1 s) does not pause the limits."""
    dp.configure(connections=X, heartbeat_timeout=1)
    set_heartbeat(dp, 0)
    beat = HeartbeatThread(dp.heartbeat_stamper(), 0.2)

    async def held_loop() -> None:
        beat.start()
        time.sleep(2.5)  # a step that holds the loop, 2.5 x the timeout

    try:
        asyncio.run(held_loop())
        set_track(dp, src(A), cur=X)
        assert run(dp, v4_syn(A)) == XDP_DROP
    finally:
        beat.stop()
    assert nonzero(dp).get("paused", 0) == 0
    assert beat.beats >= 10 and beat.failures == 0


# ---- the block filter in front of the table ------------------------------------------------


def test_block_filter_is_armed_at_load_and_skips_the_lookup_of_a_clear_bit(xdp_plane):
    """A source whose filter bit is clear is never looked up: an entry written without its
    bit is not seen (what filter_mark is owed for); disarmed, the lookup decides again."""
    with own_plane() as d:
        assert d.filter_armed and d.read_config().flags & abi.F_FILTER
        block(d, f"{A}/32")
        assert run(d, v4_syn(A, flags=ACK)) == XDP_DROP
        b = abi.Block()
        b.expires, b.reason, b.origin = mono_ns() + 600 * SEC, 6, 3
        t = d.table("blocks")
        t[_tkey(t, src(B))] = t.Leaf.from_buffer_copy(bytes(b))  # no filter bit
        assert run(d, v4_syn(B, flags=ACK)) == XDP_PASS
        assert run(d, v4_syn(B)) == XDP_PASS
        cfg = d.read_config()
        cfg.flags &= ~abi.F_FILTER
        t = d.table("config")
        t[t.Key(0)] = t.Leaf.from_buffer_copy(bytes(cfg))
        assert run(d, v4_syn(B, flags=ACK)) == XDP_DROP
        d.configure(heartbeat_timeout=None)  # keeps the armed flag
        assert d.read_config().flags & abi.F_FILTER


@pytest.mark.parametrize("source", [A, V6])
def test_block_filter_is_marked_by_the_bulk_write(xdp_plane, source):
    """The block list's bulk write (start-up restore, reconciliation) sets the filter bits
    before the entries while the filter is armed: the restored source is dropped."""
    import time as _time

    from dynscreen.control.dataplane.blocktable import KernelBlockTable, KernelRow
    from dynscreen.control.sourcekey import SourceKey

    with own_plane() as d:
        assert d.filter_armed
        row = KernelRow(SourceKey.from_network(src(source)), _time.time() + 600, 0, "manual",
                        "file")
        KernelBlockTable(d).write_rows([row])
        ack = v4_syn(source, flags=ACK) if ":" not in source else v6_syn(source, flags=ACK)
        assert run(d, ack) == XDP_DROP


@pytest.mark.parametrize("source", [A, V6])
def test_block_filter_kernel_made_block_sets_its_bit(xdp_plane, source):
    """A block the kernel makes (here the rate limit) sets its bit in the kernel's half of
    the filter before the entry: the source's next packets are dropped."""
    with own_plane() as d:
        d.configure(connections=X, heartbeat_timeout=None)
        syn = v4_syn(source) if ":" not in source else v6_syn(source)
        ack = v4_syn(source, flags=ACK) if ":" not in source else v6_syn(source, flags=ACK)
        set_track(d, src(source), cur=X)
        assert run(d, syn) == XDP_DROP
        assert get_block(d, src(source)) is not None
        assert run(d, ack) == XDP_DROP
        assert nonzero(d) == {"drop_rate": 1, "blocks_made": 1, "drop_session": 1}


def test_block_filter_rebuilt_from_the_table_at_arming(xdp_plane):
    """Arming reads the table: entries that were there before (written without bits, as an
    older program would have) are found."""
    with own_plane() as d:
        d.filter_armed = False
        b = abi.Block()
        b.expires, b.reason, b.origin = mono_ns() + 600 * SEC, 6, 3
        t = d.table("blocks")
        t[_tkey(t, src(B))] = t.Leaf.from_buffer_copy(bytes(b))
        d.filter_mark([])  # nothing marked for B
        assert d.arm_filter()
        assert run(d, v4_syn(B, flags=ACK)) == XDP_DROP


def test_a_track_entry_that_cannot_be_made_is_counted():
    """A SYN whose source gets no track entry passes unchecked: that is counted
    (track_fail), never silent. The LRU evicts rather than fail, so a plain hash of one
    entry stands in for a map that cannot take the entry."""
    from dynscreen.control.dataplane.loader import bpf_source

    text = bpf_source()[0]
    lru = 'DS_MAP("lru_hash", struct ds_key, struct ds_track, track, DS_MAX_TRACKED, 0);'
    assert lru in text
    text = text.replace(lru, 'DS_MAP("hash", struct ds_key, struct ds_track, track, '
                             'DS_MAX_TRACKED, BPF_F_NO_PREALLOC);')
    with own_plane(max_tracked=1, source=text) as d:
        assert run(d, v4_syn(A)) == XDP_PASS      # A's entry: the map is full
        assert run(d, v4_syn(A)) == XDP_PASS      # found
        assert nonzero(d) == {"passed": 2}
        assert run(d, v4_syn(B)) == XDP_PASS      # no room for B's
        assert nonzero(d) == {"passed": 3, "track_fail": 1}


# ---- the blocked-source cache (per CPU, in front of the block table) -----------------------


def runs(dp, frame: bytes, repeat: int) -> int:
    """One BPF_PROG_TEST_RUN of `repeat` runs (all on one CPU: its cache is filled by the
    first and used by the rest)."""
    return bpfsys.prog_test_run(dp.prog_fd, frame, repeat).retval


def test_bcache_drops_a_blocked_source_and_counts_every_drop(dp):
    """The runs after the first find the source in the cache; every drop is counted, both in
    the counters and in the block's drops (the entry's plus what the cache holds), whichever
    reader asks. The cache hands its drops over to the entry every 64: of the 199 it counted,
    3 * 64 are in the entry (with the first run's), the rest are read from the cache."""
    from dynscreen.control.dataplane.blocktable import KernelBlockTable
    from dynscreen.control.sourcekey import SourceKey

    block(dp, f"{A}/32")
    assert runs(dp, v4_syn(A), 200) == XDP_DROP
    assert nonzero(dp) == {"drop_blocked": 200}
    assert get_block(dp, src(A)).drops == 1 + 3 * abi.BCACHE_FLUSH
    assert drops_of(dp, f"{A}/32") == 200
    assert dp.block_drops([src(A)]) == {src(A): 200}
    assert KernelBlockTable(dp).read_drops() == {int(SourceKey.from_network(src(A))): 200}


@pytest.mark.parametrize("how", ["remove_block", "delete_rows", "rewritten expired"])
def test_bcache_forgets_a_block_the_control_plane_lifts(dp, how):
    """A source the cache holds passes at once when its block is removed (one at a time, in
    bulk) or rewritten as expired: every change of the table raises config.block_gen."""
    from dynscreen.control.dataplane.blocktable import KernelBlockTable
    from dynscreen.control.sourcekey import SourceKey

    block(dp, f"{A}/32")
    assert runs(dp, v4_syn(A), 3) == XDP_DROP
    if how == "remove_block":
        assert dp.remove_block(src(A))
    elif how == "delete_rows":
        assert KernelBlockTable(dp).delete_rows([int(SourceKey.from_network(src(A)))]) == 1
    else:
        block(dp, f"{A}/32", seconds=-5)
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert nonzero(dp) == {"drop_blocked": 3, "passed": 1}


def test_bcache_block_made_again_starts_from_its_own_drops(dp):
    """Drops the cache held for a block that was removed are never credited to the block
    made again for the same source (in the kernel nor by a reader)."""
    block(dp, f"{A}/32")
    assert runs(dp, v4_syn(A), 5) == XDP_DROP
    assert dp.remove_block(src(A))
    block(dp, f"{A}/32")
    assert drops_of(dp, f"{A}/32") == 0
    assert run(dp, v4_syn(A)) == XDP_DROP
    assert drops_of(dp, f"{A}/32") == 1
    assert get_block(dp, src(A)).drops == 1


def test_bcache_whitelisted_address_inside_a_cached_prefix_passes(dp):
    """A /64 the cache holds still asks the whitelist for each address (as the table's
    path does): a whitelisted address inside it passes, the others are dropped."""
    block(dp, "2001:db8:1:2::/64")
    assert runs(dp, v6_syn(V6), 3) == XDP_DROP
    dp.sync_whitelist([ip_network(f"{V6_SAME}/128")])
    assert run(dp, v6_syn(V6_SAME)) == XDP_PASS
    assert runs(dp, v6_syn(V6), 2) == XDP_DROP
    assert nonzero(dp) == {"drop_blocked": 5, "whitelist_pass": 1}


def test_bcache_fragments_of_a_cached_source_are_dropped(dp):
    """The unscreenable path (fragments) asks the same standing check: a cached source's
    fragments are dropped too, and its drops counted."""
    block(dp, f"{A}/32")
    assert runs(dp, v4_syn(A), 3) == XDP_DROP
    frag = v4_frame(A, bytes(40), frag=185)  # a non-first fragment
    assert runs(dp, frag, 2) == XDP_DROP
    assert nonzero(dp) == {"drop_blocked": 3, "drop_fragment": 2}
    assert drops_of(dp, f"{A}/32") == 5


@pytest.fixture
def pin_root(tmp_path) -> Iterator[object]:
    """A bpffs of our own (outside /sys) for a pinned plane."""
    from netns import own_bpffs

    with own_bpffs(f"bcache-{tmp_path.name[-12:]}") as pins:
        yield pins


# ---- range blocks in the blocked-source cache ------------------------------------------------

RANGE = "198.51.100.0/24"  # holds A and B
OTHER_RANGE = "203.0.113.0/24"


def range_entry(dp, net: str) -> abi.Block:
    t = dp.table("cidr_blocks")
    return abi.Block.from_buffer_copy(
        bytes(t[t.Key.from_buffer_copy(bytes(abi.lpm_key_for(ip_network(net))))]))


def test_bcache_drops_a_range_blocked_source_and_counts_on_the_range(dp):
    """A source dropped by a range (no filter bit of its own) is cached by its address:
    the runs after the first skip the trie, and their drops go to the range's entry (every
    64, the rest read from the cache by every reader), never to an entry of the source."""
    from dynscreen.control.dataplane.blocktable import KernelBlockTable
    from dynscreen.control.sourcekey import SourceKey

    block(dp, RANGE)
    assert runs(dp, v4_syn(A), 200) == XDP_DROP
    assert range_entry(dp, RANGE).drops == 1 + 3 * abi.BCACHE_FLUSH
    assert runs(dp, v4_syn(B), 3) == XDP_DROP  # another source of the same range
    assert nonzero(dp) == {"drop_blocked": 203}
    assert get_block(dp, src(A)) is None
    assert drops_of(dp, RANGE) == 203
    assert dp.block_drops([ip_network(RANGE)]) == {ip_network(RANGE): 203}
    assert KernelBlockTable(dp).read_drops() == {
        int(SourceKey.from_network(ip_network(RANGE))): 203}


def test_bcache_whitelisted_address_inside_a_cached_range_passes(dp):
    """A cached range hit still asks the whitelist (no whitelist change raises block_gen):
    an address whitelisted after its range drops were cached passes at once."""
    block(dp, RANGE)
    assert runs(dp, v4_syn(A), 3) == XDP_DROP
    dp.sync_whitelist([ip_network(f"{A}/32")])
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert runs(dp, v4_syn(B), 2) == XDP_DROP
    assert nonzero(dp) == {"drop_blocked": 5, "whitelist_pass": 1}


@pytest.mark.parametrize("how", ["remove_block", "delete_rows", "rewritten expired"])
def test_bcache_forgets_a_range_the_control_plane_lifts(dp, how):
    """A cached range source passes at once when its range is removed (one, in bulk) or
    rewritten as expired: every writer of the trie raises config.block_gen."""
    from dynscreen.control.dataplane.blocktable import KernelBlockTable
    from dynscreen.control.sourcekey import SourceKey

    block(dp, RANGE)
    block(dp, OTHER_RANGE)  # the trie is not left empty (an empty one is never asked)
    assert runs(dp, v4_syn(A), 3) == XDP_DROP
    if how == "remove_block":
        assert dp.remove_block(ip_network(RANGE))
    elif how == "delete_rows":
        assert KernelBlockTable(dp).delete_rows(
            [int(SourceKey.from_network(ip_network(RANGE)))]) == 1
    else:
        block(dp, RANGE, seconds=-5)
    assert run(dp, v4_syn(A)) == XDP_PASS
    assert nonzero(dp) == {"drop_blocked": 3, "passed": 1}


def test_bcache_range_source_with_its_own_block_keeps_both_right(dp):
    """A source cached by its range and then blocked on its own is dropped by its own
    entry once the range goes (the table's entry is asked first, the range's cache entry
    is not trusted after the change)."""
    block(dp, RANGE)
    assert runs(dp, v4_syn(A), 3) == XDP_DROP
    block(dp, f"{A}/32")
    assert dp.remove_block(ip_network(RANGE))
    assert runs(dp, v4_syn(A), 2) == XDP_DROP
    assert drops_of(dp, f"{A}/32") == 2
    assert run(dp, v4_syn(B)) == XDP_PASS


@pytest.mark.parametrize("made, lifted", [
    ((f"{A}/32",), f"{A}/32"),
    # a second range: the trie is not left empty (an empty one is never asked)
    ((RANGE, OTHER_RANGE), RANGE),
], ids=["block", "range"])
def test_bcache_forgets_a_block_removed_offline_through_the_pins(pin_root, made, lifted):
    """`dynscreen unblock` without a daemon edits the pinned maps while the program stays
    attached: it raises the pinned config's block_gen, so the program's cache lets the
    source (or the range's sources) through at once."""
    from dynscreen.control.dataplane.pins import PinnedMaps

    d = DataPlane(pin_path=pin_root, max_blocks=4096, max_tracked=256, tracepoint=False)
    d.load()
    try:
        d.configure(heartbeat_timeout=None)
        for net in made:
            block(d, net)
        assert runs(d, v4_syn(A), 3) == XDP_DROP
        with PinnedMaps(pin_root) as pins:
            assert pins.remove_block(ip_network(lifted))
        assert run(d, v4_syn(A)) == XDP_PASS
    finally:
        d.close()


def test_counters_carry_the_kernels_skip_count_of_each_program(dp):
    """counters() reads each program's recursion_misses from the kernel (status --json and
    dynscreen_kernel_program_skips_total): the XDP program is never skipped; a plane without
    the counting programs reports none for them."""
    c = dp.counters()
    assert c[abi.PROGRAM_SKIPS + "xdp_screen"] == 0
    assert {k for k in c if k.startswith(abi.PROGRAM_SKIPS)} == {abi.PROGRAM_SKIPS + "xdp_screen"}
    assert dp.program_skips() == {"xdp_screen": bpfsys.prog_recursion_misses_fd(dp.prog_fd)}
