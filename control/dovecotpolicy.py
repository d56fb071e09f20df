"""Dovecot's authentication policy server: logins screened as they happen.

Dovecot (2.2.27 and later) asks an HTTP server about every authentication
(its "Authentication policy support"): with ``auth_policy_server_url`` set,
its auth process POSTs a JSON object to ``URL?command=allow`` before the
password check (and, with ``auth_policy_check_after_auth``, after it) and to
``URL?command=report`` once the result is known. The object holds the
attributes of ``auth_policy_request_attributes`` as strings (a key ``a/b``
nests: ``{"a": {"b": ...}}``), for example::

    {"device_id": "", "login": "alice", "protocol": "imap",
     "pwhash": "6c3", "remote": "203.0.113.7", "session": "kQHJ5Gv2x8V/AAAB"}

and a report adds ``"success": true|false, "policy_reject": true|false`` (later
versions also ``"tried_password"``). ``pwhash`` is a hash of the site's
``auth_policy_hash_nonce``, the user and the password, cut to
``auth_policy_hash_truncate`` bits (12 by default): it tells one password from
another, never which one it was. The answer to ``allow`` is
``{"status": N, "msg": "..."}``: -1 refuses the login (before any password
check), 0 lets it go ahead, N > 0 lets it go ahead after N seconds; the answer
to ``report`` is not read. An API key, when configured, comes in the header
that ``auth_policy_server_api_header`` names (``Name:value``; a bare value is
sent as ``X-API-Key``).

What dynscreen answers to ``allow``:

- -1 for a source that is blocked: any block the kernel enforces on it (its own,
  its IPv6 /64, a range around it; made from the logs, by hand, by the block file,
  by the fleet, by the kernel, or adopted at start), asked of the daemon's block
  index (a probe per prefix length in use, never the kernel map; an expired block
  does not count; none in monitor mode);
- -1 for a frozen account when ``freeze_scope = "login"``;
- ``dovecot_policy_delay`` seconds for a source with failed logins counted in
  its window, when that is set (0 = off);
- 0 otherwise.

A ``report`` of a failure (not one the policy refused) becomes an
``auth_failure`` event for the engine, a success an ``auth_success``; the
answer goes out first and the engine hears of it on the next turn of the loop,
so Dovecot never waits on the engine. The engine counts an attempt that the
policy reported and the logs also told once (control/engine.py).

Fail open: Dovecot applies no policy when dynscreen is down or slow (its
``auth_policy_reject_on_fail = no``, the default; the request times out after
``auth_policy_server_timeout_msecs``, 2 s by default) and logs the error.

HTTP: the standard library's pieces (``asyncio`` streams, ``http.client``'s
header parser, ``urllib.parse``, ``json``) on HTTP/1.1 with keep-alive, as
Dovecot's HTTP client uses it: one request at a time per connection, a body
with Content-Length. Hostile or broken clients cost bounded memory and time:
headers over MAX_HEADER bytes (431), a body over MAX_BODY bytes (413), a
chunked body (411), a request that is not POST (405), a malformed request line,
header or JSON body (400), a wrong or missing API key (401), a request not
complete within REQUEST_TIMEOUT seconds, or an answer left unread: an error
status where one can be sent, then the connection is closed and counted in
``errors``. Connections are capped like the Postfix policy service's (the
idlest goes to make room: control/streamservice.py).
"""

from __future__ import annotations

import asyncio
import hmac
import http.client
import io
import json
import logging
import secrets
import time
from collections.abc import Callable
from ipaddress import IPv6Address, ip_address, ip_network
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qs, urlsplit

from dynscreen.control.addr import Network
from dynscreen.control.blockindex import IndexedBlock
from dynscreen.control.config import Config
from dynscreen.control.events import Event
from dynscreen.control.sourcekey import SourceKey
from dynscreen.control.streamservice import Conn, StreamService, Violation

log = logging.getLogger(__name__)

MAX_HEADER = 8 * 1024  # request line and headers; Dovecot sends about 300 bytes
MAX_BODY = 16 * 1024  # the JSON object; the default attributes make about 200 bytes
MAX_CONNECTIONS = 256  # Dovecot's auth_policy http client opens at most 100
MAX_PER_PEER = 256
IDLE_TIMEOUT = 60.0  # > Dovecot's http_client max_idle_time (10 s): Dovecot closes first
REQUEST_TIMEOUT = 5.0  # first byte of a request to its last, and for the answer to be read
SOCKET_USER = "dovecot"  # owns a unix socket: Dovecot's auth process runs as dovecot
DEFAULT_API_HEADER = "X-API-Key"  # what Dovecot sends a bare auth_policy_server_api_header as

BLOCKED_MSG = "Too many failed logins from your address, try again later"
FROZEN_MSG = "Account temporarily frozen after repeated authentication failures"

# Dovecot's %s (the service) as the engine names protocols.
SERVICES = {"imap": "imap", "pop3": "pop", "smtp": "smtp", "submission": "smtp",
            "sieve": "sieve", "managesieve": "sieve"}

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 405: "Method Not Allowed",
            411: "Length Required", 413: "Content Too Large",
            431: "Request Header Fields Too Large"}


class _Frozen(Protocol):
    def is_frozen(self, user: str, now: float) -> bool: ...


class _Covering(Protocol):
    """The block list's question (control/blocklist.BlockList.covering)."""

    def covering(self, net: SourceKey) -> list[IndexedBlock]: ...


class _Listed(Protocol):
    """The whitelist's question (control/whitelist.Whitelist.covering)."""

    def covering(self, net: Network) -> Network | None: ...


def source_blocked(blocks: _Covering, whitelist: _Listed, address: str, now: float) -> bool:
    """Is ``address`` blocked now, as the kernel would drop it: a block in force on it
    (its own, its IPv6 /64, a range around it: one index probe per prefix length in
    use), unless the whitelist holds it (the kernel passes a whitelisted address
    inside a blocked range). Not an address: not blocked."""
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # (the same key; the whitelist holds it as IPv4)
    if not any(b.expires > now for b in blocks.covering(SourceKey.from_network(ip))):
        return False
    return whitelist.covering(ip_network(ip)) is None


class Report(NamedTuple):
    """A report as the engine takes it: the event, and the password's hash ("" = none)."""

    event: Event
    pwhash: str


class _Refused(Exception):
    """A request answered with an error status; the connection closes after it."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class DovecotPolicyServer(StreamService):
    """Answers Dovecot's ``allow`` and ``report`` requests; counters for the metrics.

    ``blocked(address)`` and ``suspicious(address)`` are the daemon's in-memory
    lookups; ``on_report(report)`` hands a report to the engine (called from the
    event loop after the answer is written).
    """

    label = "dovecot policy"
    socket_user = SOCKET_USER

    def __init__(
        self,
        *,
        blocked: Callable[[str], bool],
        frozen: _Frozen,
        on_report: Callable[[Report], None],
        suspicious: Callable[[str], bool] = lambda address: False,
        api_key: str = "",
        freeze_login: bool = False,
        delay: int = 0,
        clock: Callable[[], float] = time.time,
        max_connections: int = MAX_CONNECTIONS,
        max_per_peer: int = MAX_PER_PEER,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        max_header: int = MAX_HEADER,
        max_body: int = MAX_BODY,
    ) -> None:
        super().__init__(max_connections=max_connections, max_per_peer=max_per_peer,
                         stream_limit=max_header)
        self.blocked = blocked
        self.frozen = frozen
        self.on_report = on_report
        self.suspicious = suspicious
        self.api_key = api_key  # may change on reload, as may the next two
        self.freeze_login = freeze_login
        self.delay = delay
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.max_header = max_header
        self.max_body = max_body
        # metrics (control/metrics.py: dynscreen_dovecot_policy_*)
        self.requests = 0  # answered allow or report
        self.rejects = 0  # allow answered -1
        self.delays = 0  # allow answered N > 0
        self.reports = 0  # reports handed to the engine
        self.where: tuple[str, int] | Path | None = None

    async def start(self, where: tuple[str, int] | Path) -> None:
        self.where = where  # as configured (port 0 stays 0; .address has the bound one)
        await super().start(where)

    # --- one connection: HTTP/1.1 requests, one at a time --------------------------------

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        conn: Conn) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn.in_request = False
            try:
                async with asyncio.timeout(self.idle_timeout):  # (no task per read)
                    first = await reader.readexactly(1)
            except asyncio.IncompleteReadError:
                return  # closed between requests: the normal end
            except asyncio.TimeoutError:
                log.debug("%s: closing a connection idle for %g s", self.label,
                          self.idle_timeout)
                return
            conn.in_request = True
            conn.last_active = loop.time()
            deadline = loop.time() + self.request_timeout
            try:
                keep_alive, reply, after = await self._one_request(first, reader, deadline)
            except _Refused as e:
                await self._answer(writer, e.status, {"status": 0, "msg": str(e)}, False,
                                   deadline)
                raise Violation(f"{e.status} {_REASONS[e.status]}: {e}") from None
            await self._answer(writer, 200, reply, keep_alive, deadline)
            conn.last_active = loop.time()
            if after is not None:
                loop.call_soon(self._report, after)
            if not keep_alive:
                return

    async def _one_request(
        self, first: bytes, reader: asyncio.StreamReader, deadline: float
    ) -> tuple[bool, dict[str, object], Report | None]:
        """Read and answer one request: (keep the connection?, the answer, a report)."""
        try:
            async with asyncio.timeout_at(deadline):
                head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _Refused(431, f"request headers over {self.max_header} bytes") from None
        except asyncio.IncompleteReadError:
            raise Violation("connection closed in the middle of a request") from None
        except asyncio.TimeoutError:
            raise Violation(
                f"request not complete within {self.request_timeout:g} s") from None
        if len(head) > self.max_header:
            raise _Refused(431, f"request headers over {self.max_header} bytes")
        line, _, rest = head.partition(b"\r\n")
        method, target, version = _request_line(line)
        try:
            headers = http.client.parse_headers(io.BytesIO(rest))
        except http.client.HTTPException as e:
            raise _Refused(400, f"bad headers: {type(e).__name__}") from None
        connection = headers.get("Connection", "").lower()
        keep_alive = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection)
        if method != "POST":
            raise _Refused(405, f"method {method} (Dovecot POSTs)")
        if headers.get("Transfer-Encoding") is not None:
            raise _Refused(411, "a chunked body (Dovecot sends Content-Length)")
        length = _content_length(headers.get_all("Content-Length") or [])
        if length > self.max_body:
            raise _Refused(413, f"body of {length} bytes, over {self.max_body}")
        self._check_key(headers)
        try:
            async with asyncio.timeout_at(deadline):
                body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise Violation("connection closed in the middle of a request") from None
        except asyncio.TimeoutError:
            raise Violation(
                f"request not complete within {self.request_timeout:g} s") from None
        command = _command(target)
        attrs = _attributes(body)
        self.requests += 1
        if command == "allow":
            return keep_alive, self.allow(attrs), None
        return keep_alive, {"status": 0}, self.report(attrs)

    def _check_key(self, headers: http.client.HTTPMessage) -> None:
        if not self.api_key:
            return
        given = headers.get(DEFAULT_API_HEADER)
        if given is None:
            raise _Refused(401, f"no {DEFAULT_API_HEADER} header (auth_policy_server_api_header)")
        if not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise _Refused(401, f"wrong {DEFAULT_API_HEADER}")

    async def _answer(self, writer: asyncio.StreamWriter, status: int, reply: dict[str, object],
                      keep_alive: bool, deadline: float) -> None:
        body = json.dumps(reply, separators=(",", ":")).encode()
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
        writer.write(head.encode("ascii") + body)
        try:
            async with asyncio.timeout_at(max(deadline, asyncio.get_running_loop().time() + 0.1)):
                await writer.drain()
        except asyncio.TimeoutError:
            raise Violation(f"answer not read within {self.request_timeout:g} s") from None

    # --- the answers -------------------------------------------------------------------------

    def allow(self, attrs: dict[str, Any]) -> dict[str, object]:
        """The answer to ``command=allow``: -1 reject, 0 go ahead, N > 0 delay N seconds."""
        remote = _text(attrs, "remote")
        login = _text(attrs, "login")
        try:
            if remote and self.blocked(remote):
                self.rejects += 1
                # (debug: a guesser behind a proxy repeats this; `rejects` counts them)
                log.debug("dovecot policy: refused %s login %r: source blocked", remote, login)
                return {"status": -1, "msg": BLOCKED_MSG}
            if self.freeze_login and login and self.frozen.is_frozen(login, self.clock()):
                self.rejects += 1
                log.info("dovecot policy: refused %s login %r: account frozen", remote, login)
                return {"status": -1, "msg": FROZEN_MSG}
            if self.delay and remote and self.suspicious(remote):
                self.delays += 1
                return {"status": self.delay}
        except Exception:
            log.exception("dovecot policy: lookup failed for %s login %r: allowed", remote,
                          login)
        return {"status": 0}

    def report(self, attrs: dict[str, Any]) -> Report | None:
        """The engine's event for ``command=report`` (None: nothing to count)."""
        remote = _text(attrs, "remote")
        if not remote:
            return None
        success = attrs.get("success") is True
        if not success and attrs.get("policy_reject") is True:
            return None  # refused here: no password guess was made, nothing new to count
        protocol = _text(attrs, "protocol").lower()
        session = _text(attrs, "session") or _text(attrs, "session_id") or None
        login = _text(attrs, "login") or None
        ev = Event("auth_success" if success else "auth_failure", remote, self.clock(),
                   service=SERVICES.get(protocol), user=login, file="dovecot-policy",
                   origin="dovecot-policy", session=session)
        return Report(ev, _text(attrs, "pwhash"))

    def _report(self, report: Report) -> None:
        self.reports += 1
        try:
            self.on_report(report)
        except Exception:
            self.errors += 1
            log.exception("dovecot policy: a report failed to reach the engine: %s",
                          report.event)


def _request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[0].isalpha() or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _Refused(400, f"not an HTTP/1.x request line: {line[:60]!r}")
    try:
        return parts[0].decode("ascii"), parts[1].decode("ascii"), parts[2].decode("ascii")
    except UnicodeDecodeError:
        raise _Refused(400, f"not an HTTP/1.x request line: {line[:60]!r}") from None


def _content_length(values: list[str]) -> int:
    if len(values) != 1 or not values[0].strip().isdigit():
        raise _Refused(400 if values else 411, "expected one Content-Length header with a "
                       f"whole number, got {values[:2]}")
    return int(values[0].strip())


def _command(target: str) -> str:
    commands = parse_qs(urlsplit(target).query).get("command", [])
    if len(commands) != 1 or commands[0] not in ("allow", "report"):
        raise _Refused(400, f"expected ?command=allow or ?command=report, got {target[:80]!r}")
    return commands[0]


def _attributes(body: bytes) -> dict[str, Any]:
    try:
        attrs = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise _Refused(400, f"body is not JSON: {e}") from None
    if not isinstance(attrs, dict):
        raise _Refused(400, f"body is not a JSON object: {type(attrs).__name__}")
    return attrs


def _text(attrs: dict[str, Any], name: str) -> str:
    value = attrs.get(name)
    return value if isinstance(value, str) else ""


# What Dovecot should send: its default attributes plus the session id, by which the
# engine knows a reported attempt in the login process's summary line.
REQUEST_ATTRIBUTES = ("login=%{requested_username} pwhash=%{hashed_password} remote=%{rip} "
                      "device_id=%{client_id} protocol=%s session=%{session}")


def dovecot_settings(listen: str, nonce: str, api_key: str = "") -> str:
    """The Dovecot settings (a conf.d file) that make it ask dynscreen at ``listen``.

    ``nonce``: auth_policy_hash_nonce, a random string of the site's own; ``api_key``:
    the key of dovecot_policy_api_key_file ("" = none).
    """
    lines = ["# Dovecot asks dynscreen about every login (dynscreen.toml: dovecot_policy_listen)"]
    if listen.startswith("/"):
        lines += [f"# dynscreen listens on the unix socket {listen}: Dovecot's URL is http://,",
                  "# so point it at a local forwarder to that socket",
                  "auth_policy_server_url = http://127.0.0.1:PORT/"]
    else:
        lines.append(f"auth_policy_server_url = http://{listen}/")
    lines += [
        f"auth_policy_hash_nonce = {nonce}",
        f"auth_policy_request_attributes = {REQUEST_ATTRIBUTES}",
        "# dynscreen down or slow: logins go on, unscreened",
        "auth_policy_reject_on_fail = no",
    ]
    if api_key:
        lines.append(f"auth_policy_server_api_header = {DEFAULT_API_HEADER}:{api_key}")
    return "\n".join(lines) + "\n"


def read_api_key(path: str) -> str:
    """The key in dovecot_policy_api_key_file ("" path: none); OSError/ValueError say why not."""
    if not path:
        return ""
    key = Path(path).read_text(encoding="utf-8").strip()
    if not key or any(c.isspace() or ord(c) < 32 for c in key):
        raise ValueError(f"{path}: expected one key without spaces or control characters")
    return key


def setup_notes(config: Config) -> tuple[list[str], list[str]]:
    """For `dynscreen check-config`: (lines saying what the listener does and what Dovecot
    needs, warnings). No secret is shown: the key stays in its file."""
    a = config.accounts
    warnings = []
    if a.freeze_scope == "login" and not a.dovecot_policy_listen:
        warnings.append('accounts.freeze_scope = "login" needs accounts.dovecot_policy_listen: '
                        "without it frozen accounts still log in to IMAP and POP3")
    if not a.dovecot_policy_listen:
        return ["dovecot auth policy: off (accounts.dovecot_policy_listen)"], warnings
    key_file = a.dovecot_policy_api_key_file
    if key_file:
        try:
            read_api_key(key_file)
        except (OSError, ValueError) as e:
            warnings.append(f"accounts.dovecot_policy_api_key_file: {e}: the daemon will "
                            "not start")
    elif not a.dovecot_policy_listen.startswith("/"):
        warnings.append("accounts.dovecot_policy_listen is a TCP port without an API key: "
                        "any local user can ask it and report logins to it "
                        "(set accounts.dovecot_policy_api_key_file)")
    what = [f"freeze_scope {a.freeze_scope}",
            "a repeated failed password counted once" if a.ignore_repeated_passwords
            else "every failed password counted"]
    if a.dovecot_policy_delay:
        what.append(f"{a.dovecot_policy_delay} s delay for failing sources")
    lines = [f"dovecot auth policy: on {a.dovecot_policy_listen} ({', '.join(what)})",
             "Dovecot needs (a file in /etc/dovecot/conf.d/, then `doveadm reload`; the nonce "
             "is made now, any random string of the site's own will do):"]
    snippet = dovecot_settings(a.dovecot_policy_listen, secrets.token_hex(16),
                               f"<the key in {key_file}>" if key_file else "")
    lines += ["  " + line for line in snippet.splitlines()]
    return lines, warnings
