"""What the parsers hand the engine: one Event per signal a log line carries."""

from __future__ import annotations

from typing import NamedTuple

KINDS = ("connect", "disconnect", "auth_failure", "auth_success", "rcpt_unknown", "rset")
SERVICES = ("smtp", "pop", "imap", "sieve")

# Which program wrote the line: the engine uses it to count one attempt once
# when several programs describe it (Postfix SASL + Dovecot auth-worker + pam).
ORIGINS = (
    "postfix",        # postfix smtpd / postscreen / submission / smtps
    "dovecot-login",  # imap-login, pop3-login, managesieve-login, submission-login summaries
    "dovecot-auth",   # dovecot auth / auth-worker detail lines (passdb/userdb backends)
    "dovecot",        # other dovecot processes (imap(user), pop3(user)): e.g. Logged out
    "pam",            # pam_unix(dovecot:auth) and similar
    "dovecot-policy", # Dovecot's auth policy reports (control/dovecotpolicy.py), not a log
    "exim",
)


class Event(NamedTuple):
    """A raw signal from one log line, as the contract's `replay --json` prints it.

    ``ts`` is the line's own time (Unix seconds, UTC). ``session`` names the mail
    session the line belongs to when the log says so (Postfix: ``host/tag[pid]``,
    the smtpd process between ``connect from`` and ``disconnect from``; Dovecot:
    its ``session=<id>``); ``origin`` is one of ORIGINS. ``host`` is the client's
    host name as the server logged it: Postfix's ``name[addr]`` holds the name its
    reverse and forward DNS lookups agree on, or ``unknown``; None when the line
    names none (Dovecot, Exim). The trusted-senders rule reads it.

    Immutable, and a tuple underneath: a replay makes one per signal line, and a
    tuple is the cheapest object Python builds (the parsers make them with
    ``tuple.__new__(Event, (...))``, all eleven fields in this order).
    """

    kind: str
    ip: str
    ts: float
    service: str | None = None
    user: str | None = None
    file: str = ""
    line: int = 0
    count: int = 1  # type: ignore[assignment]  # (the contract's name; shadows tuple.count)
    origin: str = ""
    session: str | None = None
    host: str | None = None

    def to_json(self) -> dict[str, object]:
        """The contract's JSON shape (``replay --json``)."""
        return {
            "type": "event",
            "kind": self.kind,
            "ip": self.ip,
            "service": self.service,
            "user": self.user,
            "file": self.file,
            "line": self.line,
            "count": self.count,
        }
