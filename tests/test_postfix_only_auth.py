"""An SMTP AUTH brute force seen through Postfix's journal alone (no Dovecot source):
the daemon's way (wall clock, one entry at a time, ticks) and replay's decide alike.

The Vagrant lab's run without the Dovecot source made no block from ten SMTP AUTH
attempts. Its attacker saw six of them answered "454 Temporary authentication failure:
Connection lost to authentication server": Postfix's Dovecot client gives up reading
Dovecot's reply after 10 s (xsasl_dovecot_server.c's AUTH_TIMEOUT) and logs that reason,
which the Postfix reader does not count (as fail2ban's postfix filter does not): no
password verdict reached Postfix. Four counted failures stay under the limit of five,
on both paths; ten password failures block on both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dynscreen.control.config import from_dict
from dynscreen.control.decisions import Block, Decision
from dynscreen.control.engine import Engine
from dynscreen.control.logs.journal import JournalEntry
from dynscreen.control.logs.parse import LogParser
from dynscreen.control.replay import replay

T0 = 1_796_541_900.0  # the lab run's day (2026-12-06), at 07:25 UTC
ATTACKER = "192.168.56.20"
FAILED = "SASL LOGIN authentication failed: (reason unavailable), sasl_username=alice"
LOST = "SASL LOGIN authentication failed: Connection lost to authentication server"
# The replies the lab's attacker got, in order (run 20261206-071758): 535 = failed,
# 454 = connection lost.
LAB_RUN = [FAILED, FAILED, LOST, LOST, LOST, LOST, FAILED, FAILED, LOST, LOST]


def config() -> object:
    return from_dict({"screening": {"limits": {"auth_failures": 5}}})


def journal_entries(outcomes: list[str]) -> list[JournalEntry]:
    """One smtpd process per attempt: connect, the SASL warning, disconnect, as the journal
    gives them (a failed reply after Dovecot's 2 s delay, a lost one after Postfix's 10 s)."""
    entries: list[JournalEntry] = []
    t = T0
    for i, reason in enumerate(outcomes):
        pid = 2000 + i
        client = f"unknown[{ATTACKER}]"

        def entry(ts: float, msg: str, pid: int = pid) -> JournalEntry:
            return JournalEntry(ts, "postfix/smtpd", pid, "gateway", msg, "postfix@-.service")

        entries.append(entry(t, f"connect from {client}"))
        t += 10.0 if reason == LOST else 2.0
        entries.append(entry(t, f"warning: {client}: {reason}"))
        t += 0.1
        entries.append(entry(t, f"disconnect from {client} ehlo=1 auth=0/1 quit=1 commands=2/3"))
        t += 0.5
    return entries


def daemon_blocks(entries: list[JournalEntry]) -> list[Block]:
    """The daemon's way: each entry parsed as it arrives and fed at the wall clock (a
    little after the entry's own time), the engine ticked every second between."""
    engine = Engine(config(), now=T0 - 60.0)  # type: ignore[arg-type]
    parser = LogParser("journal:postfix@-.service", "postfix")
    decided: list[Decision] = []
    next_tick = T0
    for n, entry in enumerate(entries, 1):
        wall = entry.ts + 0.05  # journalctl's pipe and the event loop
        while next_tick <= wall:
            decided += engine.tick(next_tick)
            next_tick += 1.0
        for ev in parser.parse(entry.line(), n):
            decided += engine.feed(ev, wall)
    decided += engine.tick(next_tick + 600.0)
    return [d for d in decided if isinstance(d, Block)]


def replay_blocks(entries: list[JournalEntry], tmp_path: Path) -> list[Block]:
    """Replay's way: the same lines from a file, on their own timestamps."""
    log = tmp_path / "postfix.log"
    log.write_text("".join(e.line() + "\n" for e in entries))
    summary = replay(config(), [str(log)])  # type: ignore[arg-type]
    return [d for d in summary.decisions if isinstance(d, Block)]


@pytest.mark.parametrize("way", ["daemon", "replay"])
def test_ten_password_failures_block_on_postfix_lines_alone(way: str, tmp_path: Path) -> None:
    entries = journal_entries([FAILED] * 10)
    blocks = daemon_blocks(entries) if way == "daemon" else replay_blocks(entries, tmp_path)
    assert [(b.ip, b.reason, b.count) for b in blocks] == [(ATTACKER, "auth_failures", 5)]


@pytest.mark.parametrize("way", ["daemon", "replay"])
def test_the_lab_runs_replies_count_four_failures_and_block_nothing(
    way: str, tmp_path: Path
) -> None:
    """Six of the ten were Postfix's timeouts on Dovecot: both ways count the four others."""
    entries = journal_entries(LAB_RUN)
    parser = LogParser("journal:postfix@-.service", "postfix")
    failures = [ev for n, e in enumerate(entries, 1) for ev in parser.parse(e.line(), n)
                if ev.kind == "auth_failure"]
    assert len(failures) == 4
    blocks = daemon_blocks(entries) if way == "daemon" else replay_blocks(entries, tmp_path)
    assert blocks == []


def test_the_fifth_password_failure_blocks_however_many_timeouts_came_between(
    tmp_path: Path,
) -> None:
    """Timeouts neither count nor reset the count: one more failure after the lab's ten
    is the fifth, and both ways block on it."""
    entries = journal_entries([*LAB_RUN, FAILED])
    assert [b.count for b in daemon_blocks(entries)] == [5]
    assert [b.count for b in replay_blocks(entries, tmp_path)] == [5]
