"""The whitelist file: round trips, errors with line numbers, atomic saves."""

from __future__ import annotations

import os
from ipaddress import ip_network
from pathlib import Path

import pytest

from dynscreen.control import atomicfile, whitelistfile
from dynscreen.control.whitelistfile import HEADER, WhitelistFileError, load, parse, save

NETS = [ip_network(n) for n in ("2001:db8:5::/48", "192.0.2.10/32", "198.51.100.0/24",
                                "10.0.0.0/8", "::1/128")]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "var" / "whitelist"
    save(path, NETS)
    text = path.read_text()
    assert text.startswith(HEADER)
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert body == ["10.0.0.0/8", "192.0.2.10", "198.51.100.0/24", "::1/128", "2001:db8:5::/48"]
    assert sorted(map(str, load(path))) == sorted(map(str, NETS))
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["whitelist"]


def test_empty_and_missing(tmp_path: Path) -> None:
    assert load(tmp_path / "none") == []
    save(tmp_path / "w", [])
    assert (tmp_path / "w").read_text() == HEADER
    assert load(tmp_path / "w") == []


def test_hand_written() -> None:
    text = "# mine\n\n  192.0.2.1   # the backup MX\n\t2001:DB8::/32\r\n::ffff:198.51.100.7\n"
    assert parse(text, "f") == [ip_network("192.0.2.1/32"), ip_network("2001:db8::/32"),
                                ip_network("198.51.100.7/32")]


@pytest.mark.parametrize("line, message", [
    ("192.0.2.300", 'bad address "192.0.2.300"'),
    ("mx.example.com", 'bad address "mx.example.com"'),
    ("198.51.100.1/24", 'host bits set in address "198.51.100.1/24" (the range is '
                        "198.51.100.0/24)"),
    ("192.0.2.1 192.0.2.2", 'unexpected "192.0.2.2" after the address'),
    ("192.0.2.10", "192.0.2.10 listed twice (also on line 2)"),
])
def test_errors_name_the_line(line: str, message: str) -> None:
    with pytest.raises(WhitelistFileError) as e:
        parse("# head\n192.0.2.10\n\n" + line + "\n", "/var/lib/dynscreen/whitelist")
    assert e.value.line == 4
    assert message in str(e.value)
    assert str(e.value).startswith("/var/lib/dynscreen/whitelist:4: ")


def test_load_reports_the_path(tmp_path: Path) -> None:
    path = tmp_path / "whitelist"
    path.write_bytes(b"192.0.2.1\n\xfe\n")
    with pytest.raises(WhitelistFileError, match=r"whitelist:2: not UTF-8"):
        load(path)
    path.write_text("192.0.2.1\nbogus\n")
    with pytest.raises(WhitelistFileError) as e:
        load(path)
    assert str(e.value).startswith(f"{path}:2: ")


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "whitelist"
    save(path, NETS)
    before = path.read_bytes()

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomicfile.os, "fsync", fail)
    with pytest.raises(OSError):
        whitelistfile.save(path, NETS[:1])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["whitelist"]
