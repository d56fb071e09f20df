"""A fleet of three gateway namespaces, each with its own `dynscreen run`, sharing through
a real redis-server on a bridge of the lab's own (control/lab/fleetlab.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from dynscreen.control.fleet import keys, wire
from dynscreen.control.lab.fleetlab import FleetLab, Gateway
from dynscreen.control.lab.lab import dynscreen_command
from dynscreen.control.lab.netns import inside
from dynscreen.control.lab.redisserver import available

from conftest import have, require, require_bpf

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]
ATTACKER = "10.99.0.5"


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetLab]:
    require_bpf()
    require(have("ip") and available(), "needs iproute2 and redis-server (make setup-dev)")
    lab = FleetLab(3).open()
    try:
        lab.start()
        lab.connected()
        yield lab
    finally:
        outputs = {gw.name: gw.output() for gw in lab.gateways}
        lab.close()
        assert not lab.leftovers(), lab.leftovers()
        for name, text in outputs.items():
            assert "Traceback" not in text, f"{name}: {text[-3000:]}"


def wait(pred: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"not in {timeout} s: {what}")
        time.sleep(0.05)


def sasl(ip: str, user: str, pid: int) -> str:
    return (f"Nov 30 10:00:00 mx postfix/smtpd[{pid}]: warning: unknown[{ip}]: SASL LOGIN "
            f"authentication failed: authentication failure, sasl_username={user}")


def policy(gw: Gateway, user: str) -> str:
    with inside(gw.lab.gw), socket.create_connection(("127.0.0.1", 10040), 5) as s:
        s.sendall(f"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username={user}"
                  "\n\n".encode())
        return s.makefile("rb").readline().decode().strip()


def test_failures_spread_across_gateways_block_at_the_fleet_total(fleet: FleetLab) -> None:
    g1, g2, g3 = fleet.gateways
    pid = 100
    for gw in (g1, g2, g1, g3):  # four failures over three gateways: under the limit of 5
        pid += 1
        gw.append(sasl(ATTACKER, f"user{pid}@example.com", pid))
    time.sleep(1.5)
    assert all(ATTACKER not in gw.blocks() for gw in fleet.gateways)
    g2.append(sasl(ATTACKER, "user999@example.com", 999))  # the fifth
    t0 = time.monotonic()
    wait(lambda: all(ATTACKER in gw.blocks() for gw in fleet.gateways), 3,
         "blocked on every gateway")
    assert time.monotonic() - t0 < 3
    for gw in fleet.gateways:
        b = gw.blocks()[ATTACKER]
        assert b["reason"] == "auth_failures", (gw.name, b)
    assert g1.blocks()[ATTACKER]["origin"] == "gw2"


def test_a_manual_block_and_unblock_on_one_reach_all(fleet: FleetLab) -> None:
    g1, g2, g3 = fleet.gateways
    g2.result("block", addr="192.0.2.33", minutes=30, note="ticket 7")
    wait(lambda: all("192.0.2.33" in gw.blocks() for gw in fleet.gateways), 2, "block")
    expiries = {round(gw.blocks()["192.0.2.33"]["minutes_left"]) for gw in fleet.gateways}
    assert expiries == {30}
    for gw in fleet.gateways:
        b = gw.blocks()["192.0.2.33"]
        assert (b["origin"], b["source"], b["note"]) == ("gw2", "manual", "ticket 7")
    shown = subprocess.run([*dynscreen_command(), "status"], capture_output=True, text=True,
                           env=dict(os.environ, DYNSCREEN_SOCKET=str(g1.sock)), check=False)
    assert shown.returncode == 0, shown.stderr
    assert "ORIGIN" in shown.stdout and "fleet: connected to redis://10.79.0.1:6379/0 as gw1" \
        in shown.stdout, shown.stdout
    (row,) = [line for line in shown.stdout.splitlines() if "192.0.2.33" in line]
    assert row.split()[-1] == "gw2", row
    g3.result("unblock", addr="192.0.2.33")
    wait(lambda: all("192.0.2.33" not in gw.blocks() for gw in fleet.gateways), 2, "unblock")


def test_a_freeze_on_one_is_refused_by_every_policy_service(fleet: FleetLab) -> None:
    g1, g2, g3 = fleet.gateways
    assert policy(g3, "alice@example.com") == "action=DUNNO"
    g1.append(f"Nov 30 10:00:00 mx postfix/smtpd[555]: connect from unknown[{ATTACKER}]",
              *(sasl("10.99.0.6", "alice@example.com", 555) for _ in range(3)))
    wait(lambda: all(policy(gw, "alice@example.com").startswith("action=REJECT")
                     for gw in fleet.gateways), 3, "frozen everywhere")
    assert policy(g2, "bob@example.com") == "action=DUNNO"
    assert g3.result("accounts_unfreeze", user="alice@example.com")["removed"]
    wait(lambda: all(policy(gw, "alice@example.com") == "action=DUNNO"
                     for gw in fleet.gateways), 3, "unfrozen everywhere")


def test_status_shows_the_fleet(fleet: FleetLab) -> None:
    st = fleet.gateways[0].status()["fleet"]
    assert st["state"] == "connected"
    assert st["redis"] == "redis://10.79.0.1:6379/0"
    wait(lambda: {m["name"] for m in fleet.gateways[0].status()["fleet"]["members"]}
         == {"gw1", "gw2", "gw3"}, 5, "members")
    for m in fleet.gateways[0].status()["fleet"]["members"]:
        assert set(m) == {"name", "last_seen_s", "blocks_made"} and m["last_seen_s"] < 5
    wait(lambda: 'dynscreen_fleet_state{state="connected"} 1.0' in metrics(fleet.gateways[0]),
         3, "the fleet metric")


def metrics(gw: Gateway) -> str:
    with inside(gw.lab.gw), socket.create_connection(("127.0.0.1", 9466), 5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        return b"".join(iter(lambda: s.recv(65536), b"")).decode(errors="replace")


OUTAGE = 30.0  # seconds Redis stays down (the reconnect backoff reaches its 5 s cap)


def test_redis_stopped_then_started_every_gateway_ends_with_every_block(
        fleet: FleetLab) -> None:
    g1, g2, g3 = fleet.gateways
    assert fleet.redis is not None
    fleet.redis.stop()
    down = time.monotonic()
    wait(lambda: all(gw.status()["fleet"]["state"] == "degraded" for gw in fleet.gateways), 10,
         "degraded")
    wait(lambda: 'dynscreen_fleet_state{state="degraded"} 1.0' in metrics(g1), 3, "metric")
    g1.result("block", addr="198.51.100.1", minutes=30)
    g2.result("block", addr="198.51.100.2", minutes=30)
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))  # screening alone meanwhile
    assert "198.51.100.1" not in g2.blocks() and "198.51.100.1" in g1.blocks()
    assert g1.status()["fleet"]["queued"] >= 1
    assert "unreachable" in g1.output()
    fleet.redis.start()  # empty: persistence is off
    want = {"198.51.100.1", "198.51.100.2", ATTACKER}
    try:
        wait(lambda: all(want <= set(gw.blocks()) for gw in fleet.gateways), 15, "every block")
    except AssertionError:
        for gw in fleet.gateways:
            print("=====", gw.status().get("fleet"), sorted(gw.blocks()))
            print("\n".join(gw.output().splitlines()[-25:]))
        raise
    stored = {k.decode().removeprefix(keys.BLOCK)
              for k in fleet.redis.client().scan_iter(keys.BLOCK + "*")}
    wait(lambda: want <= {k.decode().removeprefix(keys.BLOCK)
                          for k in fleet.redis.client().scan_iter(keys.BLOCK + "*")}, 5,
         f"repaired in Redis (had {stored})")


def test_a_member_killed_and_restarted_catches_up(fleet: FleetLab) -> None:
    g1, g2, g3 = fleet.gateways
    g3.stop(signal.SIGKILL)
    g1.result("block", addr="203.0.113.40", minutes=30)
    time.sleep(0.5)
    g3.start()
    wait(lambda: "203.0.113.40" in g3.blocks(), 5, "caught up")
    assert g3.blocks()["203.0.113.40"]["origin"] == "gw1"
    fleet.connected()


def test_a_bad_entry_written_by_hand_is_skipped_with_a_log_line(fleet: FleetLab) -> None:
    assert fleet.redis is not None
    r = fleet.redis.client()
    r.xadd(keys.CHANGES, {"m": json.dumps({"t": "block", "net": "203.0.113.300",
                                           "expires": time.time() + 60, "reason": "manual",
                                           "source": "manual", "member": "intruder",
                                           "made_at": 0})})
    good = wire.BlockMsg("203.0.113.41", time.time() + 60, "manual", "manual", "intruder",
                         time.time())
    r.xadd(keys.CHANGES, {"m": wire.encode(good)})
    wait(lambda: all("203.0.113.41" in gw.blocks() for gw in fleet.gateways), 3, "good entry")
    for gw in fleet.gateways:
        assert "skipped a bad entry in Redis" in gw.output() and "203.0.113.300" in gw.output()
        assert gw.proc is not None and gw.proc.poll() is None
