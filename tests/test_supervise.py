"""Nothing stops quietly: supervised tasks restart, and one line's failure skips only that line.

The daemon's line handling runs here against a stand-in data plane (no BPF) whose
exemption map is full, the way a busy submission server or an attacker with one
valid account and many addresses fills the real one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import socket
import time
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from fakeplane import FakePlane

from dynscreen.control.config import load_config
from dynscreen.control.daemon import Daemon, Options, map_full, shown_line
from dynscreen.control.logs.state import LogSourceState
from dynscreen.control.supervise import Supervisor

Network = IPv4Network | IPv6Network


def sample(metrics: Any, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- the supervisor --------------------------------------------------------------------------


def test_a_task_that_raises_is_restarted_with_backoff_and_said_so(
        caplog: pytest.LogCaptureFixture) -> None:
    runs: list[float] = []
    restarts: list[str] = []
    states: list[tuple[str, bool]] = []

    async def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) < 4:
            raise RuntimeError(f"boom {len(runs)}")
        await asyncio.sleep(3600)

    async def main() -> dict[str, Any]:
        sup = Supervisor(on_restart=restarts.append,
                         on_state=lambda n, up: states.append((n, up)),
                         backoff_initial=0.05, backoff_max=0.2)
        sup.start("flaky", flaky)
        for _ in range(100):
            if len(runs) >= 4:
                break
            await asyncio.sleep(0.02)
        status = sup.status()
        await sup.stop()
        assert sup.tasks == {}
        return status

    with caplog.at_level(logging.ERROR, logger="dynscreen.supervise"):
        status = asyncio.run(main())
    assert len(runs) == 4
    gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2, gaps  # doubling backoff
    assert restarts == ["flaky"] * 3
    assert states[-1] == ("flaky", True) and ("flaky", False) in states
    assert status["flaky"]["state"] == "running" and status["flaky"]["restarts"] == 3
    assert status["flaky"]["last_error"] == "RuntimeError: boom 3"
    assert "task flaky crashed (RuntimeError: boom 1)" in caplog.text
    assert "Traceback" in caplog.text


def test_a_task_that_ends_on_its_own_is_restarted() -> None:
    runs = 0

    async def quits() -> None:
        nonlocal runs
        runs += 1

    async def main() -> None:
        sup = Supervisor(backoff_initial=0.01, backoff_max=0.01)
        sup.start("quits", quits)
        await asyncio.sleep(0.2)
        assert sup.status()["quits"]["last_error"] == "ended on its own"
        await sup.stop("quits")

    asyncio.run(main())
    assert runs > 3


# --- the daemon's log following --------------------------------------------------------------


class FullExemptPlane(FakePlane):
    """The data plane without a kernel, with a full exemption map."""

    def __init__(self) -> None:
        super().__init__()
        self.exempt_calls = 0

    def exempt(self, source: Network, until: float) -> None:
        self.exempt_calls += 1
        raise Exception(f"Could not update table: {os.strerror(errno.E2BIG)}")  # bcc's words


def sasl_success(ip: str, user: str, n: int) -> str:
    return (f"Nov 30 10:00:{n:02d} mx postfix/smtpd[{4000 + n}]: {n:010X}: "
            f"client=unknown[{ip}], sasl_method=PLAIN, sasl_username={user}")


def sasl_failure(ip: str, user: str, n: int) -> str:
    return (f"Nov 30 10:00:{n:02d} mx postfix/smtpd[{4000 + n}]: warning: unknown[{ip}]: SASL "
            f"LOGIN authentication failed: authentication failure, sasl_username={user}")


def make_daemon(tmp_path: Path) -> tuple[Daemon, FullExemptPlane, Path]:
    log = tmp_path / "mail.log"
    log.touch()
    cfg = tmp_path / "dynscreen.toml"
    cfg.write_text(f"""
[screening]
close_session = false

[screening.limits]
auth_failures = 3

[[logs]]
format = "auto"
path = "{log}"

[daemon]
state_file = "{tmp_path}/blocks.dat"
whitelist_file = "{tmp_path}/whitelist"
frozen_file = "{tmp_path}/frozen"
history_file = "{tmp_path}/history.sqlite"
socket = "{tmp_path}/control.sock"
metrics_listen = ""
""")
    dp = FullExemptPlane()
    d = Daemon(Options(cfg), load_config(cfg), dp, ["fake0"], [])  # type: ignore[arg-type]
    return d, dp, log


def wait(pred: Any, timeout: float = 5.0) -> Any:
    async def go() -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            await asyncio.sleep(0.02)
        return bool(pred())
    return go()


def test_a_full_exemption_map_is_counted_and_following_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d, dp, log = make_daemon(tmp_path)

    async def main() -> dict[str, Any]:
        d._start_logs()
        await asyncio.sleep(0.2)
        with log.open("a") as f:
            f.write(sasl_success("10.9.0.5", "alice@example.com", 1) + "\n")
            for n in range(2, 5):
                f.write(sasl_failure("10.9.0.6", f"u{n}@example.com", n) + "\n")
        assert await wait(lambda: IPv4Network("10.9.0.6/32") in dp.blocks)
        status = d.commands.status({})
        await d._stop_logs()
        return status

    with caplog.at_level(logging.ERROR, logger="dynscreen"):
        status = asyncio.run(main())
    assert dp.exempt_calls == 1
    assert sample(d.metrics, "dynscreen_decision_errors_total", action="exempt",
                  cause="map_full") == 1
    problems = {p["what"]: p for p in status["daemon"]["problems"]}
    assert problems["exemption map full"]["count"] == 1
    assert "10.9.0.5" in problems["exemption map full"]["message"]
    assert "the kernel's exemption map is full: exempt of 10.9.0.5" in caplog.text
    task = status["daemon"]["tasks"][f"logs:{log}"]
    assert task == {"state": "running", "restarts": 0, "last_error": None, "last_crash": None}


def test_any_failure_in_a_line_skips_that_line_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The engine raising on one line (a bug) is logged with the line, counted, survived."""
    d, dp, log = make_daemon(tmp_path)
    assert d.engine is not None
    real = d.engine

    class Buggy:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def feed(self, ev: Any, now: float) -> Any:
            if ev.ip == "10.9.0.7":
                raise KeyError("engine bug")
            return real.feed(ev, now)

    d.engine = Buggy()  # type: ignore[assignment]

    async def main() -> None:
        d._start_logs()
        await asyncio.sleep(0.2)
        with log.open("a") as f:
            f.write(sasl_failure("10.9.0.7", "evil\x1b[2J@example.com", 1) + "\n")
            for n in range(2, 5):
                f.write(sasl_failure("10.9.0.8", f"u{n}@example.com", n) + "\n")
        assert await wait(lambda: IPv4Network("10.9.0.8/32") in dp.blocks)
        await d._stop_logs()

    with caplog.at_level(logging.ERROR, logger="dynscreen"):
        asyncio.run(main())
    assert sample(d.metrics, "dynscreen_log_line_failures_total", source=str(log),
                  stage="decide") == 1
    assert f"{log}:1: decide failed (KeyError: 'engine bug')" in caplog.text
    assert "evil\\x1b[2J" in caplog.text, "the line is quoted escaped"
    assert "\x1b" not in caplog.text


def test_a_crashing_follower_is_restarted(tmp_path: Path) -> None:
    d, dp, log = make_daemon(tmp_path)
    d.supervisor.backoff_initial = 0.05
    calls = 0
    real = d._follow_file

    async def follow(path: str, fmt: str, state: LogSourceState) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("inotify went away")
        await real(path, fmt, state)

    d._follow_file = follow  # type: ignore[method-assign]

    async def main() -> dict[str, Any]:
        d._start_logs()
        assert await wait(lambda: calls == 2)
        await asyncio.sleep(0.2)
        with log.open("a") as f:
            for n in range(1, 4):
                f.write(sasl_failure("10.9.0.9", f"u{n}@example.com", n) + "\n")
        assert await wait(lambda: IPv4Network("10.9.0.9/32") in dp.blocks)
        status = d.commands.status({})
        await d._stop_logs()
        return status

    status = asyncio.run(main())
    task = status["daemon"]["tasks"][f"logs:{log}"]
    assert task["restarts"] == 1 and task["last_error"] == "OSError: inotify went away"
    assert sample(d.metrics, "dynscreen_task_restarts_total", task=f"logs:{log}") == 1


def test_syslog_files_are_flagged_forgeable(tmp_path: Path) -> None:
    d, _, log = make_daemon(tmp_path)

    async def main() -> dict[str, Any]:
        d._start_logs()
        status = d.commands.status({})
        await d._stop_logs()
        return status

    status = asyncio.run(main())
    [source] = status["logs"]
    assert {k: source[k] for k in ("source", "format", "kind", "forgeable")} == {
        "source": str(log), "format": "auto", "kind": "file", "forgeable": True}
    [warning] = status["daemon"]["warnings"]
    assert str(log) in warning and "forged" in warning and "journal" in warning


def test_helpers() -> None:
    assert map_full(OSError(errno.E2BIG, "x"))
    assert map_full(Exception("Could not update table: No space left on device"))
    assert not map_full(Exception("Could not update table: Invalid argument"))
    long = "x" * 1000
    assert shown_line(long).endswith("(+700 chars)") and len(shown_line(long)) < 330


def test_dead_worker_threads_are_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """The metrics endpoint and the notifier run in threads; the thread watch revives them."""
    import urllib.request

    from dynscreen.control import daemon as daemon_mod
    from dynscreen.control.notify import Notifier

    monkeypatch.setattr(daemon_mod, "THREAD_CHECK_SECONDS", 0.05)
    d, _, _ = make_daemon(tmp_path)
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{probe.getsockname()[1]}"
    d.cfg = dataclasses.replace(
        d.cfg, daemon=dataclasses.replace(d.cfg.daemon, metrics_listen=listen))
    d.metrics_server = d.metrics.start_server(listen)
    d.notifier = Notifier("postmaster@localhost", ("127.0.0.1", 9), 10)
    d.notifier.start()
    assert d.metrics_server is not None and d.notifier._thread is not None
    d.metrics_server._httpd.shutdown()  # the serving thread ends, as after a crash
    d.notifier._stopping = True
    d.notifier.wake()
    d.notifier._thread.join(5)
    d.notifier._stopping = False  # ended without stop(): a crash, to the watch

    async def main() -> None:
        d.supervisor.start("threads", d._watch_threads)
        assert await wait(lambda: sample(d.metrics, "dynscreen_task_restarts_total",
                                         task="metrics") == 1)
        assert await wait(lambda: sample(d.metrics, "dynscreen_task_restarts_total",
                                         task="notify") == 1)
        await d.supervisor.stop()

    with caplog.at_level(logging.ERROR, logger="dynscreen"):
        asyncio.run(main())
    assert d.metrics_server is not None and d.metrics_server.alive()
    host, port = d.metrics_server.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        assert b"dynscreen_task_restarts_total" in r.read()
    assert d.notifier._thread is not None and d.notifier._thread.is_alive()
    assert "the metrics endpoint's thread had died" in caplog.text
    d.notifier.stop()
    d.metrics_server.close()


def test_discovery_repeats_at_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mail server installed since start shows up at the next reload, as a new follower."""
    from dynscreen.control import daemon as daemon_module
    from dynscreen.control.config import LogSource
    from dynscreen.control.logs.discover import LogSources

    d, _, log = make_daemon(tmp_path)
    dovecot = tmp_path / "dovecot.log"
    dovecot.touch()
    found = [LogSources((LogSource(format="auto", path=str(log)),), discovered=True)]
    calls: list[int] = []

    def discover(cfg: object) -> LogSources:
        calls.append(1)
        return found[0]

    monkeypatch.setattr(daemon_module, "log_sources", discover)
    monkeypatch.setattr(daemon_module, "interfaces", lambda opts, cfg: ["fake0"])
    monkeypatch.setattr(d.dp, "configure_from", lambda cfg, local_addrs: None, raising=False)

    async def main() -> list[dict[str, Any]]:
        d._start_logs()
        found[0] = LogSources((LogSource(format="auto", path=str(log)),
                               LogSource(format="dovecot", path=str(dovecot))), discovered=True)
        await d.reload()
        status = d.commands.status({})
        await d._stop_logs()
        return status["logs"]

    logs = asyncio.run(main())
    assert len(calls) == 2, "discovered at start and again at reload"
    assert [(s["source"], s["format"]) for s in logs] == [
        (str(log), "auto"), (str(dovecot), "dovecot")]


def test_a_restarted_follower_loses_no_line_written_during_its_backoff(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The follower crashes on a read; the line that woke it and one written during the
    backoff are read by the restarted follower: with the first, three failures block."""
    from dynscreen.control.logs.follow import FileFollower

    d, dp, log = make_daemon(tmp_path)
    d.supervisor.backoff_initial = 0.5
    real_step = FileFollower._step
    armed = crashed = False

    def step(self: FileFollower) -> Any:
        nonlocal crashed
        if armed and not crashed:
            crashed = True
            raise OSError("read failed")
        return real_step(self)

    monkeypatch.setattr(FileFollower, "_step", step)

    async def main() -> dict[str, Any]:
        nonlocal armed
        d._start_logs()
        await asyncio.sleep(0.2)
        with log.open("a") as f:
            f.write(sasl_failure("10.9.0.10", "u1@example.com", 1) + "\n")
        assert await wait(lambda: d.log_states[0].lines == 1)
        armed = True
        with log.open("a") as f:
            f.write(sasl_failure("10.9.0.10", "u2@example.com", 2) + "\n")
        assert await wait(lambda: crashed)
        with log.open("a") as f:  # during the backoff
            f.write(sasl_failure("10.9.0.10", "u3@example.com", 3) + "\n")
        assert await wait(lambda: IPv4Network("10.9.0.10/32") in dp.blocks)
        status = d.commands.status({})
        await d._stop_logs()
        return status

    status = asyncio.run(main())
    task = status["daemon"]["tasks"][f"logs:{log}"]
    assert task["restarts"] == 1 and task["last_error"] == "OSError: read failed"
    assert d.log_states[0].lines == 3
