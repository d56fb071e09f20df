"""Log sources found by themselves: journal units of the installed servers, else the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakedaemon import invoke

from dynscreen.control.config import LogSource, parse_config
from dynscreen.control.logs import discover as discover_module
from dynscreen.control.logs.discover import discover, log_sources


class Host:
    """A host tree in a temp folder: unit folders, journald's run folder, log files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.units = root / "lib/systemd/system"
        self.generator = root / "run/systemd/generator"
        self.journal_run = root / "run/systemd/journal"
        self.units.mkdir(parents=True)
        self.logged: set[str] = set()

    def unit(self, name: str, exec_start: str = "/usr/sbin/server") -> None:
        (self.units / name).write_text(f"[Service]\nExecStart={exec_start}\n")

    def wants(self, target: str, name: str, template: str) -> None:
        """A generator's link, as Debian's postfix-instance-generator makes."""
        d = self.generator / f"{target}.wants"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).symlink_to(self.units / template)

    def journald(self) -> None:
        self.journal_run.mkdir(parents=True)

    def log(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
        return p

    def files(self, *rels: str) -> tuple[Path, ...]:
        return tuple(self.root / r for r in rels)

    def discover(self) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
        found = discover(
            journal_run=self.journal_run,
            unit_dirs=(self.units, self.generator),
            mail_logs=self.files("var/log/mail.log", "var/log/maillog"),
            dovecot_logs=self.files("var/log/dovecot.log"),
            exim_logs=self.files("var/log/exim4/mainlog"),
            logged_units=lambda: self.logged,
        )
        assert found.discovered
        return [(s.format, s.name) for s in found.sources], found.warnings


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_debian_journal_units_are_preferred_over_mail_log(host: Host) -> None:
    """Debian 12: postfix@.service (postfix.service a /bin/true placeholder), Dovecot,
    journald; a mail.log from rsyslog as well: the journal wins (unforgeable senders)."""
    host.journald()
    host.unit("postfix.service", "/bin/true")
    host.unit("postfix@.service")
    host.wants("postfix.service", "postfix@-.service", "postfix@.service")
    host.unit("dovecot.service")
    host.log("var/log/mail.log")
    sources, warnings = host.discover()
    assert sources == [("postfix", "journal:postfix@-.service"),
                       ("dovecot", "journal:dovecot.service")]
    assert warnings == ()


def test_postfix_instances_from_the_journal_itself(host: Host) -> None:
    host.journald()
    host.unit("postfix@.service")
    host.logged = {"postfix@-.service", "postfix@out.service", "ssh.service"}
    sources, _ = host.discover()
    assert sources == [("postfix", "journal:postfix@-.service"),
                       ("postfix", "journal:postfix@out.service")]


def test_template_alone_means_the_default_instance(host: Host) -> None:
    host.journald()
    host.unit("postfix@.service")
    assert host.discover()[0] == [("postfix", "journal:postfix@-.service")]


def test_placeholder_postfix_unit_is_not_a_source(host: Host) -> None:
    host.journald()
    host.unit("postfix.service", "/bin/true")
    host.log("var/log/mail.log")
    assert host.discover()[0] == [("auto", str(host.root / "var/log/mail.log"))]


def test_exim_reads_its_own_main_log_over_the_journal(host: Host) -> None:
    host.journald()
    host.unit("exim4.service")
    mainlog = host.log("var/log/exim4/mainlog")
    assert host.discover()[0] == [("exim", str(mainlog))]
    mainlog.unlink()
    assert host.discover()[0] == [("exim", "journal:exim4.service")]


def test_without_journald_the_classic_files(host: Host) -> None:
    host.unit("postfix@.service")  # installed, but no journald: its lines go to syslog
    host.unit("dovecot.service")
    mail = host.log("var/log/mail.log")
    dovecot = host.log("var/log/dovecot.log")
    assert host.discover()[0] == [("dovecot", str(dovecot)), ("auto", str(mail))]
    dovecot.unlink()
    maillog = host.log("var/log/maillog")
    assert host.discover()[0] == [("auto", str(mail))]  # the first classic file only
    mail.unlink()
    assert host.discover()[0] == [("auto", str(maillog))]


def test_nothing_found_is_a_warning_naming_where_it_looked(host: Host) -> None:
    sources, warnings = host.discover()
    assert sources == []
    [w] = warnings
    assert w.startswith("no mail log found: journald does not run here")
    assert str(host.root / "var/log/mail.log") in w and "[[logs]]" in w
    host.journald()
    [w] = host.discover()[1]
    assert "journald runs, but no unit of Postfix (postfix@*.service)" in w


def test_a_logs_table_replaces_discovery_and_missing_sources_are_warned(
    tmp_path: Path,
) -> None:
    present = tmp_path / "mail.log"
    present.write_text("")
    cfg = parse_config(
        f'[[logs]]\nformat = "postfix"\npath = "{present}"\n'
        f'[[logs]]\nformat = "dovecot"\npath = "{tmp_path / "absent.log"}"\n', "t")
    chosen = log_sources(cfg)
    assert not chosen.discovered
    assert chosen.sources == (LogSource(format="postfix", path=str(present)),
                              LogSource(format="dovecot", path=str(tmp_path / "absent.log")))
    [w] = chosen.warnings
    assert w.startswith(f"[[logs]] #2: log file {tmp_path / 'absent.log'} does not exist")
    [w] = log_sources(parse_config("logs = []", "t")).warnings
    assert "names no log source" in w


@pytest.fixture
def nothing_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Discovery pointed at an empty host tree (the real one is whatever this machine is)."""
    monkeypatch.setattr(discover_module, "JOURNAL_RUN", tmp_path / "run/systemd/journal")
    monkeypatch.setattr(discover_module, "UNIT_DIRS", (tmp_path / "units",))
    monkeypatch.setattr(discover_module, "GENERATOR_DIRS", ())
    monkeypatch.setattr(discover_module, "MAIL_LOGS", (tmp_path / "mail.log",))
    monkeypatch.setattr(discover_module, "DOVECOT_LOGS", ())
    monkeypatch.setattr(discover_module, "EXIM_LOGS", ())
    return tmp_path


def test_check_config_lists_discovered_sources(nothing_here: Path) -> None:
    cfg = nothing_here / "c.toml"
    cfg.write_text("")
    out = invoke("check-config", str(cfg))
    assert out.exit_code == 0
    assert "log sources, discovered (no [[logs]] table): none" in out.stdout
    assert "dynscreen: warning: no mail log found: journald does not run here" in out.stderr
    (nothing_here / "mail.log").write_text("")
    out = invoke("check-config", "--json", str(cfg))
    report = json.loads(out.stdout)
    assert report["logs"] == [{"source": str(nothing_here / "mail.log"), "format": "auto",
                               "discovered": True,
                               "why": "the syslog mail log (no journald here)"}]
    assert not any("no mail log" in w for w in report["warnings"])
    out = invoke("check-config", str(cfg))
    assert f"auto {nothing_here / 'mail.log'}  (the syslog mail log" in out.stdout
