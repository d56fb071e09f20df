"""`dynscreen replay`: the JSON lines contract, merging, config, errors, the summary."""

# ruff: noqa: E501  (log lines are written out verbatim, as the servers write them)

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import dynscreen.cli.app as cli_app
from dynscreen.cli.app import app

EVENT_KEYS = ["type", "kind", "ip", "service", "user", "file", "line", "count"]
DECISION_KEYS = {
    "block": ["type", "action", "ip", "reason", "minutes"],
    "freeze": ["type", "action", "user", "service"],
    "notify": ["type", "action", "user", "service"],
    "exempt": ["type", "action", "ip", "minutes"],
}

# Postfix 3.7 with Dovecot SASL, and Dovecot 2.3 (auth_verbose = yes) in one syslog file.
MAIL_LOG = """\
Mar  3 10:00:00 mx postfix/smtpd[1201]: connect from unknown[203.0.113.7]
Mar  3 10:00:01 mx dovecot: auth: passwd-file(alice@example.com,203.0.113.7): Password mismatch
Mar  3 10:00:03 mx postfix/smtpd[1201]: warning: unknown[203.0.113.7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username=alice@example.com
Mar  3 10:00:04 mx dovecot: auth: passwd-file(alice@example.com,203.0.113.7): Password mismatch
Mar  3 10:00:06 mx postfix/smtpd[1201]: warning: unknown[203.0.113.7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username=alice@example.com
Mar  3 10:00:07 mx postfix/qmgr[900]: 4Q2X1b3Hx5z9rxN: removed

Mar  3 10:00:08 mx dovecot: auth: passwd-file(Alice@Example.com,203.0.113.7): Password mismatch
Mar  3 10:00:10 mx postfix/smtpd[1201]: warning: unknown[203.0.113.7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username=Alice@Example.com
Mar  3 10:00:11 mx dovecot: auth: passwd-file(alice@example.com,203.0.113.7): Password mismatch
Mar  3 10:00:13 mx postfix/smtpd[1201]: warning: unknown[203.0.113.7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username=alice@example.com
Mar  3 10:00:14 mx dovecot: auth: passwd-file(alice@example.com,203.0.113.7): Password mismatch
Mar  3 10:00:16 mx postfix/smtpd[1201]: warning: unknown[203.0.113.7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username=alice@example.com
Mar  3 10:00:17 mx postfix/smtpd[1201]: disconnect from unknown[203.0.113.7] ehlo=1 auth=0/5 rset=4 quit=1 commands=2/7
"""


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The machine's /etc/dynscreen and DYNSCREEN_CONFIG must not leak into these tests."""
    monkeypatch.delenv("DYNSCREEN_CONFIG", raising=False)
    monkeypatch.setattr(cli_app, "DEFAULT_CONFIG", tmp_path / "no-such-dir" / "dynscreen.toml")


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def records(result: Result) -> list[dict[str, object]]:
    """The events and decisions (the summary line, always last, checked and left out)."""
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    recs = [json.loads(line) for line in result.stdout.splitlines()]
    assert recs[-1]["type"] == "summary"
    assert [r for r in recs if r["type"] == "summary"] == recs[-1:]
    return recs[:-1]


def summary(result: Result) -> dict[str, Any]:
    last: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    assert last["type"] == "summary"
    return last


def brief(recs: list[dict[str, object]]) -> list[tuple[object, ...]]:
    """Events as (kind, line, count), decisions as (action, ip or user)."""
    out: list[tuple[object, ...]] = []
    for r in recs:
        if r["type"] == "event":
            out.append((r["kind"], r["line"], r["count"]))
        else:
            out.append((r["action"], r.get("ip", r.get("user"))))
    return out


def test_json_lines_follow_the_contract(tmp_path: Path) -> None:
    log = write(tmp_path, "mail.log", MAIL_LOG)
    recs = records(run("replay", "--json", str(log)))
    for r in recs:
        if r["type"] == "event":
            assert list(r) == EVENT_KEYS
            assert r["file"] == str(log)
        else:
            assert list(r) == DECISION_KEYS[str(r["action"])]
    assert recs[1] == {
        "type": "event", "kind": "auth_failure", "ip": "203.0.113.7", "service": None,
        "user": "alice@example.com", "file": str(log), "line": 2, "count": 1,
    }
    assert recs[2]["service"] == "smtp"


def test_events_keep_duplicates_and_the_engine_counts_attempts_once(tmp_path: Path) -> None:
    log = write(tmp_path, "mail.log", MAIL_LOG)
    got = brief(records(run("replay", "--json", str(log))))
    # Ten lines describe five attempts: the block comes with the fifth attempt's first line
    # (line 12, line 7 is a qmgr line, line 8 is blank), not with the fifth line.
    assert got == [
        ("connect", 1, 1),
        *[("auth_failure", n, 1) for n in (2, 3, 4, 5, 8, 9, 10, 11, 12)],
        ("block", "203.0.113.7"),
        ("auth_failure", 13, 1),
        ("disconnect", 14, 1),
        ("rset", 14, 4),
    ]


def test_block_decision_shape(tmp_path: Path) -> None:
    log = write(tmp_path, "mail.log", MAIL_LOG)
    blocks = [r for r in records(run("replay", "--json", str(log))) if r["type"] == "decision"]
    assert blocks == [
        {"type": "decision", "action": "block", "ip": "203.0.113.7",
         "reason": "auth_failures", "minutes": 10}
    ]


def test_file_is_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "mail.log", MAIL_LOG)
    monkeypatch.chdir(tmp_path)
    recs = records(run("replay", "--json", "mail.log"))
    assert {r["file"] for r in recs if r["type"] == "event"} == {"mail.log"}


def test_disconnect_counters(tmp_path: Path) -> None:
    log = write(tmp_path, "mail.log", """\
Mar  3 11:00:00 mx postfix/smtpd[7]: connect from mail.example.net[198.51.100.4]
Mar  3 11:00:09 mx postfix/smtpd[7]: disconnect from mail.example.net[198.51.100.4] ehlo=1 auth=0/3 rcpt=0/5 quit=1 commands=2/10
Mar  3 11:01:00 mx postfix/submission/smtpd[8]: connect from client.example.org[2001:db8:1:2::7]
Mar  3 11:01:05 mx postfix/submission/smtpd[8]: disconnect from client.example.org[2001:db8:1:2::7] ehlo=1 auth=1 quit=1 commands=3
""")
    recs = records(run("replay", "--json", str(log)))
    assert brief(recs) == [
        ("connect", 1, 1),
        ("disconnect", 2, 1),
        ("connect", 3, 1),
        ("disconnect", 4, 1),
        ("auth_success", 4, 1),
        ("exempt", "2001:db8:1:2::/64"),
    ]
    assert recs[2]["ip"] == "2001:db8:1:2::7"  # events carry the address as logged
    assert recs[-1]["minutes"] == 60


def test_two_files_are_merged_in_time_order(tmp_path: Path) -> None:
    postfix = write(tmp_path, "postfix.log", """\
Mar  3 12:00:00 mx postfix/smtpd[10]: connect from unknown[192.0.2.10]
Mar  3 12:00:04 mx postfix/smtpd[10]: NOQUEUE: reject: RCPT from unknown[192.0.2.10]: 550 5.1.1 <x@example.com>: Recipient address rejected: User unknown in virtual mailbox table; from=<a@example.net> to=<x@example.com> proto=ESMTP helo=<h>
Mar  3 12:00:09 mx postfix/smtpd[10]: disconnect from unknown[192.0.2.10] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4
""")
    dovecot = write(tmp_path, "dovecot.log", """\
Mar  3 12:00:02 mx dovecot: auth: passwd-file(bob,192.0.2.20,<AbCdEf0123>): unknown user
continuation without a stamp
Mar  3 12:00:06 mx dovecot: imap-login: Disconnected: Connection closed (auth failed, 1 attempts in 4 secs): user=<bob>, method=PLAIN, rip=192.0.2.20, lip=192.0.2.1, TLS, session=<AbCdEf0123>
""")
    recs = records(run("replay", "--json", str(postfix), str(dovecot)))
    assert [(r["file"], r["line"]) for r in recs] == [
        (str(postfix), 1),
        (str(dovecot), 1),
        (str(postfix), 2),
        (str(dovecot), 3),
        (str(postfix), 3),
    ]


def test_session_freeze_and_notify_from_replay(tmp_path: Path) -> None:
    cfg = write(tmp_path, "dynscreen.toml", """\
[screening.limits]
auth_failures = 0

[accounts]
max_session_auth_failures = 3
freeze = true
notify_postmaster = ["imap"]
""")
    lines = [
        f"Mar  3 13:00:0{i} mx dovecot: auth: sql(carol@example.com,198.51.100.20,<k3JxZ2Ab>): "
        "Password mismatch"
        for i in range(3)
    ]
    lines.append(
        "Mar  3 13:00:09 mx dovecot: imap-login: Disconnected: Connection closed (auth failed, "
        "3 attempts in 9 secs): user=<carol@example.com>, method=PLAIN, rip=198.51.100.20, "
        "lip=192.0.2.1, TLS, session=<k3JxZ2Ab>"
    )
    log = write(tmp_path, "mail.log", "\n".join(lines) + "\n")
    recs = records(run("replay", "--config", str(cfg), "--json", str(log)))
    assert [r for r in recs if r["type"] == "decision"] == [
        {"type": "decision", "action": "freeze", "user": "carol@example.com", "service": "imap"},
        {"type": "decision", "action": "notify", "user": "carol@example.com", "service": "imap"},
    ]
    assert recs[-3]["type"] == "event" and recs[-3]["count"] == 3


def test_config_from_env_and_global_option(tmp_path: Path) -> None:
    log = write(tmp_path, "mail.log", MAIL_LOG)
    cfg = write(tmp_path, "strict.toml", "[screening.limits]\nauth_failures = 1\n")
    first_block = ("block", "203.0.113.7")
    by_env = brief(records(run("replay", "--json", str(log), env={"DYNSCREEN_CONFIG": str(cfg)})))
    assert by_env.index(first_block) == 2  # right after the first attempt's first line
    by_global = brief(records(run("--config", str(cfg), "replay", "--json", str(log))))
    assert by_global == by_env
    off = write(tmp_path, "off.toml", "[screening.limits]\nauth_failures = 0\n")
    by_option = brief(records(run("--config", str(cfg), "replay", "--config", str(off),
                                  "--json", str(log))))
    assert first_block not in by_option  # the command's own --config wins


def test_simulated_connection_limit(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.toml", "[screening.limits]\nconnections = 3\nsimultaneous = 0\n")
    lines = []
    for i in range(5):
        lines.append(f"Mar  3 14:00:{i:02d} mx postfix/smtpd[{i}]: connect from unknown[192.0.2.5]")
        lines.append(
            f"Mar  3 14:00:{i:02d} mx postfix/smtpd[{i}]: disconnect from unknown[192.0.2.5] "
            "ehlo=1 quit=1 commands=2"
        )
    log = write(tmp_path, "mail.log", "\n".join(lines) + "\n")
    recs = records(run("replay", "--config", str(cfg), "--json", str(log)))
    decisions = [r for r in recs if r["type"] == "decision"]
    assert decisions == [
        {"type": "decision", "action": "block", "ip": "192.0.2.5", "reason": "connections",
         "minutes": 10}
    ]
    assert brief(recs).index(("block", "192.0.2.5")) == 7  # after the 4th connect


def test_gzip_rotated_logs_and_bad_bytes(tmp_path: Path) -> None:
    plain = write(tmp_path, "mail.log", MAIL_LOG)
    gz = tmp_path / "mail.log.2.gz"
    with gzip.open(gz, "wb") as f:
        f.write(MAIL_LOG.encode())
    a = records(run("replay", "--json", str(plain)))
    b = records(run("replay", "--json", str(gz)))
    assert [{**r, "file": None} for r in a] == [{**r, "file": None} for r in b]
    raw = tmp_path / "latin1.log"
    raw.write_bytes(
        b"Mar  3 15:00:00 mx postfix/smtpd[3]: warning: unknown[192.0.2.8]: SASL LOGIN "
        b"authentication failed: UGFzc3dvcmQ6, sasl_username=j\xf6rg@example.com\n"
    )
    recs = records(run("replay", "--json", str(raw)))
    assert recs[0]["user"] == "j\ufffdrg@example.com"


def test_standard_input(tmp_path: Path) -> None:
    log = write(tmp_path, "mail.log", MAIL_LOG)
    result = CliRunner().invoke(app, ["replay", "--json", "-"], input=MAIL_LOG)
    recs = records(result)
    assert {r["file"] for r in recs if r["type"] == "event"} == {"-"}
    by_file = records(run("replay", "--json", str(log)))
    assert [{**r, "file": 0} for r in recs] == [{**r, "file": 0} for r in by_file]


def test_a_freeze_still_waiting_at_the_end_of_the_logs(tmp_path: Path) -> None:
    cfg = write(tmp_path, "dynscreen.toml", """\
[accounts]
max_session_auth_failures = 2
freeze = true
""")
    log = write(tmp_path, "mail.log", """\
Mar  3 13:00:01 mx dovecot: auth: sql(mia@example.com,198.51.100.21,<Zx81kQ>): Password mismatch
Mar  3 13:00:04 mx dovecot: auth: sql(mia@example.com,198.51.100.21,<Zx81kQ>): Password mismatch
""")
    recs = records(run("replay", "--config", str(cfg), "--json", str(log)))
    assert recs[-1] == {
        "type": "decision", "action": "freeze", "user": "mia@example.com", "service": None
    }


def test_missing_log_exits_2_naming_it(tmp_path: Path) -> None:
    log = write(tmp_path, "mail.log", MAIL_LOG)
    missing = tmp_path / "mail.log.1"
    result = run("replay", "--json", str(log), str(missing))
    assert result.exit_code == 2
    assert str(missing) in result.stderr
    assert result.stdout == ""  # nothing printed before the files are all open
    assert run("replay", str(tmp_path)).exit_code == 2  # a directory


def test_bad_config_exits_2_with_the_message(tmp_path: Path) -> None:
    log = write(tmp_path, "mail.log", MAIL_LOG)
    cfg = write(tmp_path, "bad.toml", '[screening.limits]\nauth_failures = "five"\n')
    result = run("replay", "--config", str(cfg), str(log))
    assert result.exit_code == 2
    assert "screening.limits.auth_failures" in result.stderr and str(cfg) in result.stderr


def test_errors_have_no_traceback_through_the_entry_point(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("dynscreen")
    if not exe.exists():
        pytest.skip("dynscreen entry point not installed in this environment")
    cfg = write(tmp_path, "bad.toml", "[screening]\nblock_minutes = -1\n")
    log = write(tmp_path, "mail.log", MAIL_LOG)
    env = {k: v for k, v in os.environ.items() if k != "DYNSCREEN_CONFIG"}
    for args in (
        [str(exe), "replay", str(tmp_path / "nope.log")],
        [str(exe), "replay", "--config", str(cfg), str(log)],
    ):
        p = subprocess.run(args, capture_output=True, text=True, env=env)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr and p.stderr.startswith("dynscreen: ")


def test_summary_names_the_decisions_and_the_approximation(tmp_path: Path) -> None:
    log = write(tmp_path, "mail.log", MAIL_LOG)
    result = run("replay", str(log))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "auth_failure" in out and "203.0.113.7" in out
    assert "auth_failures" in out and f"{log}:12" in out  # reason and the tipping line
    assert "simulated" in out and "approximation" in out


def test_json_output_survives_a_closed_pipe(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("dynscreen")
    if not exe.exists():
        pytest.skip("dynscreen entry point not installed in this environment")
    log = write(tmp_path, "mail.log", MAIL_LOG * 2000)
    # `dynscreen replay --json LOG | head -n 1`, with dynscreen's own exit status (a
    # shell pipeline would report head's)
    p = subprocess.Popen([str(exe), "replay", "--json", str(log)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stderr is not None
    first = p.stdout.readline()
    p.stdout.close()  # the reader goes away while dynscreen still writes
    err = p.stderr.read()
    assert p.wait(60) == 0, err
    assert json.loads(first)["type"] == "event"
    assert "Traceback" not in err and "Exception" not in err


# ---- what replay understood, and what it missed ------------------------------------

JOURNAL_JSON = "".join(
    json.dumps({
        "__CURSOR": f"s=4b1c0e5f;i={n:x};b=9d2a;m=1f{n:x};t=5f1e;x=7a", "__REALTIME_TIMESTAMP":
        f"170900000{n}000000", "_SYSTEMD_UNIT": "postfix@-.service", "SYSLOG_IDENTIFIER":
        "postfix/smtpd", "_PID": "1201", "PRIORITY": "6",
        "MESSAGE": f"connect from unknown[203.0.113.{n}]",
    }) + "\n"
    for n in range(1, 37)
)

MIXED_LOG = """\
Mar  3 10:00:00 mx postfix/smtpd[1201]: connect from unknown[203.0.113.7]
Mar  3 10:00:00 mx postfix/qmgr[900]: 4Q2X1b3Hx5z9rxN: removed
Mar  3 10:00:01 mx dovecot: imap(alice@example.com)<1301><x1>: Disconnected: Logged out in=10 out=20
Mar  3 10:00:01 imap(bob)<1302><x2>: Info: Disconnected: Logged out in=10 out=20
Mar  3 10:00:02 mx CRON[777]: (root) CMD (run-parts /etc/cron.hourly)
2024-03-03 10:00:03 1rgBcD-000ABC-EF <= alice@example.com H=mail.example [198.51.100.9] P=esmtps S=1234
Mar  3 10:00:04 mx opendkim[55]: 4Q2X1b3Hx5z9rxN: DKIM-Signature field added
{"MESSAGE": "connect from unknown[203.0.113.7]"}
"""


def test_summary_line_counts_every_line_by_outcome(tmp_path: Path) -> None:
    log = write(tmp_path, "mail.log", MAIL_LOG)
    s = summary(run("replay", "--json", str(log)))
    # 12 signal lines; the qmgr line is Postfix without a signal; the blank line is nothing
    assert (s["lines"], s["signal_lines"], s["understood_lines"], s["not_understood_lines"]) \
        == (14, 12, 1, 1)
    assert s["formats"]["postfix"] == {
        "signal_lines": 7, "understood_lines": 1, "not_understood_lines": 0}
    assert s["formats"]["dovecot"] == {
        "signal_lines": 5, "understood_lines": 0, "not_understood_lines": 0}
    assert s["formats"]["unknown"]["not_understood_lines"] == 1
    assert s["files"] == [{"file": str(log), "signal_lines": 12, "understood_lines": 1,
                           "not_understood_lines": 1}]
    assert s["not_understood_examples"] == [{"file": str(log), "line": 7, "text": "",
                                             "length": 0}]


def test_formats_and_examples_of_what_was_not_understood(tmp_path: Path) -> None:
    junk = "x\x1b[2J" + "é" * 300  # a control sequence, and longer than an example keeps
    log = write(tmp_path, "mixed.log", MIXED_LOG + junk + "\n")
    result = run("replay", "--json", str(log))
    assert result.exit_code == 0, result.stderr
    s = summary(result)
    counts = {name: (f["signal_lines"], f["understood_lines"], f["not_understood_lines"])
              for name, f in s["formats"].items()}
    assert counts == {
        "postfix": (1, 1, 0),  # connect; qmgr
        "dovecot": (0, 2, 0),  # a session's end, to syslog and in Dovecot's own log file
        "exim": (0, 1, 0),  # Exim's own log: no program tag
        "other": (0, 0, 2),  # cron, opendkim
        "unknown": (0, 0, 2),  # JSON, junk
    }
    assert s["lines"] == 9 == s["signal_lines"] + s["understood_lines"] + s["not_understood_lines"]
    examples = [(e["line"], e["text"][:12], e["length"]) for e in s["not_understood_examples"]]
    assert examples == [(5, "Mar  3 10:00", 69), (7, "Mar  3 10:00", 76),
                        (8, '{"MESSAGE": ', 48), (9, "x\x1b[2Jééééééé", 305)]
    assert len(s["not_understood_examples"][-1]["text"]) == 200  # cut

    human = run("replay", str(log))
    assert human.exit_code == 0, human.stderr
    out = human.stdout
    assert "lines: 1 with a signal, 4 understood without one, 4 not understood" in out
    assert "by format: postfix 2 (1 with a signal), dovecot 2, exim 1, other 2, unknown 2" in out
    assert f"{log}:9: 'x\\x1b[2J" in out and "(+185 chars)" in out  # escaped and cut


def test_at_most_five_examples(tmp_path: Path) -> None:
    log = write(tmp_path, "junk.log", "".join(f"junk {n}\n" for n in range(100)))
    s = summary(run("replay", "--json", "--allow-empty", str(log)))
    assert [e["line"] for e in s["not_understood_examples"]] == [1, 2, 3, 4, 5]
    assert s["not_understood_lines"] == 100


def test_journal_json_understood_nothing_warns_and_exits_1(tmp_path: Path) -> None:
    log = write(tmp_path, "postfix.json", JOURNAL_JSON)
    result = run("replay", "--json", str(log))
    assert result.exit_code == 1
    assert f"warning: nothing in {log} was understood" in result.stderr
    assert "journalctl -o json" in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1  # no event: the summary line only
    s = summary(result)
    assert (s["lines"], s["signal_lines"], s["understood_lines"], s["not_understood_lines"]) \
        == (36, 0, 0, 36)
    human = run("replay", str(log))
    assert human.exit_code == 1 and "was understood" in human.stderr
    assert "36 not understood" in human.stdout and '\'{"__CURSOR": ' in human.stdout
    allowed = run("replay", "--allow-empty", str(log))
    assert allowed.exit_code == 0 and "was understood" in allowed.stderr  # still said


@pytest.mark.parametrize("text", ["", "\n\n", "garbage\n\x00\x01 more garbage\n"])
def test_empty_or_junk_exits_1_unless_allowed(tmp_path: Path, text: str) -> None:
    log = write(tmp_path, "x.log", text)
    result = run("replay", "--json", str(log))
    assert result.exit_code == 1, result.stdout
    assert str(log) in result.stderr and "Traceback" not in result.stderr
    assert run("replay", "--json", "--allow-empty", str(log)).exit_code == 0


def test_one_file_understood_is_enough_for_exit_0(tmp_path: Path) -> None:
    good = write(tmp_path, "mail.log", MAIL_LOG)
    junk = write(tmp_path, "postfix.json", JOURNAL_JSON)
    result = run("replay", "--json", str(good), str(junk))
    assert result.exit_code == 0
    assert f"nothing in {junk} was understood" in result.stderr
    assert str(good) not in result.stderr
    s = summary(result)
    assert [f["file"] for f in s["files"]] == [str(good), str(junk)]
    assert s["files"][1]["not_understood_lines"] == 36


def test_summary_lists_are_titled_and_cut_with_the_rest_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dynscreen.cli.replay as replay_cli

    monkeypatch.setattr(replay_cli, "MAX_ROWS", 1)
    cfg = write(tmp_path, "c.toml", """\
[screening.limits]
connections = 1
simultaneous = 0
auth_failures = 0

[accounts]
max_session_auth_failures = 3
freeze = true
notify_postmaster = ["imap"]
""")
    lines = [f"Mar  3 14:00:0{i} mx postfix/smtpd[{i}]: connect from unknown[192.0.2.{ip}]"
             for i, ip in enumerate((5, 5, 6, 6))]
    lines += [f"Mar  3 14:00:1{i} mx dovecot: auth: sql(carol@example.com,198.51.100.20,<k3JxZ2Ab>): "
              "Password mismatch" for i in range(3)]
    lines.append("Mar  3 14:00:19 mx dovecot: imap-login: Disconnected: Connection closed (auth failed, "
                 "3 attempts in 9 secs): user=<carol@example.com>, method=PLAIN, rip=198.51.100.20, "
                 "lip=192.0.2.1, TLS, session=<k3JxZ2Ab>")
    log = write(tmp_path, "mail.log", "\n".join(lines) + "\n")
    result = run("replay", "--config", str(cfg), str(log))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    blocks, accounts = out.index("blocks the rules would make: 2"), out.index("\naccounts\n")
    assert out.count("... and 1 more (--json lists them all)") == 2
    assert blocks < out.index("... and 1 more", blocks) < accounts < out.rindex("... and 1 more")
    assert f"{log}:2" in out and f"{log}:4" not in out  # the one block shown, its tipping line


# What only the other commands need: the daemon's parts, the data plane's loader, the block
# file and index, the history database, the host checks (the journal reader) and the
# Dovecot policy server, with the libraries they bring (asyncio, sqlite3, ctypes).
NOT_FOR_REPLAY = (
    "asyncio", "sqlite3", "ctypes",
    "dynscreen.control.daemon", "dynscreen.control.dataplane.loader",
    "dynscreen.control.blockfile", "dynscreen.control.blockindex",
    "dynscreen.control.blocklist", "dynscreen.control.history", "dynscreen.control.explain",
    "dynscreen.control.hostcheck", "dynscreen.control.logs.journal",
    "dynscreen.control.logs.discover", "dynscreen.control.dovecotpolicy",
)


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_replay_starts_without_what_only_other_commands_need(tmp_path: Path,
                                                            extra: list[str]) -> None:
    """Process start is most of a short replay's time (bench/replay_bench.py): the
    `dynscreen` entry point, run as `replay`, imports none of the other commands' parts."""
    log = write(tmp_path, "mail.log", MAIL_LOG)
    config = write(tmp_path, "defaults.toml", "# built-in defaults\n")
    seen = tmp_path / "modules"
    code = (
        "import sys\n"
        "from dynscreen.cli.app import main\n"
        f"sys.argv = ['dynscreen', 'replay', '--config', {str(config)!r}, *{extra!r}, "
        f"{str(log)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"open({str(seen)!r}, 'w').write('\\n'.join(sorted(sys.modules)))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "203.0.113.7" in p.stdout  # it did replay the log
    loaded = set(seen.read_text().split("\n"))
    assert "dynscreen.control.engine" in loaded
    assert sorted(loaded & set(NOT_FOR_REPLAY)) == []
