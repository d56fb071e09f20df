"""`make bench`: run every benchmark in bench/ that exists, each as a subprocess.

  xdp_bench.py        XDP ns/packet by BPF_PROG_TEST_RUN (needs root: skipped otherwise)
  replay_bench.py     log replay throughput
  follow_latency.py   log-follow latency
  scale_bench.py      the control plane's blocks at 10k, 100k, 1M (needs root)
  dovecot_policy_bench.py  Dovecot auth policy: allow latency p50/p99 at 1,000 requests/s
  flood_bench.py      100,000 sources over the connection limit: all blocked, none lost
                      (needs root)
  reaction_bench.py   reaction time and ban throughput, dynscreen and fail2ban side by
                      side (needs root, fail2ban, nft)
  fleet_bench.py      fleet propagation latency and shared blocks/s (needs root, redis-server)

Usage: python bench/run.py [--quick | --full]   (--quick is passed through to each
benchmark whose source mentions "--quick"; the others run as they are, with a note).
The namespace labs (flood, reaction) take minutes at full size: they run at their quick
size unless --full is given or BENCH_FULL=1 is in the environment (`BENCH_FULL=1 make
bench`), which each of them also reads.

A benchmark reports its targets in its own output; a missed target is not a
failure. The exit status is non-zero only when a benchmark crashed (exited
non-zero other than 77, which means "skipped", or died of a signal).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SKIPPED = 77  # a benchmark that cannot run here (missing root, tool, ...) exits 77

# (file, needs root, what it measures)
BENCHMARKS = (
    ("xdp_bench.py", True, "XDP ns/packet over an empty program (BPF_PROG_TEST_RUN)"),
    ("replay_bench.py", False, "log replay"),
    ("follow_latency.py", False, "log-follow latency"),
    ("scale_bench.py", True, "blocks at 10k/100k/1M: adoption, sweep, status, file save"),
    ("dovecot_policy_bench.py", False, "Dovecot auth policy: allow latency at 1,000/s"),
    ("flood_bench.py", True, "sources each over the connection limit: blocked, none lost"),
    ("reaction_bench.py", True, "reaction time and ban throughput against fail2ban"),
    ("fleet_bench.py", True, "fleet: block propagation to another gateway's kernel, shared "
                             "blocks/s with three members"),
)
# Quick unless --full / BENCH_FULL=1: full size takes many minutes of namespace traffic.
QUICK_BY_DEFAULT = {"flood_bench.py", "reaction_bench.py"}


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def run_one(name: str, what: str, args: list[str]) -> int:
    print(f"\n=== {name} {' '.join(args)}".rstrip() + f": {what}", flush=True)
    t0 = time.monotonic()
    try:
        rc = subprocess.run([python(), str(BENCH / name), *args], cwd=REPO, check=False).returncode
    except OSError as e:
        print(f"=== {name}: could not start: {e}", flush=True)
        return 1
    took = time.monotonic() - t0
    if rc == 0:
        print(f"=== {name}: done in {took:.1f} s", flush=True)
    elif rc == SKIPPED:
        print(f"=== {name}: skipped (see its message above)", flush=True)
    elif rc < 0:
        print(f"=== {name}: CRASHED (killed by signal {-rc}) after {took:.1f} s", flush=True)
    else:
        print(f"=== {name}: CRASHED (exit {rc}) after {took:.1f} s", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run the dynscreen benchmarks")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="shorter runs (passed through)")
    size.add_argument("--full", action="store_true",
                      help="the namespace labs at full size too (as BENCH_FULL=1)")
    a = ap.parse_args(argv)
    full = a.full or os.environ.get("BENCH_FULL") == "1"
    if full:
        os.environ["BENCH_FULL"] = "1"
    extra = ["--quick"] if a.quick else []
    crashed, summary = [], []
    for name, needs_root, what in BENCHMARKS:
        if not (BENCH / name).exists():
            summary.append(f"{name}: not present")
            continue
        if needs_root and os.geteuid() != 0:
            msg = f"{name}: skipped: needs root (it loads BPF programs and runs them with " \
                  "BPF_PROG_TEST_RUN); run `sudo make bench`"
            print(f"\n=== {msg}", flush=True)
            summary.append(msg)
            continue
        args = extra
        if name in QUICK_BY_DEFAULT and not full:
            args = ["--quick"]
        if args and "--quick" not in (BENCH / name).read_text():
            print(f"\n=== {name} takes no --quick: running it in full", flush=True)
            args = []
        rc = run_one(name, what, args)
        if rc == 0:
            summary.append(f"{name}: ran")
        elif rc == SKIPPED:
            summary.append(f"{name}: skipped")
        else:
            crashed.append(name)
            how = f"signal {-rc}" if rc < 0 else f"exit {rc}"
            summary.append(f"{name}: CRASHED ({how})")
    print("\n=== summary\n" + "\n".join(f"  {s}" for s in summary), flush=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
