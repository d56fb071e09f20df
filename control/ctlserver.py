"""The daemon's side of the control socket: a unix socket, mode 0600, JSON lines.

A malformed, oversized or failing request gets an error reply and never
harms the daemon; a stale socket file left by a killed daemon is replaced,
a live one is not (two daemons must not fight over the kernel maps).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dynscreen.control import ctlproto

log = logging.getLogger("dynscreen.control")
Handler = Callable[[dict[str, Any]], Any | Awaitable[Any]]


class SocketInUse(Exception):
    """Another daemon answers on the socket."""


def _alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


class ControlServer:
    """Serves ctlproto requests with the given handlers (one per command)."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self.server: asyncio.AbstractServer | None = None
        self.requests = 0
        self.errors = 0

    async def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            if _alive(self.path):
                raise SocketInUse(f"another dynscreen daemon answers at {self.path}")
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=ctlproto.MAX_REQUEST + 1)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as e:
                    if e.partial.strip():
                        writer.write(ctlproto.error("request not terminated by a newline"))
                    break
                except asyncio.LimitOverrunError:
                    await self._discard_line(reader)
                    writer.write(ctlproto.error(
                        f"request too large (limit {ctlproto.MAX_REQUEST} bytes)"))
                    await writer.drain()
                    break
                reply = await self.answer(line)
                if isinstance(reply, ctlproto.Streamed):
                    await self._stream(reply, writer)
                else:
                    writer.write(reply)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _discard_line(reader: asyncio.StreamReader, limit_s: float = 5.0) -> None:
        """Read and drop the rest of an oversized request (bounded in time, not kept), so the
        client reads our error reply instead of a reset."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        while loop.time() < end:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), end - loop.time())
            except (asyncio.TimeoutError, ConnectionError):
                return
            if not chunk or b"\n" in chunk:
                return

    @staticmethod
    async def _stream(reply: ctlproto.Streamed, writer: asyncio.StreamWriter) -> None:
        """Send a large reply piece by piece, each made in a worker thread (the loop stays
        free; a client gone mid-way stops it)."""
        writer.write(reply.opening())
        while (text := await asyncio.to_thread(next, reply.texts, None)) is not None:
            writer.write(text.encode())
            await writer.drain()
        writer.write(reply.closing())

    async def answer(self, line: bytes) -> bytes | ctlproto.Streamed:
        """The reply to one request line (never raises)."""
        self.requests += 1
        try:
            req = ctlproto.decode_request(line)
            handler = self.handlers.get(req["cmd"])
            if handler is None:
                raise ctlproto.RequestError(f"command {req['cmd']!r} is not available")
            result = handler(req)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, ctlproto.Streamed):
                return result
            return ctlproto.ok(result)
        except ctlproto.RequestError as e:
            self.errors += 1
            return ctlproto.error(str(e), 2)
        except ctlproto.OperationError as e:
            self.errors += 1
            return ctlproto.error(str(e), 1)
        except Exception as e:  # a bug must not take the daemon down
            self.errors += 1
            log.exception("control request failed")
            return ctlproto.error(f"internal error: {type(e).__name__}: {e}", 1)
