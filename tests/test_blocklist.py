"""The block list over a stand-in kernel table: far expiries, three-way edits.

The stand-in keeps each block's expiry as the kernel does (CLOCK_MONOTONIC
nanoseconds, u64) and converts with the data plane's own to_mono/to_unix, so a
value planted at the table's maximum goes through the real read-back path.
"""

from __future__ import annotations

import time
from ipaddress import ip_network
from pathlib import Path

import pytest

from dynscreen.control import blockfile
from dynscreen.control.blockfile import BlockEntry, BlockFile, BlockFileError, parse_block_file
from dynscreen.control.blocklist import BlockList, Network
from dynscreen.control.config import MAX_MINUTES
from dynscreen.control.dataplane.blocktable import KernelRow
from dynscreen.control.dataplane.loader import NEVER, KernelBlock, mono_ns, to_mono, to_unix
from dynscreen.control.sourcekey import SourceKey
from dynscreen.control.utctime import format_time

LONGEST = MAX_MINUTES * 60


class FakeKernelTable:
    """add/remove/list like DataPlane, values as the kernel stores them."""

    def __init__(self) -> None:
        self.table: dict[Network, tuple[int, str, str]] = {}

    def plant(self, net: str, mono: int, reason: str = "manual", origin: str = "manual") -> None:
        self.table[ip_network(net)] = (mono, reason, origin)

    def add_block(self, net: Network, until: float, reason: str, origin: str) -> None:
        self.add_blocks([(net, until, reason, origin)])

    def add_blocks(self, blocks: list[tuple[Network, float, str, str]]) -> None:
        for net, until, reason, origin in blocks:
            self.table[net] = (to_mono(until), reason, origin)

    def remove_block(self, net: Network) -> bool:
        return self.table.pop(net, None) is not None

    def list_blocks(self, *, include_expired: bool = False) -> list[KernelBlock]:
        now = mono_ns()
        return [KernelBlock(net, to_unix(m), reason, origin, 0, net.prefixlen not in (32, 64))
                for net, (m, reason, origin) in self.table.items()
                if include_expired or m > now]

    def read_rows(self) -> list[KernelRow]:
        return [KernelRow(SourceKey.from_network(b.source), b.expires, b.drops, b.reason,
                          b.origin) for b in self.list_blocks(include_expired=True)]

    def write_rows(self, rows: list[KernelRow], meanwhile: object = None) -> None:
        self.add_blocks([(SourceKey(r.source).network(), r.expires, r.reason, r.origin)
                         for r in rows])
        if callable(meanwhile):
            meanwhile()

    def delete_rows(self, sources: list[int]) -> int:
        return sum(self.remove_block(SourceKey(s).network()) for s in sources)


def blocklist() -> tuple[FakeKernelTable, BlockList, list[tuple[Network, float | None]]]:
    heard: list[tuple[Network, float | None]] = []
    k = FakeKernelTable()
    return k, BlockList(k, lambda net, until: heard.append((net, until))), heard  # type: ignore[arg-type]


# --- item: far-future expiries ---------------------------------------------------------


def test_format_time_never_raises() -> None:
    for v in (float("inf"), float("-inf"), float("nan"), 1e300, -1e300, 2.0**64,
              253402300799.9999):
        text = format_time(v)
        assert text.endswith("Z")


def test_the_tables_maximum_is_read_back_within_the_longest_block() -> None:
    now = time.time()
    assert now + LONGEST - 1 <= to_unix(NEVER) <= time.time() + LONGEST
    assert to_unix(2**63) <= time.time() + LONGEST


def test_a_planted_maximum_neither_crashes_save_nor_start(tmp_path: Path) -> None:
    k, bl, _ = blocklist()
    k.plant("203.0.113.9", NEVER)
    k.add_block(ip_network("192.0.2.1/32"), time.time() + 600, "rsets", "logs")
    restored, kept = bl.reconcile([], time.time())  # start: adoption of the kernel's table
    assert (restored, kept) == (0, 2)
    mono, _, _ = k.table[ip_network("203.0.113.9/32")]
    assert mono < NEVER, "start cut the far entry to the longest block in the kernel too"
    assert to_unix(mono) <= time.time() + LONGEST
    bf = BlockFile(tmp_path / "blocks.dat")
    assert bf.save(bl.entries(), time.time())  # the save that used to raise OverflowError
    _, again = blocklist()[1], BlockList(k, lambda n, u: None)  # type: ignore[arg-type]
    assert again.reconcile(bf.load(), time.time()) == (0, 2)  # next start: file and kernel agree
    # the file holds a time it can read back, within the limit
    (e,) = [e for e in BlockFile(tmp_path / "blocks.dat").load() if e.key == "203.0.113.9"]
    assert e.expires <= time.time() + LONGEST + 0.001  # the file keeps milliseconds, rounded


def test_every_add_is_cut_to_the_longest_block() -> None:
    k, bl, heard = blocklist()
    assert bl.add(ip_network("198.51.100.0/24"), float("inf"), "manual", "manual")
    assert bl.add(ip_network("198.51.100.7/32"), 1e15, "manual", "manual")
    for net in (ip_network("198.51.100.0/24"), ip_network("198.51.100.7/32")):
        assert k.table[net][0] < NEVER
    assert all(u is not None and u <= time.time() + LONGEST for _, u in heard)


def test_far_expiry_line_is_refused_with_its_line_number() -> None:
    text = "# blocks\n\n192.0.2.1 2030-01-01T00:00:00Z manual\n" \
           "203.0.113.9 9999-12-31T23:59:59Z manual # forever\n"
    with pytest.raises(BlockFileError) as e:
        parse_block_file(text, "/x/blocks.dat")
    assert e.value.line == 4
    assert str(e.value).startswith("/x/blocks.dat:4: expiry 9999-12-31T23:59:59Z is too far ahead")
    assert f"{MAX_MINUTES} minutes" in str(e.value)
    # just within the limit is fine; the limit moves with the clock given
    now = time.time()
    ok = f"192.0.2.1 {format_time(now + LONGEST - 60)} manual\n"
    assert parse_block_file(ok, "f", now=now)[0].key == "192.0.2.1"
    with pytest.raises(BlockFileError):
        parse_block_file(ok, "f", now=now - 120)


# --- item: edits are three-way ---------------------------------------------------------


def test_hand_edit_keeps_a_block_made_while_the_editor_was_open(tmp_path: Path) -> None:
    k, bl, _ = blocklist()
    now = time.time()
    for i in (1, 2, 3):
        bl.add(ip_network(f"192.0.2.{i}/32"), now + 600, "rsets", "logs")
    bf = BlockFile(tmp_path / "blocks.dat")
    assert bf.save(bl.entries(), now)
    opened = bf.path.read_text()  # the editor reads the file
    bl.add(ip_network("203.0.113.50/32"), now + 600, "auth_failures", "logs")  # meanwhile
    assert bf.save(bl.entries(), now + 1)  # the daemon writes the file with the new block
    assert "203.0.113.50" in bf.path.read_text()
    # the editor saves its copy: 192.0.2.2 deleted, 192.0.2.3 changed, one added
    later = format_time(now + 1200)
    edited = "\n".join(
        ln.replace(ln.split()[1], later) if ln.startswith("192.0.2.3 ") else ln
        for ln in opened.splitlines() if not ln.startswith("192.0.2.2 ")
    ) + f"\n198.51.100.9 {later} manual # by hand\n"
    bf.path.write_text(edited)
    assert bf.edited()
    added, removed, changed = bl.apply_change(bf.load_change())
    assert (added, removed, changed) == (1, 1, 1)
    keys = {e.key: e for e in bl.entries()}
    assert set(keys) == {"192.0.2.1", "192.0.2.3", "203.0.113.50", "198.51.100.9"}
    assert abs(keys["192.0.2.3"].expires - (now + 1200)) < 1
    # the next save writes the result, with a version line naming it
    assert bf.save(bl.entries(), now + 2)
    assert "203.0.113.50" in bf.path.read_text()


def test_a_hand_edit_without_its_version_line_counts_against_the_latest_text(
        tmp_path: Path) -> None:
    k, bl, _ = blocklist()
    now = time.time()
    bl.add(ip_network("192.0.2.1/32"), now + 600, "rsets", "logs")
    bl.add(ip_network("192.0.2.2/32"), now + 600, "rsets", "logs")
    bf = BlockFile(tmp_path / "blocks.dat")
    bf.save(bl.entries(), now)
    bf.path.write_text(f"192.0.2.1 {format_time(now + 600)} rsets\n")  # a file typed anew
    assert bl.apply_change(bf.load_change()) == (0, 1, 0)
    assert {e.key for e in bl.entries()} == {"192.0.2.1"}


def test_blocks_edit_change_keeps_blocks_made_meanwhile() -> None:
    """What `blocks edit` sends: the text it started from and the edited text."""
    k, bl, _ = blocklist()
    now = time.time()
    bl.add(ip_network("192.0.2.1/32"), now + 600, "rsets", "logs")
    bl.add(ip_network("192.0.2.2/32"), now + 600, "rsets", "logs")
    original = blockfile.format_block_file(bl.entries(), now)
    bl.add(ip_network("203.0.113.50/32"), now + 600, "auth_failures", "logs")  # meanwhile
    edited = "\n".join(ln for ln in original.splitlines() if not ln.startswith("192.0.2.2 "))
    change = blockfile.diff(parse_block_file(original, "f", limit=False),
                            parse_block_file(edited, "f"))
    assert bl.apply_change(change) == (0, 1, 0)
    assert {e.key for e in bl.entries()} == {"192.0.2.1", "203.0.113.50"}
    # without the base, the old rule: the blocks become the text
    assert bl.apply_edit(parse_block_file(edited, "f")) == (0, 1, 0)
    assert {e.key for e in bl.entries()} == {"192.0.2.1"}


def test_an_edit_to_an_expiry_in_the_past_unblocks() -> None:
    k, bl, _ = blocklist()
    now = time.time()
    bl.add(ip_network("192.0.2.1/32"), now + 600, "rsets", "logs")
    before = bl.entries()
    after = [BlockEntry(ip_network("192.0.2.1/32"), now - 5, "rsets", None, "logs")]
    assert bl.apply_change(blockfile.diff(before, after)) == (0, 1, 0)
    assert bl.entries() == []


# --- the index in the block list --------------------------------------------------------


def test_start_hears_only_ranges_and_reconciliation_finds_what_the_kernel_made() -> None:
    k, bl, heard = blocklist()
    now = time.time()
    k.add_block(ip_network("192.0.2.1/32"), now + 600, "rsets", "logs")
    k.add_block(ip_network("198.51.100.0/24"), now + 600, "manual", "manual")
    assert bl.reconcile([], now) == (0, 2)
    assert heard == [(ip_network("198.51.100.0/24"), pytest.approx(now + 600, abs=0.01))], \
        "a range holds many sources; single ones are told when the engine meets them"
    # behind the index's back: one made (its event lost), one lifted (offline unblock)
    k.add_block(ip_network("203.0.113.9/32"), now + 900, "connections", "kernel")
    k.remove_block(ip_network("192.0.2.1/32"))
    differ, missing = bl.resync_plan(k.read_rows())
    r = bl.resync(differ, missing, set(), now + 1)
    assert (r.found, r.dropped, r.updated) == (1, 1, 0)
    assert bl.find(ip_network("203.0.113.9/32")) is not None
    assert bl.find(ip_network("192.0.2.1/32")) is None
    assert heard[-2:] == [(ip_network("203.0.113.9/32"), pytest.approx(now + 900, abs=0.01)),
                          (ip_network("192.0.2.1/32"), None)]
    # what changed during the walk is left alone
    k.add_block(ip_network("203.0.113.10/32"), now + 900, "connections", "kernel")
    differ, missing = bl.resync_plan(k.read_rows())
    r = bl.resync(differ, missing, {int(SourceKey.parse("203.0.113.10"))}, now + 2)
    assert r.found == 0 and bl.find(ip_network("203.0.113.10/32")) is None


def test_sweep_removes_from_index_and_kernel_and_the_whitelist_asks_the_index() -> None:
    k, bl, heard = blocklist()
    now = time.time()
    bl.add(ip_network("192.0.2.1/32"), now + 1, "rsets", "logs", decided=True)
    bl.add(ip_network("192.0.2.2/32"), now + 600, "rsets", "logs", decided=True)
    bl.add(ip_network("10.1.0.0/16"), now + 600, "manual", "manual")
    assert heard == [(ip_network("10.1.0.0/16"), pytest.approx(now + 600, abs=0.01))], \
        "the engine's own blocks are not echoed back"
    assert [str(b.source) for b in bl.sweep(now + 0.5)] == []
    assert [str(b.source) for b in bl.sweep(now + 1)] == ["192.0.2.1"]
    assert ip_network("192.0.2.1/32") not in k.table and heard[-1][1] is None
    inside = bl.inside([ip_network("192.0.2.0/24"), ip_network("10.1.2.3/32")])
    assert [str(b.source) for b in inside] == ["192.0.2.2"]
    assert [str(b.source) for b in bl.inside([ip_network("10.0.0.0/8")])] == ["10.1.0.0/16"]
