"""The data plane on real hosts: network namespaces, veth, real TCP, the real tracepoint.

Each test builds its own gateway and client namespaces and runs tests/dpagent.py
(a minimal control plane) in the gateway. The socket tracepoint sees every
namespace, so these tests never run in parallel.
"""

from __future__ import annotations

import socket
import time

import pytest
from netns import (
    CL2_V4,
    CL_V4,
    CL_V6,
    GW_V4,
    GW_V6,
    Agent,
    NetLab,
    lab_fixture,  # noqa: F401  (provides the `lab` fixture)
    sh,
    wait_for,
)

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]


def blocks_of(agent: Agent) -> dict[str, dict]:
    return {b["ip"]: b for b in agent.ask("blocks")}  # type: ignore[union-attr]


def test_rate_limit_drops_the_x_plus_first_connection(lab: NetLab) -> None:
    srv = lab.listener(25)
    agent = Agent(lab, "--connections", "3", "--minutes", "1")
    conns = [lab.connect(GW_V4) for _ in range(3)]
    assert all(conns), "the first X connections pass"
    assert wait_for(lambda: agent.ask("established").get(f"{CL_V4}/32") == 3)
    assert lab.connect(GW_V4) is None, "the (X+1)th times out"
    b = blocks_of(agent)[f"{CL_V4}/32"]
    assert (b["reason"], b["origin"]) == ("connections", "kernel")
    assert 590 < b["left"] <= 600
    events = agent.ask("events", timeout_ms=200)
    assert events == [{"ip": f"{CL_V4}/32", "reason": "connections", "count": 4,
                       "tracepoint": False}]
    assert lab.connect(GW_V4, src=CL2_V4) is not None, "another source is not affected"
    counters = agent.ask("counters")
    assert counters["drop_rate"] == 1 and counters["blocks_made"] == 1
    srv.close()


def test_a_refused_connection_is_not_a_drop(lab: NetLab) -> None:
    """The lab's connect() gives None only for a timeout (a dropped SYN): with nothing
    listening the kernel answers with a reset, and that must not pass for a block."""
    with pytest.raises(ConnectionRefusedError):
        lab.connect(GW_V4)
    srv = lab.listener(25)
    c = lab.connect(GW_V4)
    assert c is not None
    c.close()
    srv.close()


def test_simultaneous_limit_blocks(lab: NetLab) -> None:
    srv = lab.listener(25)
    agent = Agent(lab, "--connections", "1000", "--simultaneous", "2")
    held = [lab.connect(GW_V4), lab.connect(GW_V4)]
    assert all(held)
    assert wait_for(lambda: agent.ask("established") == {f"{CL_V4}/32": 2})
    assert lab.connect(GW_V4) is None
    assert blocks_of(agent)[f"{CL_V4}/32"]["reason"] == "simultaneous"
    srv.close()


def test_unblock_restores_and_starts_afresh(lab: NetLab) -> None:
    srv = lab.listener(25)
    agent = Agent(lab, "--connections", "2")
    assert lab.connect(GW_V4) and lab.connect(GW_V4)
    assert lab.connect(GW_V4) is None
    assert agent.ask("unblock", net=CL_V4) is True
    assert blocks_of(agent) == {}
    # Counters were reset with the block: X more connections pass.
    assert lab.connect(GW_V4) and lab.connect(GW_V4)
    assert lab.connect(GW_V4) is None
    srv.close()


def test_a_block_drops_the_packets_of_an_open_session(lab: NetLab) -> None:
    """With close_session on, XDP drops every packet of a blocked source, those of its open
    sessions too (drop_session). Closing them is the daemon's part (SOCK_DESTROY:
    tests/test_sessions.py, tests/test_daemon.py): here the server's end stays open."""
    srv = lab.listener(25)
    agent = Agent(lab)
    c = lab.connect(GW_V4)
    other = lab.connect(GW_V4, src=CL2_V4)
    assert c is not None and other is not None
    assert wait_for(lambda: len(srv.conns) == 2)
    by_peer = {s.getpeername()[0]: s for s in srv.conns}
    blocked, bystander = by_peer[CL_V4], by_peer[CL2_V4]
    for s in (blocked, bystander):
        s.settimeout(1)
    c.sendall(b"EHLO before\r\n")
    assert blocked.recv(100) == b"EHLO before\r\n"
    before = agent.ask("counters")["drop_session"]
    agent.ask("block", net=CL_V4, minutes=5)
    c.sendall(b"EHLO after\r\n")
    other.sendall(b"EHLO bystander\r\n")
    assert bystander.recv(100) == b"EHLO bystander\r\n", "positive control: the path works"
    with pytest.raises(TimeoutError):
        blocked.recv(100)
    assert agent.ask("counters")["drop_session"] > before
    assert CL_V4 in lab.ss_established(25), "XDP drops; it does not close the session"
    srv.close()


def test_kill_and_restart_keeps_blocks_and_counts(lab: NetLab) -> None:
    srv = lab.listener(25)
    agent = Agent(lab, "--connections", "3")
    first = [lab.connect(GW_V4) for _ in range(3)]
    assert all(first)
    # Sequential clients: the handshakes are counted before the next SYN (a slow
    # machine can let a SYN overtake the last handshake; bpf/README.md, bursts).
    assert wait_for(lambda: agent.ask("established").get(f"{CL_V4}/32") == 3)
    assert lab.connect(GW_V4) is None
    agent.ask("block", net="2001:db8:5:6::/64", minutes=30)
    held = [lab.connect(GW_V4, src=CL2_V4) for _ in range(2)]
    assert all(held)
    before = blocks_of(agent)
    agent.kill()
    # No control plane: existing blocks are still enforced by the attached program.
    assert lab.connect(GW_V4) is None
    held[0].close()
    extra = lab.connect(GW_V4, src=CL2_V4)
    assert extra is not None
    restarted = Agent(lab, "--connections", "3")
    assert '"adopted": true' in restarted.ready
    after = blocks_of(restarted)
    assert set(after) == set(before) == {f"{CL_V4}/32", "2001:db8:5:6::/64"}
    assert after[f"{CL_V4}/32"]["reason"] == "connections"
    assert after[f"{CL_V4}/32"]["drops"] >= before[f"{CL_V4}/32"]["drops"] + 1
    # Seeded from inet_diag: the connection closed while away is gone, the new one counted.
    assert wait_for(lambda: restarted.ask("established").get(f"{CL2_V4}/32") == 2)
    assert sorted(lab.ss_established()).count(CL2_V4) == 2
    srv.close()


def test_pins_lost_maps_adopted_from_the_attached_program(lab: NetLab) -> None:
    agent = Agent(lab)
    agent.ask("block", net="198.51.100.9", minutes=30)
    agent.kill()
    for pin in lab.pin.iterdir():
        pin.unlink()
    restarted = Agent(lab)
    assert '"adopted": true' in restarted.ready
    assert "198.51.100.9/32" in blocks_of(restarted)


def test_tracepoint_counts_agree_with_ss(lab: NetLab) -> None:
    srv = lab.listener(25)
    srv6 = lab.listener(25, family=socket.AF_INET6)
    agent = Agent(lab, "--connections", "100", "--simultaneous", "100")
    a = [lab.connect(GW_V4) for _ in range(4)]
    b = [lab.connect(GW_V4, src=CL2_V4) for _ in range(3)]
    c = [lab.connect(GW_V6) for _ in range(2)]
    assert all(a + b + c)
    a[0].close()
    b[0].close()
    b[1].close()

    def agree() -> bool:
        peers = lab.ss_established()
        want = {f"{CL_V4}/32": peers.count(CL_V4), f"{CL2_V4}/32": peers.count(CL2_V4),
                "fd77:0:0:1::/64": peers.count(CL_V6)}
        return agent.ask("established") == want and want[f"{CL_V4}/32"] == 3

    assert wait_for(agree, timeout=5)
    assert agent.ask("established") == {f"{CL_V4}/32": 3, f"{CL2_V4}/32": 1,
                                        "fd77:0:0:1::/64": 2}
    srv.close()
    srv6.close()


def test_dual_stack_listener_counts_mapped_ipv4_as_ipv4(lab: NetLab) -> None:
    srv = lab.listener(25, family=socket.AF_INET6, dual_stack=True)
    agent = Agent(lab, "--connections", "3")
    v4 = [lab.connect(GW_V4) for _ in range(3)]
    v6 = lab.connect(GW_V6)
    assert all(v4) and v6
    assert wait_for(lambda: agent.ask("established") == {f"{CL_V4}/32": 3,
                                                         "fd77:0:0:1::/64": 1})
    assert lab.connect(GW_V4) is None
    assert blocks_of(agent)[f"{CL_V4}/32"]["reason"] == "connections"
    srv.close()


def test_heartbeat_pause_keeps_blocks_but_not_live_limits(lab: NetLab) -> None:
    srv = lab.listener(25)
    agent = Agent(lab, "--connections", "2", "--heartbeat-timeout", "1")
    agent.ask("block", net=CL2_V4, minutes=5)
    agent.ask("heartbeat", on=False)
    time.sleep(1.6)
    conns = [lab.connect(GW_V4) for _ in range(4)]
    assert all(conns), "rate limit paused while the heartbeat is stale"
    assert agent.ask("counters")["paused"] >= 2
    assert lab.connect(GW_V4, src=CL2_V4) is None, "existing blocks stay enforced"
    agent.ask("heartbeat", on=True)
    time.sleep(0.7)
    assert lab.connect(GW_V4) is None, "limits apply again with a fresh heartbeat"
    srv.close()


def test_whitelisted_source_is_never_blocked(lab: NetLab) -> None:
    srv = lab.listener(25)
    agent = Agent(lab, "--connections", "2")
    agent.ask("whitelist", nets=["10.77.0.0/30"])
    assert all(lab.connect(GW_V4) for _ in range(5))
    assert blocks_of(agent) == {}
    assert agent.ask("counters")["exempt_pass"] >= 1
    srv.close()


def test_monitor_mode_reports_but_never_drops(lab: NetLab) -> None:
    srv = lab.listener(25)
    agent = Agent(lab, "--connections", "2", "--monitor")
    assert all(lab.connect(GW_V4) for _ in range(4))
    assert blocks_of(agent)[f"{CL_V4}/32"]["reason"] == "connections"
    assert agent.ask("counters")["monitor_pass"] >= 1
    srv.close()


def test_detach_leaves_nothing_in_the_kernel(lab: NetLab) -> None:
    agent = Agent(lab)
    agent.ask("block", net=CL_V4, minutes=5)
    agent.ask("detach")
    agent.stop()
    link = sh("ip", "-n", lab.gw, "-d", "link", "show", lab.gw_if).stdout
    assert "xdp" not in link
    assert not lab.pin.exists()
    srv = lab.listener(25)
    assert lab.connect(GW_V4) is not None
    srv.close()


def test_parallel_syn_burst_passes_x_by_at_most_the_syn_cap(lab: NetLab) -> None:
    srv = lab.listener(25)
    agent = Agent(lab, "--connections", "3", "--syn", "5")
    socks = []
    with lab.inside(lab.cl):
        for _ in range(20):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((GW_V4, 25))
            socks.append(s)
    time.sleep(1.5)
    accepted = len(srv.conns)
    assert 3 <= accepted <= 5, "X=3, SYN cap 5: the burst passes X by at most the cap"
    assert blocks_of(agent)[f"{CL_V4}/32"]["reason"] == "connections"
    c = agent.ask("counters")
    assert c["drop_syn_cap"] + c["drop_rate"] + c["drop_blocked"] >= 15, "the rest are dropped"
    for s in socks:
        s.close()
    srv.close()
