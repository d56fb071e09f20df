"""Names from outside print as they are: no rich markup, no emoji codes, no terminal escapes.

Account names, notes, addresses and log file names reach the tables of the client
commands and of the replay summary; an account named ``[/x]`` used to raise
MarkupError there, and ``[bold red]x[/]`` restyled the row (issue 10, item 2).
"""

# ruff: noqa: E501  (log lines are written out verbatim, as the servers write them)

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fakedaemon import (
    DEFAULT_RESULTS,
    FakeDaemon,
    Outcome,
    fake_fixture,  # noqa: F401  (provides the `fake` fixture)
    invoke,
    no_ambient_fixture,  # noqa: F401  (the autouse `no_ambient` fixture)
    running,
)

NAMES = [
    "[/x]",
    "[bold red]x[/]",
    "[link=https://evil.example/]click[/link]",
    "a:thumbs_up:b",
    "[/]",
    "\\[x]",
]
ESC = "a\x1b[31mred"  # shown written out, never sent to the terminal


def cli(fake: FakeDaemon, *args: str) -> Outcome:
    out = invoke("--socket", str(fake.path), *args)
    assert out.exit_code == 0, out.output
    return out


def shown(text: str, out: str) -> None:
    """Each name appears literally, and no escape character reaches the output."""
    for name in NAMES:
        assert name in out, (name, out)
    assert "\x1b" not in out
    assert "a\\x1b[31mred" in out


def test_accounts_list(fake: FakeDaemon) -> None:
    base = DEFAULT_RESULTS["accounts_list"]["accounts"][0]
    fake.answer("accounts_list", {"accounts": [
        dict(base, user=name, session=name) for name in [*NAMES, ESC]
    ]})
    shown("accounts", cli(fake, "accounts", "list").stdout)


def test_status(fake: FakeDaemon) -> None:
    block = DEFAULT_RESULTS["status"]["blocks"][0]
    result = dict(DEFAULT_RESULTS["status"], blocks=[
        dict(block, note=name, reason=name) for name in [*NAMES, ESC]
    ])
    fake.answer("status", result)
    shown("status", cli(fake, "status").stdout)


def test_top(fake: FakeDaemon) -> None:
    source = DEFAULT_RESULTS["top"]["sources"][1]
    fake.answer("top", dict(DEFAULT_RESULTS["top"], sources=[
        dict(source, ip=name, reason=name) for name in [*NAMES, ESC]
    ]))
    shown("top", cli(fake, "top", "--count", "1", "--limit", "50").stdout)


def test_allow_list(fake: FakeDaemon) -> None:
    fake.answer("allow_list", {"whitelist": [
        {"cidr": name, "source": name} for name in [*NAMES, ESC]
    ]})
    shown("allow", cli(fake, "allow", "list").stdout)


def test_error_messages_through_the_entry_point(tmp_path: Path) -> None:
    """The messages of main(): an account name quoted in an error."""
    results: dict[str, Any] = {"accounts_unfreeze": {"removed": False}}
    with running(results=results) as d:
        for name in NAMES:
            proc = subprocess.run(
                [sys.executable, "-c", "from dynscreen.cli.app import main; main()", "--socket", str(d.path),
                 "accounts", "unfreeze", name],
                capture_output=True, text=True, timeout=60,
                env={k: v for k, v in os.environ.items() if not k.startswith("DYNSCREEN_")},
            )
            assert proc.returncode == 1, proc.stderr
            assert proc.stderr == f"dynscreen: account {name} is not frozen\n"


FREEZE_CONFIG = """\
[accounts]
max_session_auth_failures = 2
freeze = true
notify_postmaster = ["smtp"]
"""


def test_replay_summary(tmp_path: Path) -> None:
    """Accounts frozen by the logs, and the log's own file name, in the summary."""
    lines = []
    for i, name in enumerate([*NAMES, ESC]):
        pid = 100 + i
        lines += [
            f"Mar  3 10:00:0{i} mx postfix/smtpd[{pid}]: connect from unknown[203.0.113.{i + 1}]",
            f"Mar  3 10:00:0{i} mx postfix/smtpd[{pid}]: warning: unknown[203.0.113.{i + 1}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username={name}",
            f"Mar  3 10:00:0{i} mx postfix/smtpd[{pid}]: warning: unknown[203.0.113.{i + 1}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username={name}",
        ]
    log = tmp_path / "[bold]mail[red].log"
    log.write_text("\n".join(lines) + "\n")
    config = tmp_path / "c.toml"
    config.write_text(FREEZE_CONFIG)
    out = invoke("replay", "--config", str(config), str(log))
    assert out.exit_code == 0, out.output
    shown("replay", out.stdout)
    assert "[bold]mail[red].log:" in out.stdout
