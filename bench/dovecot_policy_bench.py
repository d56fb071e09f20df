"""How fast dynscreen answers Dovecot's ``command=allow`` under load.

Dovecot waits for the answer before it checks a password (its timeout: 2 s), so
the answer must come within a few milliseconds even while reports keep the engine
busy. A server process runs the policy server as the daemon does (a block index
holding BLOCKED blocked sources and a few ranges, asked as the daemon asks it; a
frozen-accounts store; every report fed to the engine); this process is Dovecot's
HTTP client: keep-alive connections, requests in Dovecot's JSON, ``allow`` at RATE
per second on a fixed schedule (open loop: a late answer delays no later request,
and latency counts from the scheduled send time, so a stall shows up) and
``report`` of failures at a tenth of that.

Target: allow p99 < 5 ms at 1,000 requests/s.

Run: .venv/bin/python bench/dovecot_policy_bench.py [--rate N] [--seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_P99_MS = 5.0
BLOCKED = 100_000
CONNECTIONS = 8  # Dovecot's client opens up to 100; a handful carry 1,000/s


class _NoKernel:
    """The block table without a kernel: the index is what the policy asks."""

    def add_block(self, *a: Any) -> None: ...

    def remove_block(self, *a: Any) -> bool:
        return True


class _Whitelist:
    """The daemon's whitelist question over the config's entries (control/whitelist.py)."""

    def __init__(self, nets: Any) -> None:
        self.nets = list(nets)

    def covering(self, net: Any) -> Any:
        return next((w for w in self.nets if w.version == net.version
                     and net.subnet_of(w)), None)


def serve(folder: str) -> None:
    """The server side (a subprocess): prints its port, serves until stdin closes."""
    from ipaddress import ip_network

    from dynscreen.control.accounts import FrozenStore
    from dynscreen.control.blocklist import BlockList
    from dynscreen.control.config import default_config
    from dynscreen.control.dovecotpolicy import DovecotPolicyServer, Report, source_blocked
    from dynscreen.control.engine import Engine

    cfg = default_config()
    accounts = dataclasses.replace(cfg.accounts, freeze_scope="login")
    screening = dataclasses.replace(cfg.screening, max_tracked=2 * BLOCKED)
    cfg = dataclasses.replace(cfg, accounts=accounts, screening=screening)
    now = time.time()
    engine = Engine(cfg, now=now)
    # The daemon's block index (the kernel's table left out: the answer never reads it),
    # with a few ranges, so that each lookup probes several prefix lengths.
    blocks = BlockList(_NoKernel(), lambda net, until: None)
    for i in range(BLOCKED):
        blocks.add(ip_network(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"),
                   now + 3600, "auth_failures", "logs")
    for net in ("192.0.2.0/24", "100.64.0.0/16", "2001:db8::/48", "2001:db8:1::/64"):
        blocks.add(ip_network(net), now + 3600, "manual", "manual")
    whitelist = _Whitelist(cfg.screening.whitelist)
    store = FrozenStore(Path(folder) / "frozen")
    store.load()
    for i in range(100):
        store.freeze(f"frozen{i}@example.com", now, service="imap", failures=10)

    pauses: list[float] = []
    started: list[float] = []

    def gc_watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            pauses.append((time.perf_counter() - started[0]) * 1000)

    gc.callbacks.append(gc_watch)

    def report(r: Report) -> None:
        engine.feed_report(r.event, r.pwhash, time.time())

    async def main() -> None:
        server = DovecotPolicyServer(
            blocked=lambda ip: source_blocked(blocks, whitelist, ip, time.time()), frozen=store,
            on_report=report, freeze_login=True)
        inner = server._one_request
        handling: list[float] = []

        async def timed(first: bytes, reader: asyncio.StreamReader, deadline: float) -> Any:
            t0 = time.perf_counter()  # (the request's first byte is in)
            out = await inner(first, reader, deadline)
            handling.append((time.perf_counter() - t0) * 1000)
            return out

        server._one_request = timed  # type: ignore[method-assign]
        await server.start(("127.0.0.1", 0))
        assert isinstance(server.address, tuple)
        print(server.address[1], flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        print(json.dumps({"requests": server.requests, "rejects": server.rejects,
                          "reports": server.reports, "errors": server.errors,
                          "blocks": len(blocks), "tracked": engine.tracked(),
                          "gc_runs": len(pauses),
                          "gc_max_ms": round(max(pauses, default=0.0), 1),
                          "handling_p50_ms": round(pct(handling, 50), 3),
                          "handling_p99_ms": round(pct(handling, 99), 3)}), flush=True)
        await server.close()

    asyncio.run(main())


def body(command: str, i: int) -> bytes:
    """Dovecot's JSON: a third of the sources blocked, a few frozen logins."""
    if i % 3 == 0:
        remote = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255 or 1}"
    else:
        remote = f"198.{18 + (i >> 16 & 1)}.{i >> 8 & 255}.{i & 255}"
    login = f"frozen{i % 100}@example.com" if i % 50 == 0 else f"user{i % 5000}@example.com"
    attrs = {"device_id": "", "login": login, "protocol": "imap",
             "pwhash": f"{random.getrandbits(12):03x}", "remote": remote,
             "session": f"s{i}"}
    text = json.dumps(attrs, separators=(",", ":"))
    if command == "report":
        text = text[:-1] + ',"success":false,"policy_reject":false}'
    return text.encode()


def request(command: str, data: bytes) -> bytes:
    return (f"POST /?command={command} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "User-Agent: dovecot/auth-policy-client\r\nConnection: Keep-Alive\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode() + data


async def client(port: int, rate: float, seconds: float) -> tuple[list[float], int]:
    """Latencies (ms) of the allow requests, and how many reports were answered."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CONNECTIONS + 1)]
    locks = [asyncio.Lock() for _ in conns]
    latencies: list[float] = []
    reports = 0
    loop = asyncio.get_running_loop()

    async def one(k: int, command: str, i: int, due: float) -> float:
        reader, writer = conns[k]
        async with locks[k]:  # one request at a time per connection, as Dovecot does
            writer.write(request(command, body(command, i)))
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            answer = json.loads(await reader.readexactly(length))
            assert "status" in answer
        return (loop.time() - due) * 1000

    async def allow(i: int, due: float) -> None:
        latencies.append(await one(i % CONNECTIONS, "allow", i, due))

    async def report(i: int, due: float) -> None:
        nonlocal reports
        await one(CONNECTIONS, "report", i, due)
        reports += 1

    tasks = []
    start = loop.time() + 0.2
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(allow(i, due)))
        if i % 10 == 0:
            tasks.append(asyncio.create_task(report(i, due)))
    await asyncio.gather(*tasks)
    for _, writer in conns:
        writer.close()
    return latencies, reports


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="allow requests per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="3 seconds")
    ap.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve)
        return 0
    seconds = 3.0 if a.quick else a.seconds
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen([sys.executable, __file__, "--serve", folder],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert server.stdin is not None and server.stdout is not None
        try:
            port = int(server.stdout.readline())
            latencies, reports = asyncio.run(client(port, a.rate, seconds))
        finally:
            server.stdin.close()
            stats = server.stdout.readline()
            server.wait(30)
    counts = json.loads(stats) if stats else {}
    p50, p99, worst = pct(latencies, 50), pct(latencies, 99), max(latencies)
    met = p99 < TARGET_P99_MS
    print(f"Dovecot auth policy: {len(latencies)} allow at {a.rate:g}/s for {seconds:g} s, "
          f"{reports} reports at {a.rate / 10:g}/s, {BLOCKED:,} blocked sources, "
          f"{CONNECTIONS} keep-alive connections")
    print(f"{'measure':<28}{'value':>12}  target")
    print(f"{'allow latency p50':<28}{p50:>9.2f} ms")
    print(f"{'allow latency p99':<28}{p99:>9.2f} ms  < {TARGET_P99_MS:g} ms: "
          f"{'met' if met else 'MISSED'}")
    print(f"{'allow latency max':<28}{worst:>9.2f} ms")
    print(f"{'allow latency mean':<28}{statistics.fmean(latencies):>9.2f} ms")
    print(f"{'server handling p50':<28}{counts.get('handling_p50_ms', 0):>9.2f} ms  "
          "(first byte in to answer made, all requests)")
    print(f"{'server handling p99':<28}{counts.get('handling_p99_ms', 0):>9.2f} ms")
    print(f"server: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
