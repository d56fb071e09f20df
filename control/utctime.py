"""UTC times as dynscreen's files write them: ISO 8601 ending in Z.

The block file and the frozen-accounts file share this one form so that an
administrator reads and types the same thing in both.
"""

from __future__ import annotations

import calendar
import math
import re
from datetime import datetime, timezone

_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(.*)", re.ASCII)


# The span a datetime can show (years 1 to 9999), in milliseconds.
_FIRST_MS = int(datetime(1, 1, 1, tzinfo=timezone.utc).timestamp()) * 1000
_LAST_MS = calendar.timegm((9999, 12, 31, 23, 59, 59)) * 1000 + 999


def format_time(ts: float) -> str:
    """``2026-11-30T14:05:00Z``; milliseconds only when the time has them.

    Never raises: a time beyond what a date can show (an infinite or absurd
    expiry read from somewhere) is shown as the nearest date that can be.
    """
    if math.isnan(ts):
        ts = 0.0
    ms = _LAST_MS if ts == math.inf else _FIRST_MS if ts == -math.inf else round(ts * 1000)
    ms = min(max(ms, _FIRST_MS), _LAST_MS)
    whole, frac = divmod(ms, 1000)
    d = datetime.fromtimestamp(whole, timezone.utc)
    text = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
    return f"{text}.{frac:03d}Z" if frac else f"{text}Z"


def parse_time(text: str) -> float:
    """An ISO 8601 UTC time ending in Z as Unix time; ValueError says what is wrong."""
    m = _TIME.fullmatch(text)
    example = "expected a UTC time like 2026-11-30T14:05:00Z"
    if not m:
        raise ValueError(f'bad time "{text}": {example}')
    if m.group(8) != "Z":
        if m.group(8) == "":
            raise ValueError(f'time "{text}" has no Z: write UTC times ending in Z ({text}Z)')
        raise ValueError(f'time "{text}" is not UTC ending in Z: {example}')
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    try:
        datetime(y, mo, d, h, mi, s)
    except ValueError as e:
        raise ValueError(f'bad time "{text}": {e}') from None
    frac = float(m.group(7)) if m.group(7) else 0.0
    return calendar.timegm((y, mo, d, h, mi, s)) + frac
