"""The engine's side of the fleet: what it counts for sharing, and counts from elsewhere.

No Redis here: the engine stays pure, remote attempts are just events in.
"""

from __future__ import annotations

import time

from dynscreen.control.addr import parse_network
from dynscreen.control.config import from_dict
from dynscreen.control.decisions import Block
from dynscreen.control.engine import Engine
from dynscreen.control.events import Event
from dynscreen.control.fleet import wire

T = 1_800_000_000.0


def engine(**limits: int) -> Engine:
    e = Engine(from_dict({"screening": {"limits": {"auth_failures": 5, **limits},
                                        "whitelist": ["127.0.0.0/8", "192.0.2.128/25"]}}), now=T)
    e.share_counts(True)
    return e


def test_counted_after_local_de_duplication() -> None:
    e = engine()
    # One attempt told by Dovecot's auth process and by Postfix: one count to share.
    e.feed(Event("auth_failure", "192.0.2.1", T, "smtp", "bob", origin="dovecot-auth"), T)
    e.feed(Event("auth_failure", "192.0.2.1", T + 2, "smtp", "bob", origin="postfix"), T + 2)
    e.feed(Event("rcpt_unknown", "192.0.2.2", T, "smtp", host="mx.example.net"), T + 2)
    e.feed(Event("rset", "192.0.2.3", T, "smtp", count=2), T + 2)
    assert e.take_counted() == [("auth_failures", "192.0.2.1", 1, None),
                                ("failed_rcpts", "192.0.2.2", 1, "mx.example.net"),
                                ("rsets", "192.0.2.3", 2, None)]
    assert e.take_counted() == []


def test_remote_counts_add_up_to_the_limit_and_are_not_shared_again() -> None:
    e = engine()
    for i in range(2):
        e.feed(Event("auth_failure", "192.0.2.1", T + i, "smtp", "bob", origin="postfix"), T + i)
    assert e.feed_remote("auth_failures", "192.0.2.1", 2, T + 3) == []
    e.take_counted()
    out = e.feed_remote("auth_failures", "192.0.2.1", 1, T + 4)
    assert [(type(d), d.reason, d.count) for d in out] == [(Block, "auth_failures", 5)]
    assert out[0].source == parse_network("192.0.2.1")
    assert e.take_counted() == []  # remote attempts never go out again
    for limit, kind in (("failed_rcpts", "rcpt_unknown"), ("rsets", "rset")):
        assert e.feed_remote(limit, "192.0.2.9", 1, T + 5) == [], kind
    assert e.counters("192.0.2.9")["failed_rcpts"] == 1
    assert e.counters("192.0.2.9")["rsets"] == 1
    assert e.take_counted() == []


def test_remote_counts_respect_the_whitelist_and_off_limits() -> None:
    e = engine(failed_rcpts=0)
    assert e.feed_remote("auth_failures", "192.0.2.200", 50, T) == []
    assert e.counters("192.0.2.200")["auth_failures"] == 0
    assert e.feed_remote("failed_rcpts", "192.0.2.5", 50, T) == []
    assert e.feed_remote("auth_failures", "not an address", 5, T) == []


def test_sharing_off_keeps_nothing() -> None:
    e = engine()
    e.share_counts(False)
    e.feed(Event("auth_failure", "192.0.2.1", T, "smtp", "bob", origin="postfix"), T)
    assert e.take_counted() == []


# --- the wire: what is read from Redis is checked like a block-file line --------------------


def test_messages_round_trip() -> None:
    now = time.time()
    for msg in (wire.BlockMsg("2001:db8:1:2::/64", now + 60, "spray", "logs", "mx-1", now,
                              "note"),
                wire.UnblockMsg("192.0.2.1", "mx-1"),
                wire.CountMsg("rsets", "192.0.2.1", 3, "mx-1", "a.example"),
                wire.FreezeMsg("bob@example.org", now, None, "mx-1", "smtp", "192.0.2.1"),
                wire.UnfreezeMsg("bob@example.org", "mx-1"),
                wire.AllowMsg("192.0.2.0/24", False, "mx-1")):
        assert wire.decode(wire.encode(msg).encode(), now) == msg


def test_bad_messages_say_what_is_wrong() -> None:
    now = time.time()
    good = {"t": "block", "net": "192.0.2.1", "expires": now + 60, "reason": "manual",
            "source": "manual", "member": "mx-1", "made_at": now}
    cases = [
        ({**good, "net": "192.0.2.1/33"}, "net"),
        ({**good, "expires": now + 11 * 366 * 86400}, "beyond the longest block"),
        ({**good, "expires": "soon"}, "expires"),
        ({**good, "reason": "x"}, "unknown reason"),
        ({**good, "source": "fleet"}, "unknown source"),
        ({**good, "member": "bad name"}, "member"),
        ({**good, "note": "two\nlines"}, "note"),
        ({**good, "extra": 1}, "unknown field"),
        ({"t": "count", "limit": "connections", "ip": "192.0.2.1", "n": 1, "member": "a"},
         "unknown limit"),
        ({"t": "count", "limit": "rsets", "ip": "192.0.2.1", "n": 10**6, "member": "a"}, "n must"),
        ({"t": "freeze", "user": "a b", "since": now, "until": None, "member": "a"}, "user"),
        ({"t": "allow", "cidr": "192.0.2.0/24", "on": "yes", "member": "a"}, "on must"),
        ({"t": "nuke"}, "unknown message type"),
    ]
    import json
    for data, said in cases:
        try:
            wire.decode(json.dumps(data), now)
        except wire.WireError as e:
            assert said in str(e), (data, str(e))
        else:
            raise AssertionError(f"accepted {data}")
    for raw in (b"\xff", b"[1]", b"x" * 5000, b"{"):
        try:
            wire.decode(raw, now)
        except wire.WireError:
            continue
        raise AssertionError(raw)
