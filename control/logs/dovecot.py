"""Dovecot 2.2-2.4 messages -> signals.

Three programs describe an authentication attempt, and each is read:

- the login process's summary when a client leaves, origin ``dovecot-login``:
  ``imap-login: Disconnected (auth failed, 3 attempts in 12 secs): user=<a>,
  method=PLAIN, rip=ADDR, lip=..., session=<id>`` (2.3), ``Login aborted: ... (auth
  failed, 1 attempts in 2 secs) (auth_failed): ...`` (2.4), ``Aborted login (auth
  failed, 1 attempts): ...`` (2.2) -> ONE ``auth_failure`` with count N;
  ``(tried to use disabled|disallowed plaintext auth)`` (the client sent a password
  where it must not) and ``(proxy dest auth failed)`` count 1; ``Login: user=<a>,
  ...`` -> ``auth_success``. Disconnects without an attempt (``no auth attempts``,
  TLS handshake failures, ``client didn't finish SASL auth``, ``tried to use
  unsupported auth mechanism``) are not failures. Service: imap-login -> imap,
  pop3-login -> pop, managesieve-login -> sieve, submission-login -> smtp.
- the auth process's passdb detail, origin ``dovecot-auth``, count 1:
  ``auth-worker(123): Info: pam(user,ADDR,<session>): pam_authenticate() failed``,
  ``passwd-file(user,ADDR): unknown user``, ``sql(...): Password mismatch``,
  ``ldap(...): invalid credentials``, and 2.4's ``auth(user,ADDR,sasl:plain)<session>:
  Info: sql: Password mismatch``. No service (the detail lines do not name it; a
  ``service=`` field in the server-written prefix is used when there is one).
- ``pam_unix(dovecot:auth): authentication failure; ... rhost=ADDR  user=U``,
  origin ``pam``.

Addresses are taken only from fields the server writes after the client's text
(user names are client-chosen and may contain ``rip=`` or ``,1.2.3.4``):

- summaries: the reason ends at the first ``: user=<`` (or ``: method=`` / ``: rip=``
  when there is no user); the address is the last ``rip=`` field, which follows the
  user name; the session is the ``session=<id>`` after it.
- detail lines: the identity block ``passdb(user,ADDR[,<session>|,sasl:mech|,master])``
  is read at the fixed place after the process prefix, and its fields from the
  right, so only the user name (the leftmost field) can hold client text. With
  Dovecot's default ``auth_username_chars`` a user name cannot contain ``(``, ``)``,
  ``,`` or spaces, so it cannot close the block early either.
- pam_unix: ``ruser`` (the user name again) precedes ``rhost``; the address is the
  ``rhost=`` that ends the line or is followed only by ``  user=`` and a name without
  spaces (or the same name as ``ruser``).

Counts: a line counts once, except a summary's ``(auth failed, N attempts``, read
from the reason, which the login process writes before the first ``: user=<`` and
so before any client text.
"""

from __future__ import annotations

import re
from typing import Final

from .signals import Signal, ip_of, new_signal, user_or_none

SERVICES: Final = {
    "imap": "imap",
    "pop3": "pop",
    "managesieve": "sieve",
    "sieve": "sieve",
    "submission": "smtp",
    "smtp": "smtp",
}

_LEVEL: Final = r"(?:(?:Info|Warning|Error|Debug|Fatal|Panic): )?"
_WRAP: Final = re.compile(
    r"(?:(?:dovecot|log)(?:\[\d+\])?: |\(libdovecot[^)]*\) |(?:Info|Warning|Error|Debug): )+"
)
_LOGIN: Final = re.compile(r"(imap|pop3|managesieve|submission)-login: " + _LEVEL)
_LOGINS: Final = ("imap-login: ", "pop3-login: ", "managesieve-login: ", "submission-login: ")
_ATTEMPTS: Final = re.compile(r"\(auth failed, (\d+) attempts?\b")
_TRIED: Final = re.compile(r"\(tried to use dis(?:abled|allowed) [^()]* auth\)")
_PAM: Final = re.compile(
    r"(?:[\w-]+(?:\[\d+\]|\([^)]*\))?: )?pam_\w+\(dovecot:auth\): authentication failure; (.*)$"
)
_PAM_TAIL: Final = re.compile(r"  user=\S*")
_AUTH: Final = re.compile(
    r"(?:auth|auth-worker|dovecot-auth)(?:\((.*?)\)(?:<([^>]*)>)?)?: " + _LEVEL
)
_CONN: Final = re.compile(r"(?:conn \S+ \([^)]*\): )?auth-worker<\d+>: ")
_IDENT: Final = re.compile(r"[a-z][\w-]*\((.*?)\)(?:<([^>]*)>)?: ")
_DRIVER: Final = re.compile(r"[a-z][\w-]*: ")
_FAILED: Final = re.compile(
    r"(?:unknown user|[Pp]assword mismatch|pam_authenticate\(\) failed|[Ii]nvalid credentials)"
)
_SERVICE_FIELD: Final = re.compile(r"\bservice=(\w+)")


def parse(body: str) -> list[Signal]:
    """Signals in one Dovecot line, from its program tag on (``imap-login: ...``)."""
    w = _WRAP.match(body)
    if w is not None:
        body = body[w.end():]
    return unwrapped(body)


def unwrapped(body: str) -> list[Signal]:
    """:func:`parse` of a line whose syslog and level wrappers are off."""
    m = _LOGIN.match(body) if body.startswith(_LOGINS) else None
    if m is not None:
        return _summary(SERVICES[m[1]], body, m.end())
    if "(dovecot:auth): authentication failure; " in body:
        m = _PAM.match(body)
        return _pam(m[1]) if m is not None else []
    m = _AUTH.match(body) if body.startswith(("auth", "dovecot-auth")) else None
    if m is not None:
        return _detail(body, m)
    return []


def _summary(service: str, text: str, start: int = 0) -> list[Signal]:
    """A login process's summary of a client's login session (``text[start:]``)."""
    b = text.find(": user=<", start)
    if b < 0:
        b = text.find(": method=", start)
        if b < 0:
            b = text.find(": rip=", start)
            if b < 0:
                return []
    f = b + 2  # the fields: text[f:]; the reason: text[start:b]
    if b - start == 5 and text.startswith("Login", start):
        kind, count = "auth_success", 1
    else:
        reason = text[start:b]
        a = _ATTEMPTS.search(reason) if "(auth failed, " in reason else None
        if a is not None:
            kind, count = "auth_failure", int(a[1])
        elif "(proxy dest auth failed)" in reason or (
            "(tried to use dis" in reason and _TRIED.search(reason)
        ):
            kind, count = "auth_failure", 1
        else:
            return []
    r = text.rfind(", rip=", f)  # the last one: the user name comes before it
    if r >= 0:
        v = r + 6
    elif text.startswith("rip=", f):
        r, v = f, f + 4
    else:
        return []
    e = text.find(",", v)
    ip = ip_of(text[v:e] if e >= 0 else text[v:])
    if ip is None or count <= 0:
        return []
    user = None
    if text.startswith("user=<", f):  # the user name: text[f + 6:...] before the address
        u = text.rfind(">, method=", f, r)
        user = user_or_none(
            text[f + 6 : u] if u >= 0 else text[f + 6 : r - 1] if text[r - 1 : r] == ">" else None
        )
    session = None
    if e >= 0:
        s = text.find(", session=<", e)
        if s >= 0:
            se = text.find(">", s + 11)
            session = text[s + 11 : se] if se > s + 11 else None
    return [new_signal((kind, ip, service, user, count, "dovecot-login", session, None))]


def _pam(tail: str) -> list[Signal]:
    """``pam_unix(dovecot:auth): authentication failure; logname= ... ruser=U rhost=A``."""
    j = tail.find("ruser=")
    if j < 0:
        return []
    s = tail[j + 6:]
    k = s.find(" rhost=")
    while k >= 0:
        ruser = s[:k]
        after = s[k + 7:]
        sp = after.find(" ")
        host, remainder = (after, "") if sp < 0 else (after[:sp], after[sp:])
        if (
            not remainder
            or remainder == "  user=" + ruser
            or _PAM_TAIL.fullmatch(remainder) is not None
        ):
            ip = ip_of(host)
            if ip is None:
                return []
            user = user_or_none(remainder[7:] if remainder else ruser)
            return [new_signal(("auth_failure", ip, None, user, 1, "pam", None, None))]
        k = s.find(" rhost=", k + 1)
    return []


def _detail(body: str, m: re.Match[str]) -> list[Signal]:
    """An auth process's passdb verdict on one attempt."""
    args, session = m[1], m[2]
    pos = m.end()
    if args is not None and "," in args:  # 2.4: the identity is the process prefix
        ident, server_end = args, m.start(1)
        d = _DRIVER.match(body, pos)
        if d is not None:
            pos = d.end()
    else:
        c = _CONN.match(body, pos) if body.startswith(("conn ", "auth-worker<"), pos) else None
        if c is not None:
            pos = c.end()
        i = _IDENT.match(body, pos)
        if i is None:
            return []
        ident, session, server_end = i[1], i[2] or session, i.start()
        pos = i.end()
    if _FAILED.match(body, pos) is None:
        return []
    fields = ident.split(",")
    n = len(fields)
    while n > 1:  # from the right: <session>, sasl:mech, master, "" come after the address
        f = fields[n - 1]
        if f.startswith("<") and f.endswith(">"):
            session = session or f[1:-1]
        elif not (f == "" or f == "master" or f.startswith("sasl:")):
            break
        n -= 1
    if n < 2:  # no address field (a local lookup)
        return []
    ip = ip_of(fields[n - 1])
    if ip is None:
        return []
    user = user_or_none(",".join(fields[: n - 1]))
    svc = _SERVICE_FIELD.search(body, 0, server_end) if "service=" in body else None
    service = SERVICES.get(svc[1]) if svc is not None else None
    fields = ("auth_failure", ip, service, user, 1, "dovecot-auth", session or None, None)
    return [new_signal(fields)]
