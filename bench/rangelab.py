"""A lab for the flood and reaction benchmarks: dynscreen running in a gateway namespace,
and a client namespace that sends from any address of a whole range.

No 100,000 interface addresses: a ``local`` route for the range on the client's
loopback lets a socket there bind any address in it, and a route for the range back
through the veth on the gateway side carries the answers. The daemon has its own
config, log file, block file, socket, pins and metrics listener in a temp folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from dynscreen.control.lab import labdaemon
from dynscreen.control.lab.netns import NetLab, inside, sh

METRICS_PORT = 9799


def range_addresses(net: IPv4Network, n: int) -> list[str]:
    """The first n addresses of the range, leaving out .0 and .255 of every /24."""
    out: list[str] = []
    base = int(net.network_address)
    i = 0
    while len(out) < n:
        a = base + i
        i += 1
        if a & 0xFF in (0, 255):
            continue
        if a > int(net.broadcast_address):
            raise ValueError(f"{net} holds fewer than {n} usable addresses")
        out.append(str(IPv4Network(a).network_address))
    return out


def read_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) of a process, in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


class RangeLab:
    """NetLab + a routed range for the client + `dynscreen run` in the gateway."""

    def __init__(self, tag: str, *, client_range: str, screening: str, limits: str,
                 base: str = "10.79") -> None:
        self.net = NetLab(tag, base=base, prefix="db")
        self.range = IPv4Network(client_range)
        self.dir = Path(tempfile.mkdtemp(prefix="dynscreen-bench-"))
        self.dir.chmod(0o755)
        self.log = self.dir / "mail.log"
        self.log.touch()
        self.sock = self.dir / "control.sock"
        self.config = self.dir / "dynscreen.toml"
        self.daemon_out = self.dir / "daemon.out"
        self.screening, self.limits = screening, limits
        self.daemon: subprocess.Popen[bytes] | None = None

    @property
    def gw(self) -> str:
        return self.net.gw

    @property
    def cl(self) -> str:
        return self.net.cl

    @property
    def gw_addr(self) -> str:
        return self.net.gw_v4

    def open(self) -> RangeLab:
        self.net.open()
        client = self.net.clients[0].v4[0]
        sh("ip", "-n", self.cl, "route", "add", "local", str(self.range), "dev", "lo")
        sh("ip", "-n", self.gw, "route", "add", str(self.range), "via", client)
        for ns in (self.gw, self.cl):  # room for tens of thousands of handshakes at once
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.core.somaxconn=65535",
               "net.ipv4.tcp_max_syn_backlog=65535", "net.ipv4.ip_local_port_range=1024 65535")
        return self

    def config_text(self) -> str:
        d = self.dir
        return f"""
[screening]
interfaces = ["{self.net.gw_if}"]
whitelist = ["127.0.0.0/8", "::1/128"]
{self.screening}

[screening.limits]
{self.limits}

[[logs]]
format = "postfix"
path = "{self.log}"

{labdaemon.files_section(d, self.sock, self.net.pin,
                        metrics_listen=f"127.0.0.1:{METRICS_PORT}")}"""

    def start_daemon(self, timeout: float = 90) -> None:
        self.config.write_text(self.config_text())
        with self.daemon_out.open("ab") as out:
            self.daemon = labdaemon.start(self.gw, self.config, self.sock, out,
                                          self.daemon_out, timeout)
        self.net.procs.append(self.daemon)  # type: ignore[arg-type]

    def request(self, cmd: str, timeout: float = 10, **kw: Any) -> dict[str, Any]:
        return labdaemon.ask(self.sock, cmd, timeout, **kw)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The daemon's metrics, scraped inside the gateway namespace."""
        from prometheus_client.parser import text_string_to_metric_families

        with inside(self.gw):
            text = urllib.request.urlopen(
                f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=30).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def tcp_stats(self) -> dict[str, int]:
        """The gateway namespace's TCP/IP counters (nstat, absolute: the namespace is new)."""
        out = subprocess.run(["ip", "netns", "exec", self.gw, "nstat", "-asz", "--json"],
                             capture_output=True, text=True, check=True).stdout
        return {k: int(v) for k, v in json.loads(out)["kernel"].items()}

    def client_tx_dropped(self) -> int:
        """Packets the client's veth end dropped on the way to the gateway: a veth whose
        peer runs XDP queues into a ring of its own, and drops when that ring is full."""
        out = subprocess.run(["ip", "-n", self.cl, "-s", "-j", "link", "show",
                              self.net.clients[0].cl_if],
                             capture_output=True, text=True, check=True).stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["dropped"])

    def rss(self) -> dict[str, int]:
        assert self.daemon is not None
        return read_status(self.daemon.pid)

    def python_in(self, ns: str, code: str, *args: str) -> subprocess.Popen[str]:
        """A Python child (this interpreter) running `code` inside a namespace."""
        import sys

        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.net.procs.append(p)  # type: ignore[arg-type]
        return p

    def close(self) -> None:
        labdaemon.stop(self.daemon, timeout=30)
        self.net.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RangeLab:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def root_or_skip(skipped: int) -> None:
    """Exit `skipped` (77) with a message when this cannot run here."""
    import sys

    if os.geteuid() != 0:
        print("needs root (network namespaces, XDP): run `sudo make bench`", file=sys.stderr)
        sys.exit(skipped)
    if shutil.which("ip") is None:
        print("needs iproute2 (`ip`)", file=sys.stderr)
        sys.exit(skipped)
