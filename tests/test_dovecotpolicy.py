"""Dovecot's auth policy protocol on real sockets: answers, reports, hostile clients."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from streamclient import loaded_store, open_to

from dynscreen.control.accounts import FrozenStore
from dynscreen.control.dovecotpolicy import (
    BLOCKED_MSG,
    FROZEN_MSG,
    DovecotPolicyServer,
    Report,
    read_api_key,
)
from dynscreen.control.streamservice import socket_owner

from conftest import require_root

T0 = 1_780_000_000.0
BLOCKED = {"198.51.100.9"}
SUSPECT = {"192.0.2.77"}


def dovecot_body(command: str, *, login: str = "alice", remote: str = "203.0.113.7",
                 protocol: str = "imap", pwhash: str = "6c3", session: str | None = None,
                 success: bool = False, policy_reject: bool = False) -> bytes:
    """The JSON Dovecot 2.3 builds: auth_policy_request_attributes sorted by key, every
    value a string, and on a report ``success`` and ``policy_reject`` appended."""
    attrs = {"device_id": "", "login": login, "protocol": protocol, "pwhash": pwhash,
             "remote": remote}
    if session is not None:
        attrs["session"] = session
    text = "{" + ",".join(f'"{k}":{json.dumps(v)}' for k, v in sorted(attrs.items()))
    if command == "report":
        text += f',"success":{str(success).lower()},"policy_reject":{str(policy_reject).lower()}'
    return (text + "}").encode()


def dovecot_request(command: str, body: bytes, *, path: str = "/",
                    headers: dict[str, str] | None = None) -> bytes:
    """An HTTP request as Dovecot's http client sends it (POST, Content-Length)."""
    sep = "&" if "?" in path else "?"
    lines = [f"POST {path}{sep}command={command} HTTP/1.1", "Host: 127.0.0.1:10041",
             "Date: Sun, 06 Dec 2026 07:00:00 GMT", "User-Agent: dovecot/auth-policy-client",
             "Connection: Keep-Alive", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def response(self) -> tuple[int, dict[str, str], Any]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *header_lines = head.decode().split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {k.lower(): v.strip() for k, _, v in
                   (h.partition(":") for h in header_lines if h)}
        body = await self.reader.readexactly(int(headers["content-length"]))
        return int(status), headers, json.loads(body)

    async def ask(self, command: str, body: bytes, **kw: Any) -> tuple[int, Any]:
        self.writer.write(dovecot_request(command, body, **kw))
        status, _, answer = await self.response()
        return status, answer

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    def close(self) -> None:
        self.writer.close()


async def connect(server: DovecotPolicyServer) -> Client:
    return Client(*await open_to(server))


@pytest.fixture
def store(tmp_path: Path) -> FrozenStore:
    return loaded_store(tmp_path)


Scenario = Callable[[DovecotPolicyServer], Awaitable[Any]]


def serve(store: FrozenStore, scenario: Scenario, where: Any = ("127.0.0.1", 0),
          reports: list[Report] | None = None, **opts: Any) -> Any:
    """Run `scenario` against a fresh server on `where`, then close the server."""
    got = reports if reports is not None else []

    async def main() -> Any:
        server = DovecotPolicyServer(
            blocked=BLOCKED.__contains__, suspicious=SUSPECT.__contains__, frozen=store,
            on_report=got.append, clock=lambda: T0, **opts)
        await server.start(where)
        try:
            return await scenario(server)
        finally:
            await server.close()

    return asyncio.run(main())


def test_allow_answers_as_dovecot_expects(store: FrozenStore) -> None:
    store.freeze("alice", T0 - 60, service="imap", failures=10)

    async def scenario(server: DovecotPolicyServer) -> None:
        c = await connect(server)
        assert await c.ask("allow", dovecot_body("allow", login="bob")) == (200, {"status": 0})
        assert await c.ask("allow", dovecot_body("allow", remote="198.51.100.9")) == (
            200, {"status": -1, "msg": BLOCKED_MSG})
        # freeze_scope = "send": a frozen account still logs in to read its mail
        assert await c.ask("allow", dovecot_body("allow")) == (200, {"status": 0})
        server.freeze_login = True
        assert await c.ask("allow", dovecot_body("allow")) == (
            200, {"status": -1, "msg": FROZEN_MSG})
        assert await c.ask("allow", dovecot_body("allow", login="bob")) == (200, {"status": 0})
        # a source under suspicion waits, when a delay is set
        assert await c.ask("allow", dovecot_body("allow", login="bob", remote="192.0.2.77")) == (
            200, {"status": 0})
        server.delay = 3
        assert await c.ask("allow", dovecot_body("allow", login="bob", remote="192.0.2.77")) == (
            200, {"status": 3})
        c.close()
        assert (server.requests, server.rejects, server.delays, server.errors) == (7, 2, 1, 0)

    serve(store, scenario)


def test_reports_become_engine_events(store: FrozenStore) -> None:
    reports: list[Report] = []

    async def scenario(server: DovecotPolicyServer) -> None:
        c = await connect(server)
        bodies = [
            dovecot_body("report", session="kQHJ5Gv2x8V/AAAB"),
            dovecot_body("report", login="bob", protocol="pop3", success=True),
            dovecot_body("report", protocol="submission", pwhash="a01"),
            dovecot_body("report", policy_reject=True),  # refused here: not a new guess
        ]
        for body in bodies:
            assert await c.ask("report", body, path="/policy?site=a") == (200, {"status": 0})
        await asyncio.sleep(0.05)  # (the engine hears after the answer, on the next turn)
        c.close()

    serve(store, scenario, reports=reports)
    got = [(r.event.kind, r.event.ip, r.event.service, r.event.user, r.event.origin,
            r.event.session, r.pwhash) for r in reports]
    assert got == [
        ("auth_failure", "203.0.113.7", "imap", "alice", "dovecot-policy", "kQHJ5Gv2x8V/AAAB",
         "6c3"),
        ("auth_success", "203.0.113.7", "pop", "bob", "dovecot-policy", None, "6c3"),
        ("auth_failure", "203.0.113.7", "smtp", "alice", "dovecot-policy", None, "a01"),
    ]
    assert all(r.event.ts == T0 for r in reports)


def test_nested_and_extra_attributes_and_session_id(store: FrozenStore) -> None:
    """Keys with '/' nest in Dovecot's JSON; later versions add tried_password."""
    reports: list[Report] = []
    body = (b'{"login":"carol","remote":"2001:db8::5","session_id":"abc",'
            b'"tls":{"cipher":"TLS_AES_256_GCM_SHA384"},"success":false,'
            b'"policy_reject":false,"tried_password":true}')

    async def scenario(server: DovecotPolicyServer) -> None:
        c = await connect(server)
        assert await c.ask("report", body) == (200, {"status": 0})
        await asyncio.sleep(0.05)
        c.close()

    serve(store, scenario, reports=reports)
    [r] = reports
    assert (r.event.ip, r.event.user, r.event.session, r.event.service, r.pwhash) == (
        "2001:db8::5", "carol", "abc", None, "")


def test_keep_alive_and_pipelined_requests(store: FrozenStore) -> None:
    async def scenario(server: DovecotPolicyServer) -> None:
        c = await connect(server)
        for _ in range(100):
            assert await c.ask("allow", dovecot_body("allow")) == (200, {"status": 0})
        c.writer.write(b"".join(dovecot_request("allow", dovecot_body("allow", remote=r))
                                for r in ("198.51.100.9", "203.0.113.1", "198.51.100.9")))
        answers = [(await c.response())[2]["status"] for _ in range(3)]
        assert answers == [-1, 0, -1]
        # Connection: close is honoured
        c.writer.write(dovecot_request("allow", dovecot_body("allow"),
                                       headers={"Connection": "close"}).replace(
            b"Connection: Keep-Alive\r\n", b""))
        status, headers, _ = await c.response()
        assert status == 200 and headers["connection"] == "close"
        assert await c.closed()
        assert server.errors == 0

    serve(store, scenario)


def test_api_key(store: FrozenStore, tmp_path: Path) -> None:
    async def scenario(server: DovecotPolicyServer) -> None:
        ok = await connect(server)
        assert await ok.ask("allow", dovecot_body("allow"), headers={"X-API-Key": "s3cret"}) == (
            200, {"status": 0})
        for headers in ({}, {"X-API-Key": "guess"}, {"Authorization": "s3cret"}):
            c = await connect(server)
            status, answer = await c.ask("allow", dovecot_body("allow", remote="198.51.100.9"),
                                         headers=headers)
            assert status == 401 and answer["status"] == 0  # no verdict for a stranger
            assert await c.closed()
        assert server.errors == 3 and server.requests == 1

    serve(store, scenario, api_key="s3cret")
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    assert read_api_key(str(key)) == "s3cret" and read_api_key("") == ""
    key.write_text("two words\n")
    with pytest.raises(ValueError, match="without spaces"):
        read_api_key(str(key))


def _raw(command: str = "allow", body: bytes | None = None) -> bytes:
    return dovecot_request(command, dovecot_body(command) if body is None else body)


HOSTILE = [
    ("get", b"GET /?command=allow HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ("request line", b"POST /?command=allow\r\nHost: x\r\n\r\n", 400),
    ("http/2", b"POST /?command=allow HTTP/2.0\r\nContent-Length: 2\r\n\r\n{}", 400),
    ("command", _raw().replace(b"command=allow", b"command=deny"), 400),
    ("no command", _raw().replace(b"?command=allow", b""), 400),
    ("not json", _raw(body=b"login=alice"), 400),
    ("json array", _raw(body=b'["alice"]'), 400),
    ("bad utf-8", _raw(body=b'{"login":"\xff"}'), 400),
    ("chunked", b"POST /?command=allow HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\n{}\r\n0\r\n\r\n", 411),
    ("no length", b"POST /?command=allow HTTP/1.1\r\nHost: x\r\n\r\n", 411),
    ("two lengths", b"POST /?command=allow HTTP/1.1\r\nContent-Length: 2\r\n"
                    b"Content-Length: 3\r\n\r\n{}", 400),
    ("bad length", b"POST /?command=allow HTTP/1.1\r\nContent-Length: -2\r\n\r\n{}", 400),
    ("big body", b"POST /?command=allow HTTP/1.1\r\nContent-Length: 100000\r\n\r\n{", 413),
    ("big headers", b"POST /?command=allow HTTP/1.1\r\nX-Pad: " + b"a" * 20000, 431),
    ("many headers", b"POST /?command=allow HTTP/1.1\r\n" + b"A: b\r\n" * 150 + b"\r\n", 400),
]


@pytest.mark.parametrize(("name", "data", "status"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_malformed_requests_are_refused_and_closed(
    store: FrozenStore, name: str, data: bytes, status: int
) -> None:
    reports: list[Report] = []

    async def scenario(server: DovecotPolicyServer) -> None:
        c = await connect(server)
        c.writer.write(data)
        got, _, answer = await c.response()
        assert (got, answer["status"]) == (status, 0), name
        assert await c.closed()
        assert server.errors == 1 and server.requests == 0
        # the service goes on for everybody else
        ok = await connect(server)
        assert await ok.ask("allow", dovecot_body("allow")) == (200, {"status": 0})
        ok.close()

    serve(store, scenario, reports=reports)
    assert reports == []


def test_slow_client_hits_the_deadline(store: FrozenStore, caplog: pytest.LogCaptureFixture
                                       ) -> None:
    caplog.set_level(logging.WARNING)

    async def scenario(server: DovecotPolicyServer) -> float:
        loop = asyncio.get_running_loop()
        headers_only = await connect(server)
        headers_only.writer.write(b"POST /?command=allow HTTP/1.1\r\nHost: x\r\n")
        half_body = await connect(server)
        half_body.writer.write(_raw()[:-5])
        start = loop.time()
        assert await headers_only.closed() and await half_body.closed()
        assert server.errors == 2
        return loop.time() - start

    took = serve(store, scenario, request_timeout=0.5)
    assert 0.4 < took < 3
    assert caplog.text.count("not complete within 0.5 s") == 2


def test_idle_connection_is_closed_quietly(store: FrozenStore) -> None:
    async def scenario(server: DovecotPolicyServer) -> None:
        c = await connect(server)
        assert await c.ask("allow", dovecot_body("allow")) == (200, {"status": 0})
        assert await c.closed()
        assert server.errors == 0 and server.active == 0

    serve(store, scenario, idle_timeout=0.3)


def test_connection_cap_evicts_the_idlest(store: FrozenStore) -> None:
    async def scenario(server: DovecotPolicyServer) -> None:
        idle = [await connect(server) for _ in range(4)]
        await asyncio.sleep(0.05)
        newest = await connect(server)
        assert await idle[0].closed()
        assert await newest.ask("allow", dovecot_body("allow")) == (200, {"status": 0})
        assert server.evicted == 1 and server.errors == 0 and server.active == 4
        for c in idle[1:] + [newest]:
            c.close()

    serve(store, scenario, max_connections=4)


def test_lookup_failure_allows(store: FrozenStore, caplog: pytest.LogCaptureFixture) -> None:
    """Fail open, as Dovecot does without an answer: a broken lookup lets the login go on."""

    def broken(address: str) -> bool:
        raise RuntimeError("index gone")

    async def main() -> None:
        reports: list[Report] = []
        server = DovecotPolicyServer(blocked=broken, frozen=store, on_report=reports.append)
        await server.start(("127.0.0.1", 0))
        try:
            c = await connect(server)
            assert await c.ask("allow", dovecot_body("allow")) == (200, {"status": 0})
            c.close()
        finally:
            await server.close()

    asyncio.run(main())
    assert "lookup failed" in caplog.text


def test_a_failing_report_is_logged_and_counted(store: FrozenStore,
                                               caplog: pytest.LogCaptureFixture) -> None:
    def broken(report: Report) -> None:
        raise RuntimeError("engine fell over")

    async def main() -> None:
        server = DovecotPolicyServer(blocked=BLOCKED.__contains__, frozen=store,
                                     on_report=broken)
        await server.start(("127.0.0.1", 0))
        try:
            c = await connect(server)
            assert await c.ask("report", dovecot_body("report")) == (200, {"status": 0})
            await asyncio.sleep(0.05)
            assert await c.ask("report", dovecot_body("report")) == (200, {"status": 0})
            await asyncio.sleep(0.05)
            assert server.errors == 2 and server.reports == 2
            c.close()
        finally:
            await server.close()

    asyncio.run(main())
    assert "engine fell over" in caplog.text


def test_unix_socket_belongs_to_dovecot(store: FrozenStore, tmp_path: Path) -> None:
    require_root()
    path = tmp_path / "run" / "dynscreen-policy"

    async def scenario(server: DovecotPolicyServer) -> None:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert (st.st_uid, st.st_gid) == socket_owner(path, "dovecot")
        c = await connect(server)
        assert await c.ask("allow", dovecot_body("allow", remote="198.51.100.9")) == (
            200, {"status": -1, "msg": BLOCKED_MSG})
        c.close()

    serve(store, scenario, where=path)
    assert not path.exists()
    try:
        pw = pwd.getpwnam("dovecot")
    except KeyError:
        return
    assert socket_owner(path, "dovecot") == (pw.pw_uid, pw.pw_gid)


def test_check_config_says_what_dovecot_needs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dynscreen.cli.app import app

    key = tmp_path / "key"
    key.write_text("s3cret\n")
    conf = tmp_path / "dynscreen.toml"
    conf.write_text(f'[accounts]\nfreeze_scope = "login"\ndovecot_policy_listen = '
                    f'"127.0.0.1:10041"\ndovecot_policy_api_key_file = "{key}"\n'
                    f'[[logs]]\npath = "{tmp_path / "mail.log"}"\n')
    (tmp_path / "mail.log").touch()
    r = CliRunner().invoke(app, ["check-config", str(conf)])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "dovecot auth policy: on 127.0.0.1:10041 (freeze_scope login" in out
    for line in ("auth_policy_server_url = http://127.0.0.1:10041/",
                 "auth_policy_request_attributes = login=%{requested_username} "
                 "pwhash=%{hashed_password} remote=%{rip}", "auth_policy_reject_on_fail = no",
                 f"auth_policy_server_api_header = X-API-Key:<the key in {key}>"):
        assert line in out, line
    assert "s3cret" not in r.output  # the key stays in its file
    nonce = [ln for ln in out.splitlines() if "auth_policy_hash_nonce = " in ln]
    assert len(nonce) == 1 and len(nonce[0].split("= ")[1]) == 32
    # off, and a freeze scope that then does nothing
    conf.write_text('[accounts]\nfreeze_scope = "login"\n'
                    f'[[logs]]\npath = "{tmp_path / "mail.log"}"\n')
    r = CliRunner().invoke(app, ["check-config", str(conf)])
    assert r.exit_code == 0 and "dovecot auth policy: off" in r.stdout
    assert 'freeze_scope = "login" needs accounts.dovecot_policy_listen' in r.output
    # a TCP listener without a key is named, as is a key file that cannot be read
    conf.write_text('[accounts]\ndovecot_policy_listen = "127.0.0.1:10041"\n'
                    f'dovecot_policy_api_key_file = "{tmp_path / "nokey"}"\n'
                    f'[[logs]]\npath = "{tmp_path / "mail.log"}"\n')
    r = CliRunner().invoke(app, ["check-config", str(conf)])
    assert "the daemon will not start" in r.output
    conf.write_text('[accounts]\ndovecot_policy_listen = "127.0.0.1:10041"\n'
                    f'[[logs]]\npath = "{tmp_path / "mail.log"}"\n')
    r = CliRunner().invoke(app, ["check-config", str(conf)])
    assert "without an API key" in r.output
