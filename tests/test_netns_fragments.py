"""A fragmented SYN from a blocked source, on real hosts: it must not open a connection.

An IPv4 SYN split after the first 8 bytes of its TCP header gives a first fragment too
short to read the flags from and a second one with no ports at all; the gateway's
kernel reassembles them into a SYN. The client sends them from a raw packet socket,
with a source address its own kernel does not hold (the gateway has a static
neighbour entry for it), so that the client answers nothing itself: the test reads the
SYN-ACK and completes the handshake by hand, and the server's accept() tells whether a
connection was made. In the same test an unblocked source does the same and connects
(the positive control: the server listens, the fragments reassemble).
"""

from __future__ import annotations

import json
import random
import socket
import struct
import time
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
from netns import GW_V4, Agent, NetLab, sh, wait_for

from conftest import have, require, require_bpf

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]

ETH_P_IP = 0x0800
BLOCKED = "10.77.0.50"     # spoofed by the client namespace, blocked
CLEAN = "10.77.0.51"       # spoofed by the client namespace, not blocked
SYN, ACK = 0x02, 0x10


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_bpf()
    require(have("ip"), "needs iproute2 (ip)")
    lab = NetLab().open()
    try:
        yield lab
    finally:
        lab.close()


def _mac(ns: str, ifname: str) -> bytes:
    info = json.loads(sh("ip", "-n", ns, "-j", "link", "show", ifname).stdout)
    return bytes.fromhex(info[0]["address"].replace(":", ""))


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0)
    pseudo = IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!BBH", 0, 6,
                                                                             len(head))
    return head[:16] + struct.pack("!H", _csum(pseudo + head)) + head[18:]


def _ipv4(src: str, dst: str, ident: int, frag: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, 6, 0,
                       IPv4Address(src).packed, IPv4Address(dst).packed)
    return head[:10] + struct.pack("!H", _csum(head)) + head[12:] + payload


class RawClient:
    """Frames sent and read on the client's veth end, below its own TCP stack."""

    def __init__(self, lab: NetLab) -> None:
        self.lab = lab
        self.cl_mac = _mac(lab.cl, lab.cl_if)
        self.gw_mac = _mac(lab.gw, lab.gw_if)
        with lab.inside(lab.cl):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self.sock.bind((lab.cl_if, ETH_P_IP))
        self.sock.settimeout(0.2)
        for addr in (BLOCKED, CLEAN):
            # The gateway reaches the spoofed addresses at the client's MAC; the client's
            # kernel does not hold them, so it neither answers ARP nor resets the SYN-ACK.
            sh("ip", "-n", lab.gw, "neigh", "replace", addr, "lladdr",
               self.cl_mac.hex(":"), "dev", lab.gw_if, "nud", "permanent")

    def send_ip(self, packet: bytes) -> None:
        self.sock.send(self.gw_mac + self.cl_mac + struct.pack("!H", ETH_P_IP) + packet)

    def fragmented_syn(self, src: str, sport: int, seq: int) -> None:
        """The SYN as two fragments: 8 bytes of TCP header (ports, sequence), then 12."""
        seg = _tcp(src, GW_V4, sport, 25, seq, 0, SYN)
        ident = random.randrange(1, 0xFFFF)
        self.send_ip(_ipv4(src, GW_V4, ident, 0x2000, seg[:8]))   # MF, offset 0
        self.send_ip(_ipv4(src, GW_V4, ident, 1, seg[8:]))        # offset 8 bytes, last

    def syn_ack(self, dst: str, dport: int, timeout: float) -> int | None:
        """The server's sequence number from a SYN-ACK to dst:dport, or None."""
        end = time.monotonic() + timeout
        want = IPv4Address(dst).packed
        while time.monotonic() < end:
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                continue
            ip = frame[14:]
            if len(ip) < 40 or ip[9] != 6 or ip[16:20] != want:
                continue
            tcp = ip[(ip[0] & 0x0F) * 4:]
            _, port, seq, _, _, flags = struct.unpack("!HHIIBB", tcp[:14])
            if port == dport and flags & (SYN | ACK) == SYN | ACK:
                return seq
        return None

    def connect(self, src: str, timeout: float) -> bool:
        """A handshake begun by a fragmented SYN; True when it could be completed."""
        sport, seq = random.randrange(20000, 60000), random.randrange(1, 2**31)
        self.fragmented_syn(src, sport, seq)
        server_seq = self.syn_ack(src, sport, timeout)
        if server_seq is None:
            return False
        self.send_ip(_ipv4(src, GW_V4, random.randrange(1, 0xFFFF), 0,
                           _tcp(src, GW_V4, sport, 25, seq + 1, server_seq + 1, ACK)))
        return True

    def close(self) -> None:
        self.sock.close()


def _peers(srv) -> list[str]:  # noqa: ANN001
    return [c.getpeername()[0] for c in srv.conns]


def test_fragmented_syn_from_a_blocked_source_opens_no_connection(lab: NetLab) -> None:
    srv = lab.listener(25)
    agent = Agent(lab)
    agent.ask("block", net=BLOCKED, minutes=5)
    raw = RawClient(lab)
    try:
        # Positive control first: the same fragments from an unblocked source connect.
        assert raw.connect(CLEAN, timeout=3), "no SYN-ACK for the unblocked source's SYN"
        assert wait_for(lambda: CLEAN in _peers(srv)), "the server accepted nothing"
        counters = agent.ask("counters")
        assert counters["fragment"] == 2 and counters["drop_fragment"] == 0

        assert not raw.connect(BLOCKED, timeout=1.5), "the blocked source got a SYN-ACK"
        time.sleep(0.3)
        assert BLOCKED not in _peers(srv)
        counters = agent.ask("counters")
        assert counters["drop_fragment"] == 2, counters
        [b] = [b for b in agent.ask("blocks") if b["ip"] == f"{BLOCKED}/32"]
        assert b["drops"] == 2
        # Still listening and still reachable: the control again, after the drop.
        assert raw.connect(CLEAN, timeout=3)
        assert wait_for(lambda: _peers(srv).count(CLEAN) == 2)
    finally:
        raw.close()
        srv.close()
