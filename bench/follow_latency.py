"""How long from a line appended to a log file to the engine's decision on it.

Two numbers: append -> FileFollower yields the line, and append -> the line is
parsed (LogParser) and the engine (limit auth_failures = 1) decides to block.

Why: every log-made block (auth failures, RCPTs, RSETs) waits this long first. A
writer process (standing in for syslog) appends one line at a time, each stamped with
the monotonic clock, and waits until the follower has yielded it; the follower sits
idle in the event loop between lines, so each number includes the inotify wakeup.
Also prints catch-up throughput (a backlog read with read_available).

Run: .venv/bin/python bench/follow_latency.py [--appends N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dynscreen.control.config import default_config
from dynscreen.control.engine import Engine
from dynscreen.control.logs.follow import FileFollower
from dynscreen.control.logs.parse import LogParser

LINE = "mx1 postfix/smtpd[4711]: warning: unknown[203.0.113.7]: SASL LOGIN authentication failed"


# The decision run: a real Postfix line per append, a new source each time, the write
# time (monotonic ns) carried in the SASL user name.
DECIDE_WRITER = """
import os, random, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
for i in range(n):
    time.sleep(random.uniform(0.0005, 0.002))
    ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
    stamp = time.strftime("%b %e %H:%M:%S")
    line = (f"{stamp} mx postfix/smtpd[4711]: warning: unknown[{ip}]: SASL LOGIN "
            f"authentication failed: authentication failure, sasl_username=t{time.monotonic_ns()}")
    os.write(fd, (line + "\\n").encode())
    if not sys.stdin.buffer.read(1):
        break
"""


def _engine() -> Engine:
    cfg = default_config()
    limits = dataclasses.replace(cfg.screening.limits, auth_failures=1)
    cfg = dataclasses.replace(cfg, screening=dataclasses.replace(cfg.screening, limits=limits))
    return Engine(cfg, now=time.time())


async def decision_latencies(path: Path, n: int) -> list[float]:
    """Microseconds from each write to the engine's block decision on its line."""
    follower = FileFollower(path)
    parser = LogParser(str(path))
    engine = _engine()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DECIDE_WRITER, str(path), str(n), stdin=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None
    out: list[float] = []
    async for lineno, text in follower.lines():
        for ev in parser.parse(text, lineno):
            if engine.feed(ev, time.time()):
                out.append((time.monotonic_ns() - int(ev.user[1:])) / 1000)
        proc.stdin.write(b"k")
        if lineno >= n:
            break
    follower.close()
    proc.stdin.close()
    await proc.wait()
    return out


WRITER = """
import os, random, sys, time
path, n, line = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
for i in range(n):
    time.sleep(random.uniform(0.0005, 0.002))  # let the follower go idle
    os.write(fd, f"{time.monotonic_ns()} {i} {line}\\n".encode())
    if not sys.stdin.buffer.read(1):  # the follower's ack: it has yielded the line
        break
"""


async def latencies(path: Path, n: int) -> list[float]:
    """Microseconds from each write to its line coming out of lines()."""
    follower = FileFollower(path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(path), str(n), LINE, stdin=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None
    out: list[float] = []
    async for _, text in follower.lines():
        out.append((time.monotonic_ns() - int(text.split(" ", 1)[0])) / 1000)
        proc.stdin.write(b"k")
        if len(out) == n:
            break
    follower.close()
    proc.stdin.close()
    await proc.wait()
    return out


def throughput(path: Path, mib: int) -> tuple[float, float]:
    """Lines/s and MiB/s reading a backlog of `mib` MiB from the start."""
    line = f"2024-03-21T19:26:06.123456+00:00 {LINE}\n".encode()
    count = mib * (1 << 20) // len(line)
    path.write_bytes(line * count)
    with FileFollower(path, from_start=True) as follower:
        t0 = time.perf_counter()
        got = follower.read_available()
        dt = time.perf_counter() - t0
    assert len(got) == count
    return count / dt, mib / dt


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(p * 10) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--backlog-mib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "mail.log"
        log.write_text("")
        lat = asyncio.run(latencies(log, args.appends))
        log2 = Path(tmp) / "decide.log"
        log2.write_text("")
        dec = asyncio.run(decision_latencies(log2, args.appends))
        lines_s, mib_s = throughput(Path(tmp) / "backlog.log", args.backlog_mib)
    print(f"FileFollower: append -> yield latency over {len(lat)} appends (microseconds)")
    print(f"{'p50':>10} {'p90':>10} {'p99':>10} {'max':>10}")
    print(f"{pct(lat, 50):10.1f} {pct(lat, 90):10.1f} {pct(lat, 99):10.1f} {max(lat):10.1f}")
    print(f"append -> block decision (parse + engine) over {len(dec)} appends (microseconds)")
    print(f"{'p50':>10} {'p90':>10} {'p99':>10} {'max':>10}")
    print(f"{pct(dec, 50):10.1f} {pct(dec, 90):10.1f} {pct(dec, 99):10.1f} {max(dec):10.1f}")
    verdict = "ok" if pct(dec, 99) <= 10_000 else "MISSED"
    print(f"target p99 <= 10 ms: {verdict}")
    print(f"catch-up: {lines_s / 1e6:.2f} M lines/s, {mib_s:.0f} MiB/s ({args.backlog_mib} MiB)")


if __name__ == "__main__":
    main()
