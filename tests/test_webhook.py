"""The webhook: a real HTTP server in a thread receives the events, in batches, also
after it was down for a while (retried with backoff) and across a restart of the
sender (spooled); the daemon sends what [notify] events names."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from test_explain import TARGET, Feed, daemon, sasl

from dynscreen.control.webhook import Webhook


class Receiver:
    """A webhook endpoint on 127.0.0.1: every POST body it got; ``fail`` answers 500."""

    def __init__(self, port: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail = False
        self.port = port
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                assert self.headers["Content-Type"] == "application/json"
                outer.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self) -> list[dict[str, Any]]:
        return [e for b in self.bodies for e in b["events"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Any, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


def test_events_arrive_batched_and_rate_limited() -> None:
    rx = Receiver().start()
    hook = Webhook(rx.url, interval=0.5, hostname="mx1")
    hook.start()
    try:
        hook.send("block", 1.0, ip="192.0.2.1", reason="auth_failures", origin="logs")
        assert wait_for(lambda: len(rx.bodies) == 1)  # the first at once
        for i in range(2, 6):
            hook.send("block", float(i), ip=f"192.0.2.{i}", reason="rsets", origin="logs")
        assert wait_for(lambda: len(rx.events()) == 5)
        assert len(rx.bodies) == 2, "the four after the first come together"
        assert rx.bodies[0] == {"source": "dynscreen", "host": "mx1", "omitted": 0, "events": [
            {"event": "block", "time": 1.0, "ip": "192.0.2.1", "reason": "auth_failures",
             "origin": "logs"}]}
        assert hook.sent == 2 and hook.pending() == 0
    finally:
        hook.stop()
        rx.stop()


def test_a_receiver_down_for_a_while_gets_everything_once_back(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "webhook.spool"
    hook = Webhook(f"http://127.0.0.1:{port}/hook", interval=0.2, spool=spool,
                   backoff_initial=0.2, backoff_max=0.4)
    hook.start()
    hook.send("freeze", 1.0, user="alice@example.com", reason="session_auth_failures")
    assert wait_for(lambda: hook.send_failures >= 2)  # refused, retried, refused again
    hook.send("protect", 2.0, user="bob@example.com", reason="spray")
    hook.stop()  # a restart while it is down: the events wait in the spool
    assert json.loads(spool.read_text())["accounts"][0]["pending"][1]["event"] == "protect"
    rx = Receiver(port).start()
    rx.fail = True  # back, but failing (500): still kept
    hook = Webhook(rx.url, interval=0.2, spool=spool, backoff_initial=0.2, backoff_max=0.4)
    hook.start()
    try:
        assert wait_for(lambda: hook.send_failures >= 1)
        rx.fail = False
        assert wait_for(lambda: len(rx.events()) == 2)
        assert [e["event"] for e in rx.events()] == ["freeze", "protect"]
        assert wait_for(lambda: hook.pending() == 0)
    finally:
        hook.stop()
        rx.stop()
    assert json.loads(spool.read_text())["accounts"][0]["pending"] == []


def test_the_daemon_posts_what_notify_events_names(tmp_path: Path) -> None:
    rx = Receiver().start()
    d, dp = daemon(tmp_path, notify={"webhook": rx.url, "events": ["block"]})
    feed = Feed(d)

    async def main() -> None:
        d.history.start()
        d._start_webhook()
        feed(*(sasl(TARGET, f"u{i}@example.com", i) for i in range(3)))
        assert ip_network(TARGET) in dp.blocks
        d.tell("protect", user="x@example.com", reason="spray", origin="logs")  # not named
        assert await asyncio.to_thread(wait_for, lambda: len(rx.events()) == 1)
        await asyncio.sleep(0.3)
        assert d.webhook is not None
        d.webhook.stop()
        d.history.stop()
        value = d.metrics.registry.get_sample_value
        assert value("dynscreen_webhook_posts_total") == 1
        assert value("dynscreen_webhook_events_queued_total") == 1
        assert value("dynscreen_webhook_events_pending") == 0
        assert value("dynscreen_history_rows_written_total") == 2  # the block, the protect
        assert value("dynscreen_history_rows_dropped_total") == 0

    try:
        asyncio.run(main())
    finally:
        rx.stop()
    [event] = rx.events()
    assert event["event"] == "block" and event["ip"] == TARGET
    assert event["reason"] == "auth_failures" and len(event["evidence"]) == 3
    assert (tmp_path / "webhook.spool").exists()
