"""`dynscreen status` shows the fleet: its state, its members, each block's origin."""

from __future__ import annotations

from dynscreen.cli.status import summary


def test_a_connected_fleet_names_its_members() -> None:
    fleet = {"state": "connected", "redis": "redis://10.0.0.5:6379/0", "name": "mx1",
             "members": [{"name": "mx1", "last_seen_s": 0.4, "blocks_made": 3},
                         {"name": "mx2", "last_seen_s": 1.2, "blocks_made": 0}]}
    lines = summary({"fleet": fleet}, [])
    (line,) = [x for x in lines if x.startswith("fleet:")]
    assert line == ("fleet: connected to redis://10.0.0.5:6379/0 as mx1; members: mx1 (0 s ago, "
                    "3 blocks made), mx2 (1 s ago, 0 blocks made)")


def test_a_degraded_fleet_is_a_warning() -> None:
    fleet = {"state": "degraded", "redis": "rediss://r:6380/0", "name": "mx1", "queued": 4,
             "last_error": "ConnectionError: refused", "members": []}
    (line,) = [x for x in summary({"fleet": fleet}, []) if "fleet" in x]
    assert line.startswith("warning: fleet DEGRADED: Redis rediss://r:6380/0 unreachable")
    assert "4 change(s) queued" in line


def test_no_fleet_no_line() -> None:
    off = {"state": "off", "redis": "", "members": []}
    assert not [x for x in summary({"fleet": off}, []) if "fleet" in x]
