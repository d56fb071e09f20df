"""The control plane's block handling at 10,000, 100,000 and 1,000,000 blocks (issue 12).

One xdp_screen program is loaded with max_blocks 1,000,000 (the default) and no
tracepoint. For each size the block table is filled (90% IPv4 addresses, 10%
IPv6 /64s; expiries spread over an hour) and then, each step timed:

  kernel fill        the blocks written with BPF_MAP_UPDATE_BATCH (blocktable.write_blocks):
                     what a start does with the block file's blocks
  file parse         the block file (written by blocksave) read as the daemon's start
                     reads it (BlockFile.load_rows), in a child process of its own
  adoption           the kernel table read with BPF_MAP_LOOKUP_BATCH and loaded into the
                     BlockIndex (blocktable.read_blocks -> BlockIndex.load)
  start, maps kept   a restart with the pinned maps in place: adoption alone
  start, from file   after a reboot: file parse + kernel fill + index load (adoption minus
                     its kernel read); neither includes compiling the BPF program
  sweep 10%          BlockIndex.sweep at a time when 10% have expired + their removal
                     from the kernel (BPF_MAP_DELETE_BATCH)
  newest 50          status' default view (and with --reason, --ip /16 filters)
  most dropping 50   the other status view
  JSON all           every block as status --json --all shapes it (BlockIndex.json_texts)
  file save          as the daemon's keeper saves: blocksave.render into
                     StateFile.write_chunks (atomic write + fsync, the text hashed and
                     packed piece by piece as the base of a later hand edit): lines/s,
                     and the packed base's size
  loop stall (save)  the worst gap of a 1 ms asyncio ticker while the save runs in a
                     worker thread (asyncio.to_thread)
  index memory       bytes per block (tracemalloc, at 100,000), times the size
  RSS                this process (bcc and LLVM included) after building the index; at
                     the first size it is mostly bcc; Python keeps freed memory, so the
                     later sizes include what the earlier steps left behind

Then the daemon itself (`dynscreen run` in a namespace of its own, a dummy link,
XDP generic, pins on a bpffs of its own), its block file pre-filled with the n blocks:

  start              from the command until the socket answers (file read, kernel
                     written in batches, index built: screening live)
  block / unblock    one `block ADDR` and one `unblock ADDR`, 100 of each, as socket
                     round trips (p50/p99); and the whole CLI process for one block
  status             the default view, and `dynscreen status --json --all` (CLI process)
  loop stall         the daemon's own `loop_stall_max_ms` after all of the above
  RSS                the daemon's

Needs root. `python bench/scale_bench.py [--quick] [--json]` (--quick: 10k and 100k).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
SKIPPED = 77
T_START_MAX = 10.0  # s at 1M (issue 12: start <= 10 s, >= 100,000 blocks/s)
STALL_MAX_MS = 50.0
RSS_MAX_MB = 500.0
REASONS = ("connections", "simultaneous", "auth_failures", "failed_rcpts", "rsets")
ORIGINS = ("kernel", "logs")

PARSE_CHILD = """
import resource, sys, time
from pathlib import Path
from dynscreen.control.blockfile import BlockFile
import gc
gc.disable()  # as the daemon's start does
t = time.perf_counter()
n = len(BlockFile(Path(sys.argv[1])).load_rows())
took = time.perf_counter() - t
print(n, took, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def rows(n: int, now: float):  # noqa: ANN201 - an iterator of KernelRow
    """n blocks: every 10th an IPv6 /64, expiries spread evenly over an hour from now+60."""
    from dynscreen.control.dataplane.blocktable import KernelRow
    from dynscreen.control.sourcekey import SourceKey

    for i in range(n):
        if i % 10 == 0:
            key = SourceKey((((0x20010DB8 << 96) | i << 64) << 8) | 64)
        else:
            key = SourceKey((((0xFFFF << 32) | (0x0A000000 + i)) << 8) | 128)
        spread = (i * 7919) % n / n  # a permutation of i/n: expiry order unlike key order
        yield KernelRow(key, round(now + 60 + spread * 3600, 3), 0, REASONS[i % 5],
                        ORIGINS[i % 2])


def timed(fn, *args):  # noqa: ANN001, ANN201
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


async def _stall_during(fn, *args) -> tuple[float, float]:  # noqa: ANN001
    """(worst ticker gap in ms, seconds the call took) while fn runs in a worker thread."""
    worst = 0.0
    task = asyncio.create_task(asyncio.to_thread(fn, *args))
    t0 = last = time.perf_counter()
    while not task.done():
        await asyncio.sleep(0.001)
        t = time.perf_counter()
        worst = max(worst, t - last - 0.001)
        last = t
    await task
    return worst * 1000, time.perf_counter() - t0


def measure(dp, n: int, folder: Path) -> dict[str, float]:  # noqa: ANN001
    from dynscreen.control.blockindex import BlockIndex, IndexSnapshot
    from dynscreen.control.blockkeeper import SNAPSHOT_STEP
    from dynscreen.control.blocksave import render
    from dynscreen.control.dataplane import blocktable as bt
    from dynscreen.control.sourcekey import SourceKey
    from dynscreen.control.statefile import StateFile

    fds = bt.block_map_fds(dp)
    r: dict[str, float] = {"n": n}
    now = time.time()
    (_, _), r["kernel_fill_s"] = timed(bt.write_blocks, *fds, rows(n, now), dp.ipv6_prefix)

    ix = BlockIndex(lambda: now)
    chunk_t = time.perf_counter()
    got = ix.load(bt.read_blocks(*fds, dp.ipv6_prefix), made_at=now)
    r["adopt_s"] = time.perf_counter() - chunk_t
    assert got == n == len(ix), (got, n, len(ix))
    _, r["kernel_read_s"] = timed(lambda: sum(1 for _ in bt.read_blocks(*fds, dp.ipv6_prefix)))
    gc.collect()
    r["rss_mb"] = rss_mb()

    # status views
    _, r["newest50_ms"] = timed(ix.newest, 50)
    _, r["newest50_reason_ms"] = timed(lambda: ix.newest(50, reason="rsets"))
    _, r["newest50_ip16_ms"] = timed(lambda: ix.newest(50, ip=SourceKey.parse("10.1.0.0/16")))
    ix.set_drops((k, i % 1000) for i, k in enumerate(ix._entries) if i % 3 == 0)
    _, r["dropping50_ms"] = timed(ix.most_dropping, 50)
    for k in ("newest50_ms", "newest50_reason_ms", "newest50_ip16_ms", "dropping50_ms"):
        r[k] *= 1000

    def json_all() -> int:
        return sum(len(t) for t in ix.json_texts(now))

    size, r["json_all_s"] = timed(json_all)
    r["json_all_mb"] = size / 1e6

    # the block file: save (and the loop's worst stall meanwhile), then today's parser
    path = folder / f"blocks-{n}.dat"
    builder, worst = ix.snapshot_builder(SNAPSHOT_STEP), 0.0  # as the keeper takes it
    while True:
        t = time.perf_counter()
        snap = builder.step()
        worst = max(worst, time.perf_counter() - t)
        if snap is not None:
            break
    r["snapshot_ms"] = worst * 1000
    _, r["snapshot_whole_ms"] = timed(ix.snapshot)
    r["snapshot_whole_ms"] *= 1000
    state = StateFile(path)

    def save(state: StateFile, snap: IndexSnapshot) -> bool:
        return state.write_chunks((c.encode() for c in render(snap, now)), now)

    stall, took = asyncio.run(_stall_during(save, state, snap))
    r["save_s"], r["save_stall_ms"] = took, stall
    r["save_lines_per_s"] = n / took
    r["save_base_mb"] = sum(len(v.blob) for v in state._versions) / 1e6
    del state
    del snap
    out = subprocess.run([sys.executable, "-c", PARSE_CHILD, str(path)], capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(out[0]) == n
    r["parse_s"], r["parse_rss_mb"] = float(out[1]), float(out[2])
    path.unlink()

    # sweep: the 10% that expire first, out of the index and the kernel
    when = now + 60 + 360
    t = time.perf_counter()
    gone = ix.sweep(when)
    r["sweep_index_s"] = time.perf_counter() - t
    removed, r["sweep_kernel_s"] = timed(bt.delete_blocks, *fds, [b.source for b in gone],
                                         dp.ipv6_prefix)
    r["swept"] = len(gone)
    assert removed == len(gone) and abs(len(gone) - n / 10) <= 1, (removed, len(gone))
    r["sweep_s"] = r["sweep_index_s"] + r["sweep_kernel_s"]
    r["index_load_s"] = r["adopt_s"] - r["kernel_read_s"]
    r["start_restart_s"] = r["adopt_s"]
    r["start_reboot_s"] = r["parse_s"] + r["kernel_fill_s"] + r["index_load_s"]

    # empty the table for the next size
    bt.delete_blocks(*fds, list(ix._entries), dp.ipv6_prefix)
    return r


def _pctl(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


class DaemonRun:
    """`dynscreen run` in a namespace of its own (a veth pair, XDP generic), pins on a
    bpffs of its own, the block file pre-filled with n blocks."""

    def __init__(self, folder: Path, n: int) -> None:
        self.folder = folder
        self.n = n
        self.ns = f"dsscale{os.getpid() % 100000}"
        self.bpffs = folder / "bpffs"
        self.sock = folder / "control.sock"
        self.state = folder / "blocks.dat"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DaemonRun:
        sh = self._sh
        sh("ip", "netns", "add", self.ns)
        try:
            sh("ip", "-n", self.ns, "link", "add", "dsb0", "type", "veth", "peer", "name", "dsb1")
            sh("ip", "-n", self.ns, "link", "set", "dsb0", "up")
            sh("ip", "-n", self.ns, "link", "set", "dsb1", "up")
            self.bpffs.mkdir(exist_ok=True)
            sh("mount", "-t", "bpf", "bpf", str(self.bpffs))
        except BaseException:
            self.__exit__()
            raise
        log = self.folder / "mail.log"
        log.touch()
        (self.folder / "dynscreen.toml").write_text(f"""
[screening]
interfaces = ["dsb0"]
xdp_mode = "generic"
max_blocks = {max(self.n + 10_000, 1_100_000)}

[[logs]]
format = "postfix"
path = "{log}"

[daemon]
state_file = "{self.state}"
whitelist_file = "{self.folder}/whitelist"
frozen_file = "{self.folder}/frozen"
socket = "{self.sock}"
pin_path = "{self.bpffs}/dynscreen"
metrics_listen = ""
""")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(signal.SIGTERM)
        self._sh("ip", "netns", "del", self.ns, check=False)
        self._sh("umount", str(self.bpffs), check=False)

    @staticmethod
    def _sh(*args: str, check: bool = True) -> None:
        subprocess.run(args, check=check, capture_output=True)

    def fill_file(self, now: float) -> None:
        """The block file with n blocks, written as the daemon writes it."""
        from dynscreen.control.blockindex import BlockIndex
        from dynscreen.control.blocksave import save_snapshot

        ix = BlockIndex(lambda: now)
        ix.load(rows(self.n, now), made_at=now)
        save_snapshot(self.state, ix.snapshot(), now)

    def start(self) -> float:
        """Seconds from the command until the socket answers (blocks in the kernel)."""
        from dynscreen.cli.app import OperationFailed

        dynscreen = str(REPO / ".venv/bin/dynscreen")
        t = time.perf_counter()
        self.out = open(self.folder / "daemon.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, dynscreen, "--config",
             str(self.folder / "dynscreen.toml"), "run"], stdout=self.out, stderr=self.out)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited: " +
                                   (self.folder / "daemon.out").read_text(errors="replace"))
            try:
                self.ask("ping")
                return time.perf_counter() - t
            except (OSError, OperationFailed):  # no socket yet (NoDaemon)
                time.sleep(0.05)

    def ask(self, cmd: str, **args: object):  # noqa: ANN201
        from dynscreen.cli import client

        return client.request(self.sock, cmd, timeout=120, **args)

    def rss_mb(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return math.nan

    def stop(self, sig: int) -> None:
        from dynscreen.control.lab import labdaemon

        labdaemon.stop(self.proc, sig, 120)
        self.proc = None


def measure_daemon(n: int, folder: Path) -> dict[str, float]:
    """The daemon itself: start from the file, block/unblock round trips, status, RSS."""
    r: dict[str, float] = {}
    with DaemonRun(folder, n) as d:
        now = time.time()
        d.fill_file(now)
        r["d_load_before"] = os.getloadavg()[0]
        r["d_start_s"] = d.start()
        r["d_start_rate"] = n / r["d_start_s"]
        assert d.ask("status", limit=0)["block_count"] == n
        block, unblock = [], []
        for i in range(100):  # while the first save of the merged file may still run
            addr = f"172.16.{i // 250}.{i % 250 + 1}"
            t = time.perf_counter()
            d.ask("block", addr=addr, minutes=30)
            block.append(time.perf_counter() - t)
            t = time.perf_counter()
            d.ask("unblock", addr=addr)
            unblock.append(time.perf_counter() - t)
            time.sleep(0.02)
        r["d_block_p50_ms"], r["d_block_p99_ms"] = (_pctl(block, q) * 1000 for q in (.5, .99))
        r["d_unblock_p50_ms"], r["d_unblock_p99_ms"] = \
            (_pctl(unblock, q) * 1000 for q in (.5, .99))
        cli = []
        for i in range(5):  # the whole CLI process: Python start-up and imports included
            t = time.perf_counter()
            subprocess.run([str(REPO / ".venv/bin/dynscreen"), "--socket", str(d.sock), "block",
                            f"172.17.0.{i + 1}"], check=True, capture_output=True)
            cli.append(time.perf_counter() - t)
        r["d_cli_block_ms"] = _pctl(cli, 0.5) * 1000
        t = time.perf_counter()
        out = subprocess.run([str(REPO / ".venv/bin/dynscreen"), "--socket", str(d.sock),
                              "status", "--json", "--all"], check=True, capture_output=True)
        r["d_json_all_s"] = time.perf_counter() - t
        r["d_json_all_mb"] = len(out.stdout) / 1e6
        assert len(json.loads(out.stdout)["blocks"]) == n + 5
        del out
        t = time.perf_counter()
        d.ask("status")
        r["d_status_ms"] = (time.perf_counter() - t) * 1000
        time.sleep(2)  # the keeper's save of the last changes, the drop-count walk
        st = d.ask("status", limit=0)
        r["d_stall_ms"] = st["daemon"]["loop_stall_max_ms"]
        r["d_rss_mb"] = d.rss_mb()
        r["d_load_after"] = os.getloadavg()[0]
    return r


def index_bytes_per_block(n: int = 100_000) -> float:
    from dynscreen.control.blockindex import BlockIndex

    now = time.time()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ix = BlockIndex(lambda: now)
        ix.load(rows(n, now), made_at=now)
        return (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()


def fmt(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "MB":
        return f"{v:.0f} MB"
    if unit == "load":
        return f"{v:.1f}"
    if unit == "/s":
        return f"{v / 1000:.0f}k/s"
    return f"{v:g}"


ROWS = (
    # key, label, unit, target text, target check at 1M (None: no target)
    ("kernel_fill_s", "kernel fill (UPDATE_BATCH)", "s", "", None),
    ("parse_s", "block file parse (the start's reader)", "s", "", None),
    ("adopt_s", "adoption: LOOKUP_BATCH -> index", "s", "", None),
    ("kernel_read_s", "  of which the kernel read", "s", "", None),
    ("start_restart_s", "start, maps kept: adoption", "s", "<= 10 s at 1M",
     lambda v: v <= T_START_MAX),
    ("start_reboot_s", "start, from the file: parse+fill+index", "s", "<= 10 s at 1M",
     lambda v: v <= T_START_MAX),
    ("sweep_s", "sweep 10% (index + DELETE_BATCH)", "s", "", None),
    ("sweep_index_s", "  of which the index", "s", "", None),
    ("newest50_ms", "status newest 50", "ms", "", None),
    ("newest50_reason_ms", "  --reason rsets", "ms", "", None),
    ("newest50_ip16_ms", "  --ip 10.1.0.0/16", "ms", "", None),
    ("dropping50_ms", "status most dropping 50", "ms", "", None),
    ("json_all_s", "status --json --all (build+dumps)", "s", "seconds at 1M",
     lambda v: v <= 10),
    ("json_all_mb", "  its size", "MB", "", None),
    ("snapshot_ms", "index snapshot, worst step (loop)", "ms", "<= 50 ms stall",
     lambda v: v <= STALL_MAX_MS),
    ("snapshot_whole_ms", "  a whole copy at once (not used)", "ms", "", None),
    ("save_s", "block file save (worker thread)", "s", "", None),
    ("save_lines_per_s", "  lines per second", "/s", "", None),
    ("save_stall_ms", "  worst loop stall meanwhile", "ms", "<= 50 ms",
     lambda v: v <= STALL_MAX_MS),
    ("save_base_mb", "  the text kept as an edit's base (packed)", "MB", "", None),
    ("rss_mb", "RSS of this process (bcc incl.)", "MB", "<= 500 MB", lambda v: v <= RSS_MAX_MB),
    ("index_mb", "  of which the index (est.)", "MB", "", None),
    ("d_start_s", "DAEMON start: file -> kernel live", "s", "<= 10 s at 1M",
     lambda v: v <= T_START_MAX),
    ("d_start_rate", "  blocks per second", "/s", ">= 100k/s", lambda v: v >= 100_000),
    ("d_block_p50_ms", "block ADDR, socket round trip p50", "ms", "", None),
    ("d_block_p99_ms", "  p99 (100)", "ms", "<= 50 ms", lambda v: v <= 50),
    ("d_unblock_p50_ms", "unblock ADDR, socket round trip p50", "ms", "", None),
    ("d_unblock_p99_ms", "  p99 (100)", "ms", "<= 50 ms", lambda v: v <= 50),
    ("d_cli_block_ms", "dynscreen block ADDR, whole process", "ms", "", None),
    ("d_status_ms", "status (default: newest 50)", "ms", "", None),
    ("d_json_all_s", "dynscreen status --json --all", "s", "seconds at 1M", lambda v: v <= 10),
    ("d_json_all_mb", "  its size", "MB", "", None),
    ("d_stall_ms", "daemon worst loop stall (after start)", "ms", "<= 50 ms",
     lambda v: v <= STALL_MAX_MS),
    ("d_rss_mb", "daemon RSS", "MB", "<= 500 MB", lambda v: v <= RSS_MAX_MB),
    ("d_load_before", "  load average (1 min) before its start", "load", "", None),
    ("d_load_after", "  and after its rows", "load", "", None),
)


def table(results: list[dict[str, float]], per_block: float) -> str:
    sizes = [f"{int(r['n']):,}" for r in results]
    w0 = max(len(label) for _, label, *_ in ROWS)
    head = f"{'':<{w0}}  " + "  ".join(f"{s:>10}" for s in sizes) + "  target        met"
    lines = [head, "-" * len(head)]
    for key, label, unit, target, ok in ROWS:
        cells = "  ".join(f"{fmt(r.get(key, math.nan), unit):>10}" for r in results)
        met = ""
        if ok is not None:
            last = results[-1]
            v = last.get(key, math.nan)
            if math.isnan(v):
                met = "-"
            elif last["n"] >= 1_000_000:
                met = "yes" if ok(v) else "NO"
            else:
                met = f"(at {int(last['n']):,}: {'yes' if ok(v) else 'no'})"
        lines.append(f"{label:<{w0}}  {cells}  {target:<13} {met}")
    lines.append("")
    lines.append(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
                 "(timings stretch with it)")
    lines.append(f"index memory: {per_block:.0f} bytes per block (tracemalloc, 100,000 blocks, "
                 "key included)")
    lines.append("DAEMON rows: `dynscreen run` in a namespace of its own, the block file "
                 "pre-filled; block/unblock are socket round trips (the")
    lines.append("CLI's own request code, in this process); 'whole process' adds the CLI's "
                 "Python start-up. The sweep above removes 10% at once;")
    lines.append("the daemon sweeps every second, so it meets only what expired in that second.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10,000 and 100,000 only")
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON")
    ap.add_argument("--sizes", help="comma-separated block counts instead of 10k,100k,1M")
    ap.add_argument("--daemon-only", action="store_true",
                    help="only the DAEMON rows (the daemon's own start, commands, RSS)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("scale_bench: needs root (it loads the BPF program and fills its block table)")
        return SKIPPED
    from dynscreen.control.dataplane.loader import DataPlane

    sizes = tuple(int(x) for x in a.sizes.split(",")) if a.sizes else \
        QUICK_SIZES if a.quick else SIZES
    results: list[dict[str, float]] = []
    if a.daemon_only:
        results = [{"n": n} for n in sizes]
    else:
        dp = DataPlane(pin_path=None, max_blocks=1_000_000, max_tracked=1024, tracepoint=False)
        dp.load()
        try:
            with tempfile.TemporaryDirectory(prefix="dynscreen-scale-") as tmp:
                for n in sizes:
                    results.append(measure(dp, n, Path(tmp)))
                    gc.collect()
                    print(f"  {n:,} blocks measured in this process", file=sys.stderr,
                          flush=True)
        finally:
            dp.close()
    print(json.dumps(results), file=sys.stderr, flush=True)  # kept if the daemon part fails
    for r in results:
        with tempfile.TemporaryDirectory(prefix="dynscreen-scale-d-") as tmp:
            try:
                r.update(measure_daemon(int(r["n"]), Path(tmp)))
            except Exception as e:  # the table still shows what was measured
                print(f"  daemon at {int(r['n']):,}: {type(e).__name__}: {e}", file=sys.stderr)
                out = Path(tmp) / "daemon.out"
                if out.exists():
                    print(out.read_text(errors="replace")[-3000:], file=sys.stderr)
        print(f"  {int(r['n']):,} blocks measured in the daemon", file=sys.stderr, flush=True)
    per_block = index_bytes_per_block()
    for r in results:
        r["index_mb"] = per_block * r["n"] / 1e6
    if a.json:
        print(json.dumps({"sizes": results, "index_bytes_per_block": per_block}, indent=1))
    else:
        print(table(results, per_block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
