"""The Postfix policy service on real sockets: answers, many clients, hostile clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from streamclient import loaded_store, open_to

from dynscreen.control.accounts import FrozenStore
from dynscreen.control.policy import PolicyServer, socket_owner

from conftest import require, require_root

T0 = 1_780_000_000.0
REPLY = "5.7.1 account temporarily frozen after repeated authentication failures"

# Every attribute of SMTPD_POLICY_README, as Postfix 3.8+ sends them for RCPT TO.
FULL_REQUEST = {
    "request": "smtpd_access_policy",
    "protocol_state": "RCPT",
    "protocol_name": "ESMTP",
    "helo_name": "laptop.example.com",
    "queue_id": "8045F2AB23",
    "sender": "alice@example.com",
    "recipient": "bob@example.org",
    "recipient_count": "0",
    "client_address": "203.0.113.7",
    "client_name": "dsl-7.example.net",
    "reverse_client_name": "dsl-7.example.net",
    "instance": "123.456.7",
    "sasl_method": "plain",
    "sasl_username": "alice@example.com",
    "sasl_sender": "",
    "size": "12345",
    "ccert_subject": "",
    "ccert_issuer": "",
    "ccert_fingerprint": "",
    "encryption_protocol": "TLSv1.3",
    "encryption_cipher": "TLS_AES_256_GCM_SHA384",
    "encryption_keysize": "256",
    "etrn_domain": "",
    "stress": "",
    "ccert_pubkey_fingerprint": "",
    "client_port": "52114",
    "policy_context": "submission",
    "server_address": "192.0.2.25",
    "server_port": "587",
    "compatibility_level": "3.6",
    "mail_version": "3.8.1",
}


def encode(attrs: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


def req(user: str | None = None, **more: str) -> dict[str, str]:
    attrs = dict(FULL_REQUEST, sasl_username=user or "")
    if user is None:  # mail from another MTA: no SASL login at all
        for k in ("sasl_method", "sasl_username", "sasl_sender"):
            attrs[k] = ""
    attrs.update(more)
    return attrs


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def ask(self, attrs: dict[str, str]) -> str:
        self.writer.write(encode(attrs))
        await self.writer.drain()
        return await self.reply()

    async def reply(self) -> str:
        data = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 5)
        return data.decode()[:-2]

    async def closed(self, within: float = 5) -> bool:
        """True once the server closed the connection (EOF or reset)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), within):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        return True

    def close(self) -> None:
        self.writer.close()


async def connect(server: PolicyServer) -> Client:
    return Client(*await open_to(server))


@pytest.fixture
def store(tmp_path: Path) -> FrozenStore:
    return loaded_store(tmp_path)


Scenario = Callable[[PolicyServer], Awaitable[Any]]


def serve(
    store: FrozenStore, scenario: Scenario, where: Any = ("127.0.0.1", 0), **opts: Any
) -> Any:
    """Run `scenario` against a fresh server on `where`, then close the server."""

    async def main() -> Any:
        server = PolicyServer(store, REPLY, clock=lambda: T0, **opts)
        await server.start(where)
        try:
            return await scenario(server)
        finally:
            await server.close()

    return asyncio.run(main())


def test_full_request_is_dunno_and_frozen_is_rejected(store: FrozenStore) -> None:
    store.freeze("Alice@Example.com", T0 - 60, service="imap", failures=10)

    async def scenario(server: PolicyServer) -> None:
        c = await connect(server)
        assert await c.ask(req("bob@example.org")) == "action=DUNNO"
        assert await c.ask(req(None, recipient="alice@example.com")) == "action=DUNNO"
        for spelling in ("alice@example.com", "Alice@Example.COM", "ALICE@EXAMPLE.COM"):
            assert await c.ask(req(spelling)) == f"action=REJECT {REPLY}"
        # the frozen account still RECEIVES: mail to it from outside is not touched
        assert await c.ask(req(None, recipient="Alice@Example.com")) == "action=DUNNO"
        assert (server.requests, server.rejects, server.errors) == (6, 3, 0)
        c.close()

    serve(store, scenario)


def test_unfreeze_and_freeze_take_effect_at_once(store: FrozenStore) -> None:
    async def scenario(server: PolicyServer) -> None:
        c = await connect(server)
        assert await c.ask(req("alice@example.com")) == "action=DUNNO"
        store.freeze("alice@example.com", T0)
        assert await c.ask(req("alice@example.com")) == f"action=REJECT {REPLY}"
        store.unfreeze("ALICE@example.com")
        assert await c.ask(req("alice@example.com")) == "action=DUNNO"
        store.freeze("alice@example.com", T0 - 600, minutes=10)  # ended exactly now
        assert await c.ask(req("alice@example.com")) == "action=DUNNO"
        server.reply = "5.7.1 frozen: call the help desk"  # a reload changes the text
        store.freeze("carol@example.net", T0)
        want = "action=REJECT 5.7.1 frozen: call the help desk"
        assert await c.ask(req("carol@example.net")) == want
        c.close()

    serve(store, scenario)


def test_many_requests_on_one_connection_and_pipelined(store: FrozenStore) -> None:
    store.freeze("alice@example.com", T0)

    async def scenario(server: PolicyServer) -> None:
        c = await connect(server)
        for i in range(200):
            user = "alice@example.com" if i % 2 else f"user{i}@example.com"
            want = f"action=REJECT {REPLY}" if i % 2 else "action=DUNNO"
            assert await c.ask(req(user, recipient_count=str(i))) == want
        # three requests in one write, CRLF line ends in one of them
        crlf = encode(req("x@example.com")).replace(b"\n", b"\r\n")
        c.writer.write(encode(req("alice@example.com")) + crlf + encode(req(None)))
        await c.writer.drain()
        assert [await c.reply() for _ in range(3)] == [
            f"action=REJECT {REPLY}", "action=DUNNO", "action=DUNNO",
        ]
        assert server.requests == 203
        c.close()

    serve(store, scenario)


def test_fifty_concurrent_connections(store: FrozenStore) -> None:
    store.freeze("alice@example.com", T0)

    async def one(server: PolicyServer, n: int) -> int:
        c = await connect(server)
        rejects = 0
        for i in range(20):
            user = "alice@example.com" if (n + i) % 4 == 0 else f"u{n}.{i}@example.com"
            reply = await c.ask(req(user))
            rejects += reply.startswith("action=REJECT")
            frozen = user.startswith("alice")
            assert reply == (f"action=REJECT {REPLY}" if frozen else "action=DUNNO")
        c.close()
        return rejects

    async def scenario(server: PolicyServer) -> None:
        clients = await asyncio.gather(*(connect(server) for _ in range(50)))
        assert len(clients) == 50
        for c in clients:
            c.close()
        results = await asyncio.gather(*(one(server, n) for n in range(50)))
        assert sum(results) == server.rejects == 250
        assert server.requests == 1000 and server.errors == 0 and server.evicted == 0

    serve(store, scenario)


def test_other_request_types_get_dunno(store: FrozenStore) -> None:
    store.freeze("alice@example.com", T0)

    async def scenario(server: PolicyServer) -> None:
        c = await connect(server)
        other = {"request": "something_else", "sasl_username": "alice@example.com"}
        assert await c.ask(other) == "action=DUNNO"
        # invalid UTF-8 in a value is data Postfix may pass on: answered, not fatal
        c.writer.write(b"request=smtpd_access_policy\nhelo_name=caf\xe9\nsasl_username=alice@example.com\n\n")
        assert await c.reply() == f"action=REJECT {REPLY}"
        c.close()

    serve(store, scenario)


def test_unix_socket(store: FrozenStore, tmp_path: Path) -> None:
    path = tmp_path / "run" / "policy.sock"
    store.freeze("alice@example.com", T0)

    async def scenario(server: PolicyServer) -> None:
        assert server.address == path
        assert stat.S_ISSOCK(path.stat().st_mode)
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660  # smtpd (postfix) only
        assert (st.st_uid, st.st_gid) == socket_owner(path)
        c = await connect(server)
        assert await c.ask(req("bob@example.org")) == "action=DUNNO"
        assert await c.ask(req("alice@EXAMPLE.com")) == f"action=REJECT {REPLY}"
        cs = await asyncio.gather(*(connect(server) for _ in range(20)))
        replies = await asyncio.gather(*(x.ask(req("alice@example.com")) for x in cs))
        assert set(replies) == {f"action=REJECT {REPLY}"}
        # a second server on the same live socket is refused, the first one is untouched
        with pytest.raises(OSError, match="another process is listening"):
            await PolicyServer(store).start(path)
        assert await c.ask(req("bob@example.org")) == "action=DUNNO"
        for x in [c, *cs]:
            x.close()

    old = os.umask(0o077)
    try:
        serve(store, scenario, where=path)
    finally:
        os.umask(old)
    assert not path.exists()  # removed at close

    # a stale socket left by a killed daemon is replaced
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()

    async def again(server: PolicyServer) -> None:
        c = await connect(server)
        assert await c.ask(req("alice@example.com")) == f"action=REJECT {REPLY}"
        c.close()

    serve(store, again, where=path)

    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        serve(store, again, where=path)
    assert path.read_text() == "not a socket"


# --- hostile and broken clients: each is closed, another client keeps being served ---------

LIMITS = {"request_timeout": 0.5, "idle_timeout": 2.0}


def hostile(
    store: FrozenStore, attack: Callable[[Client], Awaitable[None]], **opts: Any
) -> PolicyServer:
    """Run `attack` on one connection while a good client talks on another."""
    store.freeze("alice@example.com", T0)

    async def scenario(server: PolicyServer) -> PolicyServer:
        good = await connect(server)
        bad = await connect(server)
        assert await good.ask(req("alice@example.com")) == f"action=REJECT {REPLY}"
        await attack(bad)
        assert await bad.closed()
        bad.close()
        assert await good.ask(req("alice@example.com")) == f"action=REJECT {REPLY}"
        fresh = await connect(server)
        assert await fresh.ask(req("bob@example.org")) == "action=DUNNO"
        fresh.close()
        good.close()
        return server

    return serve(store, scenario, **{**LIMITS, **opts})


async def send(c: Client, data: bytes) -> None:
    """Write what the attacker sends; the server may already have hung up."""
    c.writer.write(data)
    with contextlib.suppress(OSError):
        await c.writer.drain()


@pytest.mark.parametrize(
    ("name", "data", "logged"),
    [
        ("long line", b"helo_name=" + b"x" * 9000 + b"\n\n", "attribute line over 8192 bytes"),
        ("long line, no newline yet", b"helo_name=" + b"x" * 9000, "attribute line over 8192"),
        ("big request", b"".join(b"a%d=%s\n" % (i, b"y" * 800) for i in range(90)) + b"\n",
         "request over 65536 bytes"),
        ("many attributes", b"".join(b"a%d=1\n" % i for i in range(101)) + b"\n",
         "request over 100 attributes"),
        ("binary", bytes(range(256)) * 4, "not a name=value line"),
        ("invalid UTF-8 name", b"\xff\xfe=1\n\n", "not a name=value line"),
        ("no equals sign", b"GET / HTTP/1.0\r\n\r\n", "not a name=value line"),
        ("control bytes in a value", b"request=smtpd_access_policy\x00\x01\n\n",
         "control characters"),
        ("empty request", b"\n", "empty request"),
    ],
)
def test_hostile_input(
    store: FrozenStore, caplog: pytest.LogCaptureFixture, name: str, data: bytes, logged: str
) -> None:
    async def attack(c: Client) -> None:
        await send(c, data)

    with caplog.at_level(logging.WARNING, logger="dynscreen.control.policy"):
        server = hostile(store, attack)
    assert server.errors == 1, name
    assert logged in caplog.text, caplog.text
    assert server.active == 0


def test_eof_in_the_middle_of_a_request(
    store: FrozenStore, caplog: pytest.LogCaptureFixture
) -> None:
    async def attack(c: Client) -> None:
        await send(c, b"request=smtpd_access_policy\nsasl_username=alice@example.com\n")
        c.writer.write_eof()

    with caplog.at_level(logging.WARNING, logger="dynscreen.control.policy"):
        server = hostile(store, attack)
    assert server.errors == 1 and "closed in the middle of a request" in caplog.text
    assert server.requests == 3  # the good client's; nothing answered to the half request


def test_slow_request_hits_the_deadline(
    store: FrozenStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A request trickled in byte by byte ends at the request deadline, not the idle timeout."""

    async def attack(c: Client) -> None:
        for b in b"request=smtpd_access_policy\nsasl_username=x\n":
            if c.reader.at_eof():
                return
            await send(c, bytes([b]))
            await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="dynscreen.control.policy"):
        server = hostile(store, attack, idle_timeout=60.0)
    assert server.errors == 1 and "not complete within 0.5 s" in caplog.text


def test_idle_connection_is_closed_quietly(
    store: FrozenStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle past the idle timeout: closed without counting an error; a busy client stays."""

    async def scenario(server: PolicyServer) -> PolicyServer:
        idle, busy = await connect(server), await connect(server)
        assert await idle.ask(req("bob@example.org")) == "action=DUNNO"  # then says nothing
        for _ in range(8):
            assert await busy.ask(req("bob@example.org")) == "action=DUNNO"
            await asyncio.sleep(0.1)
        assert await idle.closed()
        assert await busy.ask(req("bob@example.org")) == "action=DUNNO"
        idle.close()
        busy.close()
        return server

    with caplog.at_level(logging.INFO, logger="dynscreen.control.policy"):
        server = serve(store, scenario, idle_timeout=0.5, request_timeout=0.2)
    assert server.errors == 0 and "idle for 0.5 s" in caplog.text


def test_connection_cap_evicts_the_idlest(
    store: FrozenStore, caplog: pytest.LogCaptureFixture
) -> None:
    """At the cap a new connection is taken and the idlest one closed, never the new one."""

    async def scenario(server: PolicyServer) -> None:
        held = [await connect(server) for _ in range(3)]
        for c in held:
            assert await c.ask(req("bob@example.org")) == "action=DUNNO"
        assert await held[0].ask(req("alice@example.com")) == "action=DUNNO"  # busiest
        extra = await connect(server)
        assert await extra.ask(req("bob@example.org")) == "action=DUNNO"
        assert await held[1].closed(), "the idlest connection made room"
        assert server.evicted == 1 and server.errors == 0
        assert await held[0].ask(req("bob@example.org")) == "action=DUNNO"
        assert await held[2].ask(req("bob@example.org")) == "action=DUNNO"
        for c in [*held, extra]:
            c.close()

    with caplog.at_level(logging.WARNING, logger="dynscreen.control.policy"):
        serve(store, scenario, max_connections=3)
    assert "3 connections open, the limit; closed the idlest one" in caplog.text


def test_idle_flood_from_one_peer_does_not_lock_postfix_out(store: FrozenStore) -> None:
    """600 idle connections from one peer (a local user on 127.0.0.1): a fresh Postfix-like
    client still gets its answer, and the flood costs at most MAX_PER_PEER sockets."""
    store.freeze("alice@example.com", T0)

    async def scenario(server: PolicyServer) -> None:
        assert server.address is not None
        flood = []
        for _ in range(600):
            flood.append(await asyncio.open_connection(*server.address))
        postfix = await connect(server)
        assert await postfix.ask(req("alice@example.com")) == f"action=REJECT {REPLY}"
        assert await postfix.ask(req("bob@example.org")) == "action=DUNNO"
        assert server.active <= server.max_per_peer
        assert server.evicted >= 600 + 1 - server.max_per_peer
        postfix.close()
        for _, w in flood:
            w.close()

    serve(store, scenario)


def test_only_postfix_can_connect_to_the_unix_socket(store: FrozenStore) -> None:
    """The socket is postfix's, 0660: another local user is refused by the kernel."""
    import pwd
    import subprocess
    import sys
    import tempfile

    require_root()
    users = {p.pw_name: p for p in pwd.getpwall()}
    require("postfix" in users, "needs a postfix user (`make setup-dev` installs Postfix)")
    postfix = users["postfix"]
    base = Path(tempfile.mkdtemp(prefix="dynscreen-policy-"))
    base.chmod(0o755)
    path = base / "private" / "dynscreen-policy"
    probe = ("import socket,sys; s=socket.socket(socket.AF_UNIX); "
             "s.connect(sys.argv[1]); s.sendall(b'request=smtpd_access_policy\\n"
             "sasl_username=alice@example.com\\n\\n'); print(s.recv(200).decode())")

    # The probe needs only the standard library: the interpreter the virtualenv was made
    # from (-I: nothing of the checkout), which any user can run, also when the checkout
    # sits in a directory only root may enter (a clone inside a 0700 directory).
    python = getattr(sys, "_base_executable", sys.executable)

    def as_user(uid: int, gid: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python, "-I", "-c", probe, str(path)], capture_output=True, text=True,
            user=uid, group=gid, extra_groups=[], cwd=base, timeout=10, check=False)

    async def scenario(server: PolicyServer) -> None:
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            postfix.pw_uid, postfix.pw_gid, 0o660)
        ok = await asyncio.to_thread(as_user, postfix.pw_uid, postfix.pw_gid)
        assert f"action=REJECT {REPLY}" in ok.stdout, ok.stderr
        nobody = await asyncio.to_thread(as_user, 65534, 65534)
        assert nobody.returncode != 0 and "Permission denied" in nobody.stderr

    store.freeze("alice@example.com", T0)
    try:
        serve(store, scenario, where=path)
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_close_ends_open_connections(store: FrozenStore) -> None:
    async def main() -> None:
        server = PolicyServer(store, REPLY, clock=lambda: T0)
        await server.start(("127.0.0.1", 0))
        c = await connect(server)
        assert await c.ask(req("bob@example.org")) == "action=DUNNO"
        await asyncio.wait_for(server.close(), 5)
        assert await c.closed()
        with pytest.raises(OSError):
            await asyncio.open_connection(*server.address)

    asyncio.run(main())


def test_lookup_failure_answers_dunno(caplog: pytest.LogCaptureFixture) -> None:
    """A broken store must not take the service down: DUNNO, logged, connection kept."""

    class Broken:
        def is_frozen(self, user: str, now: float) -> bool:
            raise RuntimeError("disk on fire")

    async def scenario(server: PolicyServer) -> None:
        c = await connect(server)
        assert await c.ask(req("alice@example.com")) == "action=DUNNO"
        assert await c.ask(req("alice@example.com")) == "action=DUNNO"
        c.close()

    with caplog.at_level(logging.ERROR, logger="dynscreen.control.policy"):
        serve(Broken(), scenario)  # type: ignore[arg-type]
    assert "lookup failed" in caplog.text
