"""A lab's `dynscreen run`: the files part of its config, the daemon started in the
gateway namespace and waited for, asked over its socket, and stopped.

Every lab (the mail lab, the fleet's gateways, the benchmarks' range lab) runs
its daemon the same way; only the screening settings differ.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def dynscreen_command() -> list[str]:
    """How to run the `dynscreen` CLI of this installation."""
    exe = Path(sys.executable).with_name("dynscreen")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("dynscreen")
    if found:
        return [found]
    return [sys.executable, "-c", "from dynscreen.cli.app import main; main()"]


def files_section(folder: Path, sock: Path, pin: Path, *, state_file: Path | None = None,
                  metrics_listen: str = "", history: bool = False) -> str:
    """The ``[daemon]`` table: every file in ``folder`` (the block file at ``state_file``
    when given), the control socket, the pins, and metrics (off when empty)."""
    lines = ["[daemon]",
             f"state_file = {json.dumps(str(state_file or folder / 'blocks.dat'))}",
             f"whitelist_file = {json.dumps(str(folder / 'whitelist'))}",
             f"frozen_file = {json.dumps(str(folder / 'frozen'))}"]
    if history:
        lines.append(f"history_file = {json.dumps(str(folder / 'history.sqlite'))}")
    lines += [f"socket = {json.dumps(str(sock))}", f"pin_path = {json.dumps(str(pin))}",
              f"metrics_listen = {json.dumps(metrics_listen)}"]
    return "\n".join(lines) + "\n"


def ask(sock: Path, cmd: str, timeout: float = 10, **kw: Any) -> dict[str, Any]:
    """One request on the control socket, the raw reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall((json.dumps({"cmd": cmd, **kw}) + "\n").encode())
        return json.loads(s.makefile("rb").readline())


def tail(path: Path, n: int = 30) -> str:
    """The last n lines of a file (what a daemon said before failing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def start(ns: str, config: Path, sock: Path, out: Any, log: Path, timeout: float,
          error: type[Exception] = RuntimeError) -> subprocess.Popen[bytes]:
    """`dynscreen run` in namespace ``ns`` writing to ``out`` (an open file on ``log``),
    once it answers a ping; ``error`` (with its last lines) when it exits or is silent."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *dynscreen_command(), "--config", str(config), "run"],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise error(f"dynscreen exited {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError, ValueError):
            if ask(sock, "ping").get("ok"):
                return proc
        time.sleep(0.1)
    stop(proc)
    raise error(f"dynscreen not ready in {timeout:g} s:\n{tail(log)}")


def stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
         timeout: float = 20) -> int | None:
    """Signal a lab's child (the daemon, a redis-server) and wait (killed past
    ``timeout``); its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode
