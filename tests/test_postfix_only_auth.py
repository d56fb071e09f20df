"""An SMTP AUTH brute force seen through Postfix's journal alone (no Dovecot source):
the daemon's way (wall clock, one entry at a time, ticks) and replay's decide alike.

The Vagrant lab's run without the Dovecot source made no block from ten SMTP AUTH
attempts. Its attacker saw attempts 3 to 6, 9 and 10 answered "454 Temporary
authentication failure: Connection lost to authentication server": Dovecot's auth
penalty waits 4, 8, then 15 s before answering an address that keeps failing, and
Postfix's Dovecot client gives up reading after 10 s (AUTH_TIMEOUT) and logs that
reason. The password was checked all the same (Dovecot's log, when followed, tells
those attempts), but the Postfix reader left the reason out, as fail2ban's filter
does: four counted failures, under the limit of five, on both paths alike. The
reader counts it now: the lab run's replies block at the fifth attempt.
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


def daemon_blocks(
    entries: list[JournalEntry], dovecot: list[JournalEntry] | None = None
) -> list[Block]:
    """The daemon's way: each entry parsed as it arrives, by its source's parser, and
    fed at the wall clock (a little after the entry's own time), the engine ticked
    every second between."""
    engine = Engine(config(), now=T0 - 60.0)  # type: ignore[arg-type]
    parsers = {"postfix@-.service": LogParser("journal:postfix@-.service", "postfix"),
               "dovecot.service": LogParser("journal:dovecot.service", "dovecot")}
    arriving = sorted([*entries, *(dovecot or [])], key=lambda e: e.ts)
    decided: list[Decision] = []
    next_tick = T0
    for n, entry in enumerate(arriving, 1):
        wall = entry.ts + 0.05  # journalctl's pipe and the event loop
        while next_tick <= wall:
            decided += engine.tick(next_tick)
            next_tick += 1.0
        for ev in parsers[entry.unit].parse(entry.line(), n):
            decided += engine.feed(ev, wall)
    decided += engine.tick(next_tick + 600.0)
    return [d for d in decided if isinstance(d, Block)]


def dovecot_details(entries: list[JournalEntry]) -> list[JournalEntry]:
    """Dovecot's auth-worker line for each Postfix SASL warning: a failure checked after
    Dovecot's penalty, before the 2 s failure delay (a lost one after 8 or 15 s: Postfix
    gave up at 10 s, within the engine's pairing window either way)."""
    out = []
    for i, e in enumerate(e for e in entries if "SASL" in e.message):
        lost = LOST in e.message
        ts = e.ts - 2.0 if not lost else e.ts + (-2.0 if i % 2 else 5.0)
        out.append(JournalEntry(
            ts, "dovecot", 812, "gateway",
            f"auth-worker(900): Info: pam(alice,{ATTACKER}): pam_authenticate() failed: "
            "Authentication failure (password mismatch?)", "dovecot.service"))
    return out


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
def test_the_lab_runs_replies_block_at_the_fifth_attempt(way: str, tmp_path: Path) -> None:
    """Postfix's timeouts on Dovecot's penalized answers are failures too: all ten count,
    and the fifth (a timeout) blocks, the daemon's way and replay's."""
    entries = journal_entries(LAB_RUN)
    parser = LogParser("journal:postfix@-.service", "postfix")
    failures = [ev for n, e in enumerate(entries, 1) for ev in parser.parse(e.line(), n)
                if ev.kind == "auth_failure"]
    assert len(failures) == 10
    blocks = daemon_blocks(entries) if way == "daemon" else replay_blocks(entries, tmp_path)
    assert [(b.ip, b.reason, b.count) for b in blocks] == [(ATTACKER, "auth_failures", 5)]
    # The fifth attempt's warning: the 14th entry (connect, warning, disconnect each).
    assert blocks[0].line == 14
    assert LOST in entries[13].message


def test_an_invalid_mechanism_is_still_no_failure() -> None:
    """No password was evaluated: the one server-side reason left out."""
    parser = LogParser("postfix", "postfix")
    line = JournalEntry(T0, "postfix/smtpd", 7, "gateway",
                        f"warning: unknown[{ATTACKER}]: SASL CRAM-MD5 authentication failed: "
                        "Invalid authentication mechanism").line()
    assert parser.parse(line, 1) == []


def test_with_dovecot_followed_too_each_attempt_counts_once() -> None:
    """Postfix's timeout (no user) and Dovecot's detail of the same attempt pair: the lab
    run's first four attempts are four failures, not eight (no block), and the fifth
    blocks with a count of five."""
    four = journal_entries(LAB_RUN[:4])
    assert daemon_blocks(four, dovecot_details(four)) == []
    five = journal_entries(LAB_RUN[:5])
    assert [b.count for b in daemon_blocks(five, dovecot_details(five))] == [5]
