"""The block file: grammar, errors with line numbers, atomic saves, edit detection."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from ipaddress import ip_network
from pathlib import Path

import pytest

from dynscreen.control import atomicfile, statefile
from dynscreen.control.blockfile import (
    HEADER,
    BlockEntry,
    BlockFile,
    BlockFileError,
    FileRow,
    diff,
    format_block_file,
    format_time,
    parse_block_file,
    parse_rows,
    parse_time,
)
from dynscreen.control.sourcekey import SourceKey

NOW = parse_time("2026-11-30T13:52:30Z")
T1 = parse_time("2026-11-30T14:05:00Z")  # 12.5 min after NOW
T2 = parse_time("2026-11-30T23:52:30Z")  # 600 min after NOW


def entry(addr: str, expires: float = T1, reason: str = "auth_failures",
          note: str | None = None, source: str = "logs") -> BlockEntry:
    return BlockEntry(ip_network(addr), expires, reason, note, source)


SAMPLE = [
    entry("203.0.113.7"),
    entry("198.51.100.0/24", T2, "manual", "abuse ticket 42", "manual"),
    entry("2001:db8:1:2::/64", T1, "connections", None, "kernel"),
    entry("192.0.2.9", T2, "rsets", None, "file"),
]


def error(text: str) -> BlockFileError:
    """The full reader's error, after checking the fast one (parse_rows) says the same."""
    with pytest.raises(BlockFileError) as e:
        parse_block_file(text, "/x/blocks.dat")
    with pytest.raises(BlockFileError) as fast:
        parse_rows(text, "/x/blocks.dat")
    assert (str(fast.value), fast.value.line) == (str(e.value), e.value.line)
    return e.value


def rows_of(entries: list[BlockEntry]) -> list[FileRow]:
    return [FileRow(int(SourceKey.from_network(e.net)), e.expires, e.reason, e.note, e.source)
            for e in entries]


def test_the_fast_reader_reads_what_the_full_one_reads() -> None:
    """parse_rows (start at a million lines) and parse_block_file agree on every kind of
    line: the daemon's own, hand-written ones, IPv6, ranges, milliseconds, CRLF, notes."""
    text = format_block_file(SAMPLE + [
        entry("192.0.2.10", T1 + 0.25, "failed_rcpts", "a \"quoted\" # note", "manual"),
        entry("10.0.0.0/8", T2, "manual", None, "file"),
    ], NOW) + ("192.0.2.11 2026-11-30T14:05:00.5Z rsets # my own words\r\n"
               "  192.0.2.12\t2026-11-30T14:05:00Z   connections\n"
               "::ffff:192.0.2.13 2026-11-30T14:05:00Z rsets\n"
               "192.0.2.14 2026-11-30T14:05:00.123Z rsets #\n")
    full = parse_block_file(text, "f", now=NOW)
    assert len(full) == 10
    assert parse_rows(text, "f", now=NOW) == rows_of(full)


# --- grammar -----------------------------------------------------------------------------


def test_format_matches_the_documented_shape() -> None:
    text = format_block_file(SAMPLE, NOW)
    assert text.startswith(HEADER)
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert [ln.split()[0] for ln in lines] == [
        "192.0.2.9", "198.51.100.0/24", "203.0.113.7", "2001:db8:1:2::/64"]
    assert lines[2].split("#")[1].strip() == "12.5 min left, from logs"
    assert lines[1].split("#")[1].strip() == '600 min left, manual: "abuse ticket 42"'
    assert lines[1].split()[1] == "2026-11-30T23:52:30Z"
    assert len({ln.index("#") for ln in lines}) == 1, "columns are aligned"
    assert len({ln.index(ln.split()[2]) for ln in lines}) == 1


def test_round_trip_keeps_everything() -> None:
    got = parse_block_file(format_block_file(SAMPLE, NOW), "f")
    assert sorted(got, key=lambda e: e.key) == sorted(SAMPLE, key=lambda e: e.key)


def test_round_trip_of_awkward_notes() -> None:
    notes = ['say "hi" # not a comment', "back\\slash", "two\nlines", "für\u2028Müller", ""]
    entries = [entry(f"192.0.2.{i}", T1, "manual", n, "manual") for i, n in enumerate(notes)]
    text = format_block_file(entries, NOW)
    assert len(text.split("\n")) == len(HEADER.split("\n")) + 1 + len(notes)
    assert parse_block_file(text, "f") == entries


def test_hand_written_lines() -> None:
    text = (
        "\n   \n# a comment line\n"
        "203.0.113.7 2026-11-30T14:05:00Z auth_failures\n"
        "\t198.51.100.0/24\t2026-12-01T00:00:00.250Z   manual   # spam wave from them\n"
        "2001:DB8:1:2::/64 2026-12-01T00:00:00Z rsets #\r\n"
        "::ffff:192.0.2.1 2026-12-01T00:00:00Z rsets # 3 min left, from kernel\n"
    )
    got = parse_block_file(text, "f")
    assert got == [
        entry("203.0.113.7", T1, "auth_failures", None, "file"),
        entry("198.51.100.0/24", parse_time("2026-12-01T00:00:00Z") + 0.25, "manual",
              "spam wave from them", "file"),
        entry("2001:db8:1:2::/64", parse_time("2026-12-01T00:00:00Z"), "rsets", None, "file"),
        entry("192.0.2.1", parse_time("2026-12-01T00:00:00Z"), "rsets", None, "kernel"),
    ]


def test_times() -> None:
    assert parse_time("1970-01-01T00:00:00Z") == 0
    assert parse_time("2026-11-30T14:05:00.5Z") == T1 + 0.5
    assert format_time(T1) == "2026-11-30T14:05:00Z"
    assert format_time(T1 + 0.25) == "2026-11-30T14:05:00.250Z"
    assert format_time(T1 + 0.9999) == "2026-11-30T14:05:01Z"


def test_minutes_left_and_expired() -> None:
    text = format_block_file([entry("192.0.2.1", NOW + 1), entry("192.0.2.2", NOW - 60)], NOW)
    assert "# 0.1 min left, from logs" in text
    assert "# expired, from logs" in text
    assert len(parse_block_file(text, "f")) == 2, "expired entries parse; the daemon drops them"


def test_empty() -> None:
    assert parse_block_file("", "f") == []
    assert format_block_file([], NOW) == HEADER
    assert parse_block_file(HEADER, "f") == []


@pytest.mark.parametrize("line, message", [
    ("203.0.113.300 2026-11-30T14:05:00Z rsets", 'bad address "203.0.113.300"'),
    ("mail.example 2026-11-30T14:05:00Z rsets", 'bad address "mail.example"'),
    ("198.51.100.1/24 2026-11-30T14:05:00Z rsets",
     'host bits set in address "198.51.100.1/24" (the range is 198.51.100.0/24)'),
    ("2001:db8::1/64 2026-11-30T14:05:00Z rsets", "host bits set"),
    ("192.0.2.1 2026-11-30 rsets", 'bad time "2026-11-30"'),
    ("192.0.2.1 2026-13-30T14:05:00Z rsets", 'bad time "2026-13-30T14:05:00Z": month'),
    ("192.0.2.1 2026-11-30T14:05:00 rsets", 'time "2026-11-30T14:05:00" has no Z'),
    ("192.0.2.1 2026-11-30T14:05:00+01:00 rsets", "is not UTC ending in Z"),
    ("192.0.2.1 2026-11-30T14:05:00Z auth_failure",
     'unknown reason "auth_failure" (did you mean auth_failures?)'),
    ("192.0.2.1 2026-11-30T14:05:00Z bogus", 'unknown reason "bogus": expected one of'),
    ("192.0.2.1 2026-11-30T14:05:00Z rsets extra words",
     'unexpected "extra words" after the reason'),
    ("192.0.2.1 2026-11-30T14:05:00Z", "missing REASON"),
    ("192.0.2.1", "missing EXPIRY and REASON"),
])
def test_errors_name_the_line_and_the_field(line: str, message: str) -> None:
    text = "# header\n\n192.0.2.200 2026-11-30T14:05:00Z rsets\n" + line + "\n"
    e = error(text)
    assert e.line == 4
    assert str(e).startswith("/x/blocks.dat:4: ")
    assert message in str(e)


def test_duplicate_address_names_both_lines() -> None:
    e = error("192.0.2.1 2026-11-30T14:05:00Z rsets\n"
              "192.0.2.2 2026-11-30T14:05:00Z rsets\n"
              "::ffff:192.0.2.1 2026-11-30T14:05:00Z manual\n")
    assert str(e) == "/x/blocks.dat:3: duplicate address 192.0.2.1 (also on line 1)"


def test_entry_checks_its_fields() -> None:
    with pytest.raises(ValueError):
        entry("192.0.2.1", reason="spam")
    with pytest.raises(ValueError):
        entry("192.0.2.1", source="cli")


def test_diff_by_address() -> None:
    old = [entry("192.0.2.1"), entry("192.0.2.2"), entry("192.0.2.3")]
    new = [entry("192.0.2.1"), entry("192.0.2.2", T2), entry("192.0.2.4")]
    added, removed, changed = diff(old, new)
    assert added == [entry("192.0.2.4")]
    assert removed == [entry("192.0.2.3")]
    assert changed == [(entry("192.0.2.2"), entry("192.0.2.2", T2))]
    assert diff(new, new) == ([], [], [])
    assert diff(old, [entry("192.0.2.1", note="x")]).changed


# --- on disk -----------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "blocks.dat")


def test_load_missing_is_empty(tmp_path: Path) -> None:
    bf = BlockFile(tmp_path / "none" / "blocks.dat")
    assert bf.load() == []
    assert not bf.edited()


def test_save_is_atomic_and_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "lib" / "dynscreen" / "blocks.dat"
    bf = BlockFile(path)
    old_umask = os.umask(0)
    try:
        assert bf.save(SAMPLE, NOW)
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o600, "private whatever the umask"
    assert leftovers(path.parent) == []
    text = path.read_text()
    assert text.startswith(format_block_file(SAMPLE, NOW))
    assert text.endswith(": keep this line, it tells which text an edit started from\n")
    assert sorted(BlockFile(path).load(), key=lambda e: e.key) == \
        sorted(SAMPLE, key=lambda e: e.key)


def test_failed_write_leaves_no_temp_file(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "blocks.dat"
    bf = BlockFile(path)
    bf.save(SAMPLE, NOW)
    before = path.read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomicfile.os, "replace", fail)
    monkeypatch.setattr(atomicfile, "_rename2", lambda *a: 28)  # the exchange fails alike
    with pytest.raises(OSError):
        bf.save(SAMPLE[1:], NOW)
    assert leftovers(tmp_path) == []
    assert path.read_bytes() == before


def test_unchanged_blocks_are_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "blocks.dat"
    bf = BlockFile(path)
    assert bf.save(SAMPLE, NOW)
    ino = path.stat().st_ino
    assert not bf.save(list(reversed(SAMPLE)), NOW + 120), "only the minutes left differ"
    assert path.stat().st_ino == ino
    assert "12.5 min left" in path.read_text()
    assert bf.save(SAMPLE[1:], NOW + 120)
    assert "10.5 min left" in path.read_text()
    # a fresh daemon that read the file writes nothing either
    again = BlockFile(path)
    loaded = again.load()
    assert not again.save(loaded, NOW + 300)


def test_deleted_file_is_written_again_and_unblocks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "blocks.dat"
    bf = BlockFile(path)
    bf.save(SAMPLE, NOW)
    path.unlink()
    assert not bf.edited()
    assert bf.save(SAMPLE, NOW)
    assert path.exists()


def test_edit_by_another_process_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "blocks.dat"
    bf = BlockFile(path)
    bf.save(SAMPLE, NOW)
    assert not bf.edited()
    code = ("import sys; p = sys.argv[1]; t = open(p).read(); "
            "open(p, 'w').write(t.replace('auth_failures', 'rsets        '))")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert bf.edited()
    assert not bf.save(SAMPLE[1:], NOW), "never over an edit it has not read"
    assert "rsets        " in path.read_text()
    got = bf.load()
    assert not bf.edited()
    assert {e.key: e.reason for e in got}["203.0.113.7"] == "rsets"
    assert bf.save(got[1:], NOW)


def test_editor_style_rename_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "blocks.dat"
    bf = BlockFile(path)
    bf.save(SAMPLE, NOW)
    tmp = tmp_path / ".blocks.dat.swp"
    tmp.write_text(path.read_text() + "192.0.2.77 2026-12-01T00:00:00Z manual\n")
    os.rename(tmp, path)
    assert bf.edited()
    assert not bf.save(SAMPLE, NOW)
    assert "192.0.2.77" in {e.key for e in bf.load()}


@pytest.mark.parametrize("trust_stat", [False, True])
def test_same_size_same_mtime_rewrite_is_detected(tmp_path: Path, trust_stat: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if trust_stat:  # as if the file were old: edited() trusts an unchanged stat
        monkeypatch.setattr(statefile, "_RACY_NS", 0)
    path = tmp_path / "blocks.dat"
    bf = BlockFile(path)
    bf.save(SAMPLE, NOW)
    time.sleep(0.05)
    assert not bf.edited()
    assert (bf.state._stat is not None) == trust_stat
    st = path.stat()
    text = path.read_text().replace("connections", "rsets      ")
    with open(path, "r+") as f:  # in place, same inode, same size
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    assert bf.edited()


def test_touch_without_change_is_no_edit(tmp_path: Path) -> None:
    path = tmp_path / "blocks.dat"
    bf = BlockFile(path)
    bf.save(SAMPLE, NOW)
    os.utime(path, (1, 1))
    assert not bf.edited()
    assert not bf.save(SAMPLE, NOW)


def test_unread_file_counts_as_edited(tmp_path: Path) -> None:
    path = tmp_path / "blocks.dat"
    path.write_text("192.0.2.1 2026-11-30T14:05:00Z rsets\n")
    bf = BlockFile(path)
    assert bf.edited()
    assert not bf.save([], NOW)
    assert bf.load() == [entry("192.0.2.1", T1, "rsets", None, "file")]
    assert not bf.save(bf.load(), NOW), "hand formatting is kept while the blocks are equal"
    assert path.read_text() == "192.0.2.1 2026-11-30T14:05:00Z rsets\n"


def test_rejected_text_is_kept_and_then_replaced(tmp_path: Path) -> None:
    path = tmp_path / "blocks.dat"
    bf = BlockFile(path)
    bf.save(SAMPLE, NOW)
    bad = path.read_text() + "192.0.2.300 2026-12-01T00:00:00Z manual\n"
    path.write_text(bad)
    with pytest.raises(BlockFileError) as e:
        bf.load()
    assert e.value.line == bad.count("\n")
    assert e.value.data == bad.encode()
    assert bf.edited()
    kept = bf.keep_rejected(e.value.data)
    assert kept.parent == tmp_path
    assert kept.name.startswith("blocks.dat.rejected-")
    stamp = kept.name.removeprefix("blocks.dat.rejected-")
    assert len(stamp) == 16 and stamp[8] == "T" and stamp.endswith("Z")
    assert kept.read_text() == bad
    assert not bf.edited()
    assert bf.save(SAMPLE, NOW), "the refused file gives way to the blocks in force"
    assert "192.0.2.300" not in path.read_text()
    second = bf.keep_rejected(bad.encode())
    assert second != kept and second.read_text() == bad
    assert not bf.save(SAMPLE, NOW), "a reject that is not the file changes nothing"


def test_reject_after_a_newer_edit_keeps_the_edit_pending(tmp_path: Path) -> None:
    path = tmp_path / "blocks.dat"
    bf = BlockFile(path)
    bf.save(SAMPLE, NOW)
    path.write_text("nonsense\n")
    with pytest.raises(BlockFileError) as e:
        bf.load()
    path.write_text("192.0.2.1 2026-11-30T14:05:00Z rsets\n")  # fixed before the daemon acted
    bf.keep_rejected(e.value.data or b"")
    assert bf.edited()
    assert not bf.save(SAMPLE, NOW)


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "blocks.dat"
    raw = b"192.0.2.1 2026-11-30T14:05:00Z rsets\n192.0.2.2 2026-11-30T14:05:00Z rsets # \xff\n"
    path.write_bytes(raw)
    bf = BlockFile(path)
    with pytest.raises(BlockFileError) as e:
        bf.load()
    assert e.value.line == 2 and "not UTF-8" in str(e.value)
    kept = bf.keep_rejected(e.value.data or b"")
    assert kept.read_bytes() == raw
    assert bf.save(SAMPLE, NOW)


def test_a_text_written_in_pieces_is_remembered_packed_as_the_base_of_an_edit(
        tmp_path: Path) -> None:
    """A million-line file must not stay in memory whole: what write_chunks wrote is
    kept packed (hashed and packed piece by piece) and unpacked only for an edit."""
    state = statefile.StateFile(tmp_path / "blocks")
    lines = [f"10.0.{i // 256}.{i % 256}  2026-12-06T09:00:00Z  connections  "
             f"# 12.5 min left, from logs\n".encode() for i in range(40_000)]
    assert state.write_chunks(iter([b"".join(lines[i:i + 1000])
                                    for i in range(0, len(lines), 1000)]))
    written = (tmp_path / "blocks").read_bytes()
    assert written.startswith(b"".join(lines))
    assert not state.edited()  # the streamed digest is the file's
    kept = sum(len(v.blob) for v in state._versions)
    assert kept * 5 < len(written), (kept, len(written))
    edit = written.replace(lines[7], b"")
    assert state.base_for(edit) == written


def test_a_text_read_is_packed_once_a_newer_one_is_remembered(tmp_path: Path) -> None:
    """The start reads a million lines: packing them there would delay it; the first
    write (in the keeper's worker) packs the text read."""
    path = tmp_path / "blocks"
    text = b"".join(b"10.0.0.%d  2026-12-06T09:00:00Z  rsets  # from file\n" % (i % 250)
                    for i in range(20_000))
    path.write_bytes(text)
    state = statefile.StateFile(path)
    state.remember(state.read() or b"")
    assert not state._versions[0].packed
    assert state.write(b"# written\n")
    read = state._versions[1]
    assert read.packed and len(read.blob) * 5 < len(text) and read.data == text


@pytest.mark.parametrize("how", ["in place", "renamed over", "exchange unsupported"])
def test_an_edit_made_while_a_long_write_runs_is_never_written_over(
        tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of a million-line save: edited() says "no edit" when the write starts,
    the administrator saves an edit while the pieces are written, then the rename. The
    edit stays at the path, unread (edited() says so), and the text is not written."""
    if how == "exchange unsupported":
        monkeypatch.setattr(atomicfile, "_rename2", lambda *a: __import__("errno").EINVAL)
    path = tmp_path / "blocks"
    state = statefile.StateFile(path)
    assert state.write(b"10.0.0.1  2026-12-06T09:00:00Z  rsets\n")
    edit = path.read_bytes().replace(b"rsets", b"manual")

    def pieces():  # noqa: ANN202
        yield b"10.0.0.2  2026-12-06T09:00:00Z  rsets\n"
        if how == "renamed over":
            (tmp_path / "edit.swp").write_bytes(edit)
            os.rename(tmp_path / "edit.swp", path)
        else:
            path.write_bytes(edit)
        yield b"10.0.0.3  2026-12-06T09:00:00Z  rsets\n"
    assert not state.write_chunks(pieces())
    assert path.read_bytes() == edit
    assert state.edited()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks"], "no temp file left"
    state.remember(state.read() or b"")  # read: now it may be written over
    assert state.write_chunks(iter([b"10.0.0.4  2026-12-06T09:00:00Z  rsets\n"]))
    assert path.read_bytes().startswith(b"10.0.0.4 ")


def test_a_write_still_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "blocks"
    state = statefile.StateFile(path)
    assert state.write_chunks(iter([b"10.0.0.1  2026-12-06T09:00:00Z  rsets\n"]))
    assert path.read_bytes().startswith(b"10.0.0.1 ") and not state.edited()
