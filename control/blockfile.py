"""The block file: the blocks in force, as text an administrator can read and edit.

One block per line, ``ADDR EXPIRY REASON [# comment]`` (docs/design.md, "Block file
grammar"). The daemon writes the minutes left and where a block came from in
the comment, and reads them back from there, so a block survives a round trip
through the file with its note and source. The file is rewritten only when the
blocks change, atomically, and never over an edit the daemon has not read yet:
an administrator's typing always wins over the daemon's bookkeeping.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from dynscreen.control.addr import Network, network_key, parse_network
from dynscreen.control.config import MAX_MINUTES
from dynscreen.control.decisions import REASONS
from dynscreen.control.sourcekey import SourceKey, key_text
from dynscreen.control.statefile import StateFile
from dynscreen.control.utctime import format_time, parse_time

SOURCES = ("kernel", "logs", "manual", "file")

HEADER = """\
# dynscreen block file: the blocks in force, one per line.
#
#   ADDR  EXPIRY  REASON  [# comment]
#
# ADDR    an IPv4 or IPv6 address, or a CIDR range (198.51.100.0/24, 2001:db8:1:2::/64)
# EXPIRY  when the block ends: a UTC time, ISO 8601, ending in Z (2026-11-30T14:05:00Z),
#         at most ten years ahead
# REASON  connections, simultaneous, auth_failures, failed_rcpts, rsets or manual
#
# Text after # is a comment. dynscreen writes there the minutes left and where the
# block came from (from kernel, from logs, from file), or a block's note in quotes
# (manual: "abuse ticket 42"); a comment of your own is kept as the block's note.
#
# Edits take effect when the file is saved: add a line to block an address, delete
# its line to unblock it, change EXPIRY to lengthen or shorten a block; expired
# lines are dropped. Only the lines you change count: blocks made while you edit
# stay. dynscreen never writes over an edit it has not read. A file with an error
# is refused as a whole (the message names the line): the blocks stay as they were
# and your text is kept beside this file as <name>.rejected-<time>.
# Deleting the file unblocks nothing.
"""

_MIN_LEFT = r"(?:-?\d+(?:\.\d+)? min left|expired)"
_SRC = "|".join(SOURCES)
_DAEMON_COMMENT = re.compile(
    rf"{_MIN_LEFT}, (?:from (?P<src>{_SRC})|(?P<nsrc>{_SRC}): (?P<note>\".*\"))"
)
# Characters str.splitlines() and some editors treat as line ends: kept escaped in notes.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class BlockFileError(Exception):
    """An invalid block file; str() is ``PATH:LINE: message``.

    ``data`` is what was read (set by BlockFile.load), for keep_rejected().
    """

    def __init__(self, path: str, line: int, message: str, data: bytes | None = None) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message
        self.data = data


@dataclass(frozen=True)
class BlockEntry:
    """One block: a source network, until when, why, and where it came from."""

    net: Network
    expires: float  # Unix time (UTC)
    reason: str
    note: str | None = None
    source: str = "file"

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reason {self.reason!r}")
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}")

    @property
    def key(self) -> str:
        """The address as the file and the CLI show it (an IPv4 /32 bare)."""
        return network_key(self.net)


class BlockDiff(NamedTuple):
    """What an edit did, by address: changed holds (old, new) pairs."""

    added: list[BlockEntry]
    removed: list[BlockEntry]
    changed: list[tuple[BlockEntry, BlockEntry]]


# --- text form of the fields --------------------------------------------------------------


def _minutes_left(expires: float, now: float) -> str:
    left = expires - now
    if left <= 0:
        return "expired"
    text = f"{max(round(left / 60, 1), 0.1):.1f}"  # never "0 min left" for a live block
    return f"{text.removesuffix('.0')} min left"


def _note_text(note: str) -> str:
    text = json.dumps(note, ensure_ascii=False)
    for ch, esc in _LINE_BREAKS.items():
        text = text.replace(ch, esc)
    return text


def _comment(e: BlockEntry, now: float) -> str:
    origin = f"from {e.source}" if e.note is None else f"{e.source}: {_note_text(e.note)}"
    return f"{_minutes_left(e.expires, now)}, {origin}"


def _read_comment(comment: str) -> tuple[str | None, str]:
    """(note, source) from a comment: the daemon's shape, else a comment of one's own."""
    comment = comment.strip()
    m = _DAEMON_COMMENT.fullmatch(comment)
    if m:
        if m.group("src"):
            return None, m.group("src")
        try:
            note = json.loads(m.group("note"))
        except ValueError:
            note = None
        if isinstance(note, str):
            return note, m.group("nsrc")
    return (comment or None), "file"


def _parse_net(text: str) -> Network:
    try:
        return parse_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f'bad address "{text}": expected an IPv4 or IPv6 address or a CIDR range'
        ) from None
    raise ValueError(f'host bits set in address "{text}" (the range is {loose})')


def _unknown_reason(text: str) -> str:
    near = difflib.get_close_matches(text.lower(), REASONS, n=1, cutoff=0.5)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return f'unknown reason "{text}"{hint}: expected one of {", ".join(REASONS)}'


# --- the whole file ----------------------------------------------------------------------


def latest_expiry(now: float) -> float:
    """The latest expiry a block may have at ``now``: the config's longest block.

    One limit for every way a block is made (block file, `blocks edit`, the
    control socket's minutes, the engine, the kernel read back): MAX_MINUTES,
    the bound of every minutes key of the config (ten years).
    """
    return now + MAX_MINUTES * 60


def check_expiry(expires: float, now: float) -> None:
    """ValueError, naming the time and the limit, for an expiry beyond latest_expiry(now)."""
    if not expires <= latest_expiry(now):
        raise ValueError(
            f"expiry {format_time(expires)} is too far ahead: a block lasts at most "
            f"{MAX_MINUTES} minutes (ten years), until {format_time(latest_expiry(now))}")


def parse_block_file(text: str, path: str, now: float | None = None,
                     limit: bool = True) -> list[BlockEntry]:
    """The blocks a file lists, in file order; BlockFileError at the first problem.

    Expired entries parse fine: dropping them is the daemon's job. An expiry
    beyond latest_expiry(now) is an error unless ``limit`` is False (a text the
    daemon itself wrote, read again as the base of an edit).
    """
    now = time.time() if now is None else now
    entries: list[BlockEntry] = []
    seen: dict[Network, int] = {}
    for no, raw in enumerate(text.split("\n"), 1):
        body, hash_, comment = raw.rstrip("\r").partition("#")
        fields = body.split()
        if not fields:
            continue
        if len(fields) < 3:
            missing = ("EXPIRY", "REASON")[len(fields) - 1:]
            raise BlockFileError(path, no, f"missing {' and '.join(missing)}: "
                                           "expected ADDR EXPIRY REASON [# comment]")
        if len(fields) > 3:
            raise BlockFileError(path, no, f'unexpected "{" ".join(fields[3:])}" after the '
                                           "reason (start a comment with #)")
        addr, expiry, reason = fields
        try:
            net = _parse_net(addr)
            expires = parse_time(expiry)
            if limit:
                check_expiry(expires, now)
        except ValueError as e:
            raise BlockFileError(path, no, str(e)) from None
        if reason not in REASONS:
            raise BlockFileError(path, no, _unknown_reason(reason))
        if net in seen:
            raise BlockFileError(path, no, f"duplicate address {network_key(net)} "
                                           f"(also on line {seen[net]})")
        seen[net] = no
        note, source = _read_comment(comment) if hash_ else (None, "file")
        entries.append(BlockEntry(net, expires, reason, note, source))
    return entries


class FileRow(NamedTuple):
    """One block as the fast reader gives it: the source as a SourceKey int, no objects."""

    source: int
    expires: float
    reason: str
    note: str | None
    origin: str


_REASON_SET = frozenset(REASONS)
_MAPPED = 0xFFFF << 32


def parse_rows(text: str, path: str, now: float | None = None,
               limit: bool = True) -> list[FileRow]:
    """``parse_block_file`` for a start at a million lines: the same blocks as rows.

    The common line (an IPv4 address, a time the daemon wrote, its own comment)
    is read without an ipaddress object, each expiry second converted once; any
    other line goes through the full reader line by line, and any error is the
    full reader's own message, so both accept and refuse exactly the same files
    (tests/test_blockfile.py holds them to it).
    """
    now = time.time() if now is None else now
    latest = latest_expiry(now)
    rows: list[FileRow] = []
    seen: dict[int, int] = {}
    seconds: dict[str, float] = {}
    comment_match = _DAEMON_COMMENT.fullmatch
    pton, af_inet = socket.inet_pton, socket.AF_INET
    from_bytes = int.from_bytes
    for no, raw in enumerate(text.split("\n"), 1):
        body, hash_, comment = raw.partition("#")
        fields = body.split()
        if not fields:
            continue
        row = None
        if len(fields) == 3:
            addr, expiry, reason = fields
            row = _fast_row(addr, expiry, reason, seconds, pton, af_inet, from_bytes)
        if row is None or (limit and not row[1] <= latest):
            try:  # the full reader: its entry, or its error for this line
                e = parse_block_file(raw.rstrip("\r"), path, now, limit)[0]
            except BlockFileError as err:
                raise BlockFileError(path, no, err.message) from None
            key = int(SourceKey.from_network(e.net))
            if key in seen:
                raise BlockFileError(path, no, f"duplicate address {network_key(e.net)} "
                                               f"(also on line {seen[key]})")
            seen[key] = no
            rows.append(FileRow(key, e.expires, e.reason, e.note, e.source))
            continue
        key, expires = row
        if key in seen:
            raise BlockFileError(path, no, f"duplicate address {key_text(key)} "
                                           f"(also on line {seen[key]})")
        seen[key] = no
        note, origin = None, "file"
        if hash_:
            m = comment_match(comment.strip())
            if m is not None and m.group("src"):
                origin = m.group("src")
            else:
                note, origin = _read_comment(comment)
        rows.append(FileRow(key, expires, reason, note, origin))
    return rows


def _fast_row(addr: str, expiry: str, reason: str, seconds: dict[str, float],
              pton: Any, af_inet: int, from_bytes: Any) -> tuple[int, float] | None:
    """(key, expires) of a plain line; None sends the line to the full reader."""
    if reason not in _REASON_SET:
        return None
    if ":" in addr:  # an IPv6 range as the daemon writes it (its /64 sources): addr/plen
        text, slash, plen_text = addr.partition("/")
        if not slash or not plen_text.isdigit() or len(plen_text) > 3 \
                or (plen_text[0] == "0" and plen_text != "0"):
            return None
        plen = int(plen_text)
        try:
            a128 = from_bytes(pton(socket.AF_INET6, text), "big")
        except OSError:
            return None
        if plen > 128 or a128 >> 32 == 0xFFFF or a128 & ((1 << (128 - plen)) - 1):
            return None  # mapped IPv4, host bits: the full reader says what it makes of it
        key = a128 << 8 | plen
    elif "/" in addr:
        return None
    else:
        try:
            key = (_MAPPED | from_bytes(pton(af_inet, addr), "big")) << 8 | 128
        except OSError:
            return None
    n = len(expiry)
    if n == 20 and expiry[19] == "Z":
        frac = 0.0
    elif n == 24 and expiry[19] == "." and expiry[23] == "Z" and expiry[20:23].isdigit():
        frac = int(expiry[20:23]) / 1000
    else:
        return None
    base = expiry[:19]
    whole = seconds.get(base)
    if whole is None:
        try:
            whole = parse_time(base + "Z")
        except ValueError:
            return None
        seconds[base] = whole
    return key, whole + frac


def _order(net: Network) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


def format_block_file(entries: Iterable[BlockEntry], now: float) -> str:
    """The file's text: the header, then one aligned line per block, sorted by address."""
    rows = [
        (e.key, format_time(e.expires), e.reason, _comment(e, now))
        for e in sorted(entries, key=lambda e: _order(e.net))
    ]
    out = [HEADER]
    if rows:
        out.append("\n")
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            cols = "  ".join(f"{r[i]:<{widths[i]}}" for i in range(3))
            out.append(f"{cols}  # {r[3]}\n")
    return "".join(out)


def _canonical(entries: Iterable[BlockEntry]) -> frozenset[tuple[str, str, str, str | None, str]]:
    """What the blocks are, without the minutes left: equal means nothing to write."""
    return frozenset((e.key, format_time(e.expires), e.reason, e.note, e.source)
                     for e in entries)


def diff(old: Iterable[BlockEntry], new: Iterable[BlockEntry]) -> BlockDiff:
    """Added, removed and changed blocks between two lists, matched by address."""
    before = {e.net: e for e in old}
    after = {e.net: e for e in new}
    added = [e for n, e in after.items() if n not in before]
    removed = [e for n, e in before.items() if n not in after]
    changed = [(before[n], e) for n, e in after.items()
               if n in before and _canonical([before[n]]) != _canonical([e])]
    return BlockDiff(added, removed, changed)


# --- the file on disk --------------------------------------------------------------------


class BlockFile:
    """The block file at ``path``: load, save without clobbering edits, keep rejects.

    The rules it shares with the frozen-accounts file live in control/statefile.py.
    """

    def __init__(self, path: Path) -> None:
        self.state = StateFile(path)
        self.path = self.state.path
        self._blocks: frozenset | None = None  # the blocks last written or read (None: unknown)

    def load(self, now: float | None = None) -> list[BlockEntry]:
        """The blocks in the file ([] when there is none); BlockFileError carries the bytes."""
        data = self.state.read()
        if data is None:
            self._blocks = None
            return []
        entries = self._parse(data, now)
        self.state.remember(data)
        self._blocks = _canonical(entries)
        return entries

    def load_rows(self, now: float | None = None) -> list[FileRow]:
        """``load`` for the daemon's start: the fast reader's rows."""
        data = self.state.read()
        self._blocks = None  # unknown: the next save writes
        if data is None:
            return []
        text = self._decode(data)
        try:
            rows = parse_rows(text, str(self.path), now)
        except BlockFileError as e:
            e.data = data
            raise
        self.state.remember(data)
        return rows

    def load_change(self, now: float | None = None) -> BlockDiff:
        """A hand edit as the change it makes to the text it was started from.

        Lines the edit removed, added or changed: a block made while the editor
        was open is in neither text and stays. No file: no change.
        """
        data = self.state.read()
        if data is None:
            return BlockDiff([], [], [])
        entries = self._parse(data, now)
        base = self.state.base_for(data)
        try:
            before = parse_block_file(base.decode("utf-8", "replace"), str(self.path),
                                      limit=False) if base is not None else []
        except BlockFileError:  # not expected (it was read or written before): no base
            before = []
        self.state.remember(data)
        self._blocks = None  # rewritten at the next save: a fresh version line for the next edit
        return diff(before, entries)

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise BlockFileError(str(self.path), line,
                                 f"not UTF-8 text (byte 0x{data[e.start]:02x})", data) from None

    def _parse(self, data: bytes, now: float | None) -> list[BlockEntry]:
        text = self._decode(data)
        try:
            return parse_block_file(text, str(self.path), now=time.time() if now is None else now)
        except BlockFileError as e:
            e.data = data
            raise

    def edited(self) -> bool:
        """Whether the file differs from what this object last wrote or read.

        A missing file is no edit (deleting it unblocks nothing; save() writes it anew).
        """
        return self.state.edited()

    def save(self, entries: Iterable[BlockEntry], now: float) -> bool:
        """Write the blocks if they changed and no unread edit is waiting; True if written."""
        entries = list(entries)
        blocks = _canonical(entries)
        if blocks == self._blocks and self.path.exists():
            return False
        # edited() is checked by write(), last: formatting a large table takes a while
        if not self.state.write(format_block_file(entries, now).encode(), now):
            return False
        self._blocks = blocks
        return True

    def keep_rejected(self, data: bytes) -> Path:
        """Keep a refused text beside the file as ``NAME.rejected-YYYYmmddTHHMMSSZ``.

        When the file still holds that text, it counts as read: the next save()
        replaces it with the blocks in force.
        """
        if self.state.holds(data):
            self._blocks = None
        return self.state.keep_rejected(data)
