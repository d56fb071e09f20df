"""Hostile input for the block-file reader and the frozen-accounts reader.

Random and crafted content (fixed seed, a bounded time each): huge lines, NULs,
invalid UTF-8, impossible and huge dates, CIDR oddities, IPv6 zone ids, stray
comments and line breaks. Whatever the content: no exception escapes but the
reader's own error, which names a line the file has; a refused file is kept
byte for byte; the state in force is never lost.
"""

from __future__ import annotations

import random
import time
from ipaddress import ip_network
from pathlib import Path

from test_blocklist import FakeKernelTable

from dynscreen.control.accounts import FrozenFileError, FrozenStore, check_user
from dynscreen.control.blockfile import (
    BlockFile,
    BlockFileError,
    format_block_file,
    parse_block_file,
)
from dynscreen.control.blocklist import BlockList
from dynscreen.control.config import MAX_MINUTES
from dynscreen.control.utctime import format_time

ROUNDS = 150  # per reader: a count, not a time, so a loaded machine feeds the same inputs;
# the seed makes every run feed them in the same order
SEED = 20261206

ADDRS = [
    "192.0.2.1", "192.0.2.0/24", "192.0.2.1/24", "0.0.0.0/0", "::/0", "255.255.255.255",
    "1.2.3.4/33", "1.2.3.4/-1", "1.2.3.4/032", "01.2.3.4", "1.2.3", "1.2.3.4.5", "::ffff:1.2.3.4",
    "fe80::1%eth0", "fe80::1%eth0/64", "2001:db8::/64", "2001:db8::1/129", "2001:db8:::1",
    "[2001:db8::1]", "2001:db8::1/64", "١٩٢.٠.٢.١", "1.2.3.4/", "/24", "x" * 5000, "",
]
TIMES = [
    "2030-01-01T00:00:00Z", "2026-02-30T00:00:00Z", "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z", "9999-12-31T23:59:59.9999999Z", "10000-01-01T00:00:00Z",
    "99999999999999999999-01-01T00:00:00Z", "2030-01-01T24:00:00Z", "2030-01-01T00:00:60Z",
    "2030-01-01T00:00:00", "2030-01-01T00:00:00+00:00", "٢٠٣٠-٠١-٠١T00:00:00Z",
    "2030-01-01T00:00:00.Z", "2030-01-01T00:00:00.1234567890Z", "1970-01-01T00:00:00Z",
    "inf", "nan", "-1", "2030-01-01T00:00:00ZZ", format_time(time.time() + 3600),
]
REASONS = ["manual", "rsets", "auth_failures", "connections", "Manual", "spam", "", "#"]
JUNK = ["\x00", "\r", "\t", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\ufeff", "#", '"',
        "\\", "# 5 min left, from kernel", '# 1 min left, manual: "x', "é", "\ud800"]


def _text_line(rnd: random.Random) -> str:
    pick = rnd.random()
    if pick < 0.6:
        fields = [rnd.choice(ADDRS), rnd.choice(TIMES), rnd.choice(REASONS)]
        if rnd.random() < 0.3:
            fields.insert(rnd.randrange(4), rnd.choice(JUNK))
        line = rnd.choice([" ", "\t", "  "]).join(fields)
        if rnd.random() < 0.4:
            line += " " + rnd.choice(JUNK) + rnd.choice(JUNK)
        return line
    if pick < 0.7:
        return rnd.choice(JUNK) * rnd.randrange(1, 200_000)  # huge lines
    if pick < 0.85:
        return "".join(rnd.choice(JUNK + ["a", "1", ".", ":", "/", " "])
                       for _ in range(rnd.randrange(40)))
    return "# " + rnd.choice(JUNK) * rnd.randrange(10)


def _bytes(rnd: random.Random, lines: list[str]) -> bytes:
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    if rnd.random() < 0.2:  # invalid UTF-8 somewhere
        at = rnd.randrange(len(data) + 1)
        data = data[:at] + rnd.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + data[at:]
    if rnd.random() < 0.1:
        data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(300)))
    return data


def _line_count(data: bytes) -> int:
    return data.count(b"\n") + 1


def test_block_file_reader(tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    path = tmp_path / "blocks.dat"
    kernel = FakeKernelTable()
    blocks = BlockList(kernel, lambda net, until: None)  # type: ignore[arg-type]
    now = time.time()
    for i in range(5):
        blocks.add(ip_network(f"198.51.100.{i}/32"), now + 600, "rsets", "logs")
    bf = BlockFile(path)
    rounds = refused = 0
    for _ in range(ROUNDS):
        rounds += 1
        lines = [_text_line(rnd) for _ in range(rnd.randrange(1, 8))]
        data = _bytes(rnd, lines)
        path.write_bytes(data)
        before = sorted(kernel.table.items(), key=str)
        try:
            change = bf.load_change()
        except BlockFileError as e:
            refused += 1
            assert 1 <= e.line <= _line_count(data), (e.line, data[:200])
            assert e.data == data
            kept = bf.keep_rejected(e.data)
            assert kept.read_bytes() == data, "a refused file is kept byte for byte"
            kept.unlink()
            assert sorted(kernel.table.items(), key=str) == before, "running blocks stay"
            continue
        blocks.apply_change(change)
        # what was accepted is within the limit and survives a round trip through the file
        shown = blocks.entries()
        assert all(e.expires <= time.time() + MAX_MINUTES * 60 for e in shown)
        again = parse_block_file(format_block_file(shown, time.time()), "f")
        assert {e.key for e in again} == {e.key for e in shown}
        assert bf.save(shown, time.time()) or not bf.edited()
    assert rounds == ROUNDS and 0 < refused < rounds, (rounds, refused)


def _frozen_line(rnd: random.Random) -> str:
    users = ["alice@example.com", "Bob@Example.ORG", "x" * 600, "#carol", "dave", "é@ü.de",
             "", "a\x00b", "-"]
    fields = [rnd.choice(users), rnd.choice(TIMES), rnd.choice(TIMES + ["-"]),
              rnd.choice(["imap", "-", "smtp", ""]), rnd.choice(ADDRS[:5] + ["-"]),
              rnd.choice(["0", "10", "-1", "ten", "٣", "99999999999999999999"])]
    if rnd.random() < 0.5:
        fields.append(rnd.choice(["sess1", "-", "a b"]))
    if rnd.random() < 0.2:
        del fields[rnd.randrange(len(fields))]
    if rnd.random() < 0.2:
        return _text_line(rnd)
    return rnd.choice(["\t", " ", "\t\t"]).join(fields)


def _named(line: bytes) -> str | None:
    """The account a line names, as the fail-closed rule reads it."""
    if line.lstrip().startswith(b"#"):
        return None
    fields = line.split(b"\t") if b"\t" in line else line.split()
    try:
        return check_user(fields[0].strip().decode("utf-8")) if fields else None
    except ValueError:
        return None


def test_frozen_file_reader_at_start_fails_closed(tmp_path: Path) -> None:
    rnd = random.Random(SEED + 1)
    path = tmp_path / "frozen"
    rounds = damaged = 0
    for _ in range(ROUNDS):
        rounds += 1
        data = _bytes(rnd, [_frozen_line(rnd) for _ in range(rnd.randrange(1, 6))])
        path.write_bytes(data)
        store = FrozenStore(path)
        store.load()  # never raises
        for line in data.split(b"\n"):
            user = _named(line.rstrip(b"\r"))
            if user is not None:
                assert store.get(user) is not None, (user, data[:200])
        assert all(1 <= p.line <= _line_count(data) for p in store.problems if p.line)
        if store.problems:
            damaged += 1
            store.freeze("new@example.net", time.time())
            assert path.read_bytes() == data, "a damaged file is not rewritten"
            assert store.is_frozen("new@example.net", time.time())
    assert rounds == ROUNDS and 0 < damaged < rounds, (rounds, damaged)


def test_frozen_file_reader_of_a_running_store(tmp_path: Path) -> None:
    rnd = random.Random(SEED + 2)
    path = tmp_path / "frozen"
    store = FrozenStore(path)
    store.load()
    store.freeze("keep@example.com", time.time())
    rounds = refused = 0
    for _ in range(ROUNDS):
        rounds += 1
        data = _bytes(rnd, [_frozen_line(rnd) for _ in range(rnd.randrange(1, 6))])
        path.write_bytes(data)
        before = store.list()
        try:
            store.check_edit()
        except FrozenFileError as e:
            refused += 1
            assert e.line is not None and 1 <= e.line <= _line_count(data)
            assert e.kept is not None and e.kept.read_bytes() == data, "kept byte for byte"
            e.kept.unlink()
            assert store.list() == before, "the accounts in force stay"
            continue
        if not store.get("keep@example.com"):  # an accepted edit removed it: put it back
            store.freeze("keep@example.com", time.time())
    assert rounds == ROUNDS and 0 < refused < rounds, (rounds, refused)
