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
from typing import TextIO

from dynscreen.control.addr import source_key
from dynscreen.control.config import Config
from dynscreen.control.decisions import Decision
from dynscreen.control.engine import SERVICE_WAIT, Engine
from dynscreen.control.events import KINDS, Event
from dynscreen.control.logs.parse import LogParser

SIMULATION_NOTE = (
    "connections and simultaneous are simulated from the logs' connect/disconnect lines: "
    "an approximation of the kernel's counting (postscreen rejects, dropped SYNs and "
    "connections that never reach smtpd or a log line are not seen)"
)
TICK_SECONDS = 1.0  # how often, in log time, the engine's clock is advanced between events
_FLUSH_LINES = 4096  # JSON lines gathered before one write


class LogFileError(Exception):
    """A log file that cannot be read: the message names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path = path
        self.reason = reason


def open_log(path: str) -> TextIO:
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
    binary: io.BufferedIOBase = raw  # type: ignore[assignment]
    if head == b"\x1f\x8b":
        binary = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
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


_STAT_FIELD = {"auth_failure": "auth_failures", "rcpt_unknown": "failed_rcpts", "rset": "rsets"}
_STAT_FIELD["connect"] = "connections"
MAX_SOURCES = 200_000  # offenders tracked for the summary; the quietest go first beyond it


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
    _keys: dict[str, str] = field(default_factory=dict)

    def event(self, ev: Event) -> None:
        """Count one event."""
        kind = ev.kind
        self.events[kind] = self.events.get(kind, 0) + 1
        self.counts[kind] = self.counts.get(kind, 0) + ev.count
        name = _STAT_FIELD.get(kind)
        if name is None:
            return
        key = self._keys.get(ev.ip)
        if key is None:
            if len(self._keys) > MAX_SOURCES:
                self._keys.clear()
            try:
                key = source_key(ev.ip, self.ipv6_prefix)
            except ValueError:
                key = ev.ip
            self._keys[ev.ip] = key
        stats = self.sources.get(key)
        if stats is None:
            if len(self.sources) >= MAX_SOURCES:
                self._shed()
            stats = self.sources[key] = SourceStats()
        setattr(stats, name, getattr(stats, name) + ev.count)

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


def decision_line(d: Decision) -> str:
    """A decision as one JSON line (the contract's shape)."""
    return json.dumps(d.to_json()) + "\n"


_SERVICE_JSON = {None: "null", "smtp": '"smtp"', "pop": '"pop"', "imap": '"imap"'}
_SERVICE_JSON["sieve"] = '"sieve"'


def _json_text(text: str | None) -> str:
    """A JSON string (or null), without json.dumps's cost for the plain names logs hold."""
    if text is None:
        return "null"
    if '"' in text or "\\" in text or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return f'"{text}"'


def event_line(ev: Event, file_json: str) -> str:
    """An event as one JSON line, built by hand: replay prints one per signal line."""
    service = _SERVICE_JSON.get(ev.service)
    if service is None:
        service = _json_text(ev.service)
    return (
        f'{{"type": "event", "kind": "{ev.kind}", "ip": {_json_text(ev.ip)}, '
        f'"service": {service}, "user": {_json_text(ev.user)}, "file": {file_json}, '
        f'"line": {ev.line}, "count": {ev.count}}}\n'
    )


def _lines(path: str, f: TextIO) -> Iterator[tuple[int, str]]:
    """A file's lines without their line ends, numbered from 1."""
    try:
        for lineno, text in enumerate(f, 1):
            yield lineno, text.rstrip("\r\n")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise LogFileError(path, str(e) or type(e).__name__) from None


def _merged(
    paths: list[str], files: list[TextIO], parsers: list[LogParser]
) -> Iterator[tuple[LogParser, int, str]]:
    """Every line of every file, in time order; a line without a stamp follows its predecessor."""
    if len(files) == 1:
        parser = parsers[0]
        for lineno, text in _lines(paths[0], files[0]):
            yield parser, lineno, text
        return

    def stamped(i: int) -> Iterator[tuple[float, int, int, str]]:
        parser = parsers[i]
        ts = float("-inf")
        for lineno, text in _lines(paths[i], files[i]):
            t = parser.timestamp(text)
            if t is not None:
                ts = t
            yield ts, i, lineno, text

    for _, i, lineno, text in heapq.merge(*(stamped(i) for i in range(len(files)))):
        yield parsers[i], lineno, text


def replay(
    config: Config,
    paths: list[str],
    *,
    write: Callable[[str], object] | None = None,
    summary: Summary | None = None,
) -> Summary:
    """Replay the logs: JSON lines to ``write`` if given, counts into the returned Summary.

    Every file is opened before anything is read, so a missing one fails the
    run before any output. Raises LogFileError.
    """
    files: list[TextIO] = []
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
    files: list[TextIO],
    write: Callable[[str], object] | None,
    summary: Summary | None,
) -> Summary:
    stats = summary if summary is not None else Summary(ipv6_prefix=config.screening.ipv6_prefix)
    stats.files = list(paths)
    parsers = [LogParser(path) for path in paths]
    file_json = {path: _json_text(path) for path in paths}
    engine: Engine | None = None
    now = float("-inf")
    next_tick = now
    buf: list[str] = []
    add = buf.append
    count = stats.event if write is None else None
    decided = stats.decisions.append
    lines = 0
    first: float | None = None

    def emit(decisions: list[Decision]) -> None:
        for d in decisions:
            decided(d)
            if write is not None:
                add(decision_line(d))

    for parser, lineno, text in _merged(paths, files, parsers):
        lines += 1
        events = parser.parse(text, lineno)
        if not events:
            continue
        for ev in events:
            ts = ev.ts
            if ts > now:
                now = ts
            if engine is None:
                engine = Engine(config, now=now, simulate_connections=True)
                first = now
            if now >= next_tick:
                next_tick = now + TICK_SECONDS
                found = engine.tick(now)
                if found:
                    emit(found)
            if write is not None:
                add(event_line(ev, file_json.get(ev.file) or _json_text(ev.file)))
            elif count is not None:
                count(ev)
            found = engine.feed(ev, now)
            if found:
                emit(found)
        if write is not None and len(buf) >= _FLUSH_LINES:
            write("".join(buf))
            buf.clear()
    if engine is not None:
        # Freezes still waiting for their session's protocol go out as the daemon's would.
        emit(engine.tick(now + SERVICE_WAIT))
    if write is not None and buf:
        write("".join(buf))
    stats.lines = lines
    stats.first_ts = first
    stats.last_ts = now if engine is not None else None
    return stats

