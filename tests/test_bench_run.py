"""`make bench` (bench/run.py): the namespace labs run at their quick size unless asked for
full size, so that `make bench` stays a few minutes long."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import run as bench_run  # noqa: E402


def sizes(monkeypatch: pytest.MonkeyPatch, argv: list[str], env: str | None) -> dict:
    ran: dict[str, list[str]] = {}

    def run_one(name: str, what: str, args: list[str]) -> int:
        ran[name] = args
        return 0

    monkeypatch.setattr(bench_run, "run_one", run_one)
    monkeypatch.setattr(bench_run.os, "geteuid", lambda: 0)
    if env is None:
        monkeypatch.delenv("BENCH_FULL", raising=False)
    else:
        monkeypatch.setenv("BENCH_FULL", env)
    assert bench_run.main(argv) == 0
    return ran


def test_labs_are_quick_by_default_and_the_rest_full(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = sizes(monkeypatch, [], None)
    assert ran["flood_bench.py"] == ["--quick"]
    assert ran["reaction_bench.py"] == ["--quick"]
    assert ran["replay_bench.py"] == []


@pytest.mark.parametrize(("argv", "env"), [(["--full"], None), ([], "1")])
def test_full_size_on_request(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                              env: str | None) -> None:
    ran = sizes(monkeypatch, argv, env)
    assert ran["flood_bench.py"] == [] and ran["reaction_bench.py"] == []
    assert bench_run.os.environ["BENCH_FULL"] == "1", "the benches read it too"


def test_quick_reaches_everything_that_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = sizes(monkeypatch, ["--quick"], None)
    assert ran["flood_bench.py"] == ["--quick"] and ran["scale_bench.py"] == ["--quick"]
