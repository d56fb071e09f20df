"""The frozen-accounts store: file format, case rules, expiry, corruption, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dynscreen.control.accounts import (
    HEADER,
    FrozenAccount,
    FrozenFileError,
    FrozenStore,
    format_time,
    parse_time,
)

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "frozen"


def entries(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_time_format_round_trip() -> None:
    assert format_time(T0) == "2026-05-28T20:26:40Z"
    assert parse_time("2026-05-28T20:26:40Z") == T0
    assert parse_time(format_time(T0 + 0.25)) == T0 + 0.25
    with pytest.raises(ValueError, match="expected a UTC time"):
        parse_time("2026-05-28 20:26:40")
    with pytest.raises(ValueError, match="month must be"):
        parse_time("2026-13-28T20:26:40Z")


def test_round_trip(path: Path) -> None:
    store = FrozenStore(path)
    assert store.load() == []
    a = store.freeze(
        "alice@example.com", T0, minutes=30, service="imap", ip="203.0.113.7",
        session="Kx8bR2Q1", failures=10,
    )
    b = store.freeze("bob@example.org", T0 + 5, service="smtp", ip="2001:db8::7", failures=12)
    assert a == FrozenAccount(
        "alice@example.com", T0, T0 + 1800, "imap", "203.0.113.7", "Kx8bR2Q1", 10
    )
    assert b is not None and b.until is None and b.session is None

    again = FrozenStore(path)
    assert again.load() == [a, b]
    assert again.list() == [a, b]
    assert [x.to_dict() for x in again.list()][0] == {
        "user": "alice@example.com", "since": T0, "until": T0 + 1800, "service": "imap",
        "ip": "203.0.113.7", "session": "Kx8bR2Q1", "failures": 10,
    }
    text = path.read_text()
    assert text.startswith(HEADER)
    assert entries(text) == [
        "alice@example.com\t2026-05-28T20:26:40Z\t2026-05-28T20:56:40Z\timap\t203.0.113.7\t10"
        "\tKx8bR2Q1",
        "bob@example.org\t2026-05-28T20:26:45Z\t-\tsmtp\t2001:db8::7\t12\t-",
    ]


def test_freeze_twice_and_unfreeze(path: Path) -> None:
    store = FrozenStore(path)
    store.load()
    assert store.freeze("alice@example.com", T0) is not None
    assert store.freeze("alice@example.com", T0 + 60) is None
    assert store.is_frozen("alice@example.com", T0 + 10**6)
    assert store.unfreeze("alice@example.com") is True
    assert store.unfreeze("alice@example.com") is False
    assert not store.is_frozen("alice@example.com", T0)
    assert entries(path.read_text()) == []
    assert FrozenStore(path).load() == []


def test_case_rules(path: Path) -> None:
    store = FrozenStore(path)
    store.freeze("Alice@Example.COM", T0, service="imap")
    spellings = ("Alice@Example.COM", "Alice@example.com", "alice@example.com", "ALICE@EXAMPLE.COM")
    for spelling in spellings:
        assert store.is_frozen(spelling, T0), spelling
    assert not store.is_frozen("alice@example.org", T0)
    assert not store.is_frozen("alice", T0)
    assert store.freeze("alice@EXAMPLE.com", T0) is None  # the same account
    assert store.get("ALICE@example.com").user == "Alice@Example.COM"  # spelling kept for people
    assert entries(store.list_path.read_text()) == [
        "alice@example.com\tREJECT 5.7.1 account temporarily frozen after repeated "
        "authentication failures"
    ]
    assert store.unfreeze("alice@example.COM") is True
    assert not store.is_frozen("Alice@Example.COM", T0)


def test_names_that_cannot_be_stored(path: Path) -> None:
    store = FrozenStore(path)
    for bad in ("", "al ice@example.com", "alice\n@example.com", "#alice", "a\tb", "x" * 600):
        with pytest.raises(ValueError):
            store.freeze(bad, T0)
    with pytest.raises(ValueError, match="white space"):
        store.freeze("alice@example.com", T0, ip="203.0.113.7 x")
    assert len(store) == 0 and not path.exists()


def test_expiry(path: Path) -> None:
    store = FrozenStore(path)
    store.freeze("a@example.com", T0, minutes=10)
    store.freeze("b@example.com", T0, minutes=20)
    store.freeze("c@example.com", T0)  # until unfrozen
    assert store.is_frozen("a@example.com", T0 + 599.9)
    assert not store.is_frozen("a@example.com", T0 + 600)  # exact, even before the sweep
    assert store.expire(T0 + 599) == []
    gone = store.expire(T0 + 600)
    assert [a.user for a in gone] == ["a@example.com"]
    assert [a.user for a in FrozenStore(path).load()] == ["b@example.com", "c@example.com"]
    # an expired freeze may be replaced by a new one before the sweep
    assert store.freeze("b@example.com", T0 + 1300, minutes=5) is not None
    assert store.get("b@example.com").since == T0 + 1300
    assert [a.user for a in store.expire(T0 + 10**9)] == ["b@example.com"]
    assert store.is_frozen("c@example.com", T0 + 10**9)


def test_list_file(path: Path) -> None:
    store = FrozenStore(path, reply="5.7.1 frozen, call the help desk")
    store.freeze("Zed@Example.com", T0)
    store.freeze("amy@example.com", T0 + 1)
    lines = store.list_path.read_text().splitlines()
    assert store.list_path == path.with_name("frozen.list")
    assert all(line.startswith("#") for line in lines[:3])
    assert entries("\n".join(lines)) == [
        "amy@example.com\tREJECT 5.7.1 frozen, call the help desk",
        "zed@example.com\tREJECT 5.7.1 frozen, call the help desk",
    ]
    # Exim's lsearch: key up to the first white space, compared case-insensitively
    keys = {line.split()[0] for line in entries("\n".join(lines))}
    assert "zed@example.com" in keys
    store.set_reply("5.7.1 frozen")
    assert entries(store.list_path.read_text())[0] == "amy@example.com\tREJECT 5.7.1 frozen"


def test_load_repairs_a_stale_list(path: Path) -> None:
    store = FrozenStore(path)
    store.freeze("alice@example.com", T0)
    store.list_path.write_text("")  # as if the daemon died between the two writes
    FrozenStore(path).load()
    assert entries(store.list_path.read_text())[0].startswith("alice@example.com\tREJECT ")
    # a missing frozen file still gives mail servers an (empty) table to read
    other = FrozenStore(path.with_name("other"))
    other.load()
    assert entries(other.list_path.read_text()) == []


def test_files_readable_by_mail_servers(path: Path) -> None:
    store = FrozenStore(path)
    old = os.umask(0o077)
    try:
        store.freeze("alice@example.com", T0)
    finally:
        os.umask(old)
    for p in (path, store.list_path):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("alice@example.com\t2026-05-28T20:26:40Z\t-\timap\t203.0.113.7", "expected 6 or 7"),
        ("alice@example.com\tyesterday\t-\timap\t203.0.113.7\t10", "bad time"),
        ("alice@example.com\t2026-05-28T20:26:40Z\tnever\timap\t203.0.113.7\t10", "bad time"),
        ("alice@example.com\t2026-05-28T20:26:40Z\t-\timap\t203.0.113.7\tten", "failure count"),
        ("bob@example.org\t2026-05-28T20:26:40Z\t-\timap\t203.0.113.7\t10", "listed twice"),
    ],
)
def test_corrupt_file_names_the_line(path: Path, line: str, problem: str) -> None:
    store = FrozenStore(path)
    store.freeze("bob@example.org", T0, service="smtp", failures=3)
    good = path.read_text()
    bad = good + "\n# a comment\n" + line + "\n"
    path.write_text(bad)
    number = bad.splitlines().index(line) + 1

    fresh = FrozenStore(path)
    with pytest.raises(FrozenFileError) as err:
        fresh.load()
    assert err.value.line == number
    assert f"{path}, line {number}: " in str(err.value) and problem in str(err.value)
    assert path.read_text() == bad  # kept as it is

    # the store that had loaded it keeps its accounts; a failed reload changes nothing
    with pytest.raises(FrozenFileError):
        store.load()
    assert store.is_frozen("bob@example.org", T0)
    # the next write keeps the unreadable file aside instead of overwriting it
    store.freeze("carol@example.net", T0)
    assert path.with_name("frozen.corrupt").read_text() == bad
    assert [a.user for a in FrozenStore(path).load()] == ["bob@example.org", "carol@example.net"]


def test_not_utf8(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"# ok\nalice@example.com\t2026-05-28T20:26:40Z\t-\timap\t\xff\t1\n")
    with pytest.raises(FrozenFileError, match="line 2: not UTF-8"):
        FrozenStore(path).load()


def test_hand_written_file(path: Path) -> None:
    """Spaces instead of TABs, a missing session column, CRLF, blank lines: all read."""
    path.parent.mkdir(parents=True)
    path.write_text(
        "# frozen by hand\r\n\r\n"
        "carol@example.net  2026-05-28T20:26:40Z  2026-05-28T21:26:40Z  pop  198.51.100.9  4\r\n"
        "dave@example.net\t2026-05-28T20:26:40Z\t-\t-\t-\t0\n"
    )
    store = FrozenStore(path)
    carol, dave = store.load()
    assert carol == FrozenAccount(
        "carol@example.net", T0, T0 + 3600, "pop", "198.51.100.9", None, 4
    )
    assert dave == FrozenAccount("dave@example.net", T0, None, None, None, None, 0)


def test_atomic_write(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way leaves the old file whole and no temp file behind."""
    store = FrozenStore(path)
    store.freeze("alice@example.com", T0)
    before = path.read_text()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        store.freeze("bob@example.com", T0)
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["frozen", "frozen.list"]
    assert store.is_frozen("bob@example.com", T0)  # frozen in memory all the same
    store.unfreeze("alice@example.com")  # the next write catches up
    assert [a.user for a in FrozenStore(path).load()] == ["bob@example.com"]


def test_write_replaces_by_rename(path: Path) -> None:
    """A reader holding the old file keeps reading the old content: rename, not rewrite."""
    store = FrozenStore(path)
    store.freeze("alice@example.com", T0)
    with path.open() as old:
        inode = os.fstat(old.fileno()).st_ino
        store.freeze("bob@example.com", T0)
        assert "bob@" not in old.read()
    assert path.stat().st_ino != inode
