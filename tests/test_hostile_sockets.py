"""Hostile clients on the control socket and the Postfix policy service, for a bounded time.

Random and crafted input (fixed seed, a few seconds each): garbage, huge lines,
partial JSON, wrong types, unknown commands, non-UTF-8, deep nesting, NaN,
slow and idle clients. Asserted: no exception escapes the server (no internal
error, no traceback), a well-formed request is answered afterwards (and, for
the policy service, all along), and nothing stored is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonlab import DaemonLab
from netns import NetLab

from dynscreen.control.accounts import FrozenStore
from dynscreen.control.policy import PolicyServer

from conftest import require_bpf

SEED = 20261206
SECONDS = 4.0  # at least this long, and at least MIN_CASES inputs (a loaded machine is slow)
MIN_CASES = 200

# Values of every JSON type, none of them a valid address, CIDR, block file or user.
WRONG = [None, 0, -1, 1.5, True, False, [], {}, [1, "a"], {"a": {"b": []}}, "", "x" * 10_000,
         "not an address", "1.2.3.4/99", "::g", "\u202e\u0000", 10**40, -1e308, "10.0.0.0/33"]
ARGS = {"block": ("addr", "minutes", "note"), "unblock": ("addr",), "allow_add": ("cidr",),
        "allow_remove": ("cidr",), "accounts_unfreeze": ("user",), "blocks_apply": ("text",),
        "top": ("limit",), "status": (), "ping": (), "allow_list": (), "accounts_list": (),
        "blocks_text": ()}


def control_cases(rng: random.Random) -> Iterator[tuple[str, bytes, bool]]:
    """(name, bytes to send, whether a reply line is due) forever."""
    while True:
        kind = rng.randrange(12)
        if kind == 0:
            yield "garbage", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) \
                .replace(b"\n", b"") + b"\n", True
        elif kind == 1:
            yield "huge line", b'{"cmd":"ping","x":"' + b"a" * (1 << 20) + b'"}\n', True
        elif kind == 2:
            whole = json.dumps({"cmd": rng.choice(list(ARGS)), "addr": "192.0.2.1"}).encode()
            yield "partial JSON", whole[: rng.randrange(1, len(whole))] + b"\n", True
        elif kind == 3:
            cmd = rng.choice(list(ARGS))
            req: dict[str, Any] = {"cmd": cmd}
            for arg in ARGS[cmd]:
                if rng.random() < 0.8:
                    req[arg] = rng.choice(WRONG)
            if cmd == "blocks_apply" and req.get("text") == "":
                del req["text"]  # an empty block file is a valid edit: "remove every block"
            if cmd == "block" and rng.random() < 0.5:
                req["addr"] = "192.0.2.200"  # valid, so that minutes and note get checked
            yield "wrong types", json.dumps(req).encode() + b"\n", True
        elif kind == 4:
            yield "unknown command", json.dumps(
                {"cmd": rng.choice(["", "DETACH", "ping ", "__init__", "x" * 300, "stop"])}
            ).encode() + b"\n", True
        elif kind == 5:
            yield "not an object", rng.choice(
                [b"[]\n", b'"ping"\n', b"null\n", b"1e999999\n", b'{"cmd": 1}\n',
                 b'{"cmd": ["ping"]}\n']), True
        elif kind == 6:
            yield "non-UTF-8", b'{"cmd":"\xff\xfeping"}\n', True
        elif kind == 7:
            depth = rng.choice([100, 10_000, 100_000])
            yield "deep nesting", b'{"cmd":"ping","x":' + b"[" * depth + b"]" * depth + b"}\n", \
                True
        elif kind == 8:
            yield "NaN minutes", b'{"cmd":"block","addr":"192.0.2.201","minutes":NaN}\n', True
        elif kind == 9:
            yield "no newline, then EOF", b'{"cmd":"ping"', False
        elif kind == 10:
            yield "blank and CRLF lines", b"\r\n", True
        else:
            yield "two requests in one write", b'{"cmd":"ping"}\n{"cmd":"allow_list"}\n', True


def ask_raw(path: Path, data: bytes, reply: bool, timeout: float = 15) -> dict[str, Any] | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        line = s.makefile("rb").readline()
    finally:
        s.close()
    if not reply and not line:
        return None
    return json.loads(line)


@pytest.fixture
def dl() -> Iterator[DaemonLab]:
    require_bpf()
    lab = NetLab().open()
    d = DaemonLab(lab, "close_session = false\n")
    try:
        yield d
    finally:
        d.close()
        lab.close()


def test_control_socket_survives_hostile_clients(dl: DaemonLab) -> None:
    dl.start()
    for addr, minutes in (("198.51.100.7", 30), ("2001:db8:1:2::/64", 40), ("10.66.0.0/24", 50)):
        dl.result("block", addr=addr, minutes=minutes, note="keep me")
    dl.result("allow_add", cidr="192.0.2.128/25")
    before = dl.blocks()
    whitelist = (dl.dir / "whitelist").read_text()

    stop = threading.Event()
    slow_sent = 0

    def slowloris() -> None:
        nonlocal slow_sent
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(dl.sock))
        idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(50)]
        for i in idle:
            i.connect(str(dl.sock))
        while not stop.is_set():
            s.sendall(b"x")
            slow_sent += 1
            time.sleep(0.05)
        for x in (s, *idle):
            x.close()

    t = threading.Thread(target=slowloris)
    t.start()
    rng = random.Random(SEED)
    seen: dict[str, int] = {}
    end = time.monotonic() + SECONDS
    try:
        for n, (name, data, due) in enumerate(control_cases(rng)):
            if time.monotonic() > end and n >= MIN_CASES:
                break
            reply = ask_raw(dl.sock, data, due)
            seen[name] = seen.get(name, 0) + 1
            if reply is None:
                continue
            assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), (name, reply)
            if not reply["ok"]:
                assert reply["code"] in (1, 2), (name, reply)
                assert "internal error" not in reply["error"], (name, data[:200], reply)
            # a well-formed request still gets its answer
            if sum(seen.values()) % 10 == 0:
                assert dl.result("ping")["pid"] > 0
    finally:
        stop.set()
        t.join(10)
    assert len(seen) >= 10, seen
    assert slow_sent > 10
    assert dl.result("ping")["pid"] > 0
    after = dl.blocks()
    for ip, b in before.items():
        assert ip in after and after[ip]["note"] == "keep me", ip
        assert after[ip]["minutes_left"] >= b["minutes_left"] - 1
    assert (dl.dir / "whitelist").read_text() == whitelist
    text = dl.state.read_text()
    assert all(ip.split("/")[0] in text for ip in before)
    out = dl.read_output()
    assert "Traceback" not in out and "control request failed" not in out, out[-3000:]


# --- the policy service ------------------------------------------------------------------------

REQUEST = ("request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=203.0.113.7\n"
           "sasl_username={user}\nsender=a@example.com\nrecipient=b@example.org\n\n")


def policy_cases(rng: random.Random) -> Iterator[tuple[str, list[bytes], float]]:
    """(name, chunks to send, pause between chunks) forever."""
    good = REQUEST.format(user="alice@example.com").encode()
    while True:
        kind = rng.randrange(10)
        if kind == 0:
            yield "garbage", [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))], 0
        elif kind == 1:
            yield "huge line", [b"helo_name=" + b"h" * 100_000 + b"\n\n"], 0
        elif kind == 2:
            yield "partial request, then EOF", [good[: rng.randrange(1, len(good) - 1)]], 0
        elif kind == 3:
            yield "non-UTF-8 values", [good.replace(b"alice", b"\xff\xfe\xc3(")], 0
        elif kind == 4:
            yield "no equals", [b"sasl_username\n\n"], 0
        elif kind == 5:
            yield "many attributes", [b"".join(b"a%d=1\n" % i for i in range(500)) + b"\n"], 0
        elif kind == 6:
            yield "slowloris", [bytes([b]) for b in good[:40]], 0.05
        elif kind == 7:
            yield "pipelined junk after a request", [good + b"\x00\x01\x02\n\n"], 0
        elif kind == 8:
            yield "NUL in a name", [b"sasl\x00username=alice@example.com\n\n"], 0
        else:
            yield "idle", [], 0


def test_policy_service_survives_hostile_clients(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FrozenStore(tmp_path / "frozen")
    store.load()
    store.freeze("alice@example.com", time.time())
    frozen_bytes = (tmp_path / "frozen").read_bytes()
    rng = random.Random(SEED)
    answered = 0

    async def attacker(server: PolicyServer, name: str, chunks: list[bytes],
                       pause: float) -> None:
        assert server.address is not None
        r, w = await asyncio.open_connection(*server.address)  # type: ignore[misc]
        try:
            for c in chunks:
                w.write(c)
                with contextlib.suppress(OSError):
                    await w.drain()
                if pause:
                    await asyncio.sleep(pause)
            if name != "idle":
                w.write_eof()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(r.read(1 << 20), 2)
        except OSError:
            pass
        finally:
            w.close()

    async def postfix(server: PolicyServer, stop: asyncio.Event) -> None:
        """Like smtpd: one connection kept between requests; one found closed (the server
        evicted it while idle) is reconnected and the request tried again, once
        (smtpd_policy_service_try_limit = 2)."""
        nonlocal answered
        assert server.address is not None
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while not stop.is_set():
            for user, want in (("alice@example.com", "action=REJECT"),
                               ("bob@example.org", "action=DUNNO")):
                for attempt in (1, 2):
                    if conn is None:
                        conn = await asyncio.open_connection(*server.address)  # type: ignore[misc]
                    r, w = conn
                    try:
                        w.write(REQUEST.format(user=user).encode())
                        reply = await asyncio.wait_for(r.readuntil(b"\n\n"), 5)
                        break
                    except (asyncio.IncompleteReadError, ConnectionError):
                        w.close()
                        conn = None
                        assert attempt == 1, "a fresh connection must be answered"
                assert reply.decode().startswith(want), reply
                answered += 1
            await asyncio.sleep(0.05)
        if conn is not None:
            conn[1].close()

    async def main() -> PolicyServer:
        server = PolicyServer(store, request_timeout=0.5, idle_timeout=1.0)
        await server.start(("127.0.0.1", 0))
        stop = asyncio.Event()
        good = asyncio.create_task(postfix(server, stop))
        running: set[asyncio.Task[None]] = set()
        end = time.monotonic() + SECONDS
        try:
            for n, (name, chunks, pause) in enumerate(policy_cases(rng)):
                if time.monotonic() > end and n >= MIN_CASES:
                    break
                t = asyncio.create_task(attacker(server, name, chunks, pause))
                running.add(t)
                t.add_done_callback(running.discard)
                while len(running) >= 100:  # the flood itself is test_policy's
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0)
            stop.set()
            await good
            await asyncio.gather(*running)
            for _ in range(100):
                if server.active == 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            await server.close()
        return server

    with caplog.at_level(logging.INFO, logger="dynscreen.control.policy"):
        server = asyncio.run(main())
    assert answered > 20, "Postfix was answered all along"
    assert server.errors > 0 and server.active == 0
    assert "unexpected error" not in caplog.text and "Traceback" not in caplog.text
    assert (tmp_path / "frozen").read_bytes() == frozen_bytes
    assert store.is_frozen("alice@example.com", time.time())
    assert os.path.getsize(tmp_path / "frozen") > 0
