"""A fleet on a highly available Redis: members reach it through a redis+sentinel:// URL.

Real processes on 127.0.0.1 (random ports, a temp folder each): a master, a
replica of it, and a Sentinel watching them. Members find the master through the
Sentinel; after a failover (SENTINEL FAILOVER) they find the new one and go on.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from test_fleet_member import Gateway, connected, until

from dynscreen.control.addr import parse_network
from dynscreen.control.fleet import keys
from dynscreen.control.lab import labdaemon
from dynscreen.control.lab.redisserver import available

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed "
                                "(make setup-dev)")
SERVICE = "dsfleet"
PASSWORD = "s3cret-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One redis-server (or Sentinel) on 127.0.0.1:port, from its own folder."""

    def __init__(self, folder: Path, args: list[str], port: int) -> None:
        self.port = port
        self.log = folder / f"{port}.log"
        self.proc = subprocess.Popen(["redis-server", *args, "--port", str(port),
                                      "--bind", "127.0.0.1", "--dir", str(folder),
                                      "--logfile", str(self.log), "--daemonize", "no"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def client(self, password: str | None = PASSWORD) -> redis.Redis:
        return redis.Redis("127.0.0.1", self.port, password=password, socket_timeout=5)

    def wait(self, password: str | None = PASSWORD) -> Proc:
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client(password).ping()
                return self
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.port} did not start: "
                                       f"{self.log.read_text(errors='replace')[-500:]}"
                                       ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        labdaemon.stop(self.proc, timeout=5)


class HighlyAvailable:
    """A master, a replica and a Sentinel; ``url`` reaches the master through the Sentinel."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="dynscreen-sentinel-"))
        self.procs: list[Proc] = []
        common = ["--save", "", "--appendonly", "no", "--requirepass", PASSWORD,
                  "--masterauth", PASSWORD]
        self.master = self._start(common, free_port())
        self.replica = self._start([*common, "--replicaof", "127.0.0.1",
                                    str(self.master.port)], free_port())
        conf = self.folder / "sentinel.conf"
        conf.write_text(f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 1\n"
                        f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
                        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                        f"sentinel failover-timeout {SERVICE} 10000\n")
        self.sentinel = Proc(self.folder, [str(conf), "--sentinel"], free_port())
        self.procs.append(self.sentinel)
        self.sentinel.wait(password=None)
        self.url = f"redis+sentinel://:{PASSWORD}@127.0.0.1:{self.sentinel.port}/{SERVICE}/0"

    def _start(self, args: list[str], port: int) -> Proc:
        p = Proc(self.folder, args, port)
        self.procs.append(p)
        return p.wait()

    def master_port(self) -> int:
        host, port = self.sentinel.client(None).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def replica_known(self) -> bool:
        """The Sentinel found the replica and it is in sync: a failover can pick it."""
        found = self.sentinel.client(None).execute_command("SENTINEL", "REPLICAS", SERVICE)
        for r in found:
            info = dict(zip(r[::2], r[1::2], strict=True)) if isinstance(r, list) else r
            flags = info.get(b"flags", info.get("flags", b""))
            link = info.get(b"master-link-status", info.get("master-link-status", b""))
            if b"disconnected" not in bytes(flags) and bytes(link) == b"ok":
                return True
        return False

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def ha() -> Iterator[HighlyAvailable]:
    group = HighlyAvailable()
    try:
        yield group
    finally:
        group.close()


def wait_until(pred: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_members_share_through_the_sentinel_and_survive_a_failover(
        ha: HighlyAvailable, tmp_path: Path) -> None:
    async def play() -> None:
        a = Gateway("gw-a", ha.url, tmp_path / "gw-a")
        b = Gateway("gw-b", ha.url, tmp_path / "gw-b")
        a.start()
        b.start()
        try:
            await connected(a, b)
            assert a.member.status()["redis"] == \
                f"redis+sentinel://127.0.0.1:{ha.sentinel.port}/{SERVICE}/0"
            a.blocks.add(parse_network("203.0.113.1"), time.time() + 600, "manual", "manual")
            await until(lambda: "203.0.113.1" in b.blocked())
            assert ha.master.client().exists(keys.BLOCK + "203.0.113.1")

            # The failover: the replica becomes the master; the members follow it.
            await asyncio.to_thread(wait_until, ha.replica_known, 30)
            old = ha.master_port()
            ha.sentinel.client(None).execute_command("SENTINEL", "FAILOVER", SERVICE)
            await asyncio.to_thread(wait_until, lambda: ha.master_port() != old, 30)
            assert ha.master_port() == ha.replica.port
            # Once the Sentinel made the old master a replica (and closed its clients), a
            # write can only reach the new one. (Before that, Redis's replication being
            # asynchronous, the old master may take writes it then loses: README.)
            await asyncio.to_thread(wait_until, lambda: ha.master.client().info(
                "replication")["role"] == "slave", 30)
            b.blocks.add(parse_network("203.0.113.2"), time.time() + 600, "manual", "manual")
            await until(lambda: "203.0.113.2" in a.blocked(), 20)
            await connected(a, b)
            new = ha.replica.client()
            await until(lambda: new.exists(keys.BLOCK + "203.0.113.2"), 5)
            assert new.exists(keys.BLOCK + "203.0.113.1")  # replicated before the failover
            a.blocks.remove(parse_network("203.0.113.1"))
            await until(lambda: "203.0.113.1" not in b.blocked(), 10)
            assert not a.member.queue and not b.member.queue
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(play())
