"""The daemon's own log: syslog priorities and no timestamp for journald, time and level
for a terminal (control/daemonlog.py)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from dynscreen.control.daemonlog import JournalFormatter, priority, stream_is_journal

STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("dynscreen", level, __file__, 1, msg, None, None)


def test_priorities_journalctl_filters_on() -> None:
    """`journalctl -p warning` shows priorities 0-4: warnings and errors, not info."""
    assert [priority(lv) for lv in (logging.DEBUG, logging.INFO, logging.WARNING,
                                    logging.ERROR, logging.CRITICAL)] == [7, 6, 4, 3, 2]
    assert priority(logging.WARNING + 5) == 4 and priority(1) == 7


def test_every_line_carries_its_priority() -> None:
    f = JournalFormatter("%(message)s")
    assert f.format(_record(logging.WARNING, "blocked 192.0.2.1 for 10 min")) == (
        "<4>blocked 192.0.2.1 for 10 min")
    assert f.format(_record(logging.ERROR, "first\nsecond")) == "<3>first\n<3>second"


def test_journal_stream_is_matched_by_device_and_inode(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    other = tmp_path / "other"
    other.touch()
    with path.open("w") as f:
        st = os.fstat(f.fileno())
        assert stream_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        o = other.stat()
        assert not stream_is_journal(f, {"JOURNAL_STREAM": f"{o.st_dev}:{o.st_ino}"})
        assert not stream_is_journal(f, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(f, {})


def _run_daemon(tmp_path: Path, journal: bool) -> str:
    """`dynscreen run` with an invalid config: one error line, then exit 2."""
    config = tmp_path / "bad.toml"
    config.write_text('[screening]\nmode = "x"\n')
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with err.open("w") as f:
        if journal:
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        r = subprocess.run(
            [sys.executable, "-c", "from dynscreen.cli.app import main; main()",
             "--config", str(config), "run"],
            stdout=subprocess.DEVNULL, stderr=f, env=env, timeout=60, check=False)
    assert r.returncode == 2
    return err.read_text()


def test_daemon_under_systemd_writes_for_journald(tmp_path: Path) -> None:
    text = _run_daemon(tmp_path, journal=True)
    assert text.startswith("<3>") and "screening.mode" in text, text
    assert not STAMP.search(text) and "ERROR" not in text


def test_daemon_in_a_terminal_keeps_time_and_level(tmp_path: Path) -> None:
    text = _run_daemon(tmp_path, journal=False)
    assert STAMP.match(text) and " ERROR " in text and "<3>" not in text, text
