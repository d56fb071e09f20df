"""Replay throughput: `dynscreen replay` against fail2ban-regex on the same mail log.

For each size (default 250k, 500k and 1M lines of bench/loggen.py's realistic
Postfix + Dovecot log, about 8% screening signals) it times, each as a child
process whose peak RSS is read from its own rusage (os.wait4):

- ``dynscreen replay --json LOG > /dev/null`` (every event and decision as JSON),
- ``dynscreen replay LOG > /dev/null`` (the summary),
- the parsers alone, in one process (what the parsing costs of the above),
- ``fail2ban-regex LOG postfix[mode=auth]`` plus ``fail2ban-regex LOG dovecot``:
  fail2ban needs both filters to see what dynscreen sees, so their times add.

Targets (issue): >= 300,000 lines/s on one core with --json, and >= 10x faster
than fail2ban's two filters together. Each size gets its verdict for each target; a
missed one says why (process start, the share of a core it got, the parsers' share).
A missed target is reported, not failed.

With ``--against CHECKOUT`` (another working tree of dynscreen, its own ``make setup``
done, e.g. ``git worktree add --detach ../base REV``), it also compares the two in one
sitting, alternating runs so that the machine's load falls on both alike: the CPU time
(user + system, best of ``--rounds``) of the whole ``dynscreen replay`` command, with and
without ``--json``, and of the replay alone inside one process, on one log of the first
size. Target: this tree within +10% of the other on each (a regression guard: a
change that makes replay slower than the tree it is measured against shows here).

Usage: python bench/replay_bench.py [--quick] [--sizes 250000,500000] [--seed 1]
                                    [--against CHECKOUT [--rounds 7]]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from loggen import write_log  # noqa: E402

SKIPPED = 77
SIZES = (250_000, 500_000, 1_000_000)
QUICK_SIZES = (50_000, 100_000, 200_000)
TARGET_RATE = 300_000
TARGET_SPEEDUP = 10.0
FAIL2BAN_FILTERS = ("postfix[mode=auth]", "dovecot")

PARSE_ONLY = """
import gc, sys
from dynscreen.control.logs.parse import LogParser
from dynscreen.control.replay import _chunks, open_log
gc.disable()
path = sys.argv[1]
parse_many = LogParser(path).parse_many
n = 0
for chunk in _chunks(path, open_log(path)):  # as replay reads one file
    events = []
    n = parse_many(chunk, n, events)
"""


def pipeline() -> str:
    """Whether the parsers, engine and replay loop ran compiled (control/native.py)."""
    out = subprocess.run(
        [sys.executable, "-m", "dynscreen.control.native"], capture_output=True, text=True,
        cwd=REPO, check=False,
    )
    if out.returncode == 0:
        return "compiled with mypyc (make setup)"
    return "pure Python, uncompiled or stale modules: " + " ".join(out.stdout.split())


@dataclass
class Run:
    """One measured child process (or several, summed)."""

    tool: str
    lines: int
    seconds: float
    max_rss_kb: int
    ok: bool = True
    note: str = ""
    cpu: float = 0.0  # user + system seconds: what one core spent, whatever else ran

    @property
    def rate(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0


def measure(
    cmd: list[str], *, stdout: int | None = subprocess.DEVNULL
) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds, peak RSS (KiB) and exit code of one child process."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=stdout, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            tail = err.read()[-600:].decode(errors="replace")
            print(f"  {' '.join(cmd[:3])}...: exit {p.returncode}: {tail}", file=sys.stderr)
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, p.returncode


def dynscreen_exe() -> Path | None:
    exe = REPO / ".venv" / "bin" / "dynscreen"
    if exe.exists():
        return exe
    found = shutil.which("dynscreen")
    return Path(found) if found else None


def python_exe() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def bench_size(log: Path, lines: int, exe: Path, config: Path, f2b: str | None) -> list[Run]:
    runs = []
    for tool, extra in (("dynscreen replay --json", ["--json"]), ("dynscreen replay", [])):
        secs, cpu, rss, rc = measure(
            [str(exe), "replay", "--config", str(config), *extra, str(log)]
        )
        runs.append(Run(tool, lines, secs, rss, rc == 0, cpu=cpu))
    secs, cpu, rss, rc = measure([python_exe(), "-c", PARSE_ONLY, str(log)])
    runs.append(Run("  (parsers alone)", lines, secs, rss, rc == 0, cpu=cpu))
    if f2b is None:
        runs.append(Run("fail2ban-regex (2 filters)", lines, 0.0, 0, False, "not installed"))
        return runs
    total, cpu_total, peak, ok = 0.0, 0.0, 0, True
    for name in FAIL2BAN_FILTERS:
        secs, cpu, rss, rc = measure([f2b, str(log), name])
        total += secs
        cpu_total += cpu
        peak = max(peak, rss)
        ok = ok and rc == 0
    runs.append(Run("fail2ban-regex (2 filters)", lines, total, peak, ok, cpu=cpu_total))
    return runs


# The replay alone in one process: its CPU seconds, the best of argv[3] runs (imports,
# config and process start left out: the whole command's rows have them).
IN_PROCESS = """
import gc, resource, sys
from pathlib import Path
from dynscreen.control.config import load_config
from dynscreen.control.replay import replay
cfg = load_config(Path(sys.argv[2]))
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
best = float("inf")
for _ in range(int(sys.argv[3])):
    gc.collect()
    gc.disable()
    t = cpu()
    if sys.argv[4] == "json":
        replay(cfg, [sys.argv[1]], write=lambda s: None)
    else:
        replay(cfg, [sys.argv[1]])
    best = min(best, cpu() - t)
    gc.enable()
print(best)
"""
TARGET_AGAINST = 10.0  # percent: this tree's CPU time at most this much above the other's
AGAINST_MEASURES = (
    ("dynscreen replay (whole command)", "cmd", []),
    ("dynscreen replay --json (whole command)", "cmd", ["--json"]),
    ("replay in one process", "in", ["sum"]),
    ("replay --json in one process", "in", ["json"]),
)


def _cpu_of(tree: Path, kind: str, extra: list[str], log: Path, config: Path) -> float:
    """One measurement of a tree: a whole command's CPU, or the in-process best of 2."""
    if kind == "cmd":
        exe = tree / ".venv" / "bin" / "dynscreen"
        secs, cpu, _, rc = measure([str(exe), "replay", "--config", str(config), *extra,
                                    str(log)])
        return cpu if rc == 0 else float("nan")
    py = tree / ".venv" / "bin" / "python"
    out = subprocess.run([str(py), "-c", IN_PROCESS, str(log), str(config), "2", *extra],
                         capture_output=True, text=True, cwd=tree, check=False)
    return float(out.stdout) if out.returncode == 0 else float("nan")


def against(other: Path, log: Path, config: Path, rounds: int) -> list[str]:
    """This tree against another, alternating (which goes first alternates too); the
    best CPU time of each, and the verdict on the +10% target."""
    trees = {"this": REPO, "other": other}
    best = {(t, m[0]): float("inf") for t in trees for m in AGAINST_MEASURES}
    load0 = os.getloadavg()[0]
    for i in range(rounds):
        order = ("this", "other") if i % 2 == 0 else ("other", "this")
        for name, kind, extra in AGAINST_MEASURES:
            for t in order:
                cpu = _cpu_of(trees[t], kind, extra, log, config)
                if cpu == cpu:  # (not nan: a failed run leaves the best as it was)
                    best[t, name] = min(best[t, name], cpu)
    out = [f"against {other} (best CPU seconds of {rounds} alternating rounds, load average "
           f"{load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end):"]
    for name, _, _ in AGAINST_MEASURES:
        mine, theirs = best["this", name], best["other", name]
        if not (mine < float("inf") and theirs < float("inf")):
            out.append(f"  {name}: FAILED (see the errors above): no verdict")
            continue
        change = 100.0 * (mine / theirs - 1.0)
        met = change <= TARGET_AGAINST
        out.append(f"  {name}: this {mine:.3f} s, other {theirs:.3f} s ({change:+.1f}%; target "
                   f"<= +{TARGET_AGAINST:.0f}%: {'met' if met else 'MISSED'})")
    return out


def table(runs: list[Run]) -> str:
    rows = [("tool", "lines", "seconds", "cpu s", "lines/s", "max RSS MiB", "vs fail2ban")]
    f2b = {r.lines: r for r in runs if r.tool.startswith("fail2ban") and r.ok}
    for r in runs:
        base = f2b.get(r.lines)
        if not r.ok:
            rows.append((r.tool, f"{r.lines:,}", "-", "-", "-", "-", r.note or "FAILED"))
            continue
        speedup = "1.0x" if r is base else (f"{base.seconds / r.seconds:.1f}x" if base else "-")
        rows.append((
            r.tool, f"{r.lines:,}", f"{r.seconds:.2f}", f"{r.cpu:.2f}", f"{r.rate:,.0f}",
            f"{r.max_rss_kb / 1024:.0f}", speedup,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        out.append("  ".join(cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def startup_seconds(exe: Path, config: Path, tmp: Path, seed: int) -> float:
    """What `dynscreen replay --json` costs before its first line: the fastest of three
    runs on a 1,000-line log (interpreter, imports, config). Every row pays it once."""
    log = tmp / "mail-startup.log"
    write_log(str(log), 1_000, seed)
    best = min(measure([str(exe), "replay", "--config", str(config), "--json", str(log)])[0]
               for _ in range(3))
    log.unlink()
    return best


def _why_slow(js: Run, parse: Run | None, startup: float) -> list[str]:
    """Why one --json row is below the target, from what was measured."""
    why = []
    if startup > 0 and js.seconds > startup:
        steady = js.lines / (js.seconds - startup)
        why.append(f"process start ({startup:.2f} s) is {100 * startup / js.seconds:.0f}% of "
                   f"this run; past it {steady:,.0f} lines/s"
                   + (" (the target, once started)" if steady >= TARGET_RATE else ""))
    if js.cpu and js.cpu < 0.9 * js.seconds:
        why.append(f"it got {100 * js.cpu / js.seconds:.0f}% of a core: other work on the "
                   "machine took the rest")
    if js.cpu:
        why.append(f"{js.lines / js.cpu:,.0f} lines per CPU second")
    if parse is not None and (js.cpu or js.seconds):
        share = 100.0 * (parse.cpu or parse.seconds) / (js.cpu or js.seconds)
        why.append(f"the parsers alone take {share:.0f}% of its CPU time")
    return why


def verdicts(runs: list[Run], startup: float = 0.0) -> list[str]:
    """One verdict per size for each target; a missed one says why."""
    out = []
    for lines in sorted({r.lines for r in runs}):
        at = {r.tool: r for r in runs if r.lines == lines and r.ok}
        js = at.get("dynscreen replay --json")
        if js is None:
            out.append(f"{lines:,} lines: dynscreen replay --json FAILED: no verdict")
            continue
        parse = at.get("  (parsers alone)")
        met = js.rate >= TARGET_RATE
        out.append(f"{lines:,} lines: target >= {TARGET_RATE:,} lines/s with --json: "
                   f"{js.rate:,.0f} ({'met' if met else 'MISSED'})")
        if not met:
            out.append(f"  why: {'; '.join(_why_slow(js, parse, startup))}")
        f2b = at.get("fail2ban-regex (2 filters)")
        if f2b is None:
            out.append(f"{lines:,} lines: target >= {TARGET_SPEEDUP:.0f}x fail2ban: no "
                       "verdict (fail2ban-regex not run)")
            continue
        speedup = f2b.seconds / js.seconds
        met = speedup >= TARGET_SPEEDUP
        out.append(f"{lines:,} lines: target >= {TARGET_SPEEDUP:.0f}x fail2ban's two filters: "
                   f"{speedup:.1f}x ({'met' if met else 'MISSED'})")
        if not met:
            out.append(f"  why: fail2ban took {f2b.seconds:.2f} s, dynscreen {js.seconds:.2f} s"
                       f" of which {startup:.2f} s process start; past it "
                       f"{f2b.seconds / max(js.seconds - startup, 1e-9):.1f}x")
    rss = sorted((r.lines, r.max_rss_kb) for r in runs if r.tool == "dynscreen replay --json")
    if len(rss) >= 2 and rss[0][1]:
        growth = rss[-1][1] / rss[0][1]
        out.append(f"memory: peak RSS {rss[0][1] / 1024:.0f} MiB at {rss[0][0]:,} lines, "
                   f"{rss[-1][1] / 1024:.0f} MiB at {rss[-1][0]:,} lines ({growth:.2f}x)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="dynscreen replay vs fail2ban-regex")
    ap.add_argument("--quick", action="store_true", help="smaller logs (50k..200k lines)")
    ap.add_argument("--sizes", help="comma-separated line counts (default 250000,500000,1000000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--against", type=Path, metavar="CHECKOUT",
                    help="also compare with this other built dynscreen tree, alternating")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds of --against")
    a = ap.parse_args(argv)
    if a.against is not None and not (a.against / ".venv" / "bin" / "dynscreen").exists():
        print(f"replay_bench: {a.against} has no .venv/bin/dynscreen: run `make setup` there",
              file=sys.stderr)
        return 2
    sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else list(
        QUICK_SIZES if a.quick else SIZES
    )
    exe = dynscreen_exe()
    if exe is None:
        print("replay_bench: no dynscreen executable: run `make setup`", file=sys.stderr)
        return SKIPPED
    f2b = shutil.which("fail2ban-regex")
    if f2b is None:
        print("replay_bench: fail2ban-regex not found (Debian: apt install fail2ban): "
              "dynscreen only", file=sys.stderr)
    runs: list[Run] = []
    compared: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dynscreen-bench-") as tmp:
        config = Path(tmp) / "defaults.toml"
        config.write_text("# built-in defaults: the bench ignores /etc/dynscreen\n")
        startup = startup_seconds(exe, config, Path(tmp), a.seed)
        for n in sizes:
            log = Path(tmp) / f"mail-{n}.log"
            stats = write_log(str(log), n, a.seed)
            share = 100.0 * stats.signal_lines / max(1, stats.lines)
            print(f"{n:,} lines ({log.stat().st_size / 2**20:.0f} MiB, {share:.1f}% screening "
                  "signals): measuring...", flush=True)
            runs += bench_size(log, n, exe, config, f2b)
            if a.against is not None and not compared:
                print(f"comparing with {a.against} on this log...", flush=True)
                compared = against(a.against, log, config, a.rounds)
            log.unlink()
    print()
    print(table(runs))
    print()
    print(f"process start of `dynscreen replay --json` (1,000 lines, best of 3): {startup:.2f} s")
    for line in verdicts(runs, startup):
        print(line)
    for line in compared:
        print(line)
    print(f"log pipeline: {pipeline()}")
    print(f"(one core each; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at the end: other work on the machine slows every row)")
    return 0 if all(r.ok or r.note for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
