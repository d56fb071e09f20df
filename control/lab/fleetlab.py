"""Several gateways and one Redis, on one machine: the fleet's lab.

Each gateway is a NetLab of its own (a gateway namespace with its screened
veth, a client namespace, a bpffs for its pins) running its own `dynscreen
run`. A Redis namespace holds a bridge with the fleet's subnet; every gateway
namespace gets a veth on it, and the lab's redis-server listens there
(10.79.0.1:6379), so the gateways reach it over TCP as real members would,
and it never listens on the host's interfaces. Its unix socket (in a temp
folder) lets the tests and the benchmark look into Redis and write by hand.

``close()`` removes everything: daemons, redis-server, namespaces, links,
bpffs mounts, folders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from dynscreen.control.lab import labdaemon
from dynscreen.control.lab.netns import NetLab, sh
from dynscreen.control.lab.redisserver import RedisServer

FLEET_NET = "10.79.0"
REDIS_V4 = f"{FLEET_NET}.1"


class Gateway:
    """One gateway namespace and its daemon, with its own config, log and files."""

    def __init__(self, lab: NetLab, name: str, folder: Path, redis_url: str,
                 extra: str = "") -> None:
        self.lab = lab
        self.name = name
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "mail.log"
        self.log.touch()
        self.sock = self.dir / "control.sock"
        self.config = self.dir / "dynscreen.toml"
        self.redis_url = redis_url
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = self.dir / "daemon.out"
        self.write_config()

    def write_config(self) -> None:
        d = self.dir
        self.config.write_text(f"""
[screening]
interfaces = ["{self.lab.gw_if}"]

[screening.limits]
auth_failures = 5

[accounts]
freeze = true
max_session_auth_failures = 3
policy_listen = "127.0.0.1:10040"

[[logs]]
format = "auto"
path = "{self.log}"

{labdaemon.files_section(d, self.sock, self.lab.pin,
                        metrics_listen="127.0.0.1:9466")}
[fleet]
redis = "{self.redis_url}"
name = "{self.name}"
{self.extra}
""")

    def start(self, timeout: float = 60) -> None:
        with self.out.open("ab") as out:
            try:
                self.proc = labdaemon.start(self.lab.gw, self.config, self.sock, out, self.out,
                                            timeout)
            except RuntimeError as e:
                raise RuntimeError(f"{self.name}: {e}") from None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        labdaemon.stop(self.proc, sig, 15)
        self.proc = None

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def req(self, cmd: str, **kw: Any) -> dict[str, Any]:
        return labdaemon.ask(self.sock, cmd, **kw)

    def result(self, cmd: str, **kw: Any) -> Any:
        r = self.req(cmd, **kw)
        if not r.get("ok"):
            raise RuntimeError(f"{self.name}: {cmd}: {r}")
        return r["result"]

    def status(self) -> dict[str, Any]:
        return self.result("status")

    def blocks(self) -> dict[str, dict[str, Any]]:
        return {b["ip"]: b for b in self.status()["blocks"]}

    def append(self, *lines: str) -> None:
        with self.log.open("a") as f:
            for line in lines:
                f.write(line + "\n")


class FleetLab:
    """``n`` gateways (each a NetLab and a daemon) and a redis-server on a bridge."""

    def __init__(self, n: int = 3, tag: str | None = None, extra: str = "") -> None:
        self.tag = tag or str(os.getpid() % 10000)
        self.folder = Path(tempfile.mkdtemp(prefix="dynscreen-fleet-"))
        self.rns = f"dsrd{self.tag}"
        self.labs = [NetLab(f"f{self.tag}{i}", base=f"10.{81 + i}", v6=f"fd{81 + i}")
                     for i in range(n)]
        self.links = [f"dsfl{self.tag}{i}"[:15] for i in range(n)]
        self.redis: RedisServer | None = None
        self.gateways: list[Gateway] = []
        self.extra = extra

    def open(self) -> FleetLab:
        try:
            sh("ip", "netns", "add", self.rns)
            sh("ip", "-n", self.rns, "link", "set", "lo", "up")
            sh("ip", "-n", self.rns, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.rns, "addr", "add", f"{REDIS_V4}/24", "dev", "br0")
            sh("ip", "-n", self.rns, "link", "set", "br0", "up")
            for i, (lab, link) in enumerate(zip(self.labs, self.links, strict=True)):
                lab.open()
                peer = f"{link}p"[:15]
                sh("ip", "link", "add", link, "type", "veth", "peer", "name", peer)
                sh("ip", "link", "set", link, "netns", lab.gw)
                sh("ip", "link", "set", peer, "netns", self.rns)
                sh("ip", "-n", self.rns, "link", "set", peer, "master", "br0")
                sh("ip", "-n", self.rns, "link", "set", peer, "up")
                sh("ip", "-n", lab.gw, "addr", "add", f"{FLEET_NET}.{10 + i}/24", "dev", link)
                sh("ip", "-n", lab.gw, "link", "set", link, "up")
            self.redis = RedisServer(bind=REDIS_V4, netns=self.rns).start()
            url = self.redis.tcp_url
            self.gateways = [Gateway(lab, f"gw{i + 1}", self.folder / f"gw{i + 1}", url,
                                     self.extra) for i, lab in enumerate(self.labs)]
        except BaseException:
            self.close()
            raise
        return self

    def start(self) -> None:
        for gw in self.gateways:
            gw.start()

    def connected(self, timeout: float = 15) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(gw.status()["fleet"]["state"] == "connected" for gw in self.gateways):
                return
            time.sleep(0.1)
        raise RuntimeError("not every gateway connected to the fleet's Redis")

    def close(self) -> None:
        for gw in self.gateways:
            with contextlib.suppress(Exception):
                gw.stop()
        if self.redis is not None:
            self.redis.close()
            self.redis = None
        with contextlib.suppress(Exception):
            r = sh("ip", "netns", "pids", self.rns, check=False)
            for pid in r.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for lab in self.labs:
            lab.close()
        sh("ip", "netns", "del", self.rns, check=False)
        for link in self.links:
            sh("ip", "link", "del", link, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def leftovers(self) -> list[str]:
        left = [x for lab in self.labs for x in lab.leftovers()]
        if Path(f"/run/netns/{self.rns}").exists():
            left.append(f"netns {self.rns}")
        if self.folder.exists():
            left.append(f"dir {self.folder}")
        return left

    def __enter__(self) -> FleetLab:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
