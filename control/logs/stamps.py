"""Line timestamps: the shapes mail logs are written in, and a per-file clock for them.

Shapes, told apart by the line's first character:

- ``Nov 30 10:47:27`` (traditional syslog, Postfix ``maillog_file``, Dovecot
  ``log_path``), optionally with fractional seconds (``journalctl -o short-precise``);
  no year, so the :class:`Clock` infers it;
- ``2024-03-21T19:26:06.123456+01:00`` (RFC 3339 / RFC 5424, rsyslog's file format,
  ``journalctl -o short-iso[-precise]``, which may write ``+0100``);
- ``2024-03-21 19:26:06[.123] [+0100]`` (Exim's own log, Dovecot with a custom
  ``log_timestamp``; the offset is Exim's ``log_timezone``);
- ``1711045566.123456`` (``journalctl -o short-unix``);
- ``@4000000065fc...`` (TAI64N, daemontools/runit ``multilog``): the label is
  2^62 + 10 + Unix seconds, as libtai writes it from the system clock.

Stamps without an offset are in the clock's zone (default: the local zone).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import time
from collections.abc import Callable
from typing import Final

_MONTHS: Final = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_TAI_BASE: Final = (1 << 62) + 10

TRAD: Final = re.compile(
    r"([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d{1,2}):(\d\d):(\d\d)(\.\d{1,9})?(?: |$)"
)
ISO: Final = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(\.\d{1,9})?"
    r"(Z|[+-]\d\d:?\d\d)?(?: ([+-]\d{4}))?(?: |$)"
)
UNIX: Final = re.compile(r"(\d{9,11})(\.\d{1,9})? ")
TAI: Final = re.compile(r"@([0-9a-fA-F]{16})([0-9a-fA-F]{8})(?: |$)")

_EPOCH_ORDINAL: Final = _dt.date(1970, 1, 1).toordinal()
_FUTURE: Final = 2 * 86400.0  # a year-less stamp this far ahead of now belongs to last year


def match(text: str) -> re.Match[str] | None:
    """The timestamp at the start of ``text``, if any (one compiled shape per first char)."""
    c = text[:1]
    if "0" <= c <= "9":
        if text[4:5] == "-":
            return ISO.match(text)
        return UNIX.match(text)
    if "A" <= c <= "Z":
        return TRAD.match(text)
    if c == "@":
        return TAI.match(text)
    return None


def _offset(text: str) -> int:
    """Seconds east of UTC in ``Z``, ``+01:00`` or ``+0100``."""
    if text == "Z":
        return 0
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return sign * (int(digits[:2]) * 3600 + int(digits[2:4]) * 60)


class Clock:
    """Turns one file's stamps into Unix time; infers the year of year-less stamps.

    The year is ``year`` (or the current one) at the first stamp; it steps forward
    when the month goes back by more than one (Dec -> Jan); a stamp a little
    backwards (lines written out of order) keeps the year, and a December line
    right after January belongs to the year before. With the year inferred from
    the clock, a stamp far in the future is last year's. Stamps that carry a year
    set it for the year-less ones that follow.
    """

    __slots__ = (
        "_tz", "_infer", "_year", "_month", "_hours", "_days", "_limit", "_now", "minute"
    )

    def __init__(
        self,
        year: int | None = None,
        tz: _dt.tzinfo | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._tz = tz
        self._now = now
        self._infer = year is None
        self._year = year if year is not None else _dt.datetime.fromtimestamp(now(), tz).year
        self._month = 0  # last month seen (0: none yet)
        self._hours: dict[tuple[int, int, int, int], float] = {}
        self._days: dict[tuple[int, int, int], float] = {}
        self._limit = now() + _FUTURE
        # A log writes a few lines a second: most stamps that are not the previous
        # line's are the next second's. ``minute`` is (prefix, n, base, limit): the
        # last whole-second TRAD stamp's text up to its seconds (n characters), the
        # time of that minute, and the latest time a stamp may have. A stamp that is
        # ``prefix`` + two ASCII digits SS + a space, with base + SS <= limit (so SS <=
        # 60 too), is what epoch(match(text)) reads as base + SS, changing nothing in
        # this clock. None while another second of that minute would move the year
        # or the month (then _trad decides).
        self.minute: tuple[str, int, float, float] | None = None

    def epoch(self, m: re.Match[str]) -> float | None:
        """Unix time of a stamp found by :func:`match`; None when it is not a real date."""
        try:
            pattern = m.re
            if pattern is TRAD:
                return self._trad(m)
            if pattern is ISO:
                return self._iso(m)
            if pattern is UNIX:
                return int(m[1]) + (float(m[2]) if m[2] else 0.0)
            return int(m[1], 16) - _TAI_BASE + int(m[2], 16) / 1e9
        except (ValueError, OverflowError):
            return None

    def _trad(self, m: re.Match[str]) -> float | None:
        month = _MONTHS.get(m[1])
        if month is None:
            return None
        last = self._month
        year = self._year
        self.minute = None
        if last == 0:
            self._month = month
        elif month < last - 1:  # the year turned
            year = self._year = year + 1
            self._month = month
        elif month == 12 and last == 1:  # a late line from the end of last year
            year -= 1
        elif month > last:
            self._month = month
        day, hour, minute, sec = int(m[2]), int(m[3]), int(m[4]), int(m[5])
        frac = m[6]
        ts = self._local(year, month, day, hour, minute, sec, frac)
        if self._infer and ts > self._limit:
            self._limit = self._now() + _FUTURE
            if ts > self._limit:  # dated in the future: last year's line
                if year == self._year:
                    self._year -= 1
                return self._local(year - 1, month, day, hour, minute, sec, frac)
        if frac is None and year == self._year and month == self._month:
            # _local's ts is (hour + minute * 60) + sec: keep the first sum
            base = self._hours[(year, month, day, hour)] + minute * 60
            limit = min(self._limit if self._infer else math.inf, base + 60)
            prefix = m.string[m.start() : m.start(5)]
            self.minute = (prefix, len(prefix), base, limit)
        return ts

    def _iso(self, m: re.Match[str]) -> float:
        year, month, day = int(m[1]), int(m[2]), int(m[3])
        self._year, self._month = year, month
        self.minute = None
        hour, minute, sec = int(m[4]), int(m[5]), int(m[6])
        off = m[8] or m[9]
        if off is None:
            return self._local(year, month, day, hour, minute, sec, m[7])
        key = (year, month, day)
        base = self._days.get(key)
        if base is None:
            base = (_dt.date(year, month, day).toordinal() - _EPOCH_ORDINAL) * 86400.0
            if len(self._days) > 4096:
                self._days.clear()
            self._days[key] = base
        ts = base + hour * 3600 + minute * 60 + sec - _offset(off)
        return ts + float(m[7]) if m[7] else ts

    def _local(
        self, year: int, month: int, day: int, hour: int, minute: int, sec: int, frac: str | None
    ) -> float:
        """A wall-clock time in the clock's zone (cached per hour: DST moves whole hours)."""
        key = (year, month, day, hour)
        base = self._hours.get(key)
        if base is None:
            if hour > 23:
                raise ValueError("hour")
            base = _dt.datetime(year, month, day, hour, tzinfo=self._tz).timestamp()
            if len(self._hours) > 4096:
                self._hours.clear()
            self._hours[key] = base
        if minute > 59 or sec > 60:
            raise ValueError("time")
        ts = base + minute * 60 + sec
        return ts + float(frac) if frac else ts
