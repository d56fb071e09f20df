"""control/hostcheck.py: what a valid config names that this host lacks."""

from __future__ import annotations

from pathlib import Path

from dynscreen.control.config import parse_config
from dynscreen.control.hostcheck import host_warnings, unit_installed


def _units(tmp_path: Path, **files: str) -> Path:
    d = tmp_path / "units"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def test_units_instances_templates_and_globs(tmp_path: Path) -> None:
    d = _units(tmp_path, **{"postfix@.service": "", "dovecot.service": "", "x.socket": ""})
    assert unit_installed("dovecot", [d])
    assert unit_installed("postfix@-.service", [d])  # through its template
    assert unit_installed("postfix@*", [d])
    assert unit_installed("x.socket", [d])
    assert not unit_installed("exim4", [d])
    assert not unit_installed("exim4@-.service", [d])
    assert not unit_installed("dovecot.socket", [d])


def test_debian_placeholder_postfix_unit(tmp_path: Path) -> None:
    """Debian's postfix.service runs /bin/true: following it screens nothing."""
    d = _units(tmp_path, **{
        "postfix.service": "[Service]\nType=oneshot\nExecStart=/bin/true\nExecReload=/bin/true\n",
        "postfix@.service": "[Service]\nExecStart=/usr/sbin/postmulti -i %i -p start\n",
    })
    cfg = parse_config('[[logs]]\nformat = "postfix"\njournal = "postfix.service"\n'
                       '[[logs]]\nformat = "postfix"\njournal = "postfix@-.service"\n', "t")
    got = host_warnings(cfg, unit_dirs=[d], default_route=lambda: "eth0")
    assert got == ["[[logs]] #1: journal unit postfix.service logs nothing of the server "
                   "here: its messages are under postfix@-.service"]
    (d / "postfix.service").write_text("[Service]\nExecStart=/usr/sbin/postfix start\n")
    assert host_warnings(cfg, unit_dirs=[d], default_route=lambda: "eth0") == []


def test_no_default_route_and_no_interfaces(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.touch()
    cfg = parse_config(f'[[logs]]\nformat = "postfix"\npath = "{log}"\n', "t")
    assert host_warnings(cfg, default_route=lambda: "eth0") == []
    [w] = host_warnings(cfg, default_route=lambda: None)
    assert "no default route" in w and "--iface" in w


def test_journalctl_missing(tmp_path: Path) -> None:
    d = _units(tmp_path, **{"dovecot.service": ""})
    cfg = parse_config('[[logs]]\nformat = "dovecot"\njournal = "dovecot"\n', "t")
    assert host_warnings(cfg, unit_dirs=[d], default_route=lambda: "e") == []
    [w] = host_warnings(cfg, unit_dirs=[d], default_route=lambda: "e",
                        journalctl="no-such-journalctl")
    assert "journalctl is not installed" in w


def test_unreadable_routes_are_no_warning(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.touch()
    cfg = parse_config(f'[[logs]]\nformat = "postfix"\npath = "{log}"\n', "t")

    def refused() -> str | None:
        raise PermissionError("netlink refused")

    assert host_warnings(cfg, default_route=refused) == []
