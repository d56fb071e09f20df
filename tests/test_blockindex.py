"""The daemon's own block index and its key type: pure, with a fake clock."""

from __future__ import annotations

import gc
import math
import random
import tracemalloc
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import pytest

from dynscreen.control.addr import network_key
from dynscreen.control.blockindex import BlockIndex, IndexedBlock
from dynscreen.control.sourcekey import SourceKey, covers, is_ipv4, order_key

T0 = 1_790_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def K(text: str) -> SourceKey:
    return SourceKey.parse(text)


# ---- SourceKey --------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "192.0.2.1", "0.0.0.0/0", "198.51.100.0/24", "255.255.255.255", "10.0.0.0/8",
    "2001:db8:1:2::/64", "::/0", "::1/128", "2001:db8::1/128", "::/80", "fe80::/10",
])
def test_key_round_trips_through_networks_and_text(text: str) -> None:
    net = ip_network(text)
    k = SourceKey.from_network(net)
    assert k.network() == net
    assert k.text == str(k) == network_key(net)
    assert SourceKey.parse(k.text) == k
    assert k.is_ipv4 == (net.version == 4)
    assert k.prefixlen == net.prefixlen


def test_key_of_an_address_and_a_mapped_address() -> None:
    assert SourceKey.from_network(IPv4Address("192.0.2.1")) == K("192.0.2.1")
    assert SourceKey.from_network(IPv6Address("2001:db8::1")) == K("2001:db8::1/128")
    assert K("::ffff:192.0.2.1") == K("192.0.2.1")  # what a dual-stack listener reports
    assert repr(K("192.0.2.1")) == "SourceKey('192.0.2.1')"


def test_key_of_masks_host_bits_and_checks_range() -> None:
    k = SourceKey.of((0xFFFF << 32) | 0xC0000201, 120)
    assert k.network() == IPv4Network("192.0.2.0/24")
    with pytest.raises(ValueError):
        SourceKey.of(1, 129)


def test_covers() -> None:
    assert K("198.51.100.0/24").covers(K("198.51.100.7"))
    assert K("198.51.100.7").covers(K("198.51.100.7"))
    assert not K("198.51.100.7").covers(K("198.51.100.0/24"))
    assert not K("198.51.101.0/24").covers(K("198.51.100.7"))
    assert K("2001:db8:1:2::/64").covers(K("2001:db8:1:2::99/128"))
    assert K("0.0.0.0/0").covers(K("203.0.113.9"))
    assert not K("0.0.0.0/0").covers(K("2001:db8::/64"))
    assert covers(int(K("::/0")), int(K("2001:db8::/64")))


def test_ipv4_is_exactly_the_mapped_range() -> None:
    """A short IPv6 range never lands in the IPv4 space, whatever its bits."""
    assert not is_ipv4(int(K("::/80")))
    assert not is_ipv4(int(K("::fffe:0:0/95")))
    assert is_ipv4(int(K("0.0.0.0/0")))
    assert SourceKey.from_network(IPv6Network("::ffff:0:0/96")) == K("0.0.0.0/0")


def test_order_key_is_the_block_files_order() -> None:
    nets = [ip_network(t) for t in ("2001:db8::/64", "10.0.0.0/8", "10.0.0.1", "::1/128",
                                    "9.255.255.255", "10.0.0.0/24", "::/0")]
    want = sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    got = sorted(nets, key=lambda n: order_key(int(SourceKey.from_network(n))))
    assert got == want


# ---- the index --------------------------------------------------------------------------

def test_add_find_remove() -> None:
    clock = Clock()
    ix = BlockIndex(clock)
    assert ix.add(K("192.0.2.1"), T0 + 600, "connections", "kernel") is None
    b = ix.find(K("192.0.2.1"))
    assert b == IndexedBlock(K("192.0.2.1"), "connections", "kernel", None, T0, T0 + 600, 0)
    assert K("192.0.2.1") in ix and len(ix) == 1
    assert ix.find(K("192.0.2.2")) is None
    assert ix.remove(K("192.0.2.1")) == b
    assert ix.remove(K("192.0.2.1")) is None
    assert len(ix) == 0 and ix.count_by_reason() == {}


def test_re_adding_replaces_and_returns_the_old_block() -> None:
    clock = Clock()
    ix = BlockIndex(clock)
    ix.add(K("192.0.2.1"), T0 + 60, "rsets", "logs", note="first")
    clock.t += 5
    old = ix.add(K("192.0.2.1"), T0 + 600, "manual", "manual")
    assert old is not None and old.note == "first" and old.reason == "rsets"
    now = ix.find(K("192.0.2.1"))
    assert now is not None and (now.reason, now.note, now.made_at) == ("manual", None, T0 + 5)
    assert ix.count_by_reason() == {"manual": 1}


def test_times_keep_milliseconds_and_never() -> None:
    ix = BlockIndex(Clock())
    ix.add(K("192.0.2.1"), T0 + 0.123, "manual", "manual")
    ix.add(K("192.0.2.2"), math.inf, "manual", "manual")
    assert ix.find(K("192.0.2.1")).expires == T0 + 0.123  # type: ignore[union-attr]
    assert ix.find(K("192.0.2.2")).expires == math.inf  # type: ignore[union-attr]
    assert [b.source for b in ix.sweep(T0 + 10**6)] == [K("192.0.2.1")]
    assert len(ix) == 1 and K("192.0.2.2") in ix


def test_sweep_removes_exactly_the_expired() -> None:
    ix = BlockIndex(Clock())
    ix.add(K("192.0.2.1"), T0 + 10.25, "connections", "kernel")
    ix.add(K("192.0.2.2"), T0 + 10.75, "connections", "kernel")  # same second, later
    ix.add(K("192.0.2.3"), T0 + 11, "connections", "kernel")
    ix.add(K("192.0.2.4"), T0 - 5, "connections", "kernel")  # loaded already expired
    assert [b.source for b in ix.sweep(T0)] == [K("192.0.2.4")]
    assert ix.sweep(T0 + 10.2) == []
    assert [b.source for b in ix.sweep(T0 + 10.5)] == [K("192.0.2.1")]
    assert [b.source for b in ix.sweep(T0 + 10.75)] == [K("192.0.2.2")]
    assert ix.next_expiry() == T0 + 11
    assert [b.source for b in ix.sweep(T0 + 11)] == [K("192.0.2.3")]
    assert len(ix) == 0 and ix.next_expiry() is None and ix.sweep(T0 + 10**6) == []


def test_sweep_skips_stale_slots_of_removed_and_remade_blocks() -> None:
    clock = Clock()
    ix = BlockIndex(clock)
    ix.add(K("192.0.2.1"), T0 + 10, "connections", "kernel")
    ix.add(K("192.0.2.1"), T0 + 100, "connections", "kernel")  # lengthened
    ix.add(K("192.0.2.2"), T0 + 10, "connections", "kernel")
    ix.remove(K("192.0.2.2"))
    ix.add(K("192.0.2.3"), T0 + 10, "connections", "kernel")
    ix.remove(K("192.0.2.3"))
    ix.add(K("192.0.2.3"), T0 + 10, "rsets", "logs")  # removed and made again, same second
    gone = ix.sweep(T0 + 50)
    assert [(b.source, b.reason) for b in gone] == [(K("192.0.2.3"), "rsets")]
    assert ix.find(K("192.0.2.1")) is not None
    assert [b.source for b in ix.sweep(T0 + 100)] == [K("192.0.2.1")]


def test_sweep_costs_only_what_expired() -> None:
    """The sweep touches the due buckets, not the table: count the entries it reads."""
    ix = BlockIndex(Clock())
    for i in range(10_000):
        ix.add(SourceKey.from_network(IPv4Address(0x0A000000 + i)), T0 + 1000 + i, "rsets", "logs")
    reads = 0
    real = ix._entries

    class Counting(dict):  # type: ignore[type-arg]
        def get(self, k, default=None):  # noqa: ANN001, ANN202
            nonlocal reads
            reads += 1
            return super().get(k, default)

    ix._entries = Counting(real)
    assert len(ix.sweep(T0 + 1009.5)) == 10
    assert reads == 10


def test_covering_finds_the_address_its_prefix_and_ranges() -> None:
    ix = BlockIndex(Clock())
    ix.add(K("198.51.100.7"), T0 + 60, "connections", "kernel")
    ix.add(K("198.51.100.0/24"), T0 + 60, "manual", "manual")
    ix.add(K("198.0.0.0/8"), T0 + 60, "manual", "manual")
    ix.add(K("203.0.113.0/24"), T0 + 60, "manual", "manual")
    ix.add(K("2001:db8:1:2::/64"), T0 + 60, "auth_failures", "logs")
    got = [b.source.text for b in ix.covering(K("198.51.100.7"))]
    assert got == ["198.51.100.7", "198.51.100.0/24", "198.0.0.0/8"]
    assert [b.source.text for b in ix.covering(K("198.51.100.8"))] == [
        "198.51.100.0/24", "198.0.0.0/8"]
    assert [b.source.text for b in ix.covering(K("2001:db8:1:2::5/128"))] == [
        "2001:db8:1:2::/64"]
    assert ix.covering(K("192.0.2.1")) == []
    ix.remove(K("198.0.0.0/8"))
    assert len(ix.covering(K("198.51.100.8"))) == 1


def test_newest_in_made_order_with_filters() -> None:
    clock = Clock()
    ix = BlockIndex(clock)
    for i, (src, reason, origin) in enumerate([
        ("192.0.2.1", "connections", "kernel"),
        ("192.0.2.2", "rsets", "logs"),
        ("198.51.100.0/24", "manual", "manual"),
        ("2001:db8::/64", "rsets", "logs"),
        ("192.0.2.3", "connections", "kernel"),
    ]):
        clock.t = T0 + i
        ix.add(K(src), T0 + 600, reason, origin)
    assert [b.source.text for b in ix.newest(2)] == ["192.0.2.3", "2001:db8::/64"]
    assert [b.source.text for b in ix.newest(10, reason="rsets")] == ["2001:db8::/64",
                                                                     "192.0.2.2"]
    assert [b.source.text for b in ix.newest(10, origin="kernel")] == ["192.0.2.3", "192.0.2.1"]
    assert ix.newest(10, reason="spray") == [] and ix.newest(0) == []
    assert [b.source.text for b in ix.newest(10, ip=K("192.0.2.0/24"))] == [
        "192.0.2.3", "192.0.2.2", "192.0.2.1"]
    assert [b.source.text for b in ix.newest(10, ip=K("198.51.100.9"))] == ["198.51.100.0/24"]
    assert [b.source.text for b in ix.newest(10, ip=K("198.51.0.0/16"))] == ["198.51.100.0/24"]
    clock.t = T0 + 10
    ix.add(K("192.0.2.1"), T0 + 900, "connections", "kernel")  # made again: newest now
    assert ix.newest(1)[0].source == K("192.0.2.1")
    ix.add(K("192.0.2.2"), T0 + 900, "rsets", "logs", made_at=T0 + 1)  # an edit: keeps place
    assert [b.source.text for b in ix.newest(3)] == ["192.0.2.1", "192.0.2.3", "2001:db8::/64"]


def test_an_older_made_at_is_put_in_order() -> None:
    clock = Clock()
    ix = BlockIndex(clock)
    ix.add(K("192.0.2.1"), T0 + 600, "manual", "manual", made_at=T0 + 5)
    ix.add(K("192.0.2.2"), T0 + 600, "manual", "manual", made_at=T0 + 1)
    ix.add(K("192.0.2.3"), T0 + 600, "manual", "manual", made_at=T0 + 3)
    assert [b.source.text for b in ix.newest(3)] == ["192.0.2.1", "192.0.2.3", "192.0.2.2"]


def test_most_dropping_and_count_by_reason() -> None:
    clock = Clock()
    ix = BlockIndex(clock)
    for i in range(5):
        clock.t = T0 + i
        ix.add(K(f"192.0.2.{i}"), T0 + 600, "rsets" if i % 2 else "connections", "logs")
    ix.set_drops([(K("192.0.2.1"), 5), (K("192.0.2.3"), 50), (K("192.0.2.9"), 7),
                  (K("192.0.2.0"), 0)])
    assert [(b.source.text, b.drops) for b in ix.most_dropping(3)] == [
        ("192.0.2.3", 50), ("192.0.2.1", 5), ("192.0.2.4", 0)]
    assert [b.source.text for b in ix.most_dropping(5, reason="connections")] == [
        "192.0.2.4", "192.0.2.2", "192.0.2.0"]
    assert ix.find(K("192.0.2.3")).drops == 50  # type: ignore[union-attr]
    assert ix.count_by_reason() == {"connections": 3, "rsets": 2}
    ix.add(K("192.0.2.3"), T0 + 900, "manual", "manual")  # re-made: the kernel's drops restart
    assert ix.find(K("192.0.2.3")).drops == 0  # type: ignore[union-attr]
    assert ix.count_by_reason() == {"connections": 3, "rsets": 1, "manual": 1}


def test_notes() -> None:
    ix = BlockIndex(Clock())
    ix.add(K("192.0.2.1"), T0 + 600, "manual", "manual", note="ticket 42")
    assert ix.find(K("192.0.2.1")).note == "ticket 42"  # type: ignore[union-attr]
    assert ix.set_note(K("192.0.2.1"), None)
    assert ix.find(K("192.0.2.1")).note is None  # type: ignore[union-attr]
    assert not ix.set_note(K("192.0.2.9"), "x")


def test_load_and_generation_and_snapshot_independence() -> None:
    ix = BlockIndex(Clock())
    g0 = ix.generation
    n = ix.load([(K("192.0.2.1"), T0 + 60, 3, "connections", "kernel"),
                 (K("10.0.0.0/8"), T0 + 60, 0, "manual", "file")], made_at=T0 - 100)
    assert n == 2 and ix.generation > g0
    assert ix.find(K("192.0.2.1")) == IndexedBlock(K("192.0.2.1"), "connections", "kernel",
                                                   None, T0 - 100, T0 + 60, 3)
    snap = ix.snapshot()
    ix.remove(K("192.0.2.1"))
    assert len(snap.entries) == 2 and snap.generation < ix.generation
    assert sorted(r[0] for r in snap.rows()) == sorted([int(K("192.0.2.1")),
                                                       int(K("10.0.0.0/8"))])


def test_to_json_is_the_status_shape() -> None:
    ix = BlockIndex(Clock())
    ix.add(K("2001:db8::/64"), T0 + 90, "manual", "manual", note="n")
    assert ix.find(K("2001:db8::/64")).to_json(T0) == {  # type: ignore[union-attr]
        "ip": "2001:db8::/64", "reason": "manual", "note": "n", "minutes_left": 1.5,
        "drops": 0, "source": "manual"}


def test_index_against_a_plain_model() -> None:
    """Random adds, removes and sweeps agree with a dict of (expires, reason)."""
    rnd = random.Random(7)
    clock = Clock()
    ix = BlockIndex(clock)
    model: dict[int, tuple[float, str]] = {}
    keys = [SourceKey.from_network(IPv4Address(0xC0000200 + i)) for i in range(50)]
    for _ in range(5000):
        clock.t += rnd.random()
        k = rnd.choice(keys)
        op = rnd.random()
        if op < 0.5:
            exp = round(clock.t + rnd.uniform(-1, 20), 3)
            reason = rnd.choice(["rsets", "connections"])
            ix.add(k, exp, reason, "logs")
            model[k] = (exp, reason)
        elif op < 0.7:
            assert (ix.remove(k) is not None) == (model.pop(k, None) is not None)
        else:
            gone = {b.source for b in ix.sweep()}
            want = {s for s, (e, _) in model.items() if e <= clock.t}
            assert gone == want
            for s in want:
                del model[s]
        assert len(ix) == len(model)
    for k in keys:
        b = ix.find(k)
        assert (b is None) == (k not in model)
        if b is not None:
            assert (b.expires, b.reason) == model[k]
    reasons: dict[str, int] = {}
    for _e, r in model.values():
        reasons[r] = reasons.get(r, 0) + 1
    assert ix.count_by_reason() == reasons


def test_memory_per_block_is_small() -> None:
    """What one block costs the index, its key included (traced allocations): the 500 MB
    budget of the whole daemon at a million blocks leaves the index ~150 bytes each (an
    ipaddress network alone takes more than that)."""
    n = 100_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ix = BlockIndex(Clock())
        ix.load(((SourceKey.from_network(IPv4Address(0x0A000000 + i)), T0 + 600 + i * 0.001, 0,
                  "connections", "kernel") for i in range(n)), made_at=T0)
        per_block = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(ix) == n
    assert per_block < 150, f"{per_block:.0f} bytes per block"


def test_json_texts_equal_the_views_json() -> None:
    """The streamed status --json --all text is the JSON of to_json(), filters included."""
    import json

    clock = Clock()
    ix = BlockIndex(clock)
    rnd = random.Random(3)
    for i in range(300):
        clock.t = T0 + i
        key = SourceKey.from_network(IPv4Address(0xC6336400 + i)) if i % 3 else \
            SourceKey.of(rnd.getrandbits(128), rnd.choice([48, 64, 128]))
        ix.add(key, math.inf if i == 7 else T0 + rnd.uniform(-60, 9000),
               rnd.choice(["rsets", "manual", "connections"]), rnd.choice(["logs", "kernel"]),
               note=rnd.choice([None, 'a "quoted" note\n', "ünï"]))
    ix.set_drops((k, i) for i, k in enumerate(ix._entries))
    now = T0 + 150.5
    for filters in ({}, {"reason": "rsets"}, {"origin": "kernel", "reason": "manual"},
                    {"ip": K("198.51.100.0/25")}, {"ip": K("198.51.100.5")},
                    {"reason": "spray"}):
        want = [b.to_json(now) for b in ix.select(**filters)]  # type: ignore[arg-type]
        text = "".join(ix.json_texts(now, chunk=16, **filters))  # type: ignore[arg-type]
        assert json.loads(text) == want, filters
    assert len(json.loads("".join(ix.json_texts(now)))) == 300


def test_key_text_is_ipaddress_text_for_awkward_ipv6() -> None:
    """inet_ntop and ipaddress differ on IPv4-compatible forms: the key text never does."""
    rnd = random.Random(11)
    samples = [0, 1, 0xFFFF, 0x01020304, 0xFFFF_01020304, 1 << 32, 1 << 48, (1 << 48) - 1,
               (1 << 80) - 1, 0xFFFF << 80, 1 << 127, (1 << 128) - 1]
    for _ in range(3000):
        words = [rnd.choice([0, 0, 0, 1, 0xFFFF, rnd.getrandbits(16)]) for _ in range(8)]
        samples.append(int.from_bytes(b"".join(w.to_bytes(2, "big") for w in words), "big"))
    for addr in samples:
        for plen in (128, 127, 96, 80, 64, 48, 0):
            key = SourceKey.of(addr, plen)
            assert key.text == network_key(key.network()), (hex(addr), plen)


def test_load_over_existing_blocks_replaces_them() -> None:
    ix = BlockIndex(Clock())
    ix.add(K("192.0.2.1"), T0 + 60, "rsets", "logs", note="old")
    ix.load([(K("192.0.2.1"), T0 + 600, 0, "manual", "file")], made_at=T0)
    assert ix.count_by_reason() == {"manual": 1}
    b = ix.find(K("192.0.2.1"))
    assert b is not None and (b.reason, b.note, b.expires) == ("manual", None, T0 + 600)
    assert ix.sweep(T0 + 100) == []
    assert [x.source for x in ix.covering(K("192.0.2.1"))] == [K("192.0.2.1")]


def test_a_snapshot_made_in_steps_is_the_index_at_its_last_step() -> None:
    """SnapshotBuilder: the loop changes the index between steps; the changes are in."""
    ix = BlockIndex(Clock())
    for i in range(1000):
        ix.add(K(f"10.0.{i // 250}.{i % 250}"), T0 + 600 + i, "rsets", "logs")
    builder = ix.snapshot_builder(chunk=100)
    assert builder.step() is None
    ix.remove(K("10.0.0.5"))  # already copied
    ix.remove(K("10.0.3.200"))  # not yet copied
    ix.add(K("10.0.0.7"), T0 + 5, "manual", "manual", "re-made")  # copied, then changed
    ix.add(K("192.0.2.1"), T0 + 9, "manual", "manual")  # new
    ix.set_note(K("10.0.3.100"), "noted")
    snap = None
    while snap is None:
        snap = builder.step()
    assert ix._journals == [], "no journaling once the snapshot is made"
    assert snap.entries == ix._entries and snap.notes == ix._notes
    ix.remove(K("10.0.0.8"))
    assert int(K("10.0.0.8")) in snap.entries, "a copy: later changes stay out"


@pytest.mark.parametrize("seed", range(6))
def test_a_snapshot_in_steps_survives_any_churn_between_them(seed: int) -> None:
    """Adds (new keys: the dict grows and resizes), removals, re-made blocks, edits in
    place and notes between every step: the snapshot is the index at its last step, and
    no key is copied twice (the walk finds its place again after each change)."""
    rnd = random.Random(seed)
    ix = BlockIndex(Clock())
    for i in range(3000):
        ix.add(SourceKey.from_network(IPv4Network(0x0A000000 + i)), T0 + 600 + i, "rsets",
               "logs")
    builder = ix.snapshot_builder(chunk=rnd.choice((60, 200)))
    fresh = 0x0B000000
    steps = 0
    while (snap := builder.step()) is None:
        steps += 1
        for _ in range(rnd.choice((0, 1, 3, 12))):
            keys = ix.sources()
            what = rnd.random()
            if what < 0.35:
                fresh += 1
                ix.add(SourceKey.from_network(IPv4Network(fresh)), T0 + 9, "manual", "manual")
            elif what < 0.7 and keys:
                ix.remove(SourceKey(rnd.choice(keys)))
            elif what < 0.85 and keys:
                ix.add(SourceKey(rnd.choice(keys)), T0 + 77, "manual", "manual")  # re-made
            elif keys:
                k = SourceKey(rnd.choice(keys))
                b = ix.find(k)
                assert b is not None
                ix.add(k, T0 + 88, b.reason, b.origin, "edited", made_at=b.made_at)  # in place
                ix.set_note(SourceKey(rnd.choice(keys)), "noted")
    assert steps > 10
    keys = [k for k, _ in snap.items()]
    assert len(keys) == len(set(keys)), "a key copied twice"
    assert snap.entries == ix._entries and snap.notes == ix._notes


def test_no_snapshot_step_lists_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first step copies one chunk, not a list of the whole table (a million keys
    listed at once held the loop ~20 ms)."""
    import dynscreen.control.blockindex as blockindex

    ix = BlockIndex(Clock())
    ix.load(((int(SourceKey.from_network(IPv4Network(0x0A000000 + i))), T0 + 600, 0, "rsets",
              "logs") for i in range(5000)), made_at=T0)
    taken: list[int] = []
    real = blockindex.islice

    def counted(it, *args):  # noqa: ANN001, ANN002, ANN202
        for x in real(it, *args):
            taken.append(1)
            yield x
    monkeypatch.setattr(blockindex, "islice", counted)
    monkeypatch.setattr(blockindex, "list", lambda *a: pytest.fail("a list of the keys"),
                        raising=False)
    builder = ix.snapshot_builder(chunk=100)
    assert builder.step() is None and len(taken) == 100


def test_most_dropping_from_a_ranking_made_elsewhere() -> None:
    from dynscreen.control.blockindex import rank_drops
    from dynscreen.control.dataplane.blocktable import KernelRow

    ix = BlockIndex(Clock())
    rows = [KernelRow(K(f"10.0.0.{i}"), T0 + 600, i * 10 % 70, "rsets" if i % 2 else "manual",
                      "logs") for i in range(1, 30)]
    ix.load(rows, made_at=T0)
    drops, rank = rank_drops(rows, top=5)
    ix.replace_drops(drops, rank)
    ix.remove(K("10.0.0.6"))  # ranked first (60 drops), gone since
    top = ix.most_dropping(3)
    assert [(str(b.source), b.drops) for b in top] == \
        [("10.0.0.13", 60), ("10.0.0.20", 60), ("10.0.0.27", 60)]
    # filters past the ranked few: the full count still answers right
    got = ix.most_dropping(3, reason="manual")
    want = sorted((b for b in ix.select(reason="manual")), key=lambda b: -b.drops)[:3]
    assert [b.drops for b in got] == [b.drops for b in want]


def test_a_bulk_load_keeps_key_objects_of_its_own() -> None:
    """The rows' keys live among the rows' other objects (a file row's float and strings,
    freed after the start's load); an index holding them would pin that memory."""
    rows = [((0xFFFF << 32 | 0x0A000000 + i) << 8 | 128, T0 + 600 + i, 0, "connections",
             "file") for i in range(100)]
    ix = BlockIndex(lambda: T0)
    assert ix.load(rows, made_at=T0) == 100
    given = {id(r[0]) for r in rows}
    assert not [k for k in ix._entries if id(k) in given]
    assert not [k for b in ix._buckets.values() for k in b if id(k) in given]
    assert sorted(ix._entries) == sorted(r[0] for r in rows)
