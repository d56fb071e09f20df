"""A bounded asyncio stream server: what the Postfix and Dovecot policy services share.

Both answer a local mail server that waits for them, so both must stay
reachable when a local user opens idle connections by the hundred: a new
connection is never refused; over ``max_per_peer`` connections from one peer
address, or ``max_connections`` in all, the idlest connection (of that peer,
or of all) is closed to make room. The mail server reconnects by itself when
it finds its own idle connection closed.

A unix socket is made with nobody able to connect until it is owned by the
service's user (``socket_user``: ``postfix``, ``dovecot``; when there is no
such user, the owner of the socket's directory) and its group, mode 0660. A
socket file left by a dead daemon is replaced; one that still answers is not.

A subclass speaks the protocol in ``_converse``; it raises ``Violation`` for a
client that breaks it (logged, counted in ``errors``, connection closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660  # owner and group: the mail server's user; other local users cannot


class Violation(Exception):
    """The client broke the protocol: log it and close the connection."""


@dataclass(eq=False)
class Conn:
    """One open connection, for choosing the idlest when room is needed."""

    peer: str  # the peer's address (no port): the unit of the per-peer cap
    writer: asyncio.StreamWriter = field(repr=False)
    last_active: float = 0.0  # loop time of the last byte read or reply written
    in_request: bool = False
    evicted: bool = False


class StreamService:
    """Listening, the connection caps and closing; counters are plain attributes."""

    label = "service"  # how log lines name the service
    socket_user = "root"  # who owns a unix socket (see socket_owner)

    def __init__(self, *, max_connections: int, max_per_peer: int, stream_limit: int) -> None:
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self.stream_limit = stream_limit  # asyncio's buffer limit (readline/readuntil)
        self.errors = 0  # connections closed for a protocol violation or timeout
        self.evicted = 0  # idle connections closed to make room for a new one
        self.active = 0  # connections open now
        self._server: asyncio.AbstractServer | None = None
        self._unix: tuple[Path, int] | None = None  # our socket file and its inode
        self._conns: dict[asyncio.StreamWriter, Conn] = {}
        self.address: tuple[str, int] | Path | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, where: tuple[str, int] | Path) -> None:
        """Listen on (host, port) (port 0: any; see .address) or on a unix socket path."""
        if isinstance(where, tuple):
            host, port = where
            self._server = await asyncio.start_server(
                self._serve, host, port, limit=self.stream_limit, reuse_address=True
            )
            bound = self._server.sockets[0].getsockname()
            self.address = (bound[0], bound[1])
        else:
            path = Path(where)
            clear_stale_socket(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            old = os.umask(0o177)  # nobody may connect before the owner is set
            try:
                self._server = await asyncio.start_unix_server(
                    self._serve, str(path), limit=self.stream_limit
                )
            finally:
                os.umask(old)
            uid, gid = socket_owner(path, self.socket_user)
            os.chown(path, uid, gid)
            os.chmod(path, SOCKET_MODE)
            self._unix = (path, os.stat(path).st_ino)
            self.address = path
        log.info("%s listening on %s", self.label, show_address(self.address))

    async def close(self) -> None:
        """Stop listening, close every connection, remove our socket file."""
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        if self._unix is not None:
            path, inode = self._unix
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            self._unix = None

    # --- one connection ------------------------------------------------------------------

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        conn: Conn) -> None:
        """Requests and replies until the client closes, idles out, or breaks the rules."""
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_name(writer)
        conn = Conn(peer_address(writer), writer, asyncio.get_running_loop().time())
        self._make_room(conn.peer)
        self._conns[writer] = conn
        self.active = len(self._conns)
        try:
            await self._converse(reader, writer, conn)
        except Violation as e:
            if conn.evicted:
                log.debug("%s: evicted connection from %s ended: %s", self.label, peer, e)
            else:
                self.errors += 1
                log.warning("%s: closing the connection from %s: %s", self.label, peer, e)
        except (ConnectionError, OSError) as e:
            log.debug("%s: connection from %s lost: %s", self.label, peer, e)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.errors += 1
            log.exception("%s: unexpected error on the connection from %s", self.label, peer)
        finally:
            if self._conns.get(writer) is conn:
                del self._conns[writer]
            self.active = len(self._conns)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    def _make_room(self, peer: str) -> None:
        """Before taking a connection from `peer`: at a cap, close the idlest one."""
        mine = [c for c in self._conns.values() if c.peer == peer]
        if len(mine) >= self.max_per_peer:
            self._evict(mine, f"{len(mine)} connections from {peer}, the per-peer limit")
        if len(self._conns) >= self.max_connections:
            self._evict(list(self._conns.values()),
                        f"{len(self._conns)} connections open, the limit")

    def _evict(self, among: list[Conn], why: str) -> None:
        idlest = min(among, key=lambda c: (c.in_request, c.last_active))
        idlest.evicted = True
        del self._conns[idlest.writer]
        self.active = len(self._conns)
        self.evicted += 1
        if self.evicted == 1 or self.evicted % 100 == 0:
            log.warning("%s: %s; closed the idlest one (from %s) to take a new one "
                        "(%d closed so far)", self.label, why, idlest.peer, self.evicted)
        idlest.writer.close()


def clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead daemon; refuse one that still answers."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(str(path))
    except OSError:
        os.unlink(path)  # nobody listens: stale
    else:
        raise OSError(errno.EADDRINUSE, f"{path}: another process is listening there")
    finally:
        probe.close()


def socket_owner(path: Path, user: str) -> tuple[int, int]:
    """(uid, gid) for the socket: the user and its group, else the socket directory's."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        st = os.stat(path.parent)
        return st.st_uid, st.st_gid
    return pw.pw_uid, pw.pw_gid


def peer_address(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and name:
        return str(name[0])
    return "unix"


def peer_name(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return "the unix socket"


def show_address(address: tuple[str, int] | Path | None) -> str:
    if isinstance(address, tuple):
        host, port = address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)
