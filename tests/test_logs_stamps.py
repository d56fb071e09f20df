"""Line times: every stamp shape, the year of year-less stamps, LogParser.timestamp()."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from dynscreen.control.logs import stamps
from dynscreen.control.logs.parse import LogParser

UTC = timezone.utc


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _ts(clock: stamps.Clock, text: str) -> float | None:
    m = stamps.match(text)
    assert m is not None, text
    return clock.epoch(m)


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("Nov 30 10:47:27 mx postfix/smtpd[1]: x", "2024-11-30T10:47:27"),
        ("Nov  3 10:47:27 mx postfix/smtpd[1]: x", "2024-11-03T10:47:27"),
        ("Nov 3 10:47:27 mx postfix/smtpd[1]: x", "2024-11-03T10:47:27"),
        ("Nov 03 10:47:27 mx postfix/smtpd[1]: x", "2024-11-03T10:47:27"),
        ("Nov 30 10:47:27.123456 mx postfix/smtpd[1]: x", "2024-11-30T10:47:27.123456"),
        ("2024-03-21T19:26:06.123456+01:00 mx postfix/smtpd[1]: x", "2024-03-21T18:26:06.123456"),
        ("2024-03-21T19:26:06+0100 mx postfix/smtpd[1]: x", "2024-03-21T18:26:06"),
        ("2024-03-21T19:26:06-05:30 mx x: y", "2024-03-22T00:56:06"),
        ("2024-03-21T19:26:06Z mx x: y", "2024-03-21T19:26:06"),
        ("2024-03-21T19:26:06 mx x: y", "2024-03-21T19:26:06"),
        ("2024-03-21 19:26:06 [123] x", "2024-03-21T19:26:06"),
        ("2024-03-21 19:26:06.250 x", "2024-03-21T19:26:06.25"),
        ("2024-03-21 19:26:06 +0100 x", "2024-03-21T18:26:06"),
        ("2024-03-21 19:26:06.5 -0100 x", "2024-03-21T20:26:06.5"),
        ("1711049234.5 mx x: y", "2024-03-21T19:27:14.5"),
    ],
)
def test_stamp_shapes(line: str, want: str) -> None:
    assert _ts(stamps.Clock(2024, UTC), line) == pytest.approx(_utc(want), abs=1e-6)


def test_tai64n_has_the_libtai_offset() -> None:
    clock = stamps.Clock(2024, UTC)
    assert _ts(clock, "@4000000065fc8a1c00000000 x") == 0x65FC8A1C - 10


def test_no_stamp_and_impossible_dates() -> None:
    assert stamps.match("mx postfix/smtpd[1]: x") is None
    assert stamps.match("Foo 30 10:47:27 x") is not None  # looks like one ...
    assert _ts(stamps.Clock(2024, UTC), "Foo 30 10:47:27 x") is None  # ... but is not
    assert _ts(stamps.Clock(2023, UTC), "Feb 29 10:47:27 x") is None
    assert _ts(stamps.Clock(2024, UTC), "2024-02-30T10:47:27Z x") is None
    assert _ts(stamps.Clock(2024, UTC), "Feb 29 25:47:27 x") is None


def test_local_zone_and_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    clock = stamps.Clock(2024, berlin)
    assert _ts(clock, "Mar 31 01:59:59 x") == _utc("2024-03-31T00:59:59")  # CET
    assert _ts(clock, "Mar 31 03:00:00 x") == _utc("2024-03-31T01:00:00")  # CEST
    assert _ts(clock, "Jul  1 12:00:00 x") == _utc("2024-07-01T10:00:00")


def test_year_turns_when_the_month_goes_back() -> None:
    clock = stamps.Clock(2023, UTC)
    assert _ts(clock, "Dec 31 23:59:59 x") == _utc("2023-12-31T23:59:59")
    assert _ts(clock, "Jan  1 00:00:01 x") == _utc("2024-01-01T00:00:01")
    # a late line from the old year, then the new year goes on
    assert _ts(clock, "Dec 31 23:59:58 x") == _utc("2023-12-31T23:59:58")
    assert _ts(clock, "Jan  1 00:00:02 x") == _utc("2024-01-01T00:00:02")
    assert _ts(clock, "Mar  1 00:00:00 x") == _utc("2024-03-01T00:00:00")
    # a little backwards (out of order): the same year
    assert _ts(clock, "Feb 29 23:59:59 x") == _utc("2024-02-29T23:59:59")
    assert _ts(clock, "Mar  1 00:00:01 x") == _utc("2024-03-01T00:00:01")
    # months later, back to January: the next year
    assert _ts(clock, "Nov  1 00:00:00 x") == _utc("2024-11-01T00:00:00")
    assert _ts(clock, "Jan  2 00:00:00 x") == _utc("2025-01-02T00:00:00")


def test_stamps_with_a_year_set_it() -> None:
    clock = stamps.Clock(2020, UTC)
    assert _ts(clock, "2024-12-31T23:00:00Z x") == _utc("2024-12-31T23:00:00")
    assert _ts(clock, "Dec 31 23:30:00 x") == _utc("2024-12-31T23:30:00")
    assert _ts(clock, "Jan  1 00:30:00 x") == _utc("2025-01-01T00:30:00")


def test_inferred_year_is_this_year_unless_that_is_the_future() -> None:
    now = _utc("2024-01-02T12:00:00")
    clock = stamps.Clock(None, UTC, now=lambda: now)
    assert _ts(clock, "Dec 30 10:00:00 x") == _utc("2023-12-30T10:00:00")  # last year's
    assert _ts(clock, "Jan  2 11:00:00 x") == _utc("2024-01-02T11:00:00")  # then it turned
    clock = stamps.Clock(None, UTC, now=lambda: now)
    assert _ts(clock, "Jan  1 10:00:00 x") == _utc("2024-01-01T10:00:00")
    assert _ts(clock, "Jan  3 10:00:00 x") == _utc("2024-01-03T10:00:00")  # ahead a little
    clock = stamps.Clock(2024, UTC, now=lambda: now)  # a year given is taken as it is
    assert _ts(clock, "Dec 30 10:00:00 x") == _utc("2024-12-30T10:00:00")


def test_default_zone_is_local() -> None:
    line = "Jul  1 12:00:00 x"
    want = datetime(2024, 7, 1, 12).timestamp()  # naive: the local zone
    assert _ts(stamps.Clock(2024), line) == want


def test_parser_timestamp() -> None:
    p = LogParser("f", year=2024, tz=UTC)
    assert p.timestamp("Mar 21 19:26:06 mx postfix/qmgr[1]: x") == _utc("2024-03-21T19:26:06")
    assert p.timestamp("Mar 21 19:26:06 mx postfix/qmgr[1]: y") == _utc("2024-03-21T19:26:06")
    assert p.timestamp("Mar 21 19:26:07 mx postfix/qmgr[1]: y") == _utc("2024-03-21T19:26:07")
    assert p.timestamp("no stamp at all") is None
    assert p.timestamp("") is None
    assert p.timestamp("mx exim[1]: 2024-03-21 19:26:08 x") == _utc("2024-03-21T19:26:08")
    assert p.timestamp("<13>Mar 21 19:26:09 mx x: y") == _utc("2024-03-21T19:26:09")
    assert p.timestamp("<13>1 2024-03-21T19:26:10Z mx app - - - x") == _utc("2024-03-21T19:26:10")
    assert p.timestamp("@4000000065fc8a1c00000000 x") == 0x65FC8A1C - 10


def test_line_without_stamp_takes_the_previous_time() -> None:
    p = LogParser("f", year=2024, tz=UTC)
    p.parse("Mar 21 19:26:06 mx postfix/qmgr[1]: 4F3A: removed", 1)  # no signal: no time read
    assert p.timestamp("Mar 21 19:26:07 mx postfix/qmgr[1]: 4F3A: removed") is not None
    events = p.parse("mx postfix/smtpd[2]: connect from unknown[192.0.2.1]", 3)
    assert [(e.kind, e.ts) for e in events] == [("connect", _utc("2024-03-21T19:26:07"))]
    fresh = LogParser("f", year=2024, tz=UTC)
    before = datetime.now(UTC).timestamp()
    (ev,) = fresh.parse("postfix/smtpd[2]: connect from unknown[192.0.2.1]", 1)
    assert before - 1 <= ev.ts <= before + 60


def test_year_turns_across_parse_and_timestamp_calls() -> None:
    """A merge may read the next line's time before parsing this one."""
    p = LogParser("f", year=2023, tz=UTC)
    dec = "Dec 31 23:59:59 mx postfix/smtpd[1]: connect from unknown[192.0.2.1]"
    jan = "Jan  1 00:00:00 mx postfix/smtpd[1]: disconnect from unknown[192.0.2.1]"
    assert p.timestamp(dec) == _utc("2023-12-31T23:59:59")
    assert p.timestamp(jan) == _utc("2024-01-01T00:00:00")
    assert p.parse(dec, 1)[0].ts == _utc("2023-12-31T23:59:59")
    assert p.parse(jan, 2)[0].ts == _utc("2024-01-01T00:00:00")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        LogParser("f", "sendmail")


def test_offsets() -> None:
    assert stamps.Clock(2024, timezone(timedelta(hours=-3))).epoch(
        stamps.match("Jan  1 00:00:00 x")
    ) == _utc("2024-01-01T03:00:00")
