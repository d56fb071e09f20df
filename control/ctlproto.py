"""The control socket's protocol: one JSON object per line each way.

A request is ``{"cmd": NAME, ...arguments}``; the reply is
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": TEXT, "code": 1|2}``
(code 2: the request was invalid, e.g. a bad address; 1: the operation
failed). Requests over MAX_REQUEST bytes, malformed JSON or unknown commands
get an error reply; the daemon never dies of a request.

Commands and their results (the CLI prints these; `--json` prints `result`):

- ``ping`` → ``{"pid": int, "version": str}``
- ``status`` → ``{"blocks": [BLOCK...], "counters": {name: int}, "mode": "enforce|monitor",
  "enabled": bool, "interfaces": {"eth0": "native"}, "started": unix,
  "logs": [{"source", "format", "state": "live|waiting|error", "lines", "last_line_age_s",
  "kind": "file|journal", "forgeable": bool}], "warnings": [str] (log sources missing or
  not found), "daemon": {...}}``
  where BLOCK is ``{"ip", "reason", "note", "minutes_left", "drops", "source"}``
  (docs/design.md's status --json shape; source one of kernel|logs|manual|file), and
  ``"daemon": {"running": true, "pid", "warnings": [str], "tasks": {name: {"state":
  "running|restarting", "restarts", "last_error", "last_crash"}}, "problems": [{"what",
  "message", "count", "first", "last"}], "local_addresses": [str], "loop_stall_max_ms": float,
  "heartbeats": int}`` (the event loop's worst lateness since start; kernel heartbeats stamped)
- ``top`` → ``{"sources": [{"ip", "rate", "established", "syn_per_second", "drops",
  "blocked": bool, "reason": str|null, "minutes_left": float|null}], "counters": {...}}``
- ``block`` ``{"addr": str, "minutes": float|null, "note": str|null}`` → ``{"block": BLOCK}``
- ``unblock`` ``{"addr": str}`` → ``{"removed": bool}``; ``{"all": true}`` →
  ``{"removed": bool, "unblocked": [addr...]}``
- ``allow_add`` ``{"cidr": str}`` → ``{"whitelist": [ALLOW...], "unblocked": int}`` (blocks
  lying inside the whitelist are lifted)
- ``allow_remove`` ``{"cidr": str}`` → ``{"whitelist": [ALLOW...]}``
- ``allow_list`` → ``{"whitelist": [ALLOW...]}``, ALLOW = ``{"cidr", "source": "config|runtime"}``
- ``accounts_list`` → ``{"accounts": [{"user", "since", "until", "service", "ip",
  "session", "failures"}]}``
- ``accounts_unfreeze`` ``{"user": str}`` → ``{"removed": bool}``
- ``blocks_text`` → ``{"path": str, "text": str}`` (the block file as the daemon would write it)
- ``blocks_apply`` ``{"text": str}`` → ``{"added": int, "removed": int, "changed": int}``
  or error code 2 naming the line
- ``reload`` → ``{"config": path|null, "unblocked": int}`` or error code 2 with the config error
- ``detach`` → ``{"detached": [iface...]}`` (the daemon then exits)
- ``explain`` ``{"addr": str}`` → docs/design.md's `explain --json` object (control/explain.py)
- ``history`` ``{"ip", "user", "reason": str, "since": unix, "limit": int}`` (all optional) →
  ``{"rows": [{"time", "action", "ip"|"user", "reason", "origin", ...}], "dropped": int}``
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

MAX_REQUEST = 1 << 20  # bytes per request line
# The only list of commands: control/commands.py serves each with the method of its name.
COMMANDS = (
    "ping", "status", "top", "block", "unblock", "allow_add", "allow_remove", "allow_list",
    "accounts_list", "accounts_unfreeze", "blocks_text", "blocks_apply", "reload", "detach",
    "explain", "history",
)


class RequestError(Exception):
    """The request is invalid (reply code 2)."""


class OperationError(Exception):
    """The request was valid but could not be carried out (reply code 1)."""


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def ok(result: Any) -> bytes:
    return encode({"ok": True, "result": result})


class Streamed:
    """A reply too large to build at once (``status --all`` at a million blocks): the
    ``head`` object, then under ``key`` a JSON array whose text comes in pieces from
    ``texts`` (produced in a worker thread, sent as they come). One line, as any reply."""

    def __init__(self, head: dict[str, Any], key: str, texts: Iterator[str]) -> None:
        self.head = head
        self.key = key
        self.texts = texts

    def opening(self) -> bytes:
        """The reply up to the array: the head's members, then the key."""
        text = ok({**self.head, self.key: None})  # ... ,"key":null}}\n
        cut = text.rindex(b"null}}")
        return text[:cut]

    @staticmethod
    def closing() -> bytes:
        return b"}}\n"


def error(message: str, code: int = 2) -> bytes:
    return encode({"ok": False, "error": message, "code": code})


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's json accepts them): no minutes=NaN."""
    raise ValueError(f"{name} is not a JSON value")


def decode_request(line: bytes) -> dict[str, Any]:
    """Parse and check one request line; RequestError says what is wrong."""
    if len(line) > MAX_REQUEST:
        raise RequestError(f"request too large ({len(line)} bytes, limit {MAX_REQUEST})")
    try:
        req = json.loads(line, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"malformed JSON: {e}") from None
    except RecursionError:
        raise RequestError("malformed JSON: nested too deeply") from None
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        raise RequestError('a request is a JSON object with a "cmd" string')
    if req["cmd"] not in COMMANDS:
        raise RequestError(f"unknown command {req['cmd']!r}")
    return req
