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


def test_file_modes_whatever_the_umask(path: Path) -> None:
    """The frozen file is private (0600); the lookup table 0640, its group kept."""
    store = FrozenStore(path)
    old = os.umask(0)
    try:
        store.freeze("alice@example.com", T0)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(store.list_path.stat().st_mode) == 0o640
        group = next(g for g in os.getgroups() + [1, 2, 3] if g != store.list_path.stat().st_gid)
        os.chown(store.list_path, -1, group)  # an administrator gives it the mail server's group
        store.freeze("bob@example.com", T0)  # rewrites both
        store.unfreeze("alice@example.com")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.list_path.stat().st_mode) == 0o640
    assert store.list_path.stat().st_gid == group
    assert "bob@example.com" in store.list_path.read_text()


def test_an_older_open_file_is_closed_down_at_start(path: Path) -> None:
    store = FrozenStore(path)
    store.freeze("alice@example.com", T0)
    path.chmod(0o644)
    store.list_path.chmod(0o644)
    FrozenStore(path).load()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.list_path.stat().st_mode) == 0o640


BAD_LINES = [
    ("alice@example.com\t2026-05-28T20:26:40Z\t-\timap\t203.0.113.7", "expected 6 or 7"),
    ("alice@example.com\tyesterday\t-\timap\t203.0.113.7\t10", "bad time"),
    ("alice@example.com\t2026-05-28T20:26:40Z\tnever\timap\t203.0.113.7\t10", "bad time"),
    ("alice@example.com\t2026-05-28T20:26:40Z\t-\timap\t203.0.113.7\tten", "failure count"),
    ("bob@example.org\t2026-05-28T20:26:40Z\t-\timap\t203.0.113.7\t10", "listed twice"),
]


def _damaged(path: Path, line: str) -> tuple[FrozenStore, str, int]:
    store = FrozenStore(path)
    store.load()
    store.freeze("bob@example.org", T0, service="smtp", failures=3)
    bad = path.read_text() + "\n# a comment\n" + line + "\n"
    return store, bad, bad.splitlines().index(line) + 1


@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_damaged_file_at_start_fails_closed(path: Path, line: str, problem: str) -> None:
    """Every account the file names stays frozen; the bad line is named; no rewrite."""
    _, bad, number = _damaged(path, line)
    path.write_text(bad)

    fresh = FrozenStore(path)
    users = {a.user for a in fresh.load(now=T0)}  # never raises
    named = line.split("\t")[0]
    assert users == {"bob@example.org", named}
    assert fresh.is_frozen(named, T0 + 10**8), "a line it cannot read freezes its account"
    assert [(p.line, problem in str(p)) for p in fresh.problems] == [(number, True)]
    assert f"{path}, line {number}: " in str(fresh.problems[0])
    # the file is not rewritten until it is fixed, even by a new freeze
    fresh.freeze("carol@example.net", T0)
    assert path.read_text() == bad
    assert "carol@example.net\t" in fresh.list_path.read_text(), "the mail servers know at once"
    assert not list(path.parent.glob("frozen.rejected-*"))
    # an edit that fixes the file applies, and carol (frozen meanwhile) stays
    path.write_text(bad.replace(line + "\n", ""))
    frozen, unfrozen = fresh.check_edit(now=T0) or ([], [])
    assert fresh.is_frozen("carol@example.net", T0) and fresh.is_frozen("bob@example.org", T0)
    if named != "bob@example.org":
        assert [a.user for a in unfrozen] == [named], "its line was removed: unfrozen"
    assert not fresh.damaged
    assert {a.user for a in FrozenStore(path).load()} == {"bob@example.org", "carol@example.net"}


@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_bad_edit_is_refused_whole_and_kept(path: Path, line: str, problem: str) -> None:
    store, bad, number = _damaged(path, line)
    path.write_text(bad)
    with pytest.raises(FrozenFileError) as err:
        store.load()  # a running store: the edit is checked as a whole
    assert err.value.line == number
    assert f"{path}, line {number}: " in str(err.value) and problem in str(err.value)
    assert err.value.kept is not None and err.value.kept.read_text() == bad
    assert err.value.kept.name.startswith("frozen.rejected-")
    assert stat.S_IMODE(err.value.kept.stat().st_mode) == 0o600
    assert [a.user for a in store.list()] == ["bob@example.org"], "the running state stays"
    assert entries(path.read_text()) == entries(store.text()), "the refused text is kept aside"
    # a second bad edit in the same second gets a copy of its own
    path.write_text(bad + "# again\n")
    with pytest.raises(FrozenFileError) as again:
        store.load()
    assert again.value.kept != err.value.kept
    assert err.value.kept.read_text() == bad
    assert again.value.kept is not None and again.value.kept.read_text() == bad + "# again\n"


def test_nothing_is_written_over_an_unread_edit(path: Path) -> None:
    store = FrozenStore(path)
    store.load()
    store.freeze("bob@example.org", T0)
    edit = path.read_text() + "dave@example.net\t2026-05-28T20:26:40Z\t-\t-\t-\t0\n"
    path.write_text(edit)
    store.freeze("carol@example.net", T0)  # before the daemon read the edit
    assert path.read_text() == edit
    store.check_edit(now=T0)
    assert {a.user for a in FrozenStore(path).load()} == {
        "bob@example.org", "carol@example.net", "dave@example.net"}


def test_edit_started_before_a_freeze_keeps_it(path: Path) -> None:
    """Three-way: the editor's copy lacks a freeze made while it was open; it stays."""
    store = FrozenStore(path)
    store.load()
    store.freeze("bob@example.org", T0)
    store.freeze("erin@example.org", T0)
    copy = path.read_text()  # the editor opens the file
    store.freeze("carol@example.net", T0 + 10)  # meanwhile, the daemon freezes carol
    path.write_text(copy.replace("erin@example.org", "#erin@example.org"))  # saved over it
    frozen, unfrozen = store.check_edit(now=T0) or ([], [])
    assert [a.user for a in unfrozen] == ["erin@example.org"]
    assert {a.user for a in store.list()} == {"bob@example.org", "carol@example.net"}
    assert {a.user for a in FrozenStore(path).load()} == {"bob@example.org", "carol@example.net"}


def test_not_utf8(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"# ok\nalice@example.com\t2026-05-28T20:26:40Z\t-\timap\t\xff\t1\n")
    store = FrozenStore(path)
    assert [a.user for a in store.load()] == ["alice@example.com"]
    assert [p.line for p in store.problems] == [2] and "not UTF-8" in str(store.problems[0])
    path.write_bytes(b"# ok\n\xff\n")
    with pytest.raises(FrozenFileError, match="line 2: not UTF-8"):
        store.load()


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
