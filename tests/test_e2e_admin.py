"""End to end, the administrator's side: expiry, the block file, monitor mode, the switch.

Real clients against Debian's Postfix and Dovecot in the lab; dynscreen steered
through its CLI (`--socket`) and its block file, as an administrator would.

Block expiry uses manual blocks of a few seconds (`dynscreen block --minutes 0.05`)
and a hand-shortened automatic block: [screening].block_minutes takes whole
minutes only (config.py, ``_minutes``), so an automatic block cannot be made that
short from the config.
"""

from __future__ import annotations

import imaplib
import re
import signal
import time

import pytest
from conftest_lab import (
    IMAP,
    SMTP,
    Watch,
    assert_dropped,
    block_of,
    connects,
    counters,
    drops,
    lab_fixture,  # noqa: F401  (provides the `lab` fixture)
    not_blocked,
    quietly_close,
    report,
)

from dynscreen.control.lab import MailLab
from dynscreen.control.lab.netns import wait_for

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]


def _gone(lab: MailLab, ip: str) -> bool:
    return ip not in lab.blocks()


def test_a_short_block_expires_on_time(lab: MailLab) -> None:
    """Row 7: a block of 3 s drops the source for 3 s, then lets it in again."""
    src = lab.attacker()
    r = lab.cli("block", src, "--minutes", "0.05", "--reason", "three seconds")
    assert r.returncode == 0, r.stderr
    start = time.monotonic()
    b = block_of(lab, src)
    assert (b["reason"], b["note"], b["source"]) == ("manual", "three seconds", "manual")
    assert 0 <= b["minutes_left"] <= 0.1  # status rounds to 0.1 min
    assert_dropped(lab, src, SMTP)
    assert wait_for(lambda: connects(lab, src, SMTP), timeout=8, step=0.2)
    took = time.monotonic() - start
    assert 2.0 <= took <= 6.0, f"the block lasted {took:.1f} s, not 3"
    assert wait_for(lambda: _gone(lab, src), timeout=3), "the sweep removed it"
    not_blocked(lab, src)


def test_blocks_expire_while_the_daemon_is_down(lab: MailLab) -> None:
    """Row 7: the kernel enforces a block, and its expiry, without the daemon."""
    src, control = lab.attacker(), lab.attacker()
    assert lab.cli("block", src, "--minutes", "0.1").returncode == 0
    start = time.monotonic()
    before = drops(lab)  # the kernel's counters are pinned: they outlive the daemon
    assert lab.stop_daemon(signal.SIGTERM) == 0, report(lab)
    try:
        assert connects(lab, control, SMTP), "positive control: the server listens"
        assert not connects(lab, src, SMTP), "enforced while no daemon runs"
        assert wait_for(lambda: connects(lab, src, SMTP), timeout=12, step=0.3)
        assert time.monotonic() - start >= 4.5, "not before its time"
    finally:
        lab.start_daemon()
    assert drops(lab) > before, "the kernel counted the drops made while no daemon ran"
    not_blocked(lab, src)


def _block_line(text: str, ip: str) -> str:
    for line in text.splitlines():
        if line.split(None, 1)[:1] == [ip]:
            return line
    raise AssertionError(f"{ip} not in the block file:\n{text}")


def _utc(seconds_from_now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds_from_now))


def test_a_hand_edit_of_the_block_file_takes_effect(lab: MailLab) -> None:
    """Row 11: shorten a block made from the logs, add one, remove one with
    `dynscreen blocks edit`; each change reaches the kernel."""
    harvester, added = lab.attacker(), lab.attacker()
    s = lab.smtp(harvester, SMTP)
    s.ehlo()
    s.mail("x@elsewhere.test")
    for name in ("a", "b", "c", "d"):
        s.rcpt(f"{name}-nobody@example.test")
    assert block_of(lab, harvester)["reason"] == "failed_rcpts"
    s.close()
    f = lab.state_file
    assert wait_for(lambda: f"{harvester} " in f.read_text(), timeout=5)
    text = f.read_text()
    line = _block_line(text, harvester)
    assert "failed_rcpts" in line and "min left" in line
    # Shorten the harvester's block to 3 s; block another address by hand.
    shortened = re.sub(r"\S+Z", _utc(3), line, count=1)
    text = text.replace(line, shortened) + f"{added} {_utc(600)} manual # partner abuse desk\n"
    f.write_text(text)
    assert wait_for(lambda: added in lab.blocks(), timeout=5), report(lab)
    b = block_of(lab, added)
    assert (b["reason"], b["note"]) == ("manual", "partner abuse desk")
    assert b["source"] in ("file", "manual")
    assert lab.blocks()[harvester]["minutes_left"] <= 0.1
    assert_dropped(lab, added, SMTP)
    assert wait_for(lambda: connects(lab, harvester, SMTP), timeout=8, step=0.3), \
        "the shortened block ended"
    assert wait_for(lambda: _gone(lab, harvester), timeout=3)
    # `dynscreen blocks edit` with an editor that deletes the added line.
    editor = f"sed -i /^{re.escape(added)}[[:space:]]/d"
    r = lab.cli("blocks", "edit", env={"EDITOR": editor, "VISUAL": editor})
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: _gone(lab, added), timeout=3)
    assert connects(lab, added, SMTP)
    assert f"{added} " not in f.read_text()


def test_monitor_mode_counts_and_logs_but_never_drops(lab: MailLab) -> None:
    """Row 1: in monitor mode the limits are reached and shown, nothing is dropped and
    no session is closed; back in enforce mode, screening bites again."""
    lab.reconfigure(screening={"mode": "monitor"})
    try:
        st = lab.status()
        assert st["mode"] == "monitor"
        before = st["counters"]
        flooder, guesser = lab.attacker(), lab.attacker()
        limit = lab.limits["connections"]
        ok = [connects(lab, flooder, SMTP) for _ in range(limit + 5)]
        assert all(ok), f"monitor mode dropped {ok.count(False)} connections"
        b = block_of(lab, flooder)
        assert (b["reason"], b["source"]) == ("connections", "kernel")
        # The daemon sets the closing of a blocked source's sessions in motion in the same
        # step that takes the block in (close_session_runs): with the block shown, it
        # would have moved by now.
        assert counters(lab)["close_session_runs"] == before["close_session_runs"], \
            "monitor mode set out to close the flooder's sessions"
        m = lab.imap(guesser)
        session = Watch(m)
        for i in range(lab.limits["auth_failures"] + 1):
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                m.login(f"guess{i}@example.test", "wrong")
        assert block_of(lab, guesser)["reason"] == "auth_failures"
        mid = counters(lab)
        assert mid["close_session_runs"] == before["close_session_runs"], \
            "monitor mode set out to close sessions"
        assert mid["sessions_closed"] == before["sessions_closed"]
        assert session.peer in lab.net.server_sockets(IMAP), "the server holds the session"
        assert m.noop()[0] == "OK", "the session was not closed"
        m.logout()
        assert connects(lab, guesser, IMAP) and connects(lab, flooder, SMTP)
        after = counters(lab)
        assert after["monitor_pass"] > before["monitor_pass"]
        for k in ("drop_blocked", "drop_session", "drop_rate", "drop_simultaneous"):
            assert after[k] == before[k], f"{k} changed in monitor mode"
        human = lab.cli("status")
        assert "monitor (counting only, nothing is dropped)" in human.stdout
        assert f"kernel blocked {flooder}: connections" in lab.daemon_log.read_text()
        assert "[monitor: not dropped]" in lab.daemon_log.read_text()
        for ip in (flooder, guesser):
            assert lab.cli("unblock", ip).returncode == 0
    finally:
        lab.reconfigure(screening={"mode": "enforce"})
    assert lab.status()["mode"] == "enforce"
    src = lab.attacker()
    assert all(connects(lab, src, SMTP) for _ in range(lab.limits["connections"]))
    assert_dropped(lab, src, SMTP)  # enforcing again


def test_screening_switched_off_does_nothing(lab: MailLab) -> None:
    """Row 1, the master switch: disabled, no limit is counted, nothing is blocked."""
    lab.reconfigure(screening={"enabled": False})
    try:
        assert lab.status()["enabled"] is False
        src = lab.attacker()
        before = counters(lab)
        failures = lab.limits["auth_failures"]  # the limit: a block on the last one
        m = lab.imap(src)
        for i in range(failures):
            with pytest.raises(imaplib.IMAP4.error):
                m.login(f"off{i}@example.test", "wrong")
        quietly_close(m)
        # The daemon read the failed logins (each one an event it counts, enabled or not):
        # an engine that screened would have made its block by then.
        assert wait_for(lambda: counters(lab)["log_events"] >= before["log_events"] + failures,
                        timeout=10, step=0.2), report(lab)
        not_blocked(lab, src)
        assert all(connects(lab, src, SMTP) for _ in range(2 * lab.limits["connections"]))
        after = counters(lab)
        # XDP looks at nothing: not even the passed counter moves (it would, by each
        # packet on a screened port, were it screening).
        for k in ("passed", "blocks_made", "monitor_pass", "exempt_pass", "drop_blocked",
                  "drop_session", "drop_syn_cap", "drop_rate", "drop_simultaneous"):
            assert after[k] == before[k], f"{k} moved while screening was off"
        not_blocked(lab, src)
    finally:
        lab.reconfigure(screening={"enabled": True})
    assert lab.status()["enabled"] is True
