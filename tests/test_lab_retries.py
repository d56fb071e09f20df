"""A mail lab that fails to build once and builds on the second try is reported, not hidden
(tests/conftest_lab.py, open_with_retry): a warning at once, a line in the retry log, a
section in the run's summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest_lab import LabRetries, open_with_retry


class FlakyLab:
    """Stands in for MailLab: open() fails the first ``failures`` times."""

    made: list[str] = []

    def __init__(self, tag: str, failures: int) -> None:
        self.tag = tag
        self.failures = failures
        FlakyLab.made.append(tag)

    def open(self) -> FlakyLab:
        if len(FlakyLab.made) <= self.failures:
            raise RuntimeError("postfix did not start in 30 s\nits log: ...")
        return self


class Terminal:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def section(self, title: str, **markup: Any) -> None:
        self.lines.append(f"== {title}")

    def write_line(self, line: str, **markup: Any) -> None:
        self.lines.append(line)


def test_a_lab_built_on_the_second_try_is_counted_and_reported(tmp_path: Path) -> None:
    FlakyLab.made = []
    retries = LabRetries(tmp_path / "lab-retries.log")
    with pytest.warns(UserWarning, match="building the mail lab failed once"):
        lab: Any = open_with_retry(lambda t: FlakyLab(t, 1), "42", retries,  # type: ignore
                                   "tests.test_e2e_x")
    assert lab.tag == "42r" and FlakyLab.made == ["42", "42r"]
    assert len(retries.notes) == 1
    assert "tests.test_e2e_x" in retries.notes[0]
    assert "postfix did not start in 30 s" in retries.notes[0]
    logged = (tmp_path / "lab-retries.log").read_text().splitlines()
    assert len(logged) == 1 and logged[0].endswith(retries.notes[0])
    term = Terminal()
    retries.pytest_terminal_summary(term)
    assert term.lines[0] == "== dynscreen lab builds retried"
    assert term.lines[1].startswith("1 lab build(s) failed once and passed on retry")
    assert "tests.test_e2e_x" in term.lines[2]


def test_a_lab_built_at_once_leaves_no_trace(tmp_path: Path) -> None:
    FlakyLab.made = []
    retries = LabRetries(tmp_path / "lab-retries.log")
    open_with_retry(lambda t: FlakyLab(t, 0), "42", retries, "tests.test_e2e_x")  # type: ignore
    assert retries.notes == [] and not (tmp_path / "lab-retries.log").exists()
    term = Terminal()
    retries.pytest_terminal_summary(term)
    assert term.lines == []


def test_a_second_failure_is_the_error(tmp_path: Path) -> None:
    FlakyLab.made = []
    retries = LabRetries(tmp_path / "lab-retries.log")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="postfix did not start"):
        open_with_retry(lambda t: FlakyLab(t, 2), "42", retries, "tests.test_e2e_x")  # type: ignore
