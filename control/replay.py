"""Offline dry run: mail logs through the parsers and the engine, in the logs' own time.

Replay answers "what would dynscreen have done with last week's logs?" with the
same parsers and the same engine the daemon runs, the clock being each line's
own time stamp. The kernel's connection counting is not there, so the engine
simulates it from the logs' connect/disconnect lines (said so in the summary).

Several files are merged in time order (rotated logs, a Postfix and a Dovecot
log); ``.gz`` files are read as they are, whatever their name.
"""

from __future__ import annotations

import gzip
import heapq
import io
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from dynscreen.control.addr import source_key
from dynscreen.control.config import Config
from dynscreen.control.decisions import Block, Decision, Exempt
from dynscreen.control.engine import SERVICE_WAIT, Engine
from dynscreen.control.events import KINDS, Event
from dynscreen.control.logs.parse import LINE_FORMATS, LogParser
from dynscreen.control.logs.signals import ipv4_int

SIMULATION_NOTE: Final = (
    "connections and simultaneous are simulated from the logs' connect/disconnect lines: "
    "an approximation of the kernel's counting (postscreen rejects, dropped SYNs and "
    "connections that never reach smtpd or a log line are not seen)"
)
TICK_SECONDS: Final = 5.0  # how often, in log time, the engine's clock is advanced between events
_FLUSH_LINES: Final = 4096  # JSON lines gathered before one write
_BATCH: Final = 2048  # events parsed before the engine decides on them
_CHUNK: Final = 1 << 20  # characters of one file read, decoded and split into lines at a time


class LogFileError(Exception):
    """A log file that cannot be read: the message names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path = path
        self.reason = reason


def open_log(path: str) -> io.TextIOWrapper:
    """A log as text lines: gzip detected by its magic bytes, bad bytes replaced.

    Lines end at ``\\n`` only, so line numbers are physical lines whatever the
    file holds; ``-`` is standard input.
    """
    try:
        raw = sys.stdin.buffer if path == "-" else open(path, "rb", buffering=1 << 20)  # noqa: SIM115
    except OSError as e:
        raise LogFileError(path, e.strerror or str(e)) from None
    try:
        head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    except OSError as e:
        raw.close()
        raise LogFileError(path, e.strerror or str(e)) from None
    binary: Any = raw  # a file, standard input or a GzipFile: what TextIOWrapper reads
    if head == b"\x1f\x8b":
        binary = gzip.GzipFile(fileobj=raw, mode="rb")
    return io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline="\n")


@dataclass
class SourceStats:
    """Signals one source sent, count-weighted, for the top offenders table."""

    auth_failures: int = 0
    failed_rcpts: int = 0
    rsets: int = 0
    connections: int = 0

    @property
    def signals(self) -> int:
        """What ranks an offender: the screening signals it caused."""
        return self.auth_failures + self.failed_rcpts + self.rsets


MAX_SOURCES: Final = 200_000  # offenders tracked for the summary; the quietest go first beyond it


@dataclass
class Summary:
    """What a replay saw and decided, for the human summary."""

    ipv6_prefix: int = 64
    files: list[str] = field(default_factory=list)
    lines: int = 0
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    first_ts: float | None = None
    last_ts: float | None = None
    sources: dict[str, SourceStats] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    # Line outcomes (see line_outcomes): by format, (signal, understood, not understood)
    # lines; by file, the same; the first few not-understood lines (file, line, text, length).
    formats: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    file_outcomes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    missed: list[tuple[str, int, str, int]] = field(default_factory=list)
    _keys: dict[str, str] = field(default_factory=dict)

    @property
    def signal_lines(self) -> int:
        """Lines that gave events."""
        return sum(f[0] for f in self.formats.values())

    @property
    def understood_lines(self) -> int:
        """Lines of a mail server dynscreen reads that carry no signal."""
        return sum(f[1] for f in self.formats.values())

    @property
    def not_understood_lines(self) -> int:
        """Lines of another program, or of no shape the parsers know."""
        return sum(f[2] for f in self.formats.values())

    def files_not_understood(self) -> list[str]:
        """The files in which no line was understood (empty ones included)."""
        return [f for f, (sig, und, _) in self.file_outcomes.items() if sig + und == 0]

    def event(self, ev: Event) -> None:
        """Count one event."""
        kind = ev.kind
        n = ev.count
        self.events[kind] = self.events.get(kind, 0) + 1
        self.counts[kind] = self.counts.get(kind, 0) + n
        # The kinds a source's stats count (a native field each, not setattr by name).
        if kind == "connect":
            self._source(ev.ip).connections += n
        elif kind == "auth_failure":
            self._source(ev.ip).auth_failures += n
        elif kind == "rcpt_unknown":
            self._source(ev.ip).failed_rcpts += n
        elif kind == "rset":
            self._source(ev.ip).rsets += n

    def _source(self, ip: str) -> SourceStats:
        """The stats of the source of an address as logged."""
        key = self._keys.get(ip)
        if key is None:
            if len(self._keys) > MAX_SOURCES:
                self._keys.clear()
            if ipv4_int(ip) is not None:
                key = ip  # (what source_key makes of a canonical dotted quad, at no cost)
            else:
                try:
                    key = source_key(ip, self.ipv6_prefix)
                except ValueError:
                    key = ip
            self._keys[ip] = key
        stats = self.sources.get(key)
        if stats is None:
            if len(self.sources) >= MAX_SOURCES:
                self._shed()
            stats = self.sources[key] = SourceStats()
        return stats

    def _shed(self) -> None:
        """Keep the summary's memory flat: drop the quieter half of the sources."""
        ranked = sorted(self.sources.items(), key=lambda kv: (kv[1].signals, kv[1].connections))
        self.sources = dict(ranked[len(ranked) // 2 :])

    def top(self, n: int = 10) -> list[tuple[str, SourceStats]]:
        """The n sources with the most screening signals (connections break ties)."""
        ranked = sorted(
            self.sources.items(), key=lambda kv: (-kv[1].signals, -kv[1].connections, kv[0])
        )
        return [kv for kv in ranked[:n] if kv[1].signals or kv[1].connections]


# id(network) -> (network, its text): a block's or exemption's address as text, made
# once per network (network_key formats it in pure Python).
_IP_TEXT: Final[dict[int, tuple[object, str]]] = {}


def decision_line(d: Decision) -> str:
    """A decision as one JSON line (the contract's shape): ``json.dumps(d.to_json())``.

    Written out for exemptions and blocks, the ones a replay prints by the thousand,
    when their text needs no escaping: json.dumps would write the same.
    """
    if isinstance(d, (Exempt, Block)):
        source = d.source
        known = _IP_TEXT.get(id(source))  # (the engine hands out one network per source)
        if known is not None and known[0] is source:
            ip = known[1]
        else:
            ip = d.ip
            if len(_IP_TEXT) >= 4096:
                _IP_TEXT.clear()
            _IP_TEXT[id(source)] = (source, ip)  # (kept alive with it: its id stays its own)
        minutes = d.minutes
        if type(minutes) is int and _plain(ip):
            if isinstance(d, Exempt):
                return (
                    f'{{"type": "decision", "action": "exempt", "ip": "{ip}", '
                    f'"minutes": {minutes}}}\n'
                )
            reason = d.reason
            if _plain(reason):
                return (
                    f'{{"type": "decision", "action": "block", "ip": "{ip}", '
                    f'"reason": "{reason}", "minutes": {minutes}}}\n'
                )
    return json.dumps(d.to_json()) + "\n"


def _plain(text: object) -> bool:
    """A str that json.dumps (ensure_ascii) writes as it is, in quotes."""
    return (
        type(text) is str and text.isascii() and text.isprintable()
        and '"' not in text and "\\" not in text
    )


_SERVICE_JSON: Final = {None: "null", "smtp": '"smtp"', "pop": '"pop"', "imap": '"imap"'}
_SERVICE_JSON["sieve"] = '"sieve"'


def _json_text(text: str | None) -> str:
    """A JSON string (or null), without json.dumps's cost for the plain names logs hold."""
    if text is None:
        return "null"
    if '"' in text or "\\" in text or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return f'"{text}"'


def event_line(ev: Event, file_json: str) -> str:
    """An event as one JSON line, built by hand: replay prints one per signal line.

    The address needs no escaping: the parsers hand over normalised addresses.
    """
    service = _SERVICE_JSON.get(ev.service)
    if service is None:
        service = _json_text(ev.service)
    user = ev.user
    if user is None:
        user_json = "null"
    else:
        found = _USER_JSON.get(user)
        if found is None:
            if len(_USER_JSON) >= 4096:
                _USER_JSON.clear()
            found = _USER_JSON[user] = _json_text(user)
        user_json = found
    return (
        f'{{"type": "event", "kind": "{ev.kind}", "ip": "{ev.ip}", "service": {service}, '
        f'"user": {user_json}, "file": {file_json}, '
        f'"line": {ev.line}, "count": {ev.count}}}\n'
    )


# user as logged -> its JSON text: the same accounts recur line after line, and a name's
# escaping costs three scans of it.
_USER_JSON: Final[dict[str, str]] = {}


class OutputError(Exception):
    """Writing the JSON lines failed (a closed pipe, a full disk): not the logs' fault."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


_READ_ERRORS: Final = (OSError, EOFError, gzip.BadGzipFile)


def _lines(path: str, f: io.TextIOWrapper) -> Iterator[tuple[int, str]]:
    """A file's lines, numbered from 1 (read errors name the file)."""
    try:
        yield from enumerate(f, 1)
    except _READ_ERRORS as e:
        raise LogFileError(path, str(e) or type(e).__name__) from None


def _chunks(path: str, f: io.TextIOWrapper) -> Iterator[list[str]]:
    """A file's lines a megabyte at a time, without their ends (as ``_lines`` strips them).

    Lines end at ``\\n`` only: a piece between two is one line, numbered in turn.
    """
    tail = ""
    read = f.read
    try:
        while True:
            chunk = read(_CHUNK)
            if not chunk:
                break
            lines = chunk.split("\n")
            if tail:
                lines[0] = tail + lines[0]
            cr = "\r" in chunk or "\r" in tail
            tail = lines.pop()  # the start of a line the next chunk ends
            if cr:
                lines = [line.rstrip("\r") for line in lines]
            yield lines
    except _READ_ERRORS as e:
        raise LogFileError(path, str(e) or type(e).__name__) from None
    if tail:
        yield [tail.rstrip("\r")]


def _merged(
    paths: list[str], files: list[io.TextIOWrapper], parsers: list[LogParser]
) -> Iterator[tuple[Callable[[str, int], list[Event]], int, str]]:
    """Every line of every file, in time order; a line without a stamp follows its predecessor."""

    def stamped(i: int) -> Iterator[tuple[float, int, int, str]]:
        stamp = parsers[i].timestamp
        ts = float("-inf")
        for lineno, text in _lines(paths[i], files[i]):
            text = text.rstrip("\r\n")
            t = stamp(text)
            if t is not None:
                ts = t
            yield ts, i, lineno, text

    parse = [p.parse for p in parsers]
    for _, i, lineno, text in heapq.merge(*(stamped(i) for i in range(len(files)))):
        yield parse[i], lineno, text


def replay(
    config: Config,
    paths: list[str],
    *,
    write: Callable[[str], object] | None = None,
    summary: Summary | None = None,
) -> Summary:
    """Replay the logs: JSON lines to ``write`` if given, counts into the returned Summary.

    Every file is opened before anything is read, so a missing one fails the
    run before any output. Raises LogFileError, and OutputError when ``write`` fails.
    """
    files: list[io.TextIOWrapper] = []
    try:
        for path in paths:
            files.append(open_log(path))
        return _run(config, paths, files, write, summary)
    finally:
        for path, f in zip(paths, files, strict=False):  # files: those opened
            if path == "-":
                f.detach()  # leave standard input open
            else:
                f.close()


def _run(
    config: Config,
    paths: list[str],
    files: list[io.TextIOWrapper],
    write: Callable[[str], object] | None,
    summary: Summary | None,
) -> Summary:
    stats = summary if summary is not None else Summary(ipv6_prefix=config.screening.ipv6_prefix)
    stats.files = list(paths)
    parsers = [LogParser(path) for path in paths]
    sink = _Sink(config, stats, write, {path: _json_text(path) for path in paths})
    # Lines are parsed a batch at a time and their events then decided on: the
    # same order and the same result as one by one, but the parsers' and the
    # engine's code and data each stay in the CPU caches through a batch.
    batch: list[Event] = []
    lines = 0
    if len(files) == 1:
        # One file (the common case): read, decoded and split in bulk, parsed in bulk.
        parse_many = parsers[0].parse_many
        for chunk in _chunks(paths[0], files[0]):
            lines = parse_many(chunk, lines, batch)
            if len(batch) >= _BATCH:
                sink.events(batch)
                batch.clear()
    else:
        extend = batch.extend
        try:
            for parse, lineno, text in _merged(paths, files, parsers):
                lines += 1
                events = parse(text, lineno)
                if events:
                    extend(events)
                    if len(batch) >= _BATCH:
                        sink.events(batch)
                        batch.clear()
        except _READ_ERRORS as e:
            raise LogFileError(paths[0], str(e) or type(e).__name__) from None
    sink.events(batch)
    sink.finish()
    stats.lines = lines
    line_outcomes(stats, paths, parsers)
    return stats


_UNDERSTOOD: Final = 3  # LINE_FORMATS before this index are the mail servers' formats
MAX_EXAMPLES: Final = 5  # not-understood lines a summary shows


def line_outcomes(stats: Summary, paths: list[str], parsers: list[LogParser]) -> None:
    """Gather the parsers' line outcomes into the summary: by format, by file, examples.

    A line is a signal line (it gave events), understood (a line of Postfix, Dovecot
    or Exim that carries no signal) or not understood (``other``: another program's;
    ``unknown``: no shape the parsers know), so the three add up to the lines read.
    """
    formats = {name: [0, 0, 0] for name in LINE_FORMATS}
    for path, parser in zip(paths, parsers, strict=True):
        per_file = [0, 0, 0]
        for i, (name, (signal, quiet)) in enumerate(parser.outcomes().items()):
            understood = i < _UNDERSTOOD
            row = formats[name]
            row[0] += signal
            per_file[0] += signal
            row[1 if understood else 2] += quiet
            per_file[1 if understood else 2] += quiet
        stats.file_outcomes[path] = (per_file[0], per_file[1], per_file[2])
        for lineno, text, length in parser.missed:
            if len(stats.missed) < MAX_EXAMPLES:
                stats.missed.append((path, lineno, text, length))
    stats.formats = {name: (row[0], row[1], row[2]) for name, row in formats.items()}


def _outcome_counts(t: tuple[int, int, int]) -> dict[str, int]:
    return {"signal_lines": t[0], "understood_lines": t[1], "not_understood_lines": t[2]}


def summary_line(stats: Summary) -> str:
    """``replay --json``'s last line: the line outcomes, in all, by format and by file."""
    counts = _outcome_counts
    return json.dumps({
        "type": "summary",
        "lines": stats.lines,
        "signal_lines": stats.signal_lines,
        "understood_lines": stats.understood_lines,
        "not_understood_lines": stats.not_understood_lines,
        "formats": {name: counts(t) for name, t in stats.formats.items()},
        "files": [{"file": f, **counts(t)} for f, t in stats.file_outcomes.items()],
        "not_understood_examples": [
            {"file": f, "line": n, "text": text, "length": length}
            for f, n, text, length in stats.missed
        ],
    }) + "\n"


class _Sink:
    """The events of a replay, in order, through the engine: JSON lines or counts out."""

    def __init__(
        self,
        config: Config,
        stats: Summary,
        write: Callable[[str], object] | None,
        file_json: dict[str, str],
    ) -> None:
        self.engine = Engine(config, now=0.0, simulate_connections=True)
        self.stats = stats
        self.write = write
        self.file_json = file_json
        self.now = float("-inf")
        self.next_tick = self.now
        self.buf: list[str] = []

    def events(self, batch: list[Event]) -> None:
        """Decide on a batch of events; JSON lines are written a few thousand at a time."""
        if not batch:
            return
        if self.stats.first_ts is None:
            self.stats.first_ts = batch[0].ts
        self.now, self.next_tick, marks = self.engine.feed_many(
            batch, self.now, self.next_tick, TICK_SECONDS
        )
        if self.write is None:
            count = self.stats.event
            for ev in batch:
                count(ev)
            for _, found in marks:
                self._emit(found)
            return
        fj = self.file_json
        lines = [event_line(ev, fj[ev.file]) for ev in batch]
        buf = self.buf
        if marks:  # the decisions go in after the event that caused them
            start = 0
            for pos, found in marks:
                end = (pos + 1) // 2  # 2i: before event i; 2i + 1: after it
                buf += lines[start:end]
                self._emit(found)
                start = end
            buf += lines[start:]
        else:
            buf += lines
        if len(buf) >= _FLUSH_LINES:
            self._flush()

    def finish(self) -> None:
        """The end of the logs: what still waits goes out, the output is written."""
        if self.stats.first_ts is not None:
            # Freezes still waiting for their session's protocol go out as the daemon's would.
            self._emit(self.engine.tick(self.now + SERVICE_WAIT))
            self.stats.last_ts = self.now
        if self.buf:
            self._flush()

    def _emit(self, decisions: list[Decision]) -> None:
        if self.write is None:
            self.stats.decisions += decisions  # for the summary; JSON output keeps nothing
        else:
            self.buf += [decision_line(d) for d in decisions]

    def _flush(self) -> None:
        assert self.write is not None
        try:
            self.write("".join(self.buf))
        except OSError as e:
            raise OutputError(e) from None
        self.buf.clear()
