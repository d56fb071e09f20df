"""bench/replay_bench.py's verdicts: every size gets one per target, and a miss says why
(the numbers are made up here; the bench itself measures them)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from replay_bench import Run, verdicts  # noqa: E402


def rows(lines: int, seconds: float, cpu: float, f2b_seconds: float) -> list[Run]:
    return [
        Run("dynscreen replay --json", lines, seconds, 60_000, cpu=cpu),
        Run("dynscreen replay", lines, seconds * 0.8, 60_000, cpu=cpu * 0.8),
        Run("  (parsers alone)", lines, seconds * 0.5, 50_000, cpu=cpu * 0.4),
        Run("fail2ban-regex (2 filters)", lines, f2b_seconds, 90_000, cpu=f2b_seconds),
    ]


def test_each_size_has_its_verdict_and_a_miss_says_why() -> None:
    runs = (rows(250_000, 1.0, 0.7, 9.0)  # 250k lines/s: missed; 9x: missed
            + rows(500_000, 1.5, 1.45, 20.0)  # 333k lines/s: met; 13x: met
            + rows(1_000_000, 2.9, 2.85, 40.0))
    out = verdicts(runs, startup=0.4)
    rate = [v for v in out if "lines/s with --json" in v]
    assert [v.split(":")[0] for v in rate] == ["250,000 lines", "500,000 lines",
                                               "1,000,000 lines"]
    assert ["MISSED" in v for v in rate] == [True, False, False]
    speed = [v for v in out if "fail2ban's two filters" in v]
    assert ["MISSED" in v for v in speed] == [True, False, False]
    why = [v for v in out if v.startswith("  why:")]
    assert len(why) == 2, out  # one per miss, none for a met target
    # the rate miss: process start 0.4 s of 1.0 s; past it 416,667 lines/s; 70% of a core
    assert "process start (0.40 s) is 40% of this run" in why[0]
    assert "416,667 lines/s (the target, once started)" in why[0]
    assert "70% of a core" in why[0] and "parsers alone take 40%" in why[0]
    assert "fail2ban took 9.00 s, dynscreen 1.00 s" in why[1] and "past it 15.0x" in why[1]


def test_a_failed_row_gets_no_verdict_but_says_so() -> None:
    runs = rows(250_000, 1.0, 1.0, 20.0)
    runs[0].ok = False
    out = verdicts(runs)
    assert out[0] == "250,000 lines: dynscreen replay --json FAILED: no verdict"
