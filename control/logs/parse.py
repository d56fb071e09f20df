"""LogParser: one mail log file's lines -> Events.

Every line goes through a cheap substring prefilter first: a line that names none
of the phrases a signal needs (most of a mail log: queue manager, deliveries,
cleanup, mailbox sessions) costs a few substring scans and nothing else. Only the
rest is taken apart (:mod:`.header`), handed to the parser of its program
(:mod:`.postfix`, :mod:`.dovecot`, :mod:`.exim`) and timed (:mod:`.stamps`). A
stamp is parsed once per second of log: the next line with the same stamp text
reuses it.

The format is detected per line from the program tag (``postfix*``, ``exim*``,
anything else is Dovecot's or pam's; a line without a tag is tried as Dovecot's,
then as Exim's own log), so one file may mix them. A format other than ``auto``
restricts the parsers to that one, still accepting every line shape.

A logwatch-style ``: N Time(s)`` suffix multiplies the line's counts by N. A line
without any time stamp takes the file's previous stamp (none yet: the wall clock).
"""

from __future__ import annotations

import datetime
import re
import time

from dynscreen.control.events import Event

from . import dovecot, exim, header, postfix, stamps
from .signals import Signal

FORMATS = ("auto", "postfix", "dovecot", "exim")

_TIMES = re.compile(r": (\d+) Time\(s\)$")


def _maybe_signal(text: str) -> bool:
    """True when the line may carry a signal: each phrase some signal line must hold."""
    return (
        "connect from" in text  # Postfix connect/disconnect
        or "connection from" in text  # Exim SMTP connection from
        or "uthent" in text  # authentication failed, authenticator failed, pam_authenticate
        or "-login: " in text  # Dovecot login summaries
        or "sasl_username=" in text
        or "nknown user" in text
        or "ser unknown" in text
        or "assword mismatch" in text
        or "nvalid credentials" in text
        or " A=" in text  # Exim authenticated arrival
        or "nonmail" in text
    )


class LogParser:
    """Per-file parser: detects the format per line, keeps per-file state (year inference)."""

    def __init__(
        self,
        file: str,
        fmt: str = "auto",
        *,
        year: int | None = None,
        tz: datetime.tzinfo | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r} (one of {', '.join(FORMATS)})")
        self.file = file
        self.fmt = fmt
        self._postfix = fmt in ("auto", "postfix")
        self._dovecot = fmt in ("auto", "dovecot")
        self._exim = fmt in ("auto", "exim")
        self._clock = stamps.Clock(year, tz)
        self._key = "\0"  # the text of the last whole-second stamp (with its space) ...
        self._key_ts = 0.0  # ... and its time
        self._prev_ts: float | None = None  # the latest stamp read, for lines without one

    def parse(self, text: str, lineno: int) -> list[Event]:
        """The events of one line (``text`` without its newline); [] when it has none."""
        if not _maybe_signal(text):
            return []
        mult = 1
        if text.endswith("Time(s)"):
            t = _TIMES.search(text)
            if t is not None:
                mult = int(t[1])
                text = text[: t.start()]
        key = self._key
        if text[:1] == "<":  # <PRI>, RFC 5424: the general way
            stamp, rest, parts = header.split(text)
            ts = self._epoch(stamp, lead=False) if stamp is not None else None
        else:
            if text.startswith(key):
                ts = self._key_ts
                rest = text[len(key):]
            else:
                stamp = stamps.match(text)
                rest = text[stamp.end():] if stamp is not None else text
                ts = self._epoch(stamp, lead=True) if stamp is not None else None
            if self._postfix and "connect from " in rest:
                fast = postfix.session_line(rest)
                if fast is not None:
                    return self._events(fast, ts, lineno, mult) if fast else fast
            parts = header.tagged(rest)
        inner, host, tag, pid, body, msg = parts
        if tag.startswith("postfix"):
            signals = postfix.parse(host, tag, pid, msg) if self._postfix else []
        elif tag.startswith("exim"):
            signals = exim.parse(msg, host, pid) if self._exim else []
        else:
            signals = self._other(body, rest)
        if not signals:
            return []
        if ts is None and inner is not None:
            ts = self._epoch(inner, lead=False)
        return self._events(signals, ts, lineno, mult)

    def _events(
        self, signals: list[Signal], ts: float | None, lineno: int, mult: int
    ) -> list[Event]:
        if ts is None:  # a line without a stamp: the file's previous one
            ts = self._prev_ts if self._prev_ts is not None else time.time()
        file = self.file
        return [
            Event(s.kind, s.ip, ts, s.service, s.user, file, lineno, s.count * mult, s.origin,
                  s.session)
            for s in signals
        ]

    def timestamp(self, text: str) -> float | None:
        """The line's time (Unix seconds) if it has one (used to merge files in time order)."""
        if text.startswith(self._key):
            return self._key_ts
        m = stamps.match(text)
        if m is not None:
            return self._epoch(m, lead=True)
        stamp, _, tagged = header.split(text)
        if stamp is not None:
            return self._epoch(stamp, lead=False)  # behind a <PRI>: not where the cache looks
        return self._epoch(tagged[0], lead=False) if tagged[0] is not None else None

    def _other(self, body: str, rest: str) -> list[Signal]:
        """A line of no Postfix or Exim tag: Dovecot's or pam's, else Exim's own log."""
        if self._dovecot:
            found = dovecot.parse(body)
            if found:
                return found
        return exim.parse(rest) if self._exim else []

    def _epoch(self, m: re.Match[str], *, lead: bool) -> float | None:
        """A stamp's time; a whole-second stamp that starts its line is kept for the
        lines that repeat it."""
        ts = self._clock.epoch(m)
        if ts is not None:
            self._prev_ts = ts
            key = m[0]
            if lead and key[-1:] == " " and "." not in key and m.re is not stamps.TAI:
                self._key, self._key_ts = key, ts
        return ts
