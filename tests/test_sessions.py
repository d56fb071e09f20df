"""Closing a blocked source's sessions with ss -K, on real sockets in network namespaces."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from ipaddress import ip_network

import pytest
from netns import CL2_V4, CL_V4, CL_V6, GW_V4, GW_V6, NetLab, Server, sh, wait_for

from dynscreen.control import sessions
from dynscreen.control.sessions import (
    SessionCloseError,
    SessionCloser,
    Targets,
    aclose_sessions,
    close_sessions,
    open_peers,
    ss_argv,
)

from conftest import have, require, require_root

CL_V6_SAME = "fd77:0:0:1::3"  # same /64 as CL_V6
CL_V6_OTHER = "fd77:0:0:2::2"  # another /64
SCREENED = (25, 587)

# --- the command, without a kernel ---------------------------------------------------------


def test_argv_is_precise() -> None:
    argv = ss_argv(ip_network("203.0.113.7/32"), [587, 25, 25])
    assert argv[1:5] == ["-H", "-t", "-n", "-K"]
    states = [argv[i + 1] for i, a in enumerate(argv) if a == "state"]
    assert "established" in states and "close-wait" in states and "syn-recv" in states
    assert "listening" not in states and "time-wait" not in states
    tail = argv[argv.index("("):]
    assert tail == ["(", "sport", "=", ":25", "or", "sport", "=", ":587", ")",
                    "and", "dst", "203.0.113.7/32"]


def test_argv_forms() -> None:
    assert ss_argv("2001:db8:1:2::/64", [25])[-1] == "2001:db8:1:2::/64"
    assert ss_argv("2001:db8::7", [25])[-1] == "2001:db8::7/128", "a bare v6 reads as a port"
    assert ss_argv("::ffff:192.0.2.1", [25])[-1] == "192.0.2.1/32"
    assert "-K" not in ss_argv("192.0.2.1", [25], kill=False)
    assert ss_argv("192.0.2.1", [25], netns="gw")[:4] == ["ip", "netns", "exec", "gw"]
    with pytest.raises(ValueError):
        ss_argv("192.0.2.1", [])


def test_missing_ss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions.shutil, "which", lambda name: None)
    with pytest.raises(SessionCloseError, match="`ss` not found"):
        close_sessions("192.0.2.1", [25])


def test_missing_ip_for_netns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sessions.shutil, "which", lambda name: "/bin/true")
    with pytest.raises(SessionCloseError, match="ip not found"):
        close_sessions("192.0.2.1", [25], netns="x")


def test_ss_failure_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(argv: list[str], timeout: float) -> tuple[int, str, str]:
        return 0, "", "SOCK_DESTROY answers: Operation not permitted\n"  # what ss 6.1 does

    monkeypatch.setattr(sessions, "_run", run)
    with pytest.raises(SessionCloseError, match="needs CAP_NET_ADMIN"):
        close_sessions("192.0.2.1", [25])


def test_kernel_without_sock_destroy(monkeypatch: pytest.MonkeyPatch) -> None:
    """ss -K is silent when the kernel refuses; the sessions still listed give it away."""

    def run(argv: list[str], timeout: float) -> tuple[int, str, str]:
        if "-K" in argv:
            return 0, " \n", ""
        return 0, "0 0 192.0.2.25:25 192.0.2.1:4000\n0 0 192.0.2.25:25 192.0.2.1:4001\n", ""

    monkeypatch.setattr(sessions, "_run", run)
    with pytest.raises(SessionCloseError, match="2 session.* of 192.0.2.1 .*CONFIG_INET_DIAG"):
        close_sessions("192.0.2.1", [25])


# --- batches, without a kernel ---------------------------------------------------------------


def test_argv_for_several_sources_in_one_filter() -> None:
    argv = ss_argv([ip_network("203.0.113.7/32"), ip_network("2001:db8:1:2::/64")], [25],
                   spare=[ip_network("2001:db8:1:2::25/128")])
    tail = argv[argv.index(")") + 1:]
    assert tail == ["and", "(", "dst", "203.0.113.7/32", "or", "dst", "2001:db8:1:2::/64", ")",
                    "and", "not", "dst", "2001:db8:1:2::25/128"]
    with pytest.raises(ValueError):
        ss_argv([], [25])


def test_open_peers_reads_what_ss_prints() -> None:
    out = ("ESTAB      0 0 10.77.0.1:25 10.77.0.2:40000\n"
           "CLOSE-WAIT 0 0 [fd77:0:0:1::1]:25 [fd77:0:0:1::2]:40001\n"
           "0 0 [::ffff:10.77.0.1]:587 [::ffff:10.77.0.3]:40002\n"
           "ESTAB 0 0 [fe80::1%veth0]:25 [fe80::2%veth0]:40003\n"
           "garbage\n"
           "ESTAB 0 0 10.77.0.1:25 not-an-address:1\n")
    assert [str(a) for a in open_peers(out)] == ["10.77.0.2", "fd77:0:0:1::2", "10.77.0.3",
                                                 "fe80::2"]


def test_targets_match_by_prefix_and_spare() -> None:
    t = Targets([ip_network("192.0.2.1/32"), ip_network("2001:db8:1:2::/64"),
                 ip_network("198.51.100.0/24")], spare=[ip_network("2001:db8:1:2::25/128")])
    from ipaddress import ip_address
    assert ip_address("192.0.2.1") in t
    assert ip_address("192.0.2.2") not in t
    assert ip_address("198.51.100.200") in t
    assert ip_address("2001:db8:1:2::7") in t
    assert ip_address("2001:db8:1:2::25") not in t, "spared"
    assert ip_address("2001:db8:1:3::7") not in t
    assert ip_address("::c000:201") not in t, "an IPv6 address with the same low bits"


class FakeSS:
    """ss without a kernel: `open` peers have one session each on port 25; -K destroys
    those its filter names (the kernel refuses when `refuse` is set)."""

    def __init__(self, peers: list[str], refuse: bool = False) -> None:
        self.open = set(peers)
        self.refuse = refuse
        self.runs: list[list[str]] = []
        self.running = self.peak = 0

    async def __call__(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        self.runs.append(argv)
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.01)
        self.running -= 1
        named = {argv[i + 1].rsplit("/", 1)[0] for i, a in enumerate(argv) if a == "dst"}
        hit = sorted(self.open & named) if named else sorted(self.open)
        if "-K" in argv:
            if self.refuse:  # ss is silent when the kernel refuses SOCK_DESTROY
                return 0, " \n", ""
            self.open -= set(hit)
        return 0, "".join(f"ESTAB 0 0 192.0.2.25:25 {a}:4000\n" for a in hit), ""

    def kills(self) -> list[list[str]]:
        return [r for r in self.runs if "-K" in r]


def closer_run(closer: SessionCloser, nets: list[str], spare: dict[str, list[str]] | None = None,
               ) -> None:
    async def main() -> None:
        for n in nets:
            closer.submit(ip_network(n), [ip_network(w) for w in (spare or {}).get(n, [])])
        await closer.drain(timeout=10)

    asyncio.run(main())


def test_closer_batches_within_bounds() -> None:
    blocked = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(700)]
    ss = FakeSS(blocked + ["10.2.0.1", "10.2.0.2"])  # two bystanders
    closer = SessionCloser(lambda: [25], run=ss, runs=2, batch=300, kill_batch=100)
    closer_run(closer, blocked)
    assert ss.open == {"10.2.0.1", "10.2.0.2"}, "every blocked source's session, no other"
    assert closer.closed == 700 and closer.submitted == 700 and closer.failures == 0
    assert ss.peak <= 2
    for argv in ss.kills():
        assert argv.count("dst") <= 100, "a filter names at most kill_batch addresses"
    listings = [r for r in ss.runs if "-K" not in r and "dst" not in r]
    assert 3 <= len(listings) <= 5, "one listing per batch of up to 300 sources"
    assert closer.ss_runs == len(ss.runs) <= 15


def test_closer_spares_whitelisted_addresses_inside_a_blocked_range() -> None:
    ss = FakeSS(["10.3.0.5", "10.3.0.25", "10.4.0.1"])
    closer = SessionCloser(lambda: [25], run=ss)
    closer_run(closer, ["10.3.0.0/24", "10.4.0.1"], spare={"10.3.0.0/24": ["10.3.0.25/32"]})
    assert ss.open == {"10.3.0.25"}
    assert all("10.3.0.25/32" not in r for r in ss.kills())
    assert closer.closed == 2


def test_closer_queue_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    ss = FakeSS([])
    closer = SessionCloser(lambda: [25], run=ss, runs=1, max_pending=50)

    async def main() -> list[bool]:
        got = [closer.submit(ip_network(f"10.5.0.{i}")) for i in range(1, 201)]
        got.append(closer.submit(ip_network("10.5.0.1")))  # already waiting: merged
        await closer.drain(timeout=10)
        return got

    got = asyncio.run(main())
    # Submitted in one step of the loop: 50 wait, the other 150 are refused.
    assert got.count(False) == closer.dropped == 150
    assert got[-1] and closer.submitted == 50
    assert "left to time out" in caplog.text


def test_closer_reports_a_kernel_without_sock_destroy(caplog: pytest.LogCaptureFixture) -> None:
    ss = FakeSS(["10.6.0.1"], refuse=True)
    closer = SessionCloser(lambda: [25], run=ss)
    closer_run(closer, ["10.6.0.1", "10.6.0.2"])
    assert closer.failures == 1 and closer.closed == 0
    assert "CONFIG_INET_DIAG_DESTROY" in caplog.text


# --- real sockets ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    require_root()
    require(have("ss") and have("ip"), "needs iproute2 (ss, ip)")
    lab = NetLab(f"ss{os.getpid() % 10000}").open()
    try:
        for addr in (CL_V6_SAME, CL_V6_OTHER):
            sh("ip", "-n", lab.cl, "addr", "add", f"{addr}/64", "dev", lab.cl_if, "nodad")
        sh("ip", "-n", lab.gw, "-6", "route", "add", "fd77:0:0:2::/64", "dev", lab.gw_if)
        sh("ip", "-n", lab.cl, "-6", "route", "add", f"{GW_V6}/128", "dev", lab.cl_if)
        yield lab
    finally:
        lab.close()


class Pair:
    """One connection seen from both ends, and in the gateway's socket table."""

    def __init__(self, lab: NetLab, client: socket.socket, server: socket.socket) -> None:
        self.lab = lab
        self.client, self.server = client, server
        client.settimeout(1.0)
        server.settimeout(1.0)
        host, port = client.getsockname()[:2]
        self.peer = (host, port)  # the client's end, as the server's socket names its peer

    def alive(self) -> bool:
        """Data flows both ways, and the kernel lists the server's end as established."""
        try:
            self.client.sendall(b"x")
            if self.server.recv(1) != b"x":
                return False
            self.server.sendall(b"y")
            if self.client.recv(1) != b"y":
                return False
        except OSError:
            return False
        return self.peer in self.lab.server_sockets(states=("established",))

    def closed_on_server(self) -> bool:
        """The server's end was closed under it: gone from the kernel's socket table (`ss`,
        in any open state), and the server's socket reports the abort. An idle live
        connection (a read that times out) is not closed."""
        if self.peer in self.lab.server_sockets():
            return False
        try:
            return self.server.recv(1) == b""
        except TimeoutError:
            return False
        except OSError:  # ECONNABORTED: SOCK_DESTROY
            return True

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture
def servers(lab: NetLab) -> Iterator[dict[str, Server]]:
    made = {
        "v4": lab.listener(25),
        "v6": lab.listener(25, family=socket.AF_INET6),
        "dual": lab.listener(587, family=socket.AF_INET6, dual_stack=True),
        "other": lab.listener(2525),
    }
    yield made
    for s in made.values():
        s.close()


def connect(lab: NetLab, server: Server, dst: str, port: int, src: str) -> Pair:
    before = len(server.conns)
    client = lab.connect(dst, port, src=src)
    assert client is not None, f"{src} -> {dst}:{port} failed"
    assert wait_for(lambda: len(server.conns) > before)
    ours = client.getsockname()[:2]
    for conn in server.conns[before:]:
        peer = conn.getpeername()[:2]
        if (peer[0].removeprefix("::ffff:"), peer[1]) == ours:
            return Pair(lab, client, conn)
    raise AssertionError(f"the server did not accept {ours}")


def test_close_one_ipv4_source(lab: NetLab, servers: dict[str, Server]) -> None:
    a1 = connect(lab, servers["v4"], GW_V4, 25, CL_V4)
    a2 = connect(lab, servers["v4"], GW_V4, 25, CL_V4)
    b = connect(lab, servers["v4"], GW_V4, 25, CL2_V4)
    c = connect(lab, servers["v6"], GW_V6, 25, CL_V6)
    assert all(p.alive() for p in (a1, a2, b, c))
    assert close_sessions(CL_V4, SCREENED, netns=lab.gw) == 2
    assert a1.closed_on_server() and a2.closed_on_server()
    assert b.alive() and c.alive()
    assert CL_V4 not in lab.ss_established(25)
    assert close_sessions(CL_V4, SCREENED, netns=lab.gw) == 0, "nothing left: no error"


def test_close_ipv6_prefix(lab: NetLab, servers: dict[str, Server]) -> None:
    p1 = connect(lab, servers["v6"], GW_V6, 25, CL_V6)
    p2 = connect(lab, servers["v6"], GW_V6, 25, CL_V6_SAME)
    other = connect(lab, servers["v6"], GW_V6, 25, CL_V6_OTHER)
    v4 = connect(lab, servers["v4"], GW_V4, 25, CL_V4)
    assert close_sessions("fd77:0:0:1::/64", SCREENED, netns=lab.gw) == 2
    assert p1.closed_on_server() and p2.closed_on_server()
    assert other.alive() and v4.alive()


def test_close_one_ipv6_address(lab: NetLab, servers: dict[str, Server]) -> None:
    p1 = connect(lab, servers["v6"], GW_V6, 25, CL_V6)
    p2 = connect(lab, servers["v6"], GW_V6, 25, CL_V6_SAME)
    assert close_sessions(CL_V6, SCREENED, netns=lab.gw) == 1
    assert p1.closed_on_server()
    assert p2.alive()


def test_mapped_ipv4_on_a_dual_stack_listener(lab: NetLab, servers: dict[str, Server]) -> None:
    mapped = connect(lab, servers["dual"], GW_V4, 587, CL_V4)
    assert mapped.server.getpeername()[0] == f"::ffff:{CL_V4}"
    plain = connect(lab, servers["v4"], GW_V4, 25, CL_V4)
    bystander = connect(lab, servers["dual"], GW_V4, 587, CL2_V4)
    assert close_sessions(CL_V4, SCREENED, netns=lab.gw) == 2
    assert mapped.closed_on_server() and plain.closed_on_server()
    assert bystander.alive()


def test_ipv4_range(lab: NetLab, servers: dict[str, Server]) -> None:
    a = connect(lab, servers["v4"], GW_V4, 25, CL_V4)
    b = connect(lab, servers["dual"], GW_V4, 587, CL2_V4)
    c = connect(lab, servers["v6"], GW_V6, 25, CL_V6)
    assert close_sessions("10.77.0.0/24", SCREENED, netns=lab.gw) == 2
    assert a.closed_on_server() and b.closed_on_server()
    assert c.alive()


def test_unscreened_port_is_untouched(lab: NetLab, servers: dict[str, Server]) -> None:
    screened = connect(lab, servers["v4"], GW_V4, 25, CL_V4)
    unscreened = connect(lab, servers["other"], GW_V4, 2525, CL_V4)
    assert close_sessions(CL_V4, SCREENED, netns=lab.gw) == 1
    assert screened.closed_on_server()
    assert unscreened.alive()


def test_half_closed_session_is_closed(lab: NetLab, servers: dict[str, Server]) -> None:
    """A client that shut down its side leaves the server in close-wait: still open."""
    p = connect(lab, servers["v4"], GW_V4, 25, CL_V4)
    p.client.shutdown(socket.SHUT_WR)
    assert p.server.recv(1) == b""
    assert p.peer in lab.server_sockets(25, ("close-wait",))
    assert close_sessions(CL_V4, SCREENED, netns=lab.gw) == 1
    assert p.peer not in lab.server_sockets(), "gone from the kernel's socket table"
    with pytest.raises(OSError):
        p.server.sendall(b"250 ok\r\n" * 1000)
        p.server.sendall(b"250 ok\r\n")


def test_async_variant(lab: NetLab, servers: dict[str, Server]) -> None:
    a = connect(lab, servers["v4"], GW_V4, 25, CL_V4)
    b = connect(lab, servers["v4"], GW_V4, 25, CL2_V4)

    async def main() -> tuple[int, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        n = await aclose_sessions(CL_V4, SCREENED, netns=lab.gw)
        ticker.cancel()
        return n, ticks

    n, ticks = asyncio.run(main())
    assert n == 1
    assert ticks > 1, "the event loop kept running while ss did"
    assert a.closed_on_server()
    assert b.alive()


def test_async_errors_are_explained(lab: NetLab, servers: dict[str, Server]) -> None:
    held = connect(lab, servers["v4"], GW_V4, 25, CL_V4)
    with pytest.raises(SessionCloseError, match="failed"):
        asyncio.run(aclose_sessions(CL_V4, SCREENED, netns="dynscreen-no-such-netns"))
    assert held.alive(), "nothing was closed"


def test_argv_spares_whitelisted_addresses() -> None:
    argv = ss_argv("2001:db8:1:2::/64", [25],
                   spare=[ip_network("2001:db8:1:2::25/128"), ip_network("192.0.2.1/32")])
    assert argv[-4:] == ["and", "not", "dst", "2001:db8:1:2::25/128"], "other family left out"


def test_whitelisted_address_inside_a_blocked_prefix_keeps_its_session(
        lab: NetLab, servers: dict[str, Server]) -> None:
    blocked = connect(lab, servers["v6"], GW_V6, 25, CL_V6)
    spared = connect(lab, servers["v6"], GW_V6, 25, CL_V6_SAME)
    n = close_sessions("fd77:0:0:1::/64", SCREENED, netns=lab.gw,
                       spare=[ip_network(f"{CL_V6_SAME}/128")])
    assert n == 1
    assert blocked.closed_on_server()
    assert spared.alive()


def test_whitelisted_address_inside_a_blocked_ipv4_range_keeps_its_sessions(
        lab: NetLab, servers: dict[str, Server]) -> None:
    a = connect(lab, servers["v4"], GW_V4, 25, CL_V4)
    mapped = connect(lab, servers["dual"], GW_V4, 587, CL2_V4)
    plain = connect(lab, servers["v4"], GW_V4, 25, CL2_V4)
    n = asyncio.run(aclose_sessions("10.77.0.0/24", SCREENED, netns=lab.gw,
                                    spare=[ip_network(f"{CL2_V4}/32")]))
    assert n == 1
    assert a.closed_on_server()
    assert mapped.alive() and plain.alive(), "the whitelisted address's sessions, mapped too"


# --- batches on real sockets -------------------------------------------------------------------


def test_batch_closes_several_sources_with_one_listing_and_one_kill(
        lab: NetLab, servers: dict[str, Server]) -> None:
    a = connect(lab, servers["v4"], GW_V4, 25, CL_V4)
    mapped = connect(lab, servers["dual"], GW_V4, 587, CL2_V4)
    v6 = connect(lab, servers["v6"], GW_V6, 25, CL_V6)
    spared = connect(lab, servers["v6"], GW_V6, 25, CL_V6_SAME)
    bystander = connect(lab, servers["v6"], GW_V6, 25, CL_V6_OTHER)
    unscreened = connect(lab, servers["other"], GW_V4, 2525, CL_V4)
    closer = SessionCloser(lambda: SCREENED, netns=lab.gw)

    async def main() -> None:
        closer.submit(ip_network(f"{CL_V4}/32"))
        closer.submit(ip_network(f"{CL2_V4}/32"))
        closer.submit(ip_network("fd77:0:0:1::/64"), [ip_network(f"{CL_V6_SAME}/128")])
        await closer.drain(timeout=20)

    # Submitted in one step of the loop: one batch, one listing and one ss -K.
    asyncio.run(main())
    assert closer.failures == 0
    assert closer.closed == 3 and closer.ss_runs == 2
    assert a.closed_on_server() and mapped.closed_on_server() and v6.closed_on_server()
    assert spared.alive() and bystander.alive() and unscreened.alive()


def test_full_kill_filters_on_hundreds_of_real_sources(lab: NetLab) -> None:
    """300 sources, each with a real session (addresses of a `local` route), closed by
    filters of up to KILL_ADDRESSES addresses that the real ss and kernel accept; the one
    whitelisted address inside a blocked range keeps its session."""
    sh("ip", "-n", lab.cl, "route", "add", "local", "10.78.0.0/16", "dev", "lo")
    sh("ip", "-n", lab.gw, "route", "add", "10.78.0.0/16", "via", CL_V4)
    server = lab.listener(25)
    pairs = []
    try:
        sources = [f"10.78.0.{i}" for i in range(1, 251)] + [f"10.78.1.{i}" for i in range(1, 51)]
        for src in sources:
            client = lab.connect(GW_V4, 25, src=src)
            assert client is not None, src
            pairs.append(client)
        assert wait_for(lambda: len(server.conns) == len(sources))
        closer = SessionCloser(lambda: SCREENED, netns=lab.gw)

        async def main() -> None:
            for src in sources[:250]:
                closer.submit(ip_network(src))
            closer.submit(ip_network("10.78.1.0/24"), [ip_network("10.78.1.7/32")])
            await closer.drain(timeout=60)

        asyncio.run(main())
        assert closer.failures == 0 and closer.closed == 299
        assert closer.ss_runs == 3, "one listing, two kills (256 + 43 addresses)"
        left = [a for a, _ in lab.server_sockets(25) if a.startswith("10.78.")]
        assert left == ["10.78.1.7"]
    finally:
        for c in pairs:
            c.close()
        server.close()
        sh("ip", "-n", lab.gw, "route", "del", "10.78.0.0/16", check=False)
        sh("ip", "-n", lab.cl, "route", "del", "local", "10.78.0.0/16", "dev", "lo", check=False)
