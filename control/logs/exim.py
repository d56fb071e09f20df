"""Exim (4.8x-4.98) main-log messages -> signals.

- ``NAME authenticator failed for HOST [ADDR]:port ...: 535 ... (set_id=USER)`` ->
  ``auth_failure`` (a 5xx reply only: 435/454 mean the server could not check).
- ``H=HOST [ADDR] ... rejected RCPT <rcpt>: Unknown user`` -> ``rcpt_unknown``. Only
  reasons that say the user is unknown count; ``Unrouteable address`` also covers
  domains that do not resolve, which is no sign of address harvesting.
- ``SMTP call from HOST [ADDR] dropped: too many nonmail commands (last was "RSET")``
  -> ``rset`` (count 1). Synchronization errors naming RSET are not RSETs counted.
- ``<= sender H=HOST [ADDR] ... P=esmtpsa ... A=authenticator:user`` -> ``auth_success``,
  and so is ``no MAIL in SMTP connection from HOST [ADDR] D=... A=authenticator:user``
  (a session that authenticated but sent no mail). ``A=`` is believed only when the
  protocol ``P=`` says Exim authenticated the client (``...esmtpa``/``...esmtpsa``),
  and the sender (client text) is skipped as a whole, quotes included.
- With ``log_selector = +smtp_connection``: ``SMTP connection from [ADDR]:port
  (TCP/IP connection count = N)`` -> ``connect``; ``SMTP connection from ... closed by
  QUIT`` / ``closed by DROP in ACL`` / ``lost ...`` -> ``disconnect``. Exim writes
  both only with that selector, so they pair.

HOST is ``name (helo) [ADDR]:port`` with optional parts; the address is the first
bracketed one followed by what Exim writes after it, so a HELO such as
``([192.168.2.33])`` is skipped. Exim accepts only a host name or an address
literal as HELO (unless ``helo_allow_chars`` lets in more), so a HELO holds no
``) [``. Senders and recipients are client text: they are read with their quoting
(a quoted local part may hold `` rejected RCPT <x>: Unknown user`` or ``A=``), and
every count is 1: a line counts once.

Session key: the daemon logs the connect line before it forks the process that
serves the client, so the pid does not pair a connect with its disconnect. The
client's ``[ADDR]:port`` does (``+incoming_port``, which every line of the session
then carries): the key is ``host/exim[ADDR]:port`` when the port is logged, else
``host/exim[pid]`` (the serving process, from ``exim[pid]:`` or Exim's own ``[pid]``
prefix), else None; a connect line without port has none.
"""

from __future__ import annotations

import re
from typing import Final

from .signals import Signal, ip_of, new_signal, user_or_none

_PID: Final = re.compile(r"\[(\d+)\] ")
_MSGID: Final = re.compile(r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4} ")
_HOST: Final = r"(?:[^\s\[(]+ )?(?:\(.*?\) )?\[([^\]\s]+)\](?::(\d+))?"
_EXTRA: Final = r"(?: [A-Za-z]+=\S+)*"
_AUTH_FAILED: Final = re.compile(
    r"\S+ authenticator failed for " + _HOST + _EXTRA + r": (\d)\d\d\b(.*)$"
)
_SET_ID: Final = re.compile(r"\(set_id=(.*)\)$")
_H: Final = re.compile(r"H=" + _HOST)
_ARRIVAL: Final = re.compile(
    r"<= (?:\"(?:[^\"\\]|\\.)*\"|[^\s\"])+(?: R=\S+)?(?: DS)? H=" + _HOST
    + r"(?: \S+)*? P=(\S+)"
)
_TOKEN: Final = re.compile(r" (\w+)=(\"(?:[^\"\\]|\\.)*\"|\S*)")
# What follows "H=host [addr]" on a rejected RCPT: fields (F=<sender>, A=, U=, ...),
# then the verdict and the recipient. An address is read with its quoting: a quoted
# local part may hold " rejected RCPT <x>: Unknown user".
_ADDR: Final = r'(?:"(?:[^"\\]|\\.)*"|[^\s<>"])*'
_RCPT: Final = re.compile(
    r"(?: [A-Za-z]+=(?:<" + _ADDR + r">|[^\s<]\S*))* (temporarily )?rejected RCPT "
    r"(?:<(" + _ADDR + r")>|(\S+)): "
)
_NO_MAIL: Final = re.compile(
    r"no MAIL in (?:TFO\*? )?SMTP connection from " + _HOST + _EXTRA + r" D=\S+ A=(\S+)"
)
_CONNECT: Final = re.compile(
    r"SMTP connection from " + _HOST + _EXTRA + r" \(TCP/IP connection count = \d+\)"
)
_DISCONNECT: Final = re.compile(
    r"SMTP connection from " + _HOST + _EXTRA + r" (?:closed by (?:QUIT|DROP in ACL)|lost\b)"
)
_NONMAIL: Final = re.compile(
    r"SMTP call from " + _HOST + _EXTRA
    + r" dropped: too many nonmail commands \(last was \"(?i:rset)\"\)"
)
_UNKNOWN: Final = ("unknown user", "user unknown", "no such user")


def parse(msg: str, host: str = "", pid: str | None = None) -> list[Signal]:
    """Signals in one Exim message (after the time stamp; ``pid`` from ``exim[pid]:``)."""
    if msg[:1] == "[":
        p = _PID.match(msg)
        if p is not None:
            pid = pid or p[1]
            msg = msg[p.end():]
    if "0" <= msg[:1] <= "9":
        i = _MSGID.match(msg)
        if i is not None:
            msg = msg[i.end():]
    c = msg[:1]
    if c == "<":
        return _arrival(msg, host, pid) if msg.startswith("<= ") else []
    if c == "H":
        return _rcpt(msg, host, pid) if " rejected RCPT " in msg else []
    if c == "S":
        if msg.startswith("SMTP connection from "):
            m = _CONNECT.match(msg)
            if m is not None:
                return _one("connect", m, host, None, None)
            m = _DISCONNECT.match(msg)
            return _one("disconnect", m, host, pid, None) if m is not None else []
        if msg.startswith("SMTP call from ") and "nonmail" in msg:
            m = _NONMAIL.match(msg)
            return _one("rset", m, host, pid, None) if m is not None else []
        return []
    if c == "n":
        if msg.startswith("no MAIL in ") and " A=" in msg:
            m = _NO_MAIL.match(msg)
            return _one("auth_success", m, host, pid, _auth_id(m[3])) if m is not None else []
        return []
    if " authenticator failed for " in msg:
        m = _AUTH_FAILED.match(msg)
        if m is None or m[3] != "5":
            return []
        s = _SET_ID.search(m[4])
        return _one("auth_failure", m, host, pid, user_or_none(s[1]) if s else None)
    return []


def _session(host: str, pid: str | None, ip: str, port: str | None) -> str | None:
    if port:
        return f"{host}/exim[{ip}]:{port}"
    return f"{host}/exim[{pid}]" if pid else None


def _one(
    kind: str, m: re.Match[str] | None, host: str, pid: str | None, user: str | None
) -> list[Signal]:
    """One signal for the address in groups 1 (address) and 2 (port) of ``m``."""
    if m is None:
        return []
    ip = ip_of(m[1])
    if ip is None:
        return []
    return [new_signal((kind, ip, "smtp", user, 1, "exim", _session(host, pid, ip, m[2]), None))]


def _auth_id(value: str) -> str | None:
    """The user in ``A=authenticator:id[:sender]``."""
    parts = value.split(":", 2)
    return user_or_none(parts[1]) if len(parts) > 1 else None


def _arrival(msg: str, host: str, pid: str | None) -> list[Signal]:
    m = _ARRIVAL.match(msg)
    if m is None or not m[3].endswith("a"):  # esmtpa, esmtpsa, utf8esmtpsa: authenticated
        return []
    for t in _TOKEN.finditer(msg, m.end()):
        key = t[1]
        if key == "A":
            return _one("auth_success", m, host, pid, _auth_id(t[2]))
        if key == "S":
            break
    return []


def _rcpt(msg: str, host: str, pid: str | None) -> list[Signal]:
    m = _H.match(msg)
    if m is None:
        return []
    r = _RCPT.match(msg, m.end())
    if r is None or r[1] is not None:  # (temporarily: the server could not check)
        return []
    if not msg[r.end():].lower().startswith(_UNKNOWN):
        return []
    rcpt = r[2] if r[2] is not None else r[3]
    return _one("rcpt_unknown", m, host, pid, user_or_none(rcpt))
