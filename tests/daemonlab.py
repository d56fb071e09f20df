"""A dynscreen daemon running in a gateway namespace, with its own config, log and files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from netns import NetLab

ROOT = Path(__file__).resolve().parents[1]
DYNSCREEN = str(ROOT / ".venv/bin/dynscreen")


class DaemonLab:
    """NetLab + files in a temp folder + `dynscreen run` inside the gateway namespace."""

    def __init__(self, lab: NetLab, extra: str = "") -> None:
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix="dynscreen-test-"))
        self.log = self.dir / "mail.log"
        self.log.touch()
        self.sock = self.dir / "control.sock"
        self.state = self.dir / "blocks.dat"
        self.config = self.dir / "dynscreen.toml"
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""
        self.write_config()

    def write_config(self, extra: str | None = None) -> None:
        if extra is not None:
            self.extra = extra
        d = self.dir
        self.config.write_text(
            f"""
[screening]
interfaces = ["{self.lab.gw_if}"]
{self.extra}

[[logs]]
format = "auto"
path = "{self.log}"

[daemon]
state_file = "{self.state}"
whitelist_file = "{d}/whitelist"
frozen_file = "{d}/frozen"
history_file = "{d}/history.sqlite"
socket = "{self.sock}"
pin_path = "{self.lab.pin}"
metrics_listen = ""
"""
        )

    def start(self, *args: str, wait: bool = True) -> None:
        self.out_path = self.dir / f"daemon-{time.monotonic_ns()}.out"
        with self.out_path.open("w") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.gw, DYNSCREEN, "--config", str(self.config),
                 "run", *args],
                stdout=out, stderr=subprocess.STDOUT, text=True,
            )
        self.lab.procs.append(self.proc)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.read_output()}")
            try:
                if self.req("ping")["ok"]:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"daemon not ready: {self.read_output()}")

    def read_output(self) -> str:
        """Everything the daemons of this lab printed so far."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("daemon-*.out")))

    def req(self, cmd: str, **kw: Any) -> dict[str, Any]:
        return self.raw((json.dumps({"cmd": cmd, **kw}) + "\n").encode())

    def raw(self, data: bytes) -> dict[str, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(str(self.sock))
            s.sendall(data)
            return json.loads(s.makefile("rb").readline())
        finally:
            s.close()

    def result(self, cmd: str, **kw: Any) -> Any:
        r = self.req(cmd, **kw)
        assert r["ok"], r
        return r["result"]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, DYNSCREEN_SOCKET=str(self.sock))
        return subprocess.run([DYNSCREEN, *args], capture_output=True, text=True, env=env,
                              check=False)

    def append(self, *lines: str) -> None:
        with self.log.open("a") as f:
            for line in lines:
                f.write(line + "\n")

    def blocks(self) -> dict[str, dict[str, Any]]:
        return {b["ip"]: b for b in self.result("status")["blocks"]}

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(15)
        self.read_output()
        return rc

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


def sasl_failure(ip: str, user: str, pid: int = 4242, when: str = "Nov 30 10:00:00") -> str:
    return (f"{when} mx postfix/smtpd[{pid}]: warning: unknown[{ip}]: SASL LOGIN authentication "
            f"failed: authentication failure, sasl_username={user}")
