"""Flood: many distinct sources, each over the connection limit within a minute (issue 12).

A dynscreen daemon runs in a gateway namespace (connection limit 1 per minute, sessions
closed on block, port 25 screened; a listener there greets like a mail server and closes).
A client namespace owns a whole range by a `local` route and, window by window, makes
from every source of the window one connection (the limit) and then one SYN more: the
kernel blocks the source on that SYN and drops it. A connection counts as made when the
server's greeting arrives, not when connect() returns: connect() returns once the
client has sent its final ACK, and under load the client's veth drops packets on the
way (its ring toward an XDP peer fills: `client veth drops`). A final ACK lost there,
then the client's reset, leaves the server a half-open request it discards: the
handshake never completed on the server, the kernel rightly never counted it, and that
source's extra SYN is its first counted connection, within the limit. (The flood of
this morning's runs counted such handshakes as made: 126 of 100,000 sources, 589 of
20,000, "never blocked".) The client waits a quarter of a second for each window's
extra SYNs. The verdict is the kernel's block table, read from its pin at the end.

Reported: extra SYNs dropped and answered, the sources in the kernel's block table
(the verdict), the kernel's blocks_made,
events_lost and table_full, the blocks the daemon heard of (its
dynscreen_blocks_made_total{origin="kernel"}) and how long after the flood the last
one arrived, the daemon's worst loop stall (the meter behind `status`'s
daemon.loop_stall_max_ms), its RSS before and after (and peak), and the session
closing counters (`ss` runs for how many blocks).

Any source whose extra SYN was answered is listed with its timing (CLOCK_MONOTONIC, from
the flood's start) and its kernel `track` entry, and the runs the kernel skipped are shown
by program (bpf_prog_info.recursion_misses): the kernel skips a tracing program on a CPU
where another runs or a bpf() map call has paused them, which left handshakes uncounted
while the socket tracepoint counted them (README, Benchmarks). --contend makes that case
on purpose: a process on CPU 1 walks a BPF map of its own for the whole flood while RPS
hands the gateway's packets to that CPU.

Targets: every source blocked, none lost (events_lost 0, the daemon heard of all),
worst loop stall <= 50 ms, RSS <= 500 MB.

Needs root. `python bench/flood_bench.py [--quick] [--sources N] [--window W] [--contend]
[--json]`
(default 100,000 sources; --quick: 10,000; BENCH_FULL=1 in the environment overrides
--quick). A machine that cannot make the handshakes within a minute reports the rate it
reached; the figure for 100,000 is then an extrapolation and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rangelab import RangeLab, range_addresses, root_or_skip  # noqa: E402

from dynscreen.control.lab.mapcontention import start_walker, steer_packets  # noqa: E402

SKIPPED = 77
SOURCES = 100_000
QUICK_SOURCES = 10_000
CLIENT_RANGE = "10.200.0.0/15"  # 131,072 addresses, ~130,000 usable sources
PORT = 25
STALL_MAX_MS = 50.0
RSS_MAX_MB = 500.0
MINUTE = 60.0

SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(65535)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.send(b"220 flood\r\n")  # a mail server's greeting: the client waits for it
    except OSError:
        pass  # the client reset it first
    c.close()
"""

# One window at a time: a handshake from every source, then one SYN more from each.
CLIENT = r"""
import json, select, socket, struct, sys, time
gw, port, window, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
settle_s = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0
addrs = sys.stdin.read().split()
LINGER = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT, no FIN exchange

def open_all(batch):
    socks = []
    for a in batch:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER)
        s.bind((a, 0))
        s.connect_ex((gw, port))
        socks.append(s)
    return socks

def greeted(s):
    # The server's greeting arrived: the server has the connection, not only this end
    # (connected here means the final ACK was sent; it may still be lost on the way).
    try:
        return len(s.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)) > 0
    except OSError:
        return False

def settle(socks, timeout, greeting):
    # Per socket: 0 made (greeted / connected), an errno, -1 connected but never greeted,
    # None still pending; and when it settled (CLOCK_MONOTONIC, shared by the namespaces).
    ep = select.epoll()
    fds = {s.fileno(): s for s in socks}
    for fd in fds:
        ep.register(fd, select.EPOLLIN if greeting else select.EPOLLOUT)
    done = {}
    end = time.monotonic() + timeout
    while len(done) < len(fds):
        left = end - time.monotonic()
        if left <= 0:
            break
        for fd, _ in ep.poll(left):
            ep.unregister(fd)
            s = fds[fd]
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            done[fd] = (err if err or not greeting else (0 if greeted(s) else -1),
                        time.monotonic())
    ep.close()
    return [done.get(s.fileno(), (None, None)) for s in socks]

def port_of(s):
    try:
        return s.getsockname()[1]
    except OSError:
        return 0

t0 = time.monotonic()
tot = {"handshakes": 0, "handshake_failed": 0, "blocked": 0, "answered": 0, "refused": 0}
for i in range(0, len(addrs), window):
    batch = addrs[i:i + window]
    socks = open_all(batch)
    first = settle(socks, settle_s, True)
    ports = [port_of(s) for s in socks]
    for s in socks:
        s.close()
    tot["handshakes"] += sum(1 for e, _ in first if e == 0)
    tot["handshake_failed"] += sum(1 for e, _ in first if e != 0)
    socks = open_all(batch)
    sent = time.monotonic()
    extra = settle(socks, wait, False)
    # The sources whose extra SYN was answered, with their timing: the material to
    # find out why (the kernel's state of each is read after the flood).
    answered = [{"addr": a, "made": f[0] == 0, "greeted": f[1], "extra_sent": sent,
                 "answered": x[1], "port1": p, "port2": port_of(s)}
                for a, f, x, p, s in zip(batch, first, extra, ports, socks) if x[0] == 0]
    for s in socks:
        s.close()
    tot["answered"] += len(answered)
    tot["refused"] += sum(1 for e, _ in extra if e not in (0, None))
    tot["blocked"] += sum(1 for e, _ in extra if e is None)
    print(json.dumps({"done": i + len(batch), "t": time.monotonic() - t0, "t0": t0,
                      "answered_sources": answered, **tot}), flush=True)
"""


def kernel_blocked(lab: RangeLab, sources: set[int]) -> int:
    """How many of the sources the kernel's block table holds (read from its pin: the
    truth, whatever the daemon heard)."""
    import ctypes

    from dynscreen.control.dataplane import abi, bpfsys
    from dynscreen.control.dataplane.blocktable import KEY

    fd = bpfsys.obj_get(str(lab.net.pin / "blocks"))
    try:
        n = 0
        for chunk in bpfsys.map_walk(fd, ctypes.sizeof(abi.Key), ctypes.sizeof(abi.Block)):
            for hi, lo in KEY.iter_unpack(chunk.keys):
                if hi == 0 and lo >> 32 == 0xFFFF and lo & 0xFFFFFFFF in sources:
                    n += 1
        return n
    finally:
        os.close(fd)


def answered_detail(lab: RangeLab, answered: list[dict]) -> list[dict]:
    """The kernel's state of each source whose extra SYN was answered: its block and its
    per-source track entry (times in seconds of CLOCK_MONOTONIC, which the client's
    times are in too), read from the pins after the flood."""
    import ctypes

    from dynscreen.control.dataplane import abi
    from dynscreen.control.dataplane.pins import PinnedMaps

    out = []
    with PinnedMaps(lab.net.pin) as pins:
        for a in answered:
            key = bytes(abi.key_for(IPv4Network(a["addr"]).network_address))
            row = dict(a)
            raw = pins._lookup("track", key, ctypes.sizeof(abi.Track))
            if raw is not None:
                t = abi.Track.from_buffer_copy(raw)
                row["track"] = {"win_start": t.win_start / 1e9, "syn_start": t.syn_start / 1e9,
                                "cur": t.cur, "prev": t.prev, "syn": t.syn,
                                "established": t.established}
            raw = pins._lookup("blocks", key, ctypes.sizeof(abi.Block))
            if raw is not None:
                b = abi.Block.from_buffer_copy(raw)
                row["block"] = {"expires": b.expires / 1e9, "reason": b.reason,
                                "drops": b.drops}
            out.append(row)
    return out


def skipped_runs(lab: RangeLab) -> dict[str, int]:
    """By program (those that use the lab's track map): how often the kernel skipped it
    instead of running it (bpf_prog_info.recursion_misses). A skipped run of the program
    that counts handshakes is a handshake never counted."""
    from dynscreen.control.dataplane import bpfsys

    fd = bpfsys.obj_get(str(lab.net.pin / "track"))
    try:
        track_id = bpfsys.map_info_fd(fd).id
    finally:
        os.close(fd)
    out: dict[str, int] = {}
    for pid in bpfsys.prog_ids():
        try:
            name, maps = bpfsys.prog_name_and_maps(pid)
            if track_id in maps:
                out[name] = out.get(name, 0) + bpfsys.prog_recursion_misses(pid)
        except OSError:
            continue  # gone meanwhile
    return out


def _pinned_counters(lab: RangeLab) -> dict[str, int]:
    from dynscreen.control.dataplane.pins import PinnedMaps

    with PinnedMaps(lab.net.pin) as pins:
        return pins.counters()


def metric_sum(m: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in m.items() if n == name
               and all(dict(lab).get(k) == w for k, w in labels.items()))


# --contend: a process on CPU 1 walks a hash map of its own (BPF_MAP_LOOKUP_BATCH) for the
# whole flood while RPS hands the gateway's received packets to that CPU, so most of
# them are handled inside one of its map calls, where the kernel skips tracing programs
# (bpf_prog_active). A gateway whose NIC interrupts land on the CPU where the daemon
# walks its block table is in the same place.
CONTEND_CPU = 1


def contend(lab: RangeLab) -> subprocess.Popen[str]:
    """RPS to CONTEND_CPU on the gateway's interface, and the walker running there."""
    steer_packets(lab.gw, lab.net.gw_if, CONTEND_CPU)
    walker = start_walker(CONTEND_CPU)
    lab.net.procs.append(walker)  # type: ignore[arg-type]
    return walker


def run(n: int, window: int, wait: float, contended: bool = False) -> dict[str, float | str]:
    tag = str(os.getpid() % 10000)
    lab = RangeLab(
        tag, client_range=CLIENT_RANGE,
        screening=f"ports = [{PORT}]\nclose_session = true\nblock_minutes = 60",
        limits="connections = 1\nconnections_minutes = 1\nsimultaneous = 1000\n"
               "syn_per_second = 1000",
    )
    with lab:
        lab.start_daemon()
        server = lab.python_in(lab.gw, SERVER, str(PORT))
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        rss0 = lab.rss()
        addrs = range_addresses(IPv4Network(CLIENT_RANGE), n)
        walker = contend(lab) if contended else None
        client = lab.python_in(lab.cl, CLIENT, lab.gw_addr, str(PORT), str(window), str(wait))
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("\n".join(addrs))
        client.stdin.close()
        last: dict = {}
        stall_during = 0.0
        answered: list[dict] = []
        for line in client.stdout:
            last = json.loads(line)
            answered += last.pop("answered_sources")
            print(f"  {last['done']:>7} sources in {last['t']:6.1f} s: blocked "
                  f"{last['blocked']}, answered {last['answered']}", file=sys.stderr, flush=True)
        client.wait()
        if walker is not None and walker.stdin is not None:
            walker.stdin.close()
            walker.wait(60)
        flood_s = float(last.get("t", 0.0))
        # Blocked in the end: the kernel's table (a source whose extra SYN passed before
        # its handshake was counted is blocked by the socket tracepoint at that handshake).
        t_end = time.monotonic()
        wanted = {int(IPv4Network(a).network_address) for a in addrs}
        in_kernel = kernel_blocked(lab, wanted)
        detail = answered_detail(lab, answered)
        kernel_counters = _pinned_counters(lab)
        skipped = skipped_runs(lab)
        # The daemon hears of every block the kernel made: wait for the last.
        heard = kernel_made = 0.0
        m: dict = {}
        while time.monotonic() - t_end < 300:
            m = lab.metrics()
            heard = metric_sum(m, "dynscreen_blocks_made_total", origin="kernel")
            if heard >= in_kernel:
                break
            time.sleep(0.2)
        catch_up = time.monotonic() - t_end
        # The kernel's counters in the metrics are a snapshot the daemon's sweep takes:
        # wait for one taken after the flood.
        while time.monotonic() - t_end < 600:
            m = lab.metrics()
            kernel_made = metric_sum(m, "dynscreen_kernel_events_total", event="blocks_made")
            if kernel_made >= in_kernel:
                break
            time.sleep(0.5)
        stall_during = metric_sum(m, "dynscreen_loop_stall_max_seconds") * 1000
        rss1 = lab.rss()
        tcp = lab.tcp_stats()
        veth_dropped = lab.client_tx_dropped()
        status_s, counters = float("nan"), {}
        try:
            t = time.monotonic()
            st = lab.request("status", timeout=300)
            status_s = time.monotonic() - t
            counters = st.get("result", {}).get("counters", {})
        except OSError as e:
            print(f"  status did not answer: {e}", file=sys.stderr)
        return {
            "sources": n,
            "contended": contended,
            "flood_s": flood_s,
            "rate": n / flood_s if flood_s else 0.0,
            "handshakes": last.get("handshakes", 0),
            "handshake_failed": last.get("handshake_failed", 0),
            "blocked": last.get("blocked", 0),
            "answered": last.get("answered", 0),
            "refused": last.get("refused", 0),
            "kernel_blocks_made": kernel_made,
            "in_kernel": in_kernel,
            "events_lost": metric_sum(m, "dynscreen_kernel_events_total", event="events_lost"),
            "table_full": metric_sum(m, "dynscreen_kernel_events_total", event="table_full"),
            "track_fail": metric_sum(m, "dynscreen_kernel_events_total", event="track_fail"),
            "paused": metric_sum(m, "dynscreen_kernel_events_total", event="paused"),
            "tp_opened": metric_sum(m, "dynscreen_connections_total", event="opened"),
            "daemon_heard": heard,
            "catch_up_s": catch_up,
            "loop_stall_max_ms": stall_during,
            "server_passive_opens": tcp.get("TcpPassiveOpens", 0),
            "server_embryonic_rsts": tcp.get("TcpExtEmbryonicRsts", 0),
            "server_listen_drops": tcp.get("TcpExtListenDrops", 0),
            "veth_dropped": veth_dropped,
            "rss_before_mb": rss0["VmRSS"] / 1024,
            "rss_after_mb": rss1["VmRSS"] / 1024,
            "rss_peak_mb": rss1["VmHWM"] / 1024,
            "status_s": status_s,
            "close_session_runs": counters.get("close_session_runs", float("nan")),
            "close_session_ss_runs": counters.get("close_session_ss_runs", float("nan")),
            "sessions_closed": counters.get("sessions_closed", float("nan")),
            "close_session_dropped": counters.get("close_session_dropped", float("nan")),
            "answered_sources": detail,
            "kernel_counters": kernel_counters,
            "skipped_runs": skipped,
            "t0": last.get("t0", 0.0),
        }


def _rel(t: float | None, t0: float) -> str:
    return "-" if t is None else f"{t - t0:+.3f} s"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(r: dict) -> str:
    n = int(r["sources"])
    rows = [
        ("sources, each over the limit", f"{n:,}"
         + (" (contended: BPF map walks on the CPU handling the packets)"
            if r.get("contended") else ""), ""),
        ("flood duration (client)", f"{r['flood_s']:.1f} s ({r['rate']:,.0f} sources/s)",
         f"within a minute: {verdict(r['flood_s'] <= MINUTE)}"),
        ("extra SYN dropped", f"{int(r['blocked']):,}", ""),
        ("extra SYN answered / refused", f"{int(r['answered'])} / {int(r['refused'])}", ""),
        ("sources in the kernel's block table", f"{int(r['in_kernel']):,}",
         f"all blocked: {verdict(r['in_kernel'] == n)}"),
        ("handshakes made / failed", f"{int(r['handshakes']):,} / {int(r['handshake_failed'])}",
         ""),
        ("handshakes the server completed (TcpPassiveOpens)",
         f"{int(r['server_passive_opens']):,}", ""),
        ("server embryonic resets / listen drops / client veth drops",
         f"{int(r['server_embryonic_rsts'])} / {int(r['server_listen_drops'])} / "
         f"{int(r['veth_dropped'])}", ""),
        ("runs the kernel skipped (recursion_misses), by program",
         ", ".join(f"{k} {v}" for k, v in sorted(r["skipped_runs"].items())) or "-", ""),
        ("kernel blocks_made", f"{int(r['kernel_blocks_made']):,}", ""),
        ("handshakes the kernel counted", f"{int(r['tp_opened']):,}", ""),
        ("packets passed with the limits paused (stale heartbeat)", f"{int(r['paused']):,}",
         ""),
        ("kernel events_lost / table_full / track_fail",
         f"{int(r['events_lost'])} / {int(r['table_full'])} / {int(r['track_fail'])}",
         f"none lost: {verdict(r['events_lost'] == 0 and r['track_fail'] == 0)}"),
        ("blocks the daemon heard of", f"{int(r['daemon_heard']):,}",
         f"all: {verdict(r['daemon_heard'] >= r['kernel_blocks_made'])}"),
        ("last heard, after the flood", f"{r['catch_up_s']:.1f} s", ""),
        ("worst loop stall", f"{r['loop_stall_max_ms']:.0f} ms",
         f"<= {STALL_MAX_MS:.0f} ms: {verdict(r['loop_stall_max_ms'] <= STALL_MAX_MS)}"),
        ("daemon RSS before / after / peak",
         f"{r['rss_before_mb']:.0f} / {r['rss_after_mb']:.0f} / {r['rss_peak_mb']:.0f} MB",
         f"<= {RSS_MAX_MB:.0f} MB: {verdict(r['rss_peak_mb'] <= RSS_MAX_MB)}"),
        ("session closing: blocks / ss runs / closed / dropped",
         f"{r['close_session_runs']} / {r['close_session_ss_runs']} / "
         f"{r['sessions_closed']} / {r['close_session_dropped']}", ""),
        ("`status` (all blocks) afterwards", f"{r['status_s']:.1f} s", ""),
    ]
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]
    for a in r["answered_sources"][:50]:
        t0 = r["t0"]
        line = (f"answered: {a['addr']} ports {a['port1']}/{a['port2']} made {a['made']} "
                f"greeted at {_rel(a['greeted'], t0)} extra sent {_rel(a['extra_sent'], t0)} "
                f"answered {_rel(a['answered'], t0)}")
        tr = a.get("track")
        if tr:
            line += (f"; track win_start {_rel(tr['win_start'], t0)} syn_start "
                     f"{_rel(tr['syn_start'], t0)} cur {tr['cur']} prev {tr['prev']} syn "
                     f"{tr['syn']:#x} established {tr['established']}")
        else:
            line += "; no track entry"
        line += f"; block {a['block']}" if a.get("block") else "; no block"
        lines.append(line)
    if r["answered_sources"]:
        lines.append("kernel counters: " + json.dumps(r["kernel_counters"]))
    if n < SOURCES or r["flood_s"] > MINUTE:
        lines.append(
            f"note: {n:,} sources at {r['rate']:,.0f}/s measured; 100,000 would take "
            f"{SOURCES / max(r['rate'], 1e-9):.0f} s at that rate (an extrapolation, not a "
            "measurement)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_SOURCES:,} sources")
    ap.add_argument("--sources", type=int, help=f"how many (default {SOURCES:,})")
    ap.add_argument("--window", type=int, default=2000, help="sources in flight at once")
    ap.add_argument("--wait", type=float, default=0.25,
                    help="seconds an extra SYN may take to be answered before it counts "
                         "as dropped")
    ap.add_argument("--contend", action="store_true",
                    help="a process walking a BPF map on CPU 1 while RPS hands the gateway's "
                         "packets to that CPU (where the kernel skips tracing programs)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    root_or_skip(SKIPPED)
    full = os.environ.get("BENCH_FULL") == "1"
    n = a.sources or (QUICK_SOURCES if a.quick and not full else SOURCES)
    r = run(n, a.window, a.wait, a.contend)
    print(json.dumps(r) if a.json else table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
