"""The client commands against a fake daemon: what each sends, prints, and exits with."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from fakedaemon import (
    BLOCKS_TEXT,
    DEFAULT_RESULTS,
    Error,
    FakeDaemon,
    Outcome,
    fake_fixture,  # noqa: F401  (provides the `fake` fixture)
    invoke,
    no_ambient_fixture,  # noqa: F401  (the autouse `no_ambient` fixture)
)
from rich.console import Console

from dynscreen.cli import blocks as blocks_cmd
from dynscreen.cli import client

ADDED_LINE = "192.0.2.55 2030-01-01T00:00:00Z manual # added by hand\n"


def cli(fake: FakeDaemon, *args: str, **kw: Any) -> Outcome:
    return invoke("--socket", str(fake.path), *args, **kw)


def json_of(out: Outcome) -> Any:
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


# --- status ---


def test_status_sends_its_limit_and_filters_and_says_what_it_left_out(fake: FakeDaemon) -> None:
    result = dict(DEFAULT_RESULTS["status"])  # type: ignore[arg-type]
    result.update(block_count=1_000_000, blocks_by_reason={"connections": 999_999, "manual": 1},
                  most_dropping=[result["blocks"][0]])
    fake.results["status"] = result
    out = cli(fake, "status", "--limit", "2", "--ip", "203.0.113.0/24", "--reason",
              "connections", "--source", "kernel")
    assert out.exit_code == 0, out.output
    assert fake.requests == [{"cmd": "status", "limit": 2, "ip": "203.0.113.0/24",
                              "reason": "connections", "source": "kernel"}]
    assert "1000000 blocks by reason: connections 999999, manual 1" in out.stdout
    assert "2 blocks shown, the newest of 1000000 (--limit N, --all)" in out.stdout
    assert "most dropping:" in out.stdout


def test_status_default_limit_is_the_daemons() -> None:
    """`status` without --limit sends the daemon's own default (written out in the CLI so
    that every command's start does not import the block index)."""
    from dynscreen.cli import status
    from dynscreen.control import blockstatus

    assert status.LIMIT == blockstatus.LIMIT


def test_status_json_all_is_passed_through_as_it_streams(fake: FakeDaemon) -> None:
    out = cli(fake, "status", "--json", "--all")
    assert fake.requests == [{"cmd": "status", "limit": 50, "all": True}]
    assert json_of(out) == DEFAULT_RESULTS["status"]
    fake.results["status"] = Error("the daemon said no", 1)
    out = cli(fake, "status", "--json", "--all")
    assert out.exit_code == 1 and "the daemon said no" in out.stderr


def test_status_table_and_summary(fake: FakeDaemon) -> None:
    out = cli(fake, "status")
    assert out.exit_code == 0, out.output
    assert fake.requests == [{"cmd": "status", "limit": 50}]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("screening enabled, mode enforce, on eth0 (native)")
    assert "passed 1234, dropped 48: blocked 43, syn cap 5" in out.stdout
    assert "blocks by reason: connections 1 (40 drops), manual 1 (3 drops)" in out.stdout
    row = next(line for line in lines if line.startswith("203.0.113.7"))
    assert row.split() == ["203.0.113.7", "connections", "-", "7.5", "40", "kernel"]
    row = next(line for line in lines if line.startswith("2001:db8:1:2::/64"))
    assert row.split() == ["2001:db8:1:2::/64", "manual", "spam", "run", "17.0", "3", "manual"]
    assert "2 blocks" in out.stdout
    assert out.stderr == ""


def test_status_no_blocks_monitor_mode(fake: FakeDaemon) -> None:
    result = dict(DEFAULT_RESULTS["status"], blocks=[], mode="monitor", enabled=False)
    fake.answer("status", result)
    out = cli(fake, "status")
    assert out.exit_code == 0
    assert "no blocks" in out.stdout
    assert "screening DISABLED, mode monitor" in out.stdout


def test_status_shows_warnings_failures_and_restarted_tasks(fake: FakeDaemon) -> None:
    daemon = {
        "running": True,
        "warnings": ["/var/log/mail.log: a syslog file can be written by any local user [x]"],
        "problems": [{"what": "exemption map full", "count": 4, "first": 1, "last": 2,
                      "message": "the kernel's exemption map is full: exempt of 10.0.0.1"}],
        "tasks": {"heartbeat": {"state": "running", "restarts": 0, "last_error": None},
                  "logs:/var/log/mail.log": {"state": "restarting", "restarts": 2,
                                             "last_error": "OSError: gone"}},
    }
    fake.answer("status", dict(DEFAULT_RESULTS["status"], daemon=daemon))
    out = cli(fake, "status")
    assert out.exit_code == 0, out.output
    assert "warning: /var/log/mail.log: a syslog file can be written by any local user [x]" \
        in out.stdout, "shown as is (no rich markup)"
    assert "error (4x): the kernel's exemption map is full: exempt of 10.0.0.1" in out.stdout
    assert ("task logs:/var/log/mail.log: restarting, restarted 2x, last error: OSError: gone"
            in out.stdout)
    assert "heartbeat" not in out.stdout


def test_status_json(fake: FakeDaemon) -> None:
    assert json_of(cli(fake, "status", "--json")) == DEFAULT_RESULTS["status"]


def test_status_unexpected_reply_is_a_failure(fake: FakeDaemon) -> None:
    fake.answer("status", {"counters": {}})
    out = cli(fake, "status")
    assert out.exit_code == 1 and "unexpected reply" in out.stderr


# --- top ---


def test_top_count_2(fake: FakeDaemon) -> None:
    started = time.monotonic()
    out = cli(fake, "top", "--count", "2", "--interval", "0.1")
    assert out.exit_code == 0, out.output
    assert fake.commands() == ["top", "top"]
    assert fake.requests[0] == {"cmd": "top", "limit": 20}
    assert time.monotonic() - started >= 0.1
    assert out.stdout.count("dynscreen top") == 2
    row = next(line for line in out.stdout.splitlines() if line.startswith("203.0.113.7"))
    assert row.split()[:5] == ["203.0.113.7", "61", "0", "0", "40"]
    assert "blocked: connections, 7.5 min left" in row
    row = next(line for line in out.stdout.splitlines() if line.startswith("198.51.100.9"))
    assert row.split() == ["198.51.100.9", "42", "7", "3", "0"]


def test_top_limit(fake: FakeDaemon) -> None:
    out = cli(fake, "top", "--count", "1", "--limit", "1")
    assert "198.51.100.9" in out.stdout and "203.0.113.7" not in out.stdout
    assert "1 busiest source (limit 1)" in out.stdout
    assert fake.last() == {"cmd": "top", "limit": 1}


def test_top_json_one_snapshot(fake: FakeDaemon) -> None:
    data = json_of(cli(fake, "top", "--json", "--limit", "1"))
    assert fake.commands() == ["top"]
    assert data["sources"] == DEFAULT_RESULTS["top"]["sources"][:1]
    assert set(data) == {"sources", "counters"}
    assert data["counters"] == DEFAULT_RESULTS["top"]["counters"]


def test_top_no_sources(fake: FakeDaemon) -> None:
    fake.answer("top", {"sources": [], "counters": {}})
    out = cli(fake, "top", "--count", "1")
    assert out.exit_code == 0 and "no active sources" in out.stdout


def test_top_live_on_a_terminal(fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    term = Console(file=screen, force_terminal=True, width=120)
    monkeypatch.setattr(client, "console", lambda: term)
    out = cli(fake, "top", "--count", "3", "--interval", "0.1")
    assert out.exit_code == 0, out.output
    assert fake.commands() == ["top"] * 3
    assert "198.51.100.9" in screen.getvalue() and "blocked: connections" in screen.getvalue()


def test_top_ctrl_c_exits_0(fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupted)
    out = cli(fake, "top")
    assert out.exit_code == 0, out.output
    assert fake.commands() == ["top"]
    assert "198.51.100.9" in out.stdout


def test_top_bad_options(fake: FakeDaemon) -> None:
    assert cli(fake, "top", "--interval", "0").exit_code == 2
    assert cli(fake, "top", "--count", "0").exit_code == 2
    assert cli(fake, "top", "--limit", "0").exit_code == 2
    assert fake.requests == []


def test_top_daemon_gone(tmp_path: Path) -> None:
    out = invoke("--socket", str(tmp_path / "x.sock"), "top", "--count", "1")
    assert out.exit_code == 1 and "no daemon at" in out.stderr


# --- block / unblock ---


def test_block_request_shape(fake: FakeDaemon) -> None:
    out = cli(fake, "block", "192.0.2.1")
    assert out.exit_code == 0, out.output
    assert fake.last() == {"cmd": "block", "addr": "192.0.2.1", "minutes": None, "note": None}
    assert out.stdout == "blocked 192.0.2.1 for 10.0 min (manual)\n"


def test_block_with_minutes_and_note(fake: FakeDaemon) -> None:
    fake.answer(
        "block",
        lambda req: {
            "block": {
                "ip": req["addr"],
                "reason": "manual",
                "note": req["note"],
                "minutes_left": req["minutes"],
                "drops": 0,
                "source": "manual",
            }
        },
    )
    out = cli(fake, "block", "2001:db8::/48", "--minutes", "30", "--reason", "spam run")
    assert out.exit_code == 0, out.output
    assert fake.last() == {
        "cmd": "block",
        "addr": "2001:db8::/48",
        "minutes": 30.0,
        "note": "spam run",
    }
    assert out.stdout == "blocked 2001:db8::/48 for 30.0 min (manual: spam run)\n"


@pytest.mark.parametrize(
    "args",
    [
        ["block", "not-an-address"],
        ["block", "192.0.2.1/24"],  # host bits set
        ["block", "300.1.2.3"],
        ["block", "192.0.2.1", "--minutes", "0"],
        ["block", "192.0.2.1", "--minutes", "-5"],
        ["block", "192.0.2.1", "--reason", "two\nlines"],
        ["unblock", "2001:db8::g"],
        ["allow", "add", "10.0.0.1/8"],
        ["allow", "remove", "nonsense"],
        ["accounts", "unfreeze", " "],
    ],
)
def test_invalid_input_exit_2_before_asking(fake: FakeDaemon, args: list[str]) -> None:
    out = cli(fake, *args)
    assert out.exit_code == 2, out.output
    assert out.stderr.startswith("dynscreen: ")
    assert fake.requests == []


def test_block_refused_and_failed(fake: FakeDaemon) -> None:
    fake.answer("block", Error("192.0.2.1 is whitelisted (127.0.0.0/8)", 2))
    out = cli(fake, "block", "192.0.2.1")
    assert (out.exit_code, out.stderr) == (2, "dynscreen: 192.0.2.1 is whitelisted (127.0.0.0/8)\n")
    fake.answer("block", Error("block table full", 1))
    out = cli(fake, "block", "192.0.2.1")
    assert (out.exit_code, out.stderr) == (1, "dynscreen: block table full\n")


def test_unblock(fake: FakeDaemon) -> None:
    out = cli(fake, "unblock", "203.0.113.7")
    assert (out.exit_code, out.stdout) == (0, "unblocked 203.0.113.7\n")
    assert fake.last() == {"cmd": "unblock", "addr": "203.0.113.7"}


def test_unblock_without_such_block_exit_1(fake: FakeDaemon) -> None:
    fake.answer("unblock", {"removed": False})
    out = cli(fake, "unblock", "198.51.100.1")
    assert out.exit_code == 1
    assert out.stderr == "dynscreen: no block for 198.51.100.1\n"


# --- allow ---


def test_allow_add_remove(fake: FakeDaemon) -> None:
    out = cli(fake, "allow", "add", "192.0.2.0/24")
    assert out.exit_code == 0, out.output
    assert fake.last() == {"cmd": "allow_add", "cidr": "192.0.2.0/24"}
    assert out.stdout == "allowed 192.0.2.0/24 (2 entries in the whitelist); unblocked 3\n"
    out = cli(fake, "allow", "remove", "192.0.2.0/24")
    assert fake.last() == {"cmd": "allow_remove", "cidr": "192.0.2.0/24"}
    assert out.stdout == "removed 192.0.2.0/24 (1 entry left in the whitelist)\n"


def test_allow_remove_config_entry_refused(fake: FakeDaemon) -> None:
    fake.answer("allow_remove", Error("127.0.0.0/8 is in the config; edit the config", 2))
    out = cli(fake, "allow", "remove", "127.0.0.0/8")
    assert out.exit_code == 2 and "edit the config" in out.stderr


def test_allow_list(fake: FakeDaemon) -> None:
    out = cli(fake, "allow", "list")
    assert out.exit_code == 0, out.output
    assert fake.last() == {"cmd": "allow_list"}
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows == [
        ["CIDR", "SOURCE"],
        ["127.0.0.0/8", "config"],
        ["::1/128", "config"],
        ["192.0.2.0/24", "runtime"],
    ]
    assert json_of(cli(fake, "allow", "list", "--json")) == DEFAULT_RESULTS["allow_list"]
    fake.answer("allow_list", {"whitelist": []})
    assert cli(fake, "allow", "list").stdout == "the whitelist is empty\n"


# --- accounts ---


def test_accounts_list(fake: FakeDaemon) -> None:
    out = cli(fake, "accounts", "list")
    assert out.exit_code == 0, out.output
    assert fake.last() == {"cmd": "accounts_list"}
    header, row = out.stdout.splitlines()
    assert header.split() == [
        "ACCOUNT", "SINCE", "UNTIL", "PROTOCOL", "SOURCE", "ADDRESS", "SESSION", "FAILURES",
    ]  # fmt: skip
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000))
    assert row.startswith("alice@example.com")
    for cell in (since, "until unfrozen", "imap", "198.51.100.23", "4F2A1B3C", "10"):
        assert cell in row
    assert json_of(cli(fake, "accounts", "list", "--json")) == DEFAULT_RESULTS["accounts_list"]


def test_accounts_list_empty_and_iso_times(fake: FakeDaemon) -> None:
    fake.answer("accounts_list", {"accounts": []})
    assert cli(fake, "accounts", "list").stdout == "no frozen accounts\n"
    account = dict(
        DEFAULT_RESULTS["accounts_list"]["accounts"][0],
        since="2030-01-01T00:00:00Z",
        until="2030-01-02T00:00:00Z",
    )
    fake.answer("accounts_list", {"accounts": [account]})
    out = cli(fake, "accounts", "list")
    assert "2030-01-01T00:00:00Z" in out.stdout and "2030-01-02T00:00:00Z" in out.stdout


def test_accounts_unfreeze(fake: FakeDaemon) -> None:
    out = cli(fake, "accounts", "unfreeze", "alice@example.com")
    assert (out.exit_code, out.stdout) == (0, "unfroze alice@example.com\n")
    assert fake.last() == {"cmd": "accounts_unfreeze", "user": "alice@example.com"}
    fake.answer("accounts_unfreeze", {"removed": False})
    out = cli(fake, "accounts", "unfreeze", "bob@example.com")
    assert (out.exit_code, out.stderr) == (1, "dynscreen: account bob@example.com is not frozen\n")


# --- reload / detach ---


def test_reload(fake: FakeDaemon) -> None:
    out = cli(fake, "reload")
    assert (out.exit_code, out.stdout) == (0, "reloaded /etc/dynscreen/dynscreen.toml\n")
    assert fake.last() == {"cmd": "reload"}
    fake.answer("reload", {"config": None})
    assert cli(fake, "reload").stdout == "reloaded (built-in defaults)\n"


def test_reload_with_a_bad_config_exit_2(fake: FakeDaemon) -> None:
    message = '/etc/dynscreen/dynscreen.toml: screening.mode: expected one of ..., got "x"'
    fake.answer("reload", Error(message, 2))
    out = cli(fake, "reload")
    assert (out.exit_code, out.stderr) == (2, f"dynscreen: {message}\n")


def test_detach(fake: FakeDaemon) -> None:
    fake.answer("detach", {"detached": ["eth0", "eth1"]})
    out = cli(fake, "detach")
    assert out.exit_code == 0
    assert fake.last() == {"cmd": "detach"}
    assert out.stdout.startswith("detached from eth0, eth1; screening is off")


# --- blocks edit ---


@pytest.fixture
def tmpdir_for_copies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Where `blocks edit` puts its copy, so a test can see it kept or removed."""
    d = tmp_path / "copies"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def editor_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake-editor.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def appending_editor(tmp_path: Path, line: str = ADDED_LINE) -> str:
    script = editor_script(tmp_path, f"printf '%s' '{line}' >> \"$1\"\n")
    return str(script)


def test_blocks_edit_accepted(fake: FakeDaemon, tmp_path: Path, tmpdir_for_copies: Path) -> None:
    out = cli(fake, "blocks", "edit", env={"EDITOR": appending_editor(tmp_path)})
    assert out.exit_code == 0, out.output
    assert fake.commands() == ["blocks_text", "blocks_apply"]
    # only what the edit changed is sent: untouched lines blanked (line numbers stay)
    untouched = "\n" * BLOCKS_TEXT.count("\n")
    assert fake.last() == {"cmd": "blocks_apply", "text": untouched + ADDED_LINE, "base": ""}
    assert out.stdout == "applied to /var/lib/dynscreen/blocks.dat: 1 added, 0 removed, 0 changed\n"
    assert list(tmpdir_for_copies.iterdir()) == []  # the copy is cleaned up


def test_blocks_edit_editor_with_arguments_and_visual(
    fake: FakeDaemon, tmp_path: Path, tmpdir_for_copies: Path
) -> None:
    """$EDITOR is split like a shell would; $VISUAL serves when $EDITOR is unset."""
    script = appending_editor(tmp_path)
    out = cli(fake, "blocks", "edit", env={"EDITOR": f"sh -e '{script}'"})
    assert out.exit_code == 0, out.output
    out = cli(fake, "blocks", "edit", env={"VISUAL": script})
    assert out.exit_code == 0, out.output
    assert fake.commands() == ["blocks_text", "blocks_apply"] * 2


def test_blocks_edit_unchanged(fake: FakeDaemon, tmpdir_for_copies: Path) -> None:
    out = cli(fake, "blocks", "edit", env={"EDITOR": "true"})
    assert (out.exit_code, out.stdout) == (0, "no changes; nothing applied\n")
    assert fake.commands() == ["blocks_text"]
    assert list(tmpdir_for_copies.iterdir()) == []


def test_blocks_edit_refused_keeps_the_copy(
    fake: FakeDaemon, tmp_path: Path, tmpdir_for_copies: Path
) -> None:
    message = "line 4: invalid expiry 'tomorrow' (expected an ISO 8601 UTC time ending in Z)"
    fake.answer("blocks_apply", Error(message, 2))
    out = cli(fake, "blocks", "edit", env={"EDITOR": appending_editor(tmp_path)})
    assert out.exit_code == 2
    assert message in out.stderr
    (copy,) = tmpdir_for_copies.iterdir()
    assert f"your edited copy is kept in {copy}" in out.stderr
    assert copy.read_text() == BLOCKS_TEXT + ADDED_LINE
    assert "Traceback" not in out.output


def test_blocks_edit_refused_then_fixed_at_a_terminal(
    fake: FakeDaemon, tmp_path: Path, tmpdir_for_copies: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applies: list[str] = []

    def apply(req: dict[str, Any]) -> Any:
        applies.append(req["text"])
        if len(applies) == 1:
            return Error("line 4: unknown reason 'spam'", 2)
        return {"added": 1, "removed": 0, "changed": 0}

    fake.answer("blocks_apply", apply)
    monkeypatch.setattr(blocks_cmd, "_interactive", lambda: True)
    editor = str(editor_script(tmp_path, f"grep -q '^{ADDED_LINE.split()[0]} ' \"$1\" || "
                                         f"printf '%s' '{ADDED_LINE}' >> \"$1\"\n"))
    out = cli(fake, "blocks", "edit", env={"EDITOR": editor}, input="y\n")
    assert out.exit_code == 0, out.output
    assert "line 4: unknown reason 'spam'" in out.stderr
    assert "re-open the editor?" in out.stdout
    # the second round edits the same copy: nothing typed the first time is lost
    sent = blocks_cmd.edit_request(BLOCKS_TEXT, BLOCKS_TEXT + ADDED_LINE)["text"]
    assert applies == [sent, sent] and sent.endswith(ADDED_LINE)
    assert list(tmpdir_for_copies.iterdir()) == []


def test_blocks_edit_refused_declined_at_a_terminal(
    fake: FakeDaemon, tmp_path: Path, tmpdir_for_copies: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.answer("blocks_apply", Error("line 4: bad address", 2))
    monkeypatch.setattr(blocks_cmd, "_interactive", lambda: True)
    out = cli(fake, "blocks", "edit", env={"EDITOR": appending_editor(tmp_path)}, input="n\n")
    assert out.exit_code == 2
    (copy,) = tmpdir_for_copies.iterdir()
    assert str(copy) in out.stderr and copy.read_text().endswith(ADDED_LINE)


def test_blocks_edit_sends_the_change_against_the_text_it_started_from() -> None:
    """Removed and changed lines go in base, added and changed ones in text; untouched
    lines in neither (blanked in text so that an error names the editor's line)."""
    lines = BLOCKS_TEXT.splitlines(keepends=True)
    changed = lines[2].replace("manual", "rsets ")
    edited = lines[0] + changed + ADDED_LINE  # line 1 removed, line 2 changed, one added
    req = blocks_cmd.edit_request(BLOCKS_TEXT, edited)
    assert req["text"] == "\n" + changed + ADDED_LINE
    assert req["base"].splitlines() == [lines[1].rstrip("\n"), lines[2].rstrip("\n")]


def test_blocks_edit_checks_the_whole_text_before_sending(
    fake: FakeDaemon, tmp_path: Path, tmpdir_for_copies: Path
) -> None:
    """A line that repeats an untouched line's address is caught, with its line number."""
    dup = BLOCKS_TEXT.splitlines()[1].split("#")[0] + "# again\n"
    out = cli(fake, "blocks", "edit", env={"EDITOR": appending_editor(tmp_path, dup)})
    assert out.exit_code == 2
    assert "blocks.dat:4: duplicate address 203.0.113.7 (also on line 2)" in out.stderr
    assert fake.commands() == ["blocks_text"]
    (copy,) = tmpdir_for_copies.iterdir()
    assert copy.read_text().endswith(dup)


def test_blocks_edit_editor_fails(
    fake: FakeDaemon, tmp_path: Path, tmpdir_for_copies: Path
) -> None:
    out = cli(fake, "blocks", "edit", env={"EDITOR": "false"})
    assert out.exit_code == 1
    assert "the editor exited with status 1; nothing applied" in out.stderr
    assert list(tmpdir_for_copies.iterdir()) == []
    # an editor that fails after changes were typed: the copy is kept
    script = editor_script(tmp_path, f"printf '%s' '{ADDED_LINE}' >> \"$1\"\nexit 3\n")
    out = cli(fake, "blocks", "edit", env={"EDITOR": str(script)})
    assert out.exit_code == 1 and "status 3" in out.stderr
    (copy,) = tmpdir_for_copies.iterdir()
    assert str(copy) in out.stderr
    assert "blocks_apply" not in fake.commands()


def test_blocks_edit_editor_missing(fake: FakeDaemon, tmpdir_for_copies: Path) -> None:
    out = cli(fake, "blocks", "edit", env={"EDITOR": "/nonexistent/editor --wait"})
    assert out.exit_code == 1
    assert "cannot run the editor '/nonexistent/editor'" in out.stderr


def test_blocks_edit_apply_fails_keeps_the_copy(
    fake: FakeDaemon, tmp_path: Path, tmpdir_for_copies: Path
) -> None:
    fake.answer("blocks_apply", Error("cannot write /var/lib/dynscreen/blocks.dat: disk full", 1))
    out = cli(fake, "blocks", "edit", env={"EDITOR": appending_editor(tmp_path)})
    assert out.exit_code == 1 and "disk full" in out.stderr
    (copy,) = tmpdir_for_copies.iterdir()
    assert str(copy) in out.stderr


def test_editor_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks_cmd.shutil, "which", lambda name: "/usr/bin/editor")
    assert blocks_cmd.editor_command() == ["editor"]
    monkeypatch.setattr(blocks_cmd.shutil, "which", lambda name: None)
    assert blocks_cmd.editor_command() == ["vi"]
    monkeypatch.setenv("VISUAL", "code --wait")
    assert blocks_cmd.editor_command() == ["code", "--wait"]
    monkeypatch.setenv("EDITOR", "nano")
    assert blocks_cmd.editor_command() == ["nano"]


# --- the installed command ---


def test_installed_exit_codes(fake: FakeDaemon) -> None:
    exe = Path(sys.executable).parent / "dynscreen"
    if not exe.exists():
        pytest.skip("dynscreen is not installed in this environment")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, "--socket", str(fake.path), *args], capture_output=True, text=True
        )

    fake.answer("unblock", {"removed": False})
    cases = [
        (run("status"), 0, ""),
        (run("block", "not-an-ip"), 2, "invalid address or CIDR range 'not-an-ip'"),
        (run("unblock", "192.0.2.9"), 1, "no block for 192.0.2.9"),
    ]
    for proc, code, message in cases:
        assert proc.returncode == code, proc.stderr
        assert message in proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
    assert json.loads(run("status", "--json").stdout) == DEFAULT_RESULTS["status"]
