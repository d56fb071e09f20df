"""Real hosts on one machine: a gateway and client network namespaces joined by veth.

The gateway namespace holds the servers (and dynscreen, screening the
gateway's veth ends); each client namespace is joined to it by its own veth
pair and may carry several addresses, so that one namespace plays several
sending hosts. Client 0 shares the gateway's subnet; client i > 0 has a subnet
of its own and a default route through the gateway, so every client reaches
every gateway address.

The calling process makes listeners and client sockets inside a namespace by
entering it for a moment with this thread only (``inside``): a socket stays in
the namespace it was made in. Pins live on a bpffs mounted outside /sys,
because ``ip netns exec`` gives its process a fresh /sys.

Everything ``open()`` makes, ``close()`` removes: processes running in the
namespaces, the namespaces, the links and the bpffs. ``close()`` is safe to
call twice and after a failed ``open()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# The addresses of the classic two-namespace lab (tests/netns.py exports these).
GW_V4, CL_V4, CL2_V4 = "10.77.0.1", "10.77.0.2", "10.77.0.3"
GW_V6, CL_V6 = "fd77:0:0:1::1", "fd77:0:0:1::2"

# The states in which the server's end of a session is still open: the server application
# holds it (a half-closed one, close-wait, included). A session closed under the server
# (SOCK_DESTROY) leaves the kernel's socket table at once.
SERVER_OPEN_STATES = ("established", "close-wait", "syn-recv")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


def sh(*args: str, check: bool = True,
       timeout: float | None = 60) -> subprocess.CompletedProcess[str]:
    """Run a command; RuntimeError with its stderr when it fails (and check is set)."""
    r = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {(r.stderr or r.stdout).strip()}")
    return r


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block with this thread (only) in network namespace ``ns``.

    Uses /proc/thread-self, so it is safe from any thread: other threads of the
    process stay where they are.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


@dataclass
class Client:
    """One client namespace: its veth pair, the gateway's address on it, its own addresses."""

    ns: str
    gw_if: str
    cl_if: str
    gw_v4: str
    v4: list[str]
    gw_v6: str
    v6: str
    prefix4: int = 24
    extra: list[str] = field(default_factory=list)


class NetLab:
    """A gateway namespace, client namespaces joined to it by veth, a bpffs for pins.

    ``base`` is the first two octets of the IPv4 addresses (client i uses
    ``base.i.0/24``, the gateway ``base.i.1``, the client ``base.i.2`` and up);
    ``v6`` the first group of the IPv6 prefixes ``v6:0:0:i+1::/64`` (default ``fdXX``
    with XX the second octet). ``addrs`` is how many addresses each client has.
    """

    def __init__(self, tag: str | None = None, *, clients: int = 1, addrs: int = 2,
                 base: str = "10.77", prefix: str = "ds", v6: str | None = None) -> None:
        tag = tag or str(os.getpid() % 100000)
        if not 1 <= clients <= 200 or not 1 <= addrs <= 250:
            raise ValueError("clients: 1 to 200, addrs: 1 to 250")
        self.tag = tag
        self.gw = f"{prefix}gw{tag}"
        self.bpffs = Path(f"/run/{prefix}test-bpf-{tag}")
        self.pin = self.bpffs / "pins"
        self.procs: list[subprocess.Popen[Any]] = []
        self.clients: list[Client] = []
        v6 = v6 or f"fd{base.split('.')[1]}"
        for i in range(clients):
            suffix = tag if i == 0 else f"{tag}x{i}"
            net4 = f"{base}.{i}"
            net6 = f"{v6}:0:0:{i + 1:x}"
            self.clients.append(Client(
                ns=f"{prefix}cl{suffix}",
                gw_if=f"{prefix}g{suffix}"[:15],
                cl_if=f"{prefix}c{suffix}"[:15],
                gw_v4=f"{net4}.1",
                v4=[f"{net4}.{2 + k}" for k in range(addrs)],
                gw_v6=f"{net6}::1",
                v6=f"{net6}::2",
            ))
        self._opened = False

    # The first client, under the names the tests have always used.
    @property
    def cl(self) -> str:
        return self.clients[0].ns

    @property
    def gw_if(self) -> str:
        return self.clients[0].gw_if

    @property
    def cl_if(self) -> str:
        return self.clients[0].cl_if

    @property
    def gw_v4(self) -> str:
        return self.clients[0].gw_v4

    @property
    def gw_v6(self) -> str:
        return self.clients[0].gw_v6

    @property
    def gw_ifs(self) -> list[str]:
        return [c.gw_if for c in self.clients]

    def open(self) -> NetLab:
        self.close()
        self._opened = True
        sh("ip", "netns", "add", self.gw)
        sh("ip", "-n", self.gw, "link", "set", "lo", "up")
        for i, c in enumerate(self.clients):
            sh("ip", "netns", "add", c.ns)
            sh("ip", "link", "add", c.gw_if, "type", "veth", "peer", "name", c.cl_if)
            sh("ip", "link", "set", c.gw_if, "netns", self.gw)
            sh("ip", "link", "set", c.cl_if, "netns", c.ns)
            for ns, ifname, v4s, v6 in (
                (self.gw, c.gw_if, [c.gw_v4], c.gw_v6),
                (c.ns, c.cl_if, c.v4, c.v6),
            ):
                if ns != self.gw:
                    sh("ip", "-n", ns, "link", "set", "lo", "up")
                for a in v4s:
                    sh("ip", "-n", ns, "addr", "add", f"{a}/{c.prefix4}", "dev", ifname)
                sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
                sh("ip", "-n", ns, "link", "set", ifname, "up")
            if i > 0:
                sh("ip", "-n", c.ns, "route", "add", "default", "via", c.gw_v4)
                sh("ip", "-n", c.ns, "-6", "route", "add", "default", "via", c.gw_v6)
        self.bpffs.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "bpf", "bpf", str(self.bpffs))
        return self

    def namespaces(self) -> list[str]:
        return [self.gw] + [c.ns for c in self.clients]

    def kill_namespace_processes(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL, every process still running in one of the namespaces."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._ns_pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            end = time.monotonic() + timeout
            while time.monotonic() < end and self._ns_pids():
                time.sleep(0.05)

    def _ns_pids(self) -> list[int]:
        me = os.getpid()
        pids: list[int] = []
        for ns in self.namespaces():
            if not Path(f"/run/netns/{ns}").exists():
                continue
            r = sh("ip", "netns", "pids", ns, check=False)
            pids += [int(p) for p in r.stdout.split() if p.isdigit() and int(p) != me]
        return pids

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        self.procs.clear()
        if self._opened:
            self.kill_namespace_processes()
        for c in self.clients:
            sh("ip", "netns", "del", c.ns, check=False)
        sh("ip", "netns", "del", self.gw, check=False)
        for c in self.clients:
            sh("ip", "link", "del", c.gw_if, check=False)
        if self.bpffs.exists():
            if os.path.ismount(self.bpffs):
                sh("umount", "-l", str(self.bpffs), check=False)
            with contextlib.suppress(OSError):
                self.bpffs.rmdir()
        self._opened = False

    def leftovers(self) -> list[str]:
        """What close() should have removed and is still there (empty when clean)."""
        left = [f"netns {ns}" for ns in self.namespaces() if Path(f"/run/netns/{ns}").exists()]
        for c in self.clients:
            if sh("ip", "link", "show", c.gw_if, check=False).returncode == 0:
                left.append(f"link {c.gw_if}")
        if self.bpffs.exists():
            left.append(f"bpffs {self.bpffs}")
        return left

    def __enter__(self) -> NetLab:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def inside(self, ns: str) -> Iterator[None]:
        """Run the block with this thread in a namespace (sockets made there stay there)."""
        with inside(ns):
            yield

    def run_in(self, ns: str, fn: Callable[[], T]) -> T:
        with inside(ns):
            return fn()

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

    def client_of(self, src: str | None) -> Client:
        """The client namespace that owns address ``src``; the first one for None or for an
        address added by hand (``ip addr add`` in the first client namespace)."""
        for c in self.clients:
            if src in c.v4 or src == c.v6 or src in c.extra:
                return c
        return self.clients[0]

    def socket(self, dst: str, *, src: str | None = None, ns: str | None = None,
               timeout: float = 1.0) -> socket.socket:
        """An unconnected TCP socket in a client namespace, bound to ``src`` when given."""
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        with self.inside(ns or self.client_of(src).ns):
            s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        if src:
            try:
                s.bind((src, 0))
            except OSError:
                s.close()
                raise
        return s

    def connect(self, dst: str, port: int = 25, *, src: str | None = None,
                timeout: float = 1.0) -> socket.socket | None:
        """A TCP connection from a client namespace; None when it times out (the SYN was
        dropped). Any other failure raises: a refused connection (ECONNREFUSED: nothing
        listens, or a reset) is not a drop, and a dead server must not pass for a block."""
        s = self.socket(dst, src=src, timeout=timeout)
        try:
            s.connect((dst, port))
        except TimeoutError:
            s.close()
            return None
        except OSError:
            s.close()
            raise
        return s

    def server_sockets(self, port: int | None = None,
                       states: tuple[str, ...] = SERVER_OPEN_STATES) -> list[tuple[str, int]]:
        """(peer address, peer port) of the gateway's TCP sockets in ``states`` on local
        ``port`` (any port when None), as the kernel's socket table (`ss`) lists them.
        IPv4-mapped peers (dual-stack listeners) are given as IPv4."""
        argv = ["ip", "netns", "exec", self.gw, "ss", "-Htn"]
        for state in states:
            argv += ["state", state]
        if port is not None:
            argv.append(f"( sport = :{port} )")
        peers = []
        for line in sh(*argv).stdout.splitlines():
            parts = line.split()  # [State] Recv-Q Send-Q Local Peer: read from the end
            if len(parts) >= 4:
                addr, _, pport = parts[-1].rpartition(":")
                peers.append((addr.strip("[]").removeprefix("::ffff:"), int(pport)))
        return peers

    def ss_established(self, port: int = 25) -> list[str]:
        """Remote addresses of the gateway's established connections on a port, per `ss`."""
        return [a for a, _ in self.server_sockets(port, ("established",))]


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


def wait_for(pred: Callable[[], T], timeout: float = 3.0, step: float = 0.05) -> T:
    """Poll ``pred`` until it returns something true or ``timeout`` passes; its last value."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(step)
