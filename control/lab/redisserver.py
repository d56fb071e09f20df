"""A redis-server of the tests', the lab's and the benchmark's own, never the host's.

It runs from a temporary folder with persistence off, listening on a unix
socket there and, when asked, on one TCP address (one inside a namespace the
lab made: ``netns`` runs it there, so it never listens on the host's
interfaces). ``stop()`` and ``start()`` again keep the socket and address: a
Redis restarted empty, as the fleet must survive. ``close()`` stops it and
removes the folder.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from dynscreen.control.lab import labdaemon

SERVER = "redis-server"


def available() -> bool:
    return shutil.which(SERVER) is not None


class RedisServer:
    """One redis-server process; the URLs to reach it."""

    def __init__(self, *, bind: str | None = None, port: int = 6379, netns: str | None = None,
                 password: str | None = None, tls: bool = False) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="dynscreen-redis-"))
        self.folder.chmod(0o755)
        self.socket = self.folder / "redis.sock"
        self.bind = bind
        self.port = port
        self.netns = netns
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.folder / "redis.log"
        self.tls = tls  # TLS only on the TCP port (a self-signed certificate, ``ca``)
        self.ca = self.folder / "cert.pem"
        if tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", str(self.folder / "key.pem"), "-out", str(self.ca),
                            "-days", "1", "-subj", f"/CN={bind}",
                            "-addext", f"subjectAltName=IP:{bind}"],
                           check=True, capture_output=True)

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.bind}:{self.port}/0"

    def start(self) -> RedisServer:
        args = [SERVER, "--port", str(self.port) if self.bind else "0",
                "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", str(self.folder),
                "--logfile", str(self.log), "--daemonize", "no"]
        if self.bind:
            args += ["--bind", self.bind, "--protected-mode", "no"]
        if self.tls:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", str(self.ca), "--tls-key-file",
                     str(self.folder / "key.pem"), "--tls-auth-clients", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.netns:
            args = ["ip", "netns", "exec", self.netns, *args]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return self
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    text = self.log.read_text(errors="replace") if self.log.exists() else ""
                    self.stop()
                    raise RuntimeError(f"redis-server did not start: {text[-500:]}") from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        """A blocking client on the unix socket (for tests to look and write by hand)."""
        return redis.Redis(unix_socket_path=str(self.socket), password=self.password,
                           socket_timeout=5)

    def stop(self) -> None:
        labdaemon.stop(self.proc, timeout=5)
        self.proc = None
        self.socket.unlink(missing_ok=True)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
