"""Reaction time and ban throughput, dynscreen and fail2ban side by side in one run (issue 12).

One gateway namespace, one log file that both follow:

  dynscreen    `dynscreen run`, screening port 25 (its listener), auth_failures = N
  fail2ban     Debian's fail2ban-server in the foreground, its own config, socket, pid
               file and database in a temp folder, one jail: postfix[mode=auth] on the
               log file, banaction nftables (its multiport type) on port 2525 (its
               listener; blocktype drop, as dynscreen's XDP drops), maxretry = N,
               backend as Debian's package chooses it (pyinotify when installed)

Attackers are addresses of a range the client namespace owns by a `local` route. Each
one's first N-1 failed-login lines are written (and read by both) beforehand.

  reaction     for each of 200 attackers in turn: two probes (one per listener) open a
               connection from the attacker every millisecond or so; the N-th line is
               appended; each probe stops at the first SYN that goes unanswered (a second
               one confirms it). Reaction = that SYN's send time - the append. p50/p99.
  throughput   10,000 attackers' N-th lines appended in one write; bans enforced over
               time (dynscreen: blocks made from the logs, each written to the kernel
               map before it counts; fail2ban: elements of its nftables set) until the
               last; bans/s = attackers / time to the last. A sample of attackers is then
               probed on both listeners: their SYNs must be dropped.

Published anchors: fail2ban ~5 bans/s with iptables (fail2ban issue 1382).

Needs root, fail2ban and nft (`make setup-dev`). Never starts a host service; the
nftables table fail2ban makes lives in the namespace and is deleted with it (and by
fail2ban's own actionstop first).

`python bench/reaction_bench.py [--quick] [--attackers N] [--flood M] [--json]`
(full: 200 and 10,000; --quick: 20 and 1,000; BENCH_FULL=1 overrides --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from ipaddress import IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rangelab import RangeLab, range_addresses, root_or_skip  # noqa: E402

from dynscreen.control.lab.netns import inside, sh  # noqa: E402

SKIPPED = 77
AUTH_FAILURES = 5
ATTACKERS, QUICK_ATTACKERS = 200, 20
FLOOD, QUICK_FLOOD = 10_000, 1_000
CLIENT_RANGE = "10.202.0.0/16"
DS_PORT, F2B_PORT = 25, 2525
PROBE_GAP = 0.001  # s between two probes of one attacker
PROBE_WAIT = 0.05  # s a SYN may take to be answered before it counts as dropped
LINGER = struct.pack("ii", 1, 0)
F2B_ANCHOR = 5.0  # bans/s, fail2ban with iptables (fail2ban issue 1382)

SERVER = r"""
import socket, sys, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(65535)
    while True:
        c, _ = s.accept()
        c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def failure_line(ip: str, n: int) -> str:
    """A Postfix SASL failure, as both read it (a user of its own per attacker: no spray)."""
    stamp = time.strftime("%b %e %H:%M:%S")
    user = "u" + ip.replace(".", "-")
    return (f"{stamp} mx postfix/smtpd[{1000 + n}]: warning: unknown[{ip}]: SASL LOGIN "
            f"authentication failed: authentication failure, sasl_username={user}\n")


# ---- fail2ban -------------------------------------------------------------------------------


class Fail2ban:
    """fail2ban-server in the foreground inside the gateway namespace, all its files in a
    temp folder (a copy of /etc/fail2ban with only the jail under test)."""

    def __init__(self, lab: RangeLab, log: Path, maxretry: int) -> None:
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix="dynscreen-f2b-"))
        self.conf = self.dir / "conf"
        shutil.copytree("/etc/fail2ban", self.conf)
        for p in (self.conf / "jail.d").glob("*"):
            p.unlink()
        for p in (self.conf / "jail.local", self.conf / "fail2ban.local"):
            p.unlink(missing_ok=True)
        self.sock = self.dir / "f2b.sock"
        (self.conf / "fail2ban.local").write_text(
            f"[Definition]\nloglevel = INFO\nlogtarget = {self.dir}/fail2ban.log\n"
            f"socket = {self.sock}\npidfile = {self.dir}/f2b.pid\n"
            f"dbfile = {self.dir}/f2b.sqlite3\n")
        (self.conf / "jail.local").write_text(
            "[DEFAULT]\nbanaction = nftables[type=multiport, blocktype=drop]\n"
            "\n[postfix]\nenabled = true\nfilter = postfix[mode=auth]\n"
            f"port = {F2B_PORT}\nprotocol = tcp\nlogpath = {log}\n"
            f"maxretry = {maxretry}\nfindtime = 3600\nbantime = 3600\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self, *args: str, timeout: float = 60) -> str:
        r = subprocess.run(["fail2ban-client", "-c", str(self.conf), "-s", str(self.sock),
                            *args], capture_output=True, text=True, timeout=timeout,
                           check=False)
        if r.returncode != 0:
            raise RuntimeError(f"fail2ban-client {' '.join(args)}: {r.stderr or r.stdout}")
        return r.stdout

    def start(self) -> None:
        out = (self.dir / "server.out").open("ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.gw, "fail2ban-server", "-f", "-x",
             "-c", str(self.conf), "-s", str(self.sock), "-p", str(self.dir / "f2b.pid")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.lab.net.procs.append(self.proc)  # type: ignore[arg-type]
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("fail2ban-server exited:\n" + self.output())
            try:
                if "postfix" in self.client("status", timeout=10):
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.2)
        raise RuntimeError("fail2ban-server not ready:\n" + self.output())

    def output(self) -> str:
        return "".join(p.read_text(errors="replace")[-2000:]
                       for p in (self.dir / "server.out", self.dir / "fail2ban.log")
                       if p.exists())

    def failed_total(self) -> int:
        for line in self.client("status", "postfix").splitlines():
            if "Total failed:" in line:
                return int(line.rsplit(":", 1)[1])
        return 0

    def banned_in_kernel(self) -> int:
        """Elements of the jail's nftables set: the bans in force."""
        r = sh("ip", "netns", "exec", self.lab.gw, "nft", "-j", "list", "set", "inet",
               "f2b-table", "addr-set-postfix", check=False)
        if r.returncode != 0:
            return 0
        for item in json.loads(r.stdout).get("nftables", []):
            if "set" in item:
                return len(item["set"].get("elem", []))
        return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.client("stop", timeout=120)  # its actionstop removes its table
                self.proc.wait(60)
            except (RuntimeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        sh("ip", "netns", "exec", self.lab.gw, "nft", "delete", "table", "inet", "f2b-table",
           check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- probing --------------------------------------------------------------------------------


def syn_answered(lab: RangeLab, src: str, port: int, wait: float) -> bool:
    """One connection attempt from src; False when its SYN went unanswered."""
    with inside(lab.cl):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER)
        s.settimeout(wait)
        s.bind((src, 0))
        s.connect((lab.gw_addr, port))
        return True
    except (TimeoutError, ConnectionRefusedError):  # dropped, or rejected: blocked either way
        return False
    finally:
        s.close()


class Probe(threading.Thread):
    """Connects from an attacker until a SYN goes unanswered (confirmed by a second one);
    `dropped_at` is that SYN's send time (time.monotonic())."""

    def __init__(self, lab: RangeLab, src: str, port: int, limit: float) -> None:
        super().__init__(daemon=True)
        self.lab, self.src, self.port, self.limit = lab, src, port, limit
        self.dropped_at: float | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + self.limit
        while time.monotonic() < end:
            sent = time.monotonic()
            if not syn_answered(self.lab, self.src, self.port, PROBE_WAIT) and \
                    not syn_answered(self.lab, self.src, self.port, 0.3):
                self.dropped_at = sent
                return
            self.ready.set()
            time.sleep(PROBE_GAP)


def wait_until(pred, timeout: float, step: float = 0.1) -> bool:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def ds_counter(lab: RangeLab, name: str) -> int:
    return int(lab.request("status", timeout=120)["result"]["counters"].get(name, 0))


def ds_blocks_from_logs(lab: RangeLab) -> int:
    return int(sum(v for (n, labels), v in lab.metrics().items()
                   if n == "dynscreen_blocks_made_total" and dict(labels).get("origin") == "logs"))


def append(log: Path, lines: list[str]) -> float:
    """Append in one write; the time just before it."""
    data = "".join(lines).encode()
    with log.open("ab", buffering=0) as f:
        t = time.monotonic()
        f.write(data)
    return t


def preload(lab: RangeLab, f2b: Fail2ban, addrs: list[str], n: int, expect_lines: int) -> None:
    """The first n-1 failures of every attacker, read by both before the test."""
    append(lab.log, [failure_line(a, k) for k in range(n - 1) for a in addrs])
    if not wait_until(lambda: f2b.failed_total() >= expect_lines, 600, 0.5):
        raise RuntimeError(f"fail2ban read {f2b.failed_total()} of {expect_lines} failures")
    if not wait_until(lambda: ds_counter(lab, "log_events") >= expect_lines, 300, 0.5):
        raise RuntimeError("dynscreen did not read the failures")


def reaction(lab: RangeLab, f2b: Fail2ban, addrs: list[str], n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"dynscreen": [], "fail2ban": []}
    missed = {"dynscreen": 0, "fail2ban": 0}
    for a in addrs:
        probes = {"dynscreen": Probe(lab, a, DS_PORT, 15), "fail2ban": Probe(lab, a, F2B_PORT, 15)}
        for p in probes.values():
            p.start()
        for p in probes.values():
            if not p.ready.wait(5):
                raise RuntimeError(f"{a}: no handshake on port {p.port} before the test")
        t0 = append(lab.log, [failure_line(a, n - 1)])
        for name, p in probes.items():
            p.join()
            if p.dropped_at is None:
                missed[name] += 1
            else:
                out[name].append(max(p.dropped_at - t0, 0.0) * 1000)
    for name, k in missed.items():
        if k:
            print(f"  {name}: {k} attacker(s) not dropped within 15 s", file=sys.stderr)
    return out


def throughput(lab: RangeLab, f2b: Fail2ban, addrs: list[str], n: int,
               limit: float) -> dict[str, dict[str, float]]:
    ds0, f2b0 = ds_blocks_from_logs(lab), f2b.banned_in_kernel()
    t0 = append(lab.log, [failure_line(a, n - 1) for a in addrs])
    want = len(addrs)
    done: dict[str, float] = {}
    counts = {"dynscreen": 0, "fail2ban": 0}
    first: dict[str, float] = {}
    while len(done) < 2 and time.monotonic() - t0 < limit:
        now = time.monotonic()
        if "dynscreen" not in done:
            counts["dynscreen"] = ds_blocks_from_logs(lab) - ds0
        if "fail2ban" not in done:
            counts["fail2ban"] = f2b.banned_in_kernel() - f2b0
        for name, c in counts.items():
            if c > 0 and name not in first:
                first[name] = now - t0
            if c >= want and name not in done:
                done[name] = now - t0
        time.sleep(0.05)
    out: dict[str, dict[str, float]] = {}
    for name, c in counts.items():
        took = done.get(name, time.monotonic() - t0)
        out[name] = {"enforced": c, "seconds": took, "bans_per_s": c / took if took else 0.0,
                     "first_s": first.get(name, float("nan")), "complete": name in done}
    sample = random.Random(7).sample(addrs, min(20, len(addrs)))
    for name, port in (("dynscreen", DS_PORT), ("fail2ban", F2B_PORT)):
        out[name]["sample_dropped"] = sum(
            1 for a in sample if not syn_answered(lab, a, port, 0.3))
        out[name]["sample"] = len(sample)
    return out


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def table(lat: dict[str, list[float]], thr: dict[str, dict[str, float]], attackers: int,
          flood: int) -> str:
    rows = [("", "dynscreen", "fail2ban")]
    rows.append((f"reaction p50 ({attackers} attackers)",
                 *(f"{pct(lat[k], 0.5):.1f} ms" for k in ("dynscreen", "fail2ban"))))
    rows.append((f"reaction p99 ({attackers} attackers)",
                 *(f"{pct(lat[k], 0.99):.1f} ms" for k in ("dynscreen", "fail2ban"))))
    rows.append(("attackers dropped",
                 *(f"{len(lat[k])}/{attackers}" for k in ("dynscreen", "fail2ban"))))
    rows.append((f"{flood:,} at once: first ban after",
                 *(f"{thr[k]['first_s'] * 1000:.0f} ms" for k in ("dynscreen", "fail2ban"))))
    rows.append((f"{flood:,} at once: last ban after",
                 *(f"{thr[k]['seconds']:.2f} s" + ("" if thr[k]["complete"] else
                                                    f" (only {int(thr[k]['enforced'])})")
                   for k in ("dynscreen", "fail2ban"))))
    rows.append(("ban throughput", *(f"{thr[k]['bans_per_s']:,.0f} bans/s"
                                     for k in ("dynscreen", "fail2ban"))))
    rows.append(("sampled attackers' SYN dropped",
                 *(f"{int(thr[k]['sample_dropped'])}/{int(thr[k]['sample'])}"
                   for k in ("dynscreen", "fail2ban"))))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}" for r in rows]
    lines.append(f"(published anchor: fail2ban ~{F2B_ANCHOR:g} bans/s with iptables, "
                 "fail2ban issue 1382)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_ATTACKERS} and {QUICK_FLOOD:,} attackers")
    ap.add_argument("--attackers", type=int, help=f"reaction attackers (default {ATTACKERS})")
    ap.add_argument("--flood", type=int, help=f"attackers at once (default {FLOOD:,})")
    ap.add_argument("--limit", type=float, default=900.0,
                    help="seconds the throughput test waits for the last ban")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    root_or_skip(SKIPPED)
    for tool in ("fail2ban-server", "fail2ban-client", "nft"):
        if shutil.which(tool) is None:
            print(f"needs {tool}: run `sudo make setup-dev`", file=sys.stderr)
            return SKIPPED
    quick = a.quick and os.environ.get("BENCH_FULL") != "1"
    attackers = a.attackers or (QUICK_ATTACKERS if quick else ATTACKERS)
    flood = a.flood or (QUICK_FLOOD if quick else FLOOD)
    sys.setswitchinterval(0.0005)
    lab = RangeLab(
        str(os.getpid() % 10000), client_range=CLIENT_RANGE, base="10.81",
        # One attacker, one block: no /24 aggregate of blocked neighbours.
        screening=f"ports = [{DS_PORT}]\nclose_session = true\nblock_minutes = 60\n"
                  "aggregate_sources = 0",
        limits=f"auth_failures = {AUTH_FAILURES}\nwindow_minutes = 60\n"
               "connections = 1000000\nsimultaneous = 100000\nsyn_per_second = 100000",
    )
    f2b: Fail2ban | None = None
    with lab:
        lab.start_daemon()
        server = lab.python_in(lab.gw, SERVER, str(DS_PORT), str(F2B_PORT))
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        f2b = Fail2ban(lab, lab.log, AUTH_FAILURES)
        try:
            f2b.start()
            addrs = range_addresses(IPv4Network(CLIENT_RANGE), attackers + flood)
            slow, fast = addrs[:attackers], addrs[attackers:]
            print(f"  preloading {AUTH_FAILURES - 1} failures of {len(addrs):,} attackers",
                  file=sys.stderr, flush=True)
            preload(lab, f2b, addrs, AUTH_FAILURES, len(addrs) * (AUTH_FAILURES - 1))
            print(f"  reaction: {attackers} attackers one by one", file=sys.stderr, flush=True)
            lat = reaction(lab, f2b, slow, AUTH_FAILURES)
            print(f"  throughput: {flood:,} attackers at once", file=sys.stderr, flush=True)
            thr = throughput(lab, f2b, fast, AUTH_FAILURES, a.limit)
        finally:
            f2b.stop()
        if server.stdin is not None:
            server.stdin.close()
    if a.json:
        print(json.dumps({"reaction_ms": lat, "throughput": thr}))
    else:
        print(f"auth_failures = maxretry = {AUTH_FAILURES}; dynscreen on :{DS_PORT} (XDP), "
              f"fail2ban on :{F2B_PORT} (nftables), one log file, one namespace")
        print(table(lat, thr, attackers, flood))
    return 0


if __name__ == "__main__":
    sys.exit(main())
