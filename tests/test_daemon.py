"""`dynscreen run` end to end: real listener on port 25, real log lines, the real kernel."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonlab import DYNSCREEN, DaemonLab, sasl_failure
from netns import CL2_V4, CL_V4, GW_V4, NetLab, sh, wait_for

from dynscreen.control.utctime import format_time

from conftest import require, require_bpf

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]

LIMITS = "[screening.limits]\nauth_failures = 3\n"


@pytest.fixture
def dl() -> Iterator[DaemonLab]:
    require_bpf()
    require(os.path.exists("/usr/bin/ss") or os.path.exists("/bin/ss"), "needs iproute2's ss")
    lab = NetLab().open()
    d = DaemonLab(lab, LIMITS)
    try:
        yield d
    finally:
        d.close()
        lab.close()


def test_auth_failures_block_in_the_kernel_and_close_the_session(dl: DaemonLab) -> None:
    dl.start()
    srv = dl.lab.listener(25)
    held = dl.lab.connect(GW_V4)
    assert held is not None and wait_for(lambda: len(srv.conns) == 1)
    dl.append(*(sasl_failure(CL_V4, f"user{i}@example.com") for i in range(3)))
    assert wait_for(lambda: CL_V4 in dl.blocks(), timeout=5)
    b = dl.blocks()[CL_V4]
    assert b["reason"] == "auth_failures" and b["source"] == "logs"
    assert 9.5 <= b["minutes_left"] <= 10
    # The open session was closed (SOCK_DESTROY on the server side): its peer sees EOF/RST.
    srv.conns[0].settimeout(3)
    assert wait_for(lambda: _closed(srv.conns[0]), timeout=3)
    assert dl.lab.connect(GW_V4) is None, "new connections are dropped"
    assert dl.lab.connect(GW_V4, src=CL2_V4) is not None
    text = dl.state.read_text()
    assert f"{CL_V4} " in text and "auth_failures" in text
    # Unblock restores at once.
    assert dl.result("unblock", addr=CL_V4) == {"removed": True}
    assert dl.lab.connect(GW_V4) is not None
    srv.close()


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except OSError:
        return False


def test_whitelist_changes_reach_the_kernel_and_persist(dl: DaemonLab) -> None:
    dl.write_config("[screening.limits]\nauth_failures = 3\nconnections = 2\n")
    dl.start()
    srv = dl.lab.listener(25)
    dl.result("allow_add", cidr="10.77.0.0/29")
    assert all(dl.lab.connect(GW_V4) for _ in range(4)), "whitelisted: never rate-blocked"
    assert "10.77.0.0/29" in (dl.dir / "whitelist").read_text()
    rows = dl.result("allow_list")["whitelist"]
    assert {"cidr": "10.77.0.0/29", "source": "runtime"} in rows
    dl.result("allow_remove", cidr="10.77.0.0/29")
    assert "10.77.0.0/29" not in (dl.dir / "whitelist").read_text()
    assert dl.lab.connect(GW_V4, src=CL2_V4) and dl.lab.connect(GW_V4, src=CL2_V4)
    assert dl.lab.connect(GW_V4, src=CL2_V4) is None, "rate limit applies again"
    r = dl.req("allow_remove", cidr="127.0.0.0/8")
    assert r["code"] == 2 and "config file" in r["error"]
    srv.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_restart_keeps_every_block(dl: DaemonLab, sig: int) -> None:
    dl.start()
    srv = dl.lab.listener(25)
    dl.result("block", addr="198.51.100.0/24", minutes=30, note="ticket 7")
    dl.result("block", addr="2001:db8:1:2::9", minutes=20)
    dl.append(*(sasl_failure(CL_V4, "bob@example.com") for _ in range(3)))
    assert wait_for(lambda: CL_V4 in dl.blocks(), timeout=5)
    before = dl.blocks()
    dl.stop(sig)
    # No daemon: the kernel still enforces.
    assert dl.lab.connect(GW_V4) is None
    assert dl.lab.connect(GW_V4, src=CL2_V4) is not None
    dl.start()
    after = dl.blocks()
    assert set(after) == set(before) == {CL_V4, "198.51.100.0/24", "2001:db8:1:2::/64"}
    assert after["198.51.100.0/24"]["note"] == "ticket 7"
    assert after[CL_V4]["reason"] == "auth_failures"
    # the file is rewritten off the loop after start (a crash's pending changes applied)
    assert wait_for(lambda: len([ln for ln in dl.state.read_text().splitlines()
                                 if ln and not ln.startswith("#")]) == 3, timeout=10), \
        "no duplicates in the block file"
    srv.close()


def test_block_file_survives_a_reboot(dl: DaemonLab) -> None:
    dl.start()
    dl.result("block", addr="203.0.113.5", minutes=30)
    dl.stop()
    # A reboot: the kernel forgets everything (XDP off, pins gone), the file stays.
    sh("ip", "-n", dl.lab.gw, "link", "set", dl.lab.gw_if, "xdp", "off")
    for pin in dl.lab.pin.iterdir():
        pin.unlink()
    dl.start()
    assert dl.blocks()["203.0.113.5"]["minutes_left"] > 29


def test_hand_edit_takes_effect_and_a_bad_one_is_refused(dl: DaemonLab) -> None:
    dl.start()
    srv = dl.lab.listener(25)
    dl.result("block", addr="203.0.113.5", minutes=30)
    assert wait_for(lambda: "203.0.113.5" in dl.state.read_text())
    text = dl.state.read_text()
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
    edited = text.replace("203.0.113.5", "203.0.113.6") + f"{CL_V4} {until} manual # by hand\n"
    dl.state.write_text(edited)
    assert wait_for(lambda: set(dl.blocks()) == {"203.0.113.6", CL_V4}, timeout=5)
    assert dl.lab.connect(GW_V4) is None
    assert dl.blocks()[CL_V4]["note"] == "by hand"
    dl.state.write_text(edited + "2001:db8::1 tomorrow manual\n")
    assert wait_for(lambda: list(dl.dir.glob("blocks.dat.rejected-*")), timeout=5)
    rejected = next(dl.dir.glob("blocks.dat.rejected-*"))
    assert "tomorrow" in rejected.read_text(), "nothing typed is lost"
    assert set(dl.blocks()) == {"203.0.113.6", CL_V4}, "running blocks stay as they are"
    r = dl.req("blocks_apply", text="10.0.0.1 2030-01-01T00:00:00Z sometimes\n")
    assert r["code"] == 2 and ":1:" in r["error"] and "sometimes" in r["error"]
    srv.close()


def test_reload_with_a_bad_config_keeps_the_running_one(dl: DaemonLab) -> None:
    dl.start()
    dl.write_config("[screening.limits]\nauth_failures = \"five\"\n")
    r = dl.req("reload")
    assert r["ok"] is False and r["code"] == 2
    assert "screening.limits.auth_failures" in r["error"] and str(dl.config) in r["error"]
    dl.append(*(sasl_failure(CL_V4, "eve@example.com") for _ in range(3)))
    assert wait_for(lambda: CL_V4 in dl.blocks(), timeout=5), "old limit (3) still in force"
    dl.write_config("[screening.limits]\nauth_failures = 2\n")
    dl.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    dl.append(*(sasl_failure(CL2_V4, "eve@example.com") for _ in range(2)))
    assert wait_for(lambda: CL2_V4 in dl.blocks(), timeout=5), "SIGHUP applied the new limit"


def test_socket_is_private_and_survives_bad_requests(dl: DaemonLab) -> None:
    dl.start()
    mode = stat.S_IMODE(dl.sock.stat().st_mode)
    assert mode == 0o600 and dl.sock.stat().st_uid == 0
    assert dl.raw(b"this is not json\n")["code"] == 2
    assert dl.raw(b'{"cmd": 5}\n')["code"] == 2
    assert dl.raw(b'["status"]\n')["code"] == 2
    big = b'{"cmd": "ping", "x": "' + b"a" * (2 << 20) + b'"}\n'
    r = dl.raw(big)
    assert r["ok"] is False and "too large" in r["error"]
    r = dl.req("block", addr="not-an-address")
    assert r["code"] == 2 and "not-an-address" in r["error"]
    r = dl.req("block", addr="127.0.0.1")
    assert r["code"] == 2 and "whitelisted" in r["error"]
    assert dl.result("ping")["pid"] > 0, "the daemon is unharmed"


def test_stale_socket_is_replaced_and_a_live_one_refused(dl: DaemonLab) -> None:
    dl.start()
    dl.stop(signal.SIGKILL)
    assert dl.sock.exists(), "a killed daemon leaves its socket file"
    dl.start()
    assert dl.result("ping")
    second = DaemonLab.__new__(DaemonLab)
    second.__dict__.update(dl.__dict__)
    second.proc = None
    second.output = ""
    second.start(wait=False)
    assert second.proc.wait(30) == 1
    assert "another dynscreen daemon answers" in second.read_output()


def test_detach_leaves_nothing(dl: DaemonLab) -> None:
    dl.start()
    dl.result("block", addr="203.0.113.5", minutes=30)
    assert dl.result("detach") == {"detached": [dl.lab.gw_if]}
    assert dl.proc.wait(15) == 0
    assert "xdp" not in sh("ip", "-n", dl.lab.gw, "-d", "link", "show", dl.lab.gw_if).stdout
    assert not dl.lab.pin.exists()
    assert "203.0.113.5" in dl.state.read_text(), "the block file was saved first"


def test_the_cli_steers_the_real_daemon(dl: DaemonLab) -> None:
    import json

    dl.start()
    r = dl.cli("block", "203.0.113.9", "--minutes", "15", "--reason", "scanner")
    assert r.returncode == 0, r.stderr
    r = dl.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    (b,) = status["blocks"]
    assert (b["ip"], b["reason"], b["note"], b["source"]) == ("203.0.113.9", "manual", "scanner",
                                                               "manual")
    assert 14.5 < b["minutes_left"] <= 15 and "drop_blocked" in status["counters"]
    r = dl.cli("status")
    assert r.returncode == 0 and "203.0.113.9" in r.stdout and "scanner" in r.stdout
    assert dl.cli("block", "not-an-ip").returncode == 2
    assert dl.cli("unblock", "203.0.113.9").returncode == 0
    assert dl.cli("allow", "add", "192.0.2.0/24").returncode == 0
    r = dl.cli("allow", "list", "--json")
    assert {"cidr": "192.0.2.0/24", "source": "runtime"} in json.loads(r.stdout)["whitelist"]
    # A broken config on disk: reload reports it (exit 2) and status still works.
    dl.config.write_text(dl.config.read_text() + "\n[bogus]\n")
    r = dl.cli("reload")
    assert r.returncode == 2 and "bogus" in r.stderr and "Traceback" not in r.stderr
    assert dl.cli("status").returncode == 0
    r = dl.cli("top", "--json")
    assert r.returncode == 0 and "sources" in json.loads(r.stdout)
    dl.stop()
    r = dl.cli("status")  # the default config's pins: none
    assert r.returncode == 1 and f"no daemon at {dl.sock}" in r.stderr
    r = dl.cli("--config", str(dl.config), "status")  # a broken config: its pins unknown
    assert r.returncode == 1 and "the pinned maps cannot be read either" in r.stderr
    dl.write_config()
    r = dl.cli("--config", str(dl.config), "status")  # this daemon's pins, left by its stop
    assert r.returncode == 0 and r.stdout.startswith("daemon not running"), r.stderr


def test_session_failures_freeze_the_account(dl: DaemonLab) -> None:
    import json

    dl.write_config("[screening.limits]\nauth_failures = 0\n\n[accounts]\n"
                    "max_session_auth_failures = 3\nfreeze = true\n"
                    'policy_listen = "127.0.0.1:10040"\n')
    dl.start()
    pid = 777
    dl.append(f"Nov 30 10:00:00 mx postfix/smtpd[{pid}]: connect from unknown[{CL_V4}]",
              *(sasl_failure(CL_V4, "Alice@Example.com", pid) for _ in range(3)))
    assert wait_for(lambda: dl.result("accounts_list")["accounts"], timeout=5)
    (acc,) = dl.result("accounts_list")["accounts"]
    assert acc["user"].lower() == "alice@example.com" and acc["failures"] == 3
    assert acc["ip"] == CL_V4 and acc["service"] == "smtp"
    r = dl.cli("accounts", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["accounts"][0]["failures"] == 3
    assert "alice@example.com" in (dl.dir / "frozen.list").read_text()
    assert dl.cli("accounts", "unfreeze", "alice@example.com").returncode == 0
    assert dl.result("accounts_list")["accounts"] == []


def test_an_address_added_after_start_is_counted(dl: DaemonLab) -> None:
    """A failover VIP added while the daemon runs: connections to it count toward the limits."""
    dl.write_config("[screening.limits]\nconnections = 2\n")
    dl.start()
    vip = "10.77.0.50"
    assert vip not in dl.result("status")["daemon"]["local_addresses"]
    sh("ip", "-n", dl.lab.gw, "addr", "add", f"{vip}/24", "dev", dl.lab.gw_if)
    assert wait_for(lambda: vip in dl.result("status")["daemon"]["local_addresses"], timeout=5)
    srv = dl.lab.listener(25)
    assert dl.lab.connect(vip) and dl.lab.connect(vip)
    assert dl.lab.connect(vip) is None, "the third connection in a minute is over the limit"
    assert wait_for(lambda: CL_V4 in dl.blocks(), timeout=5), dl.read_output()
    assert dl.blocks()[CL_V4]["reason"] == "connections"
    sh("ip", "-n", dl.lab.gw, "addr", "del", f"{vip}/24", "dev", dl.lab.gw_if)
    assert wait_for(lambda: vip not in dl.result("status")["daemon"]["local_addresses"],
                    timeout=5)
    assert "local addresses on" in dl.read_output()
    srv.close()


def test_whitelisting_lifts_the_blocks_it_covers(dl: DaemonLab) -> None:
    dl.start()
    for addr in ("10.66.5.1", "10.66.5.0/28", "10.67.0.1", "2001:db8:1:2::9",
                 "2001:db8:9::/48"):
        dl.result("block", addr=addr, minutes=30)
    r = dl.result("allow_add", cidr="10.66.0.0/16")
    assert r["unblocked"] == 2
    out = dl.cli("allow", "add", "2001:db8:1::/48")
    assert out.returncode == 0 and "; unblocked 1" in out.stdout, out
    assert set(dl.blocks()) == {"10.67.0.1", "2001:db8:9::/48"}
    assert "10.66.5.1 " not in dl.state.read_text()
    # A whitelist that only overlaps a block (the block is wider) leaves it standing.
    assert dl.result("allow_add", cidr="2001:db8:9:1::/64")["unblocked"] == 0
    # The config's whitelist at reload, and at start.
    dl.write_config('whitelist = ["127.0.0.0/8", "::1/128", "10.67.0.0/24"]\n')
    assert dl.result("reload")["unblocked"] == 1
    assert set(dl.blocks()) == {"2001:db8:9::/48"}
    dl.stop()
    soon = format_time(time.time() + 3600)  # within the ten-year cap on expiries
    dl.state.write_text(f"203.0.113.9 {soon} manual\n10.67.0.7 {soon} manual\n")
    dl.start()
    assert "10.67.0.7" not in dl.blocks() and "203.0.113.9" in dl.blocks()
    assert "unblocked 10.67.0.7 (manual): whitelisted by 10.67.0.0/24" in dl.read_output()


def test_a_syslog_source_is_flagged_forgeable(dl: DaemonLab) -> None:
    dl.start()
    status = dl.result("status")
    assert status["logs"][0]["forgeable"] is True
    [warning] = status["daemon"]["warnings"]
    assert str(dl.log) in warning and "any local user" in warning
    assert warning in dl.read_output(), "said at start too"
    assert all(t["state"] == "running" for t in status["daemon"]["tasks"].values())
    assert {"kernel-events", "sweep", "block-file", "local-addresses", "loop-stall",
            f"logs:{dl.log}"} <= set(status["daemon"]["tasks"])
    assert status["daemon"]["heartbeats"] >= 1, "the heartbeat thread stamps"
    assert isinstance(status["daemon"]["loop_stall_max_ms"], float)


# --- hardening: far expiries, three-way edits, the frozen file, file modes ---------------


def _plant_never(pin: Path, addr: str) -> None:
    """Write a block that expires "never" (the u64 maximum) straight into the pinned table."""
    import ctypes
    from ipaddress import ip_network

    from dynscreen.control.dataplane import abi, bpfsys
    from dynscreen.control.dataplane.loader import NEVER

    fd = bpfsys.obj_get(str(pin / "blocks"))
    try:
        key = abi.key_for(ip_network(addr))
        value = abi.Block(expires=NEVER, drops=0, reason=abi.REASON_IDS["manual"],
                          origin=abi.ORIGIN_IDS["manual"])
        lib = bpfsys._libbpf()
        rc = lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0)
        assert rc == 0, rc
    finally:
        os.close(fd)


def test_far_future_expiries_are_refused_and_a_planted_one_is_harmless(dl: DaemonLab) -> None:
    longest = 10 * 366 * 24 * 60
    dl.start()
    r = dl.req("blocks_apply", text="# x\n203.0.113.5 9999-12-31T23:59:59Z manual\n")
    assert r["code"] == 2 and ":2: expiry 9999-12-31T23:59:59Z is too far ahead" in r["error"]
    for minutes in (longest + 1, 1e300):
        r = dl.req("block", addr="203.0.113.5", minutes=minutes)
        assert r["code"] == 2 and "at most" in r["error"], r
    r = dl.req("block", addr="203.0.113.5", minutes=float("inf"))  # the protocol refuses it first
    assert r["code"] == 2 and "Infinity is not a JSON value" in r["error"], r
    assert dl.result("block", addr="203.0.113.6", minutes=longest)["block"]["ip"] == "203.0.113.6"
    # a hand edit with such a line is refused with its line number and kept
    assert wait_for(lambda: "203.0.113.6" in dl.state.read_text())
    dl.state.write_text(dl.state.read_text() + "203.0.113.7 9999-12-31T23:59:59Z manual\n")
    assert wait_for(lambda: list(dl.dir.glob("blocks.dat.rejected-*")), timeout=5)
    assert "203.0.113.7" not in dl.blocks()
    # the rejected copy is kept first, then the refusal is logged
    assert wait_for(lambda: "is too far ahead" in dl.read_output(), timeout=5)
    assert "Traceback" not in dl.read_output()
    # "never" planted in the kernel table: neither the save at stop nor the next start fails
    _plant_never(dl.lab.pin, "203.0.113.9")
    assert dl.stop() == 0
    dl.start()
    b = dl.blocks()["203.0.113.9"]
    assert longest - 1 <= b["minutes_left"] <= longest
    assert wait_for(lambda: "203.0.113.9 " in dl.state.read_text())
    assert dl.stop() == 0
    assert "Traceback" not in dl.read_output()


def test_edits_keep_blocks_made_while_the_editor_was_open(dl: DaemonLab) -> None:
    from dynscreen.cli.blocks import edit_request

    dl.start()
    for addr in ("203.0.113.1", "203.0.113.2"):
        dl.result("block", addr=addr, minutes=30)
    original = dl.result("blocks_text")["text"]  # `blocks edit` opens the editor
    dl.result("block", addr="203.0.113.3", minutes=30)  # meanwhile
    edited = "".join(ln for ln in original.splitlines(keepends=True)
                     if not ln.startswith("203.0.113.1 "))
    assert dl.result("blocks_apply", **edit_request(original, edited)) == {
        "added": 0, "removed": 1, "changed": 0}
    assert set(dl.blocks()) == {"203.0.113.2", "203.0.113.3"}
    # the same for a hand edit of the file, against the text the editor read
    assert wait_for(lambda: "203.0.113.3 " in dl.state.read_text())
    copy = dl.state.read_text()
    dl.result("block", addr="203.0.113.4", minutes=30)  # meanwhile
    assert wait_for(lambda: "203.0.113.4 " in dl.state.read_text())
    dl.state.write_text("".join(ln for ln in copy.splitlines(keepends=True)
                                if not ln.startswith("203.0.113.2 ")))
    assert wait_for(lambda: "203.0.113.2" not in dl.blocks(), timeout=5)
    time.sleep(1.5)
    assert set(dl.blocks()) == {"203.0.113.3", "203.0.113.4"}


FROZEN_LINE = "{user}\t2026-05-28T20:26:40Z\t-\tsmtp\t192.0.2.9\t5\t-\n"


def test_frozen_file_fails_closed_and_edits_are_checked(dl: DaemonLab) -> None:
    frozen = dl.dir / "frozen"
    frozen.write_text(FROZEN_LINE.format(user="alice@example.com")
                      + "bob@example.com\tsoon\t-\t-\t-\t1\n"
                      + FROZEN_LINE.format(user="carol@example.com"))
    damaged = frozen.read_text()
    dl.write_config("[accounts]\nfreeze = true\npolicy_listen = \"127.0.0.1:10040\"\n")
    dl.start()
    users = {a["user"] for a in dl.result("accounts_list")["accounts"]}
    assert users == {"alice@example.com", "bob@example.com", "carol@example.com"}
    assert f"{frozen}, line 2: bad time" in dl.read_output()
    time.sleep(1.5)
    assert frozen.read_text() == damaged, "not rewritten until fixed"
    # the fix: bob's line mended, carol's removed
    frozen.write_text(FROZEN_LINE.format(user="alice@example.com")
                      + FROZEN_LINE.format(user="bob@example.com"))
    assert wait_for(lambda: {a["user"] for a in dl.result("accounts_list")["accounts"]}
                    == {"alice@example.com", "bob@example.com"}, timeout=5)
    # a bad edit: refused as a whole, kept, the accounts stay
    frozen.write_text("nonsense\n")
    assert wait_for(lambda: list(dl.dir.glob("frozen.rejected-*")), timeout=5)
    (kept,) = dl.dir.glob("frozen.rejected-*")
    assert kept.read_text() == "nonsense\n"
    assert {a["user"] for a in dl.result("accounts_list")["accounts"]} == {
        "alice@example.com", "bob@example.com"}
    assert wait_for(lambda: "alice@example.com" in frozen.read_text())


def test_state_files_are_private_whatever_the_umask(dl: DaemonLab) -> None:
    old = os.umask(0)
    try:
        dl.start()
    finally:
        os.umask(old)
    dl.result("block", addr="203.0.113.5", minutes=30)
    dl.result("allow_add", cidr="192.0.2.0/24")
    (dl.dir / "frozen").write_text(FROZEN_LINE.format(user="alice@example.com"))
    assert wait_for(lambda: "203.0.113.5" in dl.state.read_text()
                    and "version" in (dl.dir / "frozen").read_text(), timeout=5)
    dl.state.write_text(dl.state.read_text() + "bad line\n")
    assert wait_for(lambda: list(dl.dir.glob("blocks.dat.rejected-*")), timeout=5)
    dl.result("block", addr="203.0.113.6", minutes=30)
    assert wait_for(lambda: "203.0.113.6" in dl.state.read_text())
    private = [dl.state, dl.dir / "whitelist", dl.dir / "frozen",
               *dl.dir.glob("blocks.dat.rejected-*")]
    for p in private:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE((dl.dir / "frozen.list").stat().st_mode) == 0o640


def test_status_lists_log_sources_and_the_pins_answer_once_it_stops(dl: DaemonLab) -> None:
    import json

    absent = dl.dir / "dovecot.log"
    dl.write_config(LIMITS + f'\n[[logs]]\nformat = "dovecot"\npath = "{absent}"\n')
    dl.start()
    assert "dovecot.log does not exist" in dl.read_output()  # a warning at start

    def logs() -> dict[str, dict]:
        return {row["source"]: row for row in dl.result("status")["logs"]}

    dl.append("Nov 30 10:00:00 mx postfix/smtpd[1]: connect from unknown[192.0.2.1]",
              "Nov 30 10:00:01 mx postfix/smtpd[1]: disconnect from unknown[192.0.2.1]")
    wait_for(lambda: logs()[str(dl.log)]["lines"] == 2, timeout=10)
    s = dl.result("status")
    rows = logs()
    assert rows[str(absent)] == {"source": str(absent), "format": "dovecot", "state": "waiting",
                                 "lines": 0, "last_line_age_s": None, "kind": "file",
                                 "forgeable": True}
    mail = rows[str(dl.log)]
    assert (mail["format"], mail["state"], mail["lines"]) == ("auto", "live", 2)
    assert 0 <= mail["last_line_age_s"] < 5
    assert any("dovecot.log does not exist" in w for w in s["warnings"])
    assert s["daemon"]["running"] is True
    absent.write_text("Nov 30 10:00:02 mx dovecot: imap-login: Login: user=<a>, rip=192.0.2.2\n")
    wait_for(lambda: logs()[str(absent)]["state"] == "live", timeout=10)
    r = dl.cli("status")
    assert r.returncode == 0 and "LOG SOURCE" in r.stdout and str(absent) in r.stdout

    # unblock --all with the daemon
    for addr in ("203.0.113.1", "203.0.113.2"):
        dl.result("block", addr=addr, minutes=30)
    r = dl.cli("unblock", "--all")
    assert (r.returncode, r.stdout) == (0, "unblocked 2 blocks\n"), r.stderr
    assert dl.blocks() == {}

    # stopped: the pins answer, as root, in the gateway's namespace (where XDP is)
    dl.result("block", addr="203.0.113.3", minutes=30, note="kept")
    dl.stop()

    def offline(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", dl.lab.gw, DYNSCREEN, "--config",
                               str(dl.config), *args], capture_output=True, text=True,
                              check=False)

    r = offline("status", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["daemon"]["running"] is False
    assert list(s["interfaces"]) == [dl.lab.gw_if]
    assert [(b["ip"], b["note"]) for b in s["blocks"]] == [("203.0.113.3", "kept")]
    r = offline("unblock", "203.0.113.3")
    assert r.returncode == 0, r.stderr
    assert "203.0.113.3" not in dl.state.read_text()
    r = offline("detach")
    assert r.returncode == 0, r.stderr
    assert "xdp" not in sh("ip", "-n", dl.lab.gw, "-d", "link", "show", dl.lab.gw_if).stdout
    assert not dl.lab.pin.exists()
