"""Real hosts for tests: a gateway and a client network namespace joined by veth.

The pytest process makes listeners and client sockets inside them by entering
a namespace for a moment (a socket stays in the namespace it was made in).
Pins live on a bpffs mounted outside /sys, because `ip netns exec` gives its
process a fresh /sys.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

GW_V4, CL_V4, CL2_V4 = "10.77.0.1", "10.77.0.2", "10.77.0.3"
GW_V6, CL_V6 = "fd77:0:0:1::1", "fd77:0:0:1::2"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


class NetLab:
    """Two namespaces, one veth pair, a bpffs for pins; everything removed in close()."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or str(os.getpid() % 100000)
        self.gw = f"dsgw{tag}"
        self.cl = f"dscl{tag}"
        self.gw_if = f"dsg{tag}"
        self.cl_if = f"dsc{tag}"
        self.bpffs = Path(f"/run/dstest-bpf-{tag}")
        self.pin = self.bpffs / "pins"
        self.procs: list[subprocess.Popen[str]] = []

    def open(self) -> NetLab:
        self.close()
        sh("ip", "netns", "add", self.gw)
        sh("ip", "netns", "add", self.cl)
        sh("ip", "link", "add", self.gw_if, "type", "veth", "peer", "name", self.cl_if)
        sh("ip", "link", "set", self.gw_if, "netns", self.gw)
        sh("ip", "link", "set", self.cl_if, "netns", self.cl)
        for ns, ifname, v4s, v6 in (
            (self.gw, self.gw_if, [GW_V4], GW_V6),
            (self.cl, self.cl_if, [CL_V4, CL2_V4], CL_V6),
        ):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            for a in v4s:
                sh("ip", "-n", ns, "addr", "add", f"{a}/24", "dev", ifname)
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        self.bpffs.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "bpf", "bpf", str(self.bpffs))
        return self

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs.clear()
        sh("ip", "netns", "del", self.gw, check=False)
        sh("ip", "netns", "del", self.cl, check=False)
        sh("ip", "link", "del", self.gw_if, check=False)
        if self.bpffs.exists():
            sh("umount", str(self.bpffs), check=False)
            with contextlib.suppress(OSError):
                self.bpffs.rmdir()

    @contextlib.contextmanager
    def inside(self, ns: str) -> Iterator[None]:
        """Run the block with this thread in a namespace (sockets made there stay there)."""
        from pyroute2 import netns

        netns.pushns(ns)
        try:
            yield
        finally:
            netns.popns()

    def listener(self, port: int = 25, *, family: int = socket.AF_INET,
                 dual_stack: bool = False) -> Server:
        with self.inside(self.gw):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
                s.bind(("::", port))
            else:
                s.bind(("0.0.0.0", port))
            s.listen(512)
        return Server(s)

    def connect(self, dst: str, port: int = 25, *, src: str | None = None,
                timeout: float = 1.0) -> socket.socket | None:
        """A TCP connection from the client namespace; None when it times out or is refused."""
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        with self.inside(self.cl):
            s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        try:
            s.connect((dst, port))
        except OSError:
            s.close()
            return None
        return s

    def ss_established(self, port: int = 25) -> list[str]:
        """Remote addresses of the gateway's established connections on a port, per `ss`."""
        r = sh("ip", "netns", "exec", self.gw, "ss", "-Htn", "state", "established",
               f"( sport = :{port} )")
        peers = []
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 4:
                peers.append(parts[3].rsplit(":", 1)[0].strip("[]"))
        return peers


class Server:
    """A listener that accepts in a thread and keeps what it accepted open."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conns: list[socket.socket] = []
        self._stop = False
        self.sock.settimeout(0.2)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)

    def close(self) -> None:
        self._stop = True
        self._t.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


class Agent:
    """tests/dpagent.py in the gateway namespace: the data plane as a control plane runs it."""

    def __init__(self, lab: NetLab, *args: str) -> None:
        py = str(Path(__file__).resolve().parents[1] / ".venv/bin/python")
        agent = str(Path(__file__).with_name("dpagent.py"))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.gw, py, agent, "--pin", str(lab.pin),
             "--iface", lab.gw_if, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        lab.procs.append(self.proc)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("ready"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"agent did not start: {line!r} {err}")
        self.ready = line.split(None, 1)[1].strip() if " " in line else ""

    def ask(self, op: str, **kw: object) -> object:
        import json

        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"agent died: {self.proc.stderr.read() if self.proc.stderr else ''}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("quit")
        self.proc.wait(5)


def wait_for(pred, timeout: float = 3.0, step: float = 0.05):  # noqa: ANN001,ANN201
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(step)
