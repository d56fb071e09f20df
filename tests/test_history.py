"""The history database: rows survive a restart, old ones go, a damaged file is replaced,
a full queue drops (and counts) instead of waiting; `dynscreen history` reads it
directly when no daemon runs."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from dynscreen.control.history import History, parse_since, read, request_filters

ROOT = Path(__file__).resolve().parents[1]
DYNSCREEN = str(ROOT / ".venv/bin/dynscreen")


def _history(path: Path, **kw: object) -> History:
    h = History(path, 90, **kw)  # type: ignore[arg-type]
    h.start()
    return h


def test_rows_survive_a_restart_and_are_read_without_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    h = _history(path)
    ev = ({"time": 1.0, "source": "/var/log/mail.log", "line": 7, "text": "x"},)
    assert h.record("block", ip="192.0.2.7", reason="auth_failures", origin="logs",
                    minutes=10, evidence=ev)
    h.record("freeze", user="alice@example.com", ip="192.0.2.7", reason="session_auth_failures",
             origin="logs")
    h.stop()
    h = _history(path)  # a restart: the file is reopened, the rows are there
    h.record("unblock", ip="192.0.2.7", origin="manual")
    h.flush()
    rows = [r.to_json() for r in h.query(ip="192.0.2.7")]
    assert [r["action"] for r in rows] == ["block", "freeze", "unblock"]
    assert rows[0]["evidence"] == list(ev) and rows[0]["minutes"] == 10
    h.stop()
    offline = read(path, user="ALICE@example.com")  # read-only, no writer
    assert [(r.action, r.user) for r in offline] == [("freeze", "alice@example.com")]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_retention_removes_rows_older_than_history_days(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    now = 1_800_000_000.0
    h = History(path, 7, clock=lambda: now)
    h.record("block", ip="192.0.2.1", reason="rsets", origin="logs", ts=now - 8 * 86400)
    h.record("block", ip="192.0.2.2", reason="rsets", origin="logs", ts=now - 6 * 86400)
    h.start()
    h.record("expire", ip="192.0.2.2", reason="rsets", origin="logs", ts=now)
    h.stop()
    assert [(r.ip, r.action) for r in read(path)] == [("192.0.2.2", "block"),
                                                      ("192.0.2.2", "expire")]


def test_a_damaged_database_is_set_aside_and_a_new_one_started(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"this is not an SQLite database\n" * 100)
    caplog.set_level(logging.ERROR, "dynscreen.history")
    h = _history(path)
    h.record("block", ip="192.0.2.9", reason="manual", origin="manual")
    h.flush()
    assert [r.ip for r in h.query()] == ["192.0.2.9"]
    aside = list(tmp_path.glob("history.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert "damaged" in caplog.text and str(aside[0]) in caplog.text
    # Replaced under the running writer (a restore gone wrong): the next row notices.
    path.unlink()
    path.write_bytes(b"\0garbage" * 512)
    h.record("block", ip="192.0.2.10", reason="manual", origin="manual")
    h.flush()
    assert [r.ip for r in h.query()] == ["192.0.2.10"]
    assert len(list(tmp_path.glob("history.sqlite.corrupt-*"))) >= 1
    assert h.replaced >= 1
    h.stop()


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite", 90, queue_size=2)  # no writer: nothing drains
    t0 = time.monotonic()
    results = [h.record("block", ip=f"192.0.2.{i}") for i in range(5)]
    assert time.monotonic() - t0 < 0.5
    assert results == [True, True, False, False, False] and h.dropped == 3


def test_filters_are_checked() -> None:
    now = 1_000_000.0
    assert parse_since("2h", now) == now - 7200
    assert parse_since("7d", now) == now - 7 * 86400
    with pytest.raises(ValueError, match="duration"):
        parse_since("yesterday", now)
    assert request_filters({"ip": "2001:db8::1"})["ip"] == "2001:db8::/64"
    with pytest.raises(ValueError, match="not an address"):
        request_filters({"ip": "nope"})
    with pytest.raises(ValueError, match="since"):
        request_filters({"since": "2h"})


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "dynscreen.toml"
    cfg.write_text(f"""
[daemon]
state_file = "{tmp_path}/blocks.dat"
whitelist_file = "{tmp_path}/whitelist"
frozen_file = "{tmp_path}/frozen"
socket = "{tmp_path}/control.sock"
pin_path = "{tmp_path}/no-pins"
history_file = "{tmp_path}/history.sqlite"
metrics_listen = ""
""")
    return cfg


def test_the_cli_reads_the_database_without_a_daemon(tmp_path: Path) -> None:
    h = _history(tmp_path / "history.sqlite")
    now = time.time()
    h.record("block", ip="192.0.2.7", reason="auth_failures", origin="logs", ts=now - 3 * 3600)
    h.record("block", ip="192.0.2.7", reason="failed_rcpts", origin="logs", ts=now - 60)
    h.record("protect", user="bob@example.com", reason="spray", origin="logs", ts=now - 30)
    h.stop()
    env = {**os.environ, "DYNSCREEN_SOCKET": str(tmp_path / "control.sock")}
    run = subprocess.run([DYNSCREEN, "--config", str(_config(tmp_path)), "history", "--ip",
                          "192.0.2.7", "--since", "2h", "--json"], capture_output=True,
                         text=True, env=env, check=False)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(r["action"], r["ip"], r["reason"], r["origin"]) for r in rows] == [
        ("block", "192.0.2.7", "failed_rcpts", "logs")]
    assert set(rows[0]) >= {"time", "action", "ip", "reason", "origin"}
    run = subprocess.run([DYNSCREEN, "--config", str(_config(tmp_path)), "history", "--user",
                          "bob@example.com"], capture_output=True, text=True, env=env,
                         check=False)
    assert run.returncode == 0 and "protect" in run.stdout and "bob@example.com" in run.stdout
    bad = subprocess.run([DYNSCREEN, "--config", str(_config(tmp_path)), "history", "--since",
                          "soon"], capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 2 and "duration" in bad.stderr and "Traceback" not in bad.stderr


def test_a_missing_database_is_a_clear_failure(tmp_path: Path) -> None:
    env = {**os.environ, "DYNSCREEN_SOCKET": str(tmp_path / "control.sock")}
    run = subprocess.run([DYNSCREEN, "--config", str(_config(tmp_path)), "history"],
                         capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 1 and "no history at" in run.stderr


def test_the_database_is_plain_sqlite_in_wal_mode(tmp_path: Path) -> None:
    h = _history(tmp_path / "h.sqlite")
    h.record("block", ip="192.0.2.1")
    h.stop()
    db = sqlite3.connect(tmp_path / "h.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
