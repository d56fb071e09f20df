"""Postfix smtpd messages -> signals.

Only ``smtpd`` processes are read (``postfix/smtpd``, ``postfix/submission/smtpd``,
``postfix/smtps/smtpd``, multi-instance ``postfix-NAME/...``): they are the ones
that talk to clients. Every address comes from the ``name[addr]`` Postfix writes
before any client text, and the name part is a verified DNS name or ``unknown``,
so client text cannot move it.

- ``warning: name[addr][:port]: SASL <mech> authentication failed: <reason>[,
  sasl_username=<user>]`` -> ``auth_failure`` (user from ``sasl_username=``, first
  occurrence, ``(unavailable)`` is none), except ``Invalid authentication
  mechanism`` (no password was evaluated). ``Connection lost to authentication
  server`` counts, unlike in fail2ban's filter: Postfix's Dovecot client writes it
  when Dovecot's answer takes over 10 s, and Dovecot's auth penalty (up to 15 s
  before each answer to an address that keeps failing) makes every SMTP AUTH
  brute force end that way from its third attempt on, the password checked all
  the same. Counted, a brute force blocks with Postfix's log alone; with Dovecot's
  log followed too, the engine pairs the two descriptions as one attempt.
- ``QUEUEID: client=name[addr], sasl_method=M, sasl_username=U`` -> ``auth_success``.
- ``reject: RCPT|VRFY from name[addr]: 550 5.1.1 <rcpt>: Recipient address
  rejected: User unknown ...`` (any table suffix) -> ``rcpt_unknown`` (user: the
  recipient). Address verification results (``undeliverable address:`` /
  ``unverified address:``) count when the verdict they quote is an unknown user:
  a relay gateway probing its backends rejects unknown users this way.
- ``connect from name[addr]`` -> ``connect``; ``disconnect from name[addr] ...
  rset=N auth=K/M ...`` -> ``disconnect``, plus ``rset`` (count N, the total of an
  ``ok/total`` pair) when N > 0, plus ``auth_success`` (no user) when K > 0. The
  failure counters make no events: earlier lines reported those attempts.

postscreen lines make no events. postscreen is one process for all clients, so its
``CONNECT from [addr]:port`` has no session to pair with a disconnect (it logs none
for clients it hands over: ``PASS NEW``/``PASS OLD``); every client it passes is
logged again by smtpd's ``connect from``, so counting both would double the rate;
and the kernel counts every TCP connection, postscreen's rejects included.

Client text (a user name, the sender, a recipient, the HELO) never decides what a
line is or where its address is: the address is the first ``name[addr]``, the
kind of a queue-file line is what follows its queue id (``client=`` or
``reject:``), a recipient is read with its quoting (a quoted local part may hold
``>: Recipient address rejected: User unknown``), and every count is 1 except
``rset=N``, which the server writes after the address, before any client text.

Session key: ``host/tag[pid]`` -- one smtpd process serves one client between its
``connect from`` and ``disconnect from``.
"""

from __future__ import annotations

import re
from typing import Final

from .signals import Signal, ip_of, new_signal, user_or_none

_NAMADDR: Final = r"([^\s\[]*)\[([^\]]+)\](?::\d+)?"  # (name, addr)
# Each pattern stops where what follows is read as it always matches: _SASL_FAIL's
# "(.*?)(?:, sasl_username=(.*))?$" (the reason, up to the first ", sasl_username=",
# then the user), _SASL_OK's "(.*?)(?:, sasl_sender=.*)?$" (the user, up to the first
# ", sasl_sender="), _REJECT's "(.*)$" (the reason): string operations, cheaper.
_SASL_FAIL: Final = re.compile(r"warning: " + _NAMADDR + r": SASL \S+ authentication failed: ?")
_SASL_OK: Final = re.compile(
    r"\w+: client=" + _NAMADDR + r",(?: [^,]*,)*? sasl_method=[^,]*, sasl_username="
)
# An address as Postfix logs it between <>: a quoted part may hold anything ("<", ">",
# ": Recipient address rejected: "), the rest holds none of <, > or ".
_ADDRESS: Final = r'((?:"(?:[^"\\]|\\.)*"|[^<>"])*)'
_REJECT: Final = re.compile(
    r"\w+: reject: (?:RCPT|VRFY) from " + _NAMADDR
    + r": \d{3}(?: \d\.\d{1,3}\.\d{1,3})? (?:<" + _ADDRESS + r">)?: Recipient address rejected: "
)
# The commonest signal lines of all, header included: one regex instead of three steps.
_SESSION_LINE: Final = re.compile(
    r"(?:([^\s\[\]()]*[^\s:\[\]()]) )?(postfix[\w.-]*(?:/[\w.-]+)*/smtpd)\[(\d+)\]: "
    r"(dis)?connect from ([^\s\[]*)\[([^\]]*)\](?::\d+)?(.*)",
    re.S,
)
_SERVER_FAULTS: Final = ("Invalid authentication mechanism",)
_VERIFY: Final = ("undeliverable address:", "unverified address:")


def parse(host: str, tag: str, pid: str | None, msg: str) -> list[Signal]:
    """Signals in one Postfix message (``msg`` is what follows ``tag[pid]: ``)."""
    if not tag.endswith("/smtpd"):
        return []
    session = f"{host}/{tag}[{pid}]" if pid else None
    if msg.startswith("connect from "):
        ip = _client(msg, 13)[0]
        if ip is None:
            return []
        name = msg[13 : msg.find("[", 13)]
        return [new_signal(("connect", ip, "smtp", None, 1, "postfix", session, name))]
    if msg.startswith("disconnect from "):
        return _disconnect(msg, session)
    if msg.startswith("warning: "):
        return sasl_failure(msg, session)
    # "QUEUEID: client=..." or "NOQUEUE: reject: ...": told apart by what the server
    # writes first, never by a phrase that a user name, sender or HELO may hold.
    q = msg.find(": ") + 2
    if q < 2:
        return []
    if msg.startswith("client=", q):
        return sasl_success(msg, session) if "sasl_username=" in msg else []
    if msg.startswith("reject: ", q):
        return rejected(msg, session) if "Recipient address rejected: " in msg else []
    return []


def sasl_failure(msg: str, session: str | None) -> list[Signal]:
    """``warning: name[addr]: SASL <mech> authentication failed: ...`` (parse's reading)."""
    m = _SASL_FAIL.match(msg)
    if m is None:
        return []
    e = m.end()
    u = msg.find(", sasl_username=", e)
    if msg.startswith(_SERVER_FAULTS, e, u if u >= 0 else len(msg)):
        return []
    ip = ip_of(m[2])
    if ip is None:
        return []
    user = user_or_none(msg[u + 16 :]) if u >= 0 else None
    return [new_signal(("auth_failure", ip, "smtp", user, 1, "postfix", session, m[1]))]


def sasl_success(msg: str, session: str | None) -> list[Signal]:
    """``QUEUEID: client=name[addr], sasl_method=M, sasl_username=U`` (parse's reading)."""
    m = _SASL_OK.match(msg)
    ip = ip_of(m[2]) if m else None
    if ip is None:
        return []
    e = m.end()  # type: ignore[union-attr]
    s = msg.find(", sasl_sender=", e)
    user = user_or_none(msg[e:s] if s >= 0 else msg[e:])
    name = m[1]  # type: ignore[index]
    return [new_signal(("auth_success", ip, "smtp", user, 1, "postfix", session, name))]


def session_line(rest: str) -> list[Signal] | None:
    """``[host ]postfix/.../smtpd[pid]: [dis]connect from name[addr]...`` (``rest``: the
    line after its stamp), or None when the line has another shape."""
    m = _SESSION_LINE.match(rest)
    if m is None:
        return None
    host, tag, pid, dis, name, addr, tail = m.groups()
    ip = ip_of(addr)
    if ip is None:
        return []
    session = f"{host or ''}/{tag}[{pid}]"
    if dis is None:
        return [new_signal(("connect", ip, "smtp", None, 1, "postfix", session, name))]
    return _ended(ip, session, tail, name)


def _client(msg: str, start: int) -> tuple[str | None, int]:
    """The address in ``name[addr][:port]`` at ``start``, and where that ends."""
    b = msg.find("[", start)
    e = msg.find("]", b + 1)
    if b < 0 or e < 0 or " " in msg[start:b]:
        return None, 0
    return ip_of(msg[b + 1:e]), e + 1


def _counter(tail: str, name: str, start: int = 0) -> tuple[int, int] | None:
    """A disconnect counter ``name=N`` or ``name=ok/total`` as (ok, total), in what
    follows ``start``."""
    i = tail.find(name, start)
    if i < 0:
        return None
    i += len(name)
    j = tail.find(" ", i)
    value = tail[i:j] if j >= 0 else tail[i:]
    ok, _, total = value.partition("/")
    if not ok.isdigit() or not (total or ok).isdigit():
        return None
    return int(ok), int(total or ok)


def _disconnect(msg: str, session: str | None) -> list[Signal]:
    ip, end = _client(msg, 16)
    if ip is None:
        return []
    return _ended(ip, session, msg[end:], msg[16 : msg.find("[", 16)])


def _ended(ip: str, session: str | None, tail: str, name: str) -> list[Signal]:
    """A disconnect, and what its counters report: RSETs, a successful AUTH."""
    out = [new_signal(("disconnect", ip, "smtp", None, 1, "postfix", session, name))]
    rset = _counter(tail, " rset=")
    if rset is not None and rset[1] > 0:
        out.append(new_signal(("rset", ip, "smtp", None, rset[1], "postfix", session, name)))
    auth = _counter(tail, " auth=")
    if auth is not None and auth[0] > 0:
        out.append(new_signal(("auth_success", ip, "smtp", None, 1, "postfix", session, name)))
    return out


def rejected(msg: str, session: str | None) -> list[Signal]:
    """``reject: RCPT from name[addr]: 550 ...: Recipient address rejected: ...``."""
    m = _REJECT.match(msg)
    if m is None:
        return []
    reason = msg[m.end() :]
    if not reason.startswith("User unknown"):
        if not reason.startswith(_VERIFY):
            return []
        # The verdict, without "; from=<sender> to=<rcpt> proto=... helo=<...>".
        f = reason.find("; from=<")
        low = (reason[:f] if f >= 0 else reason).lower()
        if "user unknown" not in low and "unknown user" not in low:
            return []
    ip = ip_of(m[2])
    if ip is None:
        return []
    rcpt = user_or_none(m[3])
    return [new_signal(("rcpt_unknown", ip, "smtp", rcpt, 1, "postfix", session, m[1]))]
