"""The client side of the control socket: finding the daemon and mapping its replies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fakedaemon import (
    Error,
    FakeDaemon,
    Raw,
    fake_fixture,  # noqa: F401  (provides the `fake` fixture)
    invoke,
    no_ambient_fixture,  # noqa: F401  (the autouse `no_ambient` fixture)
    short_dir,
)

from dynscreen.cli import client
from dynscreen.cli.app import Globals, OperationFailed, UserError
from dynscreen.control import ctlproto

REAL_DEFAULT = client.DEFAULT_SOCKET  # before the fixture points it elsewhere
BROKEN_CONFIG = """
[screening]
mode = "bogus"          # invalid: the daemon would refuse this file
[screening.limits]
auth_failures = "five"
[daemon]
socket = "{socket}"
"""


def config_file(tmp_path: Path, sock: Path | str, text: str = BROKEN_CONFIG) -> Path:
    path = tmp_path / "dynscreen.toml"
    path.write_text(text.format(socket=sock))
    return path


# --- discovery order ---


def test_socket_option_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNSCREEN_SOCKET", "/env/s.sock")
    cfg = config_file(tmp_path, "/cfg/s.sock")
    assert client.socket_path(Globals(config=cfg, socket=Path("/opt/s.sock"))) == Path(
        "/opt/s.sock"
    )


def test_env_before_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNSCREEN_SOCKET", "/env/s.sock")
    cfg = config_file(tmp_path, "/cfg/s.sock")
    assert client.socket_path(Globals(config=cfg, socket=None)) == Path("/env/s.sock")


def test_config_socket_even_when_config_is_broken(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "/cfg/s.sock")
    assert client.socket_path(Globals(config=cfg, socket=None)) == Path("/cfg/s.sock")
    # not even valid TOML: the socket line is still found
    cfg.write_text('[screening\nports = [25,,]\n[daemon]\nsocket = "/cfg/t.sock"\n')
    assert client.socket_path(Globals(config=cfg, socket=None)) == Path("/cfg/t.sock")


def test_config_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config_file(tmp_path, "/cfg/s.sock")
    monkeypatch.setenv("DYNSCREEN_CONFIG", str(cfg))
    assert client.socket_path(Globals(config=None, socket=None)) == Path("/cfg/s.sock")


def test_default_when_nothing_says(tmp_path: Path) -> None:
    assert client.socket_path(Globals(config=None, socket=None)) == client.DEFAULT_SOCKET
    # a config without [daemon].socket, or a missing file, falls back too
    cfg = config_file(tmp_path, "", text="[screening]\nmode = 'monitor'\n")
    assert client.socket_path(Globals(config=cfg, socket=None)) == client.DEFAULT_SOCKET
    missing = tmp_path / "absent.toml"
    assert client.socket_path(Globals(config=missing, socket=None)) == client.DEFAULT_SOCKET


def test_the_built_in_default_path() -> None:
    assert Path("/run/dynscreen/control.sock") == REAL_DEFAULT


def test_end_to_end_each_source(
    fake: FakeDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command really talks to the socket each source names."""
    assert invoke("--socket", str(fake.path), "status").exit_code == 0
    assert invoke("status", env={"DYNSCREEN_SOCKET": str(fake.path)}).exit_code == 0
    cfg = config_file(tmp_path, fake.path)
    assert invoke("--config", str(cfg), "status").exit_code == 0
    assert invoke("status", env={"DYNSCREEN_CONFIG": str(cfg)}).exit_code == 0
    monkeypatch.setattr(client, "DEFAULT_SOCKET", fake.path)
    assert invoke("status").exit_code == 0
    assert fake.commands() == ["status"] * 5


def test_option_is_not_silently_replaced(fake: FakeDaemon, tmp_path: Path) -> None:
    """A wrong --socket fails, even though the env names a live daemon."""
    wrong = tmp_path / "wrong.sock"
    out = invoke("--socket", str(wrong), "status", env={"DYNSCREEN_SOCKET": str(fake.path)})
    assert out.exit_code == 1
    assert f"no daemon at {wrong}" in out.stderr
    assert fake.requests == []


# --- no daemon, permission, refused ---


NO_DAEMON = "start it with `systemctl start dynscreen` (the service) or `dynscreen run`"


def no_pins_config(tmp_path: Path) -> Path:
    """A config whose pin path holds nothing: `status` has no daemon and no kernel state."""
    path = tmp_path / "nopins.toml"
    path.write_text(f'[daemon]\npin_path = "{tmp_path / "pins"}"\n')
    return path


def test_no_daemon_message(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    cfg = no_pins_config(tmp_path)
    out = invoke("--config", str(cfg), "--socket", str(path), "status")
    assert out.exit_code == 1
    assert out.stdout == ""
    if os.geteuid() == 0:  # root: the pins are looked at, and found missing
        assert out.stderr == (f"dynscreen: no daemon at {path} — {NO_DAEMON}; nothing of "
                              f"dynscreen is in the kernel either (no pinned maps at "
                              f"{tmp_path / 'pins'})\n")
    else:
        assert out.stderr.startswith(f"dynscreen: no daemon at {path} — {NO_DAEMON} (as root")


def test_no_daemon_at_default_path_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = Path("/run/dynscreen/control.sock")
    if default.exists():
        pytest.skip("a daemon socket exists on this machine")
    monkeypatch.setattr(client, "DEFAULT_SOCKET", default)
    out = invoke("status", env={"DYNSCREEN_CONFIG": str(no_pins_config(tmp_path))})
    assert out.exit_code == 1
    assert f"no daemon at /run/dynscreen/control.sock — {NO_DAEMON}" in out.stderr


def test_connection_refused_is_no_daemon() -> None:
    """A stale socket file (daemon killed) refuses connections: still 'no daemon'."""
    with short_dir() as d:
        stale = d / "stale.sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(stale))
        s.close()
        with pytest.raises(OperationFailed, match=r"^no daemon at .*stale\.sock — start it"):
            client.request(stale, "ping")


def test_not_a_socket_is_no_daemon(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(OperationFailed, match="no daemon at"):
        client.request(plain, "ping")
    with pytest.raises(OperationFailed, match="no daemon at"):
        client.request(plain / "below", "ping")


def test_permission_denied_says_root(fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: socket.socket, address: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket.socket, "connect", denied)
    out = invoke("--socket", str(fake.path), "status")
    assert out.exit_code == 1
    assert "permission denied" in out.stderr and "root" in out.stderr
    assert str(fake.path) in out.stderr


def test_socket_path_too_long() -> None:
    with pytest.raises(UserError, match="too long"):
        client.request(Path("/tmp/" + "x" * 200), "ping")


# --- replies ---


def test_result_is_returned(fake: FakeDaemon) -> None:
    assert client.request(fake.path, "ping") == {"pid": 4242, "version": "0.1.0"}
    assert client.request(str(fake.path), "unblock", addr="192.0.2.1") == {"removed": True}
    assert fake.requests[-1] == {"cmd": "unblock", "addr": "192.0.2.1"}
    g = Globals(config=None, socket=fake.path)
    assert client.request(g, "ping")["pid"] == 4242


def test_code_2_is_user_error(fake: FakeDaemon) -> None:
    fake.answer("block", Error("invalid address 'x'", 2))
    with pytest.raises(UserError, match="^invalid address 'x'$"):
        client.request(fake.path, "block", addr="x", minutes=None, note=None)


def test_code_1_is_operation_failed(fake: FakeDaemon) -> None:
    fake.answer("block", Error("block table full (1000000 entries)", 1))
    with pytest.raises(OperationFailed, match="block table full"):
        client.request(fake.path, "block", addr="192.0.2.1", minutes=None, note=None)


def test_error_exit_codes_through_the_cli(fake: FakeDaemon) -> None:
    fake.answer("status", Error("nope, invalid", 2))
    out = invoke("--socket", str(fake.path), "status")
    assert (out.exit_code, out.stderr) == (2, "dynscreen: nope, invalid\n")
    fake.answer("status", Error("it broke", 1))
    out = invoke("--socket", str(fake.path), "status")
    assert (out.exit_code, out.stderr) == (1, "dynscreen: it broke\n")


def test_unknown_command_gets_the_protocol_error(fake: FakeDaemon) -> None:
    with pytest.raises(UserError, match="unknown command 'frobnicate'"):
        client.request(fake.path, "frobnicate")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"this is not json\n", "garbled reply"),
        (b'["ok", true]\n', "garbled reply"),
        (b'{"ok": "yes", "result": 1}\n', "garbled reply"),
        (b'{"ok": true}\n', "no result"),
        (b'{"ok": true, "result": {"pid": 4', "truncated reply"),
        (b"", "closed the connection with no reply"),
        (b"\xff\xfe\n", "garbled reply"),
    ],
)
def test_bad_replies_are_failures(fake: FakeDaemon, raw: bytes, message: str) -> None:
    fake.answer("ping", Raw(raw))
    with pytest.raises(OperationFailed, match=message):
        client.request(fake.path, "ping")


def test_error_reply_without_text(fake: FakeDaemon) -> None:
    fake.answer("ping", Raw(b'{"ok": false}\n'))
    with pytest.raises(OperationFailed, match="refused"):
        client.request(fake.path, "ping")


def test_timeout(fake: FakeDaemon) -> None:
    def slow(req: dict[str, Any]) -> Any:
        time.sleep(1.0)
        return {}

    fake.answer("ping", slow)
    started = time.monotonic()
    with pytest.raises(OperationFailed, match="did not answer within 0.2 s"):
        client.request(fake.path, "ping", timeout=0.2)
    assert time.monotonic() - started < 0.9


def test_request_too_large_is_not_sent(fake: FakeDaemon) -> None:
    with pytest.raises(UserError, match="request too large"):
        client.request(fake.path, "blocks_apply", text="x" * ctlproto.MAX_REQUEST)
    assert fake.requests == []


def test_one_json_line_each_way(fake: FakeDaemon) -> None:
    """The wire format itself: what a client sends is what ctlproto decodes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(fake.path))
        s.sendall(ctlproto.encode({"cmd": "ping"}))
        reply = s.makefile("rb").readline()
    assert reply == ctlproto.ok({"pid": 4242, "version": "0.1.0"})


# --- the installed command: real exit codes, no traceback ---


def installed() -> Path:
    exe = Path(sys.executable).parent / "dynscreen"
    if not exe.exists():
        pytest.skip("dynscreen is not installed in this environment")
    return exe


def test_installed_no_daemon(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    cfg = no_pins_config(tmp_path)
    proc = subprocess.run(
        [installed(), "--config", str(cfg), "--socket", str(path), "unblock", "192.0.2.1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"dynscreen: no daemon at {path} — {NO_DAEMON}")
    assert "Traceback" not in proc.stdout + proc.stderr
