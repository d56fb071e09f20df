"""The Postfix SMTP access policy service: frozen accounts may not send.

Postfix's smtpd asks this service before it accepts a recipient (the
protocol of Postfix's SMTPD_POLICY_README): a request is ``name=value``
lines ended by an empty line; the reply is ``action=...`` and an empty line;
a connection carries many requests, and each smtpd process keeps its own
connection. A request whose ``sasl_username`` is frozen gets
``action=REJECT <frozen_reply>`` (an enhanced status code, then text, as
Postfix's REJECT takes them); every other request gets ``action=DUNNO``, so
mail TO a frozen account, which comes without a SASL login, still arrives.

Recommended: a unix socket inside Postfix's queue directory, which only
Postfix can reach (dynscreen.toml ``policy_listen =
"/var/spool/postfix/private/dynscreen-policy"``), and in main.cf::

    smtpd_recipient_restrictions =
        check_policy_service unix:private/dynscreen-policy,
        permit_sasl_authenticated,
        ...
    smtpd_policy_service_default_action = DUNNO
    smtpd_policy_service_timeout = 10s
    smtpd_policy_service_max_idle = 300s
    smtpd_policy_service_try_limit = 2

- The policy check comes BEFORE ``permit_sasl_authenticated``: a permit ends
  the list, so after it a frozen account would be let through.
  (``smtpd_relay_restrictions`` is a separate list: its
  ``permit_sasl_authenticated`` does not skip this one.)
- ``smtpd_policy_service_default_action = DUNNO``: when dynscreen is down or
  does not answer, mail flows (unscreened) instead of being deferred with
  "451 4.3.5 Server configuration problem".
- ``smtpd_policy_service_timeout`` bounds how long one SMTP session waits for
  an answer; a short one (10 s) keeps mail moving when the daemon hangs.
- ``smtpd_policy_service_max_idle = 300s`` (Postfix's default): this service
  keeps an idle connection at least IDLE_TIMEOUT (330 s), so Postfix is the
  one that closes idle connections, never a request in flight.
- ``smtpd_policy_service_try_limit = 2`` (the default): one retry, then the
  default action.
- Submission ports: master.cf entries for ``submission``/``submissions``
  usually override the list with ``-o smtpd_recipient_restrictions=...``;
  add the check there too (master.cf separates with commas, no spaces):
  ``-o smtpd_recipient_restrictions=check_policy_service,unix:private/dynscreen-policy,
  permit_sasl_authenticated,reject``.
- Not in ``smtpd_sender_restrictions`` as well: with the default
  ``smtpd_delay_reject = yes`` both lists run at RCPT time, so a second check
  would only double the requests.

Why a unix socket: with the TCP listener (the default ``127.0.0.1:10040``)
any local user can connect, and a flood of idle connections is the cheapest
way to make Postfix fall back to its default action (DUNNO: frozen accounts
send). A unix socket (``policy_listen = "/path"``) is made mode 0660 and owned
by the ``postfix`` user and its group (when there is no such user: by the
owner of the socket's directory), so only smtpd (and root) can connect. In
Postfix's ``private/`` directory (mode 0700, postfix's) nobody else can even
reach it, and ``check_policy_service unix:private/dynscreen-policy`` (a path
relative to the queue directory) also works for a chrooted smtpd.

Exim has no policy protocol: it reads the lookup table that control/accounts
writes beside the frozen file (see that module).

Hostile or broken clients cost bounded memory and time: a line over
MAX_LINE bytes, a request over MAX_REQUEST bytes or MAX_ATTRIBUTES lines, a
line that is not ``name=value`` or carries control bytes, an empty request, a request left
unfinished for REQUEST_TIMEOUT seconds or at EOF, or a reply left unread: the
connection is closed with a logged warning. A new connection is never
refused: over MAX_PER_PEER connections from one peer address, or
MAX_CONNECTIONS in all, the idlest connection (of that peer, or of all) is
closed to make room, so idle connections cannot lock Postfix out; Postfix
reconnects by itself when it finds its own idle connection closed (its
``smtpd_policy_service_try_limit``). Invalid UTF-8 in a VALUE is tolerated
(kept byte-exact), as Postfix may pass 8-bit data it received from a client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from dynscreen.control import streamservice
from dynscreen.control.accounts import DEFAULT_REPLY
from dynscreen.control.streamservice import Conn, StreamService
from dynscreen.control.streamservice import Violation as _Violation

log = logging.getLogger(__name__)

MAX_LINE = 8 * 1024  # bytes of one attribute line
MAX_REQUEST = 64 * 1024  # bytes of one request
MAX_ATTRIBUTES = 100  # lines of one request; Postfix sends about 40
MAX_CONNECTIONS = 512  # above the process limits of the smtpd services that ask
MAX_PER_PEER = 256  # one peer address; loopback is everybody local, Postfix included
IDLE_TIMEOUT = 330.0  # > Postfix's smtpd_policy_service_max_idle (300 s)
REQUEST_TIMEOUT = 30.0  # from a request's first byte to its empty line; also for a reply
SOCKET_USER = "postfix"  # owns a unix socket: smtpd connects, other local users cannot

_CHUNK = 4096
_NAME = re.compile(rb"[A-Za-z0-9_.-]{1,64}")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # TAB is allowed in values


class _Frozen(Protocol):
    def is_frozen(self, user: str, now: float) -> bool: ...


class PolicyServer(StreamService):
    """An asyncio policy server; counters are plain attributes for the metrics."""

    label = "policy"
    socket_user = SOCKET_USER

    def __init__(
        self,
        store: _Frozen,
        reply: str = DEFAULT_REPLY,
        *,
        clock: Callable[[], float] = time.time,
        max_connections: int = MAX_CONNECTIONS,
        max_per_peer: int = MAX_PER_PEER,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        max_line: int = MAX_LINE,
        max_request: int = MAX_REQUEST,
        max_attributes: int = MAX_ATTRIBUTES,
    ) -> None:
        super().__init__(max_connections=max_connections, max_per_peer=max_per_peer,
                         stream_limit=max_line)
        self.store = store
        self.reply = reply  # frozen_reply; may change on reload
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.max_line = max_line
        self.max_request = max_request
        self.max_attributes = max_attributes
        # metrics
        self.requests = 0  # answered
        self.rejects = 0  # answered REJECT

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        conn: Conn | None = None) -> None:
        """Requests and replies until the client closes, idles out, or breaks the rules."""
        loop = asyncio.get_running_loop()
        conn = conn or Conn("?", writer)
        buf = bytearray()
        attrs: dict[str, str] = {}
        lines = 0
        size = 0
        deadline: float | None = None  # set while a request is under way
        while True:
            while (nl := buf.find(b"\n")) >= 0:
                if nl > self.max_line:
                    raise _Violation(f"attribute line over {self.max_line} bytes")
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line:
                    size += nl + 1
                    lines += 1
                    if size > self.max_request:
                        raise _Violation(f"request over {self.max_request} bytes")
                    if lines > self.max_attributes:
                        raise _Violation(f"request over {self.max_attributes} attributes")
                    name, value = self._attribute(line)
                    attrs[name] = value
                    continue
                if not attrs:
                    raise _Violation("empty request (an empty line without attributes)")
                writer.write(self.decide(attrs).encode("utf-8", "surrogateescape") + b"\n\n")
                try:
                    await asyncio.wait_for(writer.drain(), self.request_timeout)
                except asyncio.TimeoutError:
                    raise _Violation(
                        f"replies not read for {self.request_timeout:g} s"
                    ) from None
                attrs, lines, size = {}, 0, 0
                deadline = loop.time() + self.request_timeout if buf else None
                conn.last_active = loop.time()
                conn.in_request = bool(buf)
            if len(buf) > self.max_line:
                raise _Violation(f"attribute line over {self.max_line} bytes")
            if deadline is None:
                timeout = self.idle_timeout
            else:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    raise _Violation(f"request not complete within {self.request_timeout:g} s")
            try:
                chunk = await asyncio.wait_for(reader.read(_CHUNK), timeout)
            except asyncio.TimeoutError:
                if deadline is None:
                    log.info("policy: closing a connection idle for %g s", self.idle_timeout)
                    return
                raise _Violation(
                    f"request not complete within {self.request_timeout:g} s"
                ) from None
            if not chunk:
                if buf or attrs:
                    raise _Violation("connection closed in the middle of a request")
                return
            if deadline is None:
                deadline = loop.time() + self.request_timeout
            buf += chunk
            conn.last_active = loop.time()
            conn.in_request = True

    def _attribute(self, line: bytes) -> tuple[str, str]:
        """``name=value`` from one line; _Violation if it is not one."""
        name, eq, value = line.partition(b"=")
        if not eq or not _NAME.fullmatch(name):
            raise _Violation(f"not a name=value line: {line[:60]!r}")
        if _CONTROL.search(value):
            raise _Violation(f"control characters in attribute {name.decode()}")
        return name.decode("ascii"), value.decode("utf-8", "surrogateescape")

    def decide(self, attrs: dict[str, str]) -> str:
        """The reply line for one request: REJECT for a frozen SASL login, else DUNNO."""
        self.requests += 1
        request = attrs.get("request")
        if request != "smtpd_access_policy":
            log.debug("policy: request type %r is not smtpd_access_policy: DUNNO", request)
            return "action=DUNNO"
        user = attrs.get("sasl_username", "")
        try:
            frozen = bool(user) and self.store.is_frozen(user, self.clock())
        except Exception:
            log.exception("policy: frozen-account lookup failed for %r: DUNNO", user)
            return "action=DUNNO"
        if not frozen:
            return "action=DUNNO"
        self.rejects += 1
        log.info(
            "policy: REJECT frozen account %s (client %s, sender <%s>, recipient <%s>)",
            user, attrs.get("client_address", "?"), attrs.get("sender", ""),
            attrs.get("recipient", ""),
        )
        return f"action=REJECT {self.reply}"


def socket_owner(path: Path) -> tuple[int, int]:
    """(uid, gid) for the socket: the postfix user and its group, else its directory's."""
    return streamservice.socket_owner(path, SOCKET_USER)
