"""LogParser: one mail log file's lines -> Events.

Each line's leading stamp is read (:mod:`.stamps`; once per second of log: the
next line with the same stamp text reuses it), then a cheap substring prefilter
decides: a line that names none of the phrases a signal needs (most of a mail
log: queue manager, deliveries, cleanup, mailbox sessions) costs a few substring
scans and nothing else. Only the rest is taken apart (:mod:`.header`) and handed
to the parser of its program (:mod:`.postfix`, :mod:`.dovecot`, :mod:`.exim`).

The format is detected per line from the program tag (``postfix*``, ``exim*``,
anything else is Dovecot's or pam's; a line without a tag is tried as Dovecot's,
then as Exim's own log), so one file may mix them. A format other than ``auto``
restricts the parsers to that one, still accepting every line shape.

A line counts once, always: a logwatch-style ``: N Time(s)`` suffix counts as one
(it ends the line, after any text a client shapes: a user name ending in ``: 10
Time(s)`` must not count ten failures; real mail logs never carry it). A line
ending in one is read as written and, when that finds nothing, without it. The
only counts above one are those the server itself writes where no client text
comes before them (Dovecot's ``auth failed, N attempts``, Postfix's ``rset=N``:
see those parsers). A line without any time stamp takes the latest stamp the file
had (none yet: the wall clock).

Speed (``dynscreen replay`` reads millions of lines): :meth:`LogParser.parse_many`
takes a file's lines in bulk. A line whose stamp is the cached one and whose
header is the plain ``host tag[pid]: `` (or ``host tag: ``) is read with string
operations and a per-file cache of what each ``host tag`` means, and the commonest
lines go their own way: Postfix processes other than smtpd (queue manager,
cleanup, deliveries, postscreen) are dropped before any phrase scan, since no
message of theirs is a signal; smtpd ``connect from`` / ``disconnect from`` and
Dovecot login summaries are read in place. Every other line, and every line whose
shape is the least unusual, takes the general way: the result is the same either
way, the fast ways only accept what the general one reads the same
(tests/test_logs_bulk.py). The module is compiled by mypyc (control/native.py).

Every line also gets an outcome, for ``replay`` to say what it missed (the
parser keeps the tallies: :meth:`LogParser.outcomes`): a *signal* line gave
events; an *understood* line is one of a mail server whose parser is on
(Postfix, Dovecot, Exim: by its program tag, or the shape of Exim's own log)
that carries no signal; any other line is *not understood*, as ``other`` (a log
line of another program) or ``unknown`` (no program tag and not Exim's own log:
``journalctl -o json`` output, a truncated line, junk). The first few
not-understood lines are kept as examples. The format comes from the same
header the line's parsing reads (cached per ``host tag``), so counting costs a
few operations per line.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterable
from typing import Final

from dynscreen.control.events import Event

from . import dovecot, exim, header, postfix, stamps
from .signals import Signal, ip_of

FORMATS: Final = ("auto", "postfix", "dovecot", "exim")

# A line's format, for its outcome: the first three are understood, the rest not.
LINE_FORMATS: Final = ("postfix", "dovecot", "exim", "other", "unknown")
_F_POSTFIX: Final = 0
_F_DOVECOT: Final = 1
_F_EXIM: Final = 2
_F_OTHER: Final = 3  # a program tag no parser (that is on) reads
_F_UNKNOWN: Final = 4  # no program tag, and not Exim's own log
_F_UNDECIDED: Final = -1  # (a head whose lines are classified one by one)
MAX_MISSED: Final = 5  # not-understood lines kept as examples, per file
MISSED_CHARS: Final = 200  # of each example
# Dovecot's processes, as tags of its own log file (log_path) or of syslog lines.
_DOVECOT_TAGS: Final = frozenset((
    "dovecot", "auth", "auth-worker", "imap-login", "pop3-login", "managesieve-login",
    "submission-login", "imap", "pop3", "lmtp", "lda", "managesieve", "submission", "master",
    "config", "doveadm", "indexer", "indexer-worker", "dict", "anvil", "log", "stats",
    "quota-status", "imap-urlauth", "imap-hibernate",
))
# What follows the stamp on a line of Exim's own log (no tag): a [pid], a message id,
# or one of its messages that carry none.
_EXIM_OWN: Final = re.compile(
    r"(?:\[\d+\] )?(?:[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4} |SMTP |H=|no MAIL |"
    r"no host name |\S+ authenticator failed |Start queue run|End queue run|exim |"
    r"TLS error |rejected |SMTP call |unexpected disconnection )"
)
# Dovecot's own log file names a session's process with its user and ids after it:
# ``imap(alice)<1234><sessionid>: `` (header.tagged reads one <...> at most).
_DOVECOT_PROCESS: Final = re.compile(r"([a-z][\w-]*)\([^)]*\)(?:<[^>]*>)*: ")
# Event.origin -> the format of its line (a signal line is understood, whatever its tag).
_ORIGIN_FORMAT: Final = {
    "postfix": _F_POSTFIX, "dovecot-login": _F_DOVECOT, "dovecot-auth": _F_DOVECOT,
    "dovecot": _F_DOVECOT, "pam": _F_DOVECOT, "exim": _F_EXIM,
}

_new = tuple.__new__  # Event(...) without the keyword handling: a replay makes ~0.4 per line


def _maybe_signal(text: str) -> bool:
    """True when the line may carry a signal: each phrase some signal line must hold
    (the commonest first)."""
    return (
        "connect from" in text  # Postfix connect/disconnect
        or "-login: " in text  # Dovecot login summaries
        or "sasl_username=" in text
        or "assword mismatch" in text
        or "uthent" in text  # authentication failed, authenticator failed, pam_authenticate
        or "ser unknown" in text
        or "nknown user" in text
        or "connection from" in text  # Exim SMTP connection from
        or "nvalid credentials" in text
        or " A=" in text  # Exim authenticated arrival
        or "nonmail" in text
    )


def _untimed(text: str, start: int) -> str:
    """The line without a logwatch-style ``: N Time(s)`` suffix (after ``start``), or
    ``text`` itself when it has none.

    N is never read: a count is never taken from text a client can shape. The line
    is read without the suffix only when it means nothing as written: a client's
    text may end in one (a user name last on the line), and cutting it would move
    what the parsers read as the server's fields after it.
    """
    if not text.endswith(" Time(s)"):
        return text
    digits = text[: len(text) - 8]
    cut = len(digits.rstrip("0123456789"))
    if cut == len(digits) or not text.endswith(": ", start, cut) or cut - 2 < start:
        return text
    return text[: cut - 2]


# What the "host tag" before ``[pid]: `` / ``: `` says about a line (LogParser._head):
_BAD: Final = 0  # not the plain shape (or a Postfix smtpd tag the session pattern refuses)
_SKIP: Final = 1  # a Postfix process other than smtpd: none of its messages is a signal
_SKIP_PID: Final = 6  # the same, once the "[pid]: " that follows is seen to be one
_SMTPD: Final = 2  # Postfix smtpd
_DOVECOT: Final = 3  # "dovecot": Dovecot to syslog
_EXIM: Final = 4  # exim*
_OTHER: Final = 5  # anything else (Dovecot processes, pam, ...)
# header.tagged's host and tag, for a head that is all of them (fullmatch).
_HEAD: Final = re.compile(r"(?:([^\s\[\]()]*[^\s:\[\]()]) )?([A-Za-z][\w./-]*)")
# postfix.session_line's tag.
_SMTPD_TAG: Final = re.compile(r"postfix[\w.-]*(?:/[\w.-]+)*/smtpd")
_HEADS_MAX: Final = 4096
# dovecot's login processes (its _LOGIN), and the levels it skips after them.
_LOGIN: Final = {"imap": "imap", "pop3": "pop", "managesieve": "sieve", "submission": "smtp"}
_LEVELS: Final = ("Info: ", "Warning: ", "Error: ", "Debug: ", "Fatal: ", "Panic: ")
# First characters of what dovecot's _WRAP strips after "dovecot: ".
_WRAPS: Final = "dl(IWED"
_PAM: Final = "(dovecot:auth): authentication failure; "  # dovecot.parse's pam_unix lines

# class, host, tag, session prefix, body offset, quiet: a host before the tag that no
# Exim line starts with (present, neither a digit nor "<" first), so that exim.parse of
# the whole line after its stamp, where a line of no Postfix or Exim tag also goes,
# finds nothing (its patterns need "<= ", "H=[", an Exim message id, or a second word
# that is none of a tag's); and the lines' format (LINE_FORMATS; -1: line by line).
Head = tuple[int, str, str, str, int, bool, int]
_NO_HEAD: Final[Head] = (_BAD, "", "", "", 0, False, _F_UNDECIDED)


class LogParser:
    """Per-file parser: detects the format per line, keeps per-file state (year inference)."""

    def __init__(
        self,
        file: str,
        fmt: str = "auto",
        *,
        year: int | None = None,
        tz: datetime.tzinfo | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r} (one of {', '.join(FORMATS)})")
        self.file = file
        self.fmt = fmt
        self._postfix = fmt in ("auto", "postfix")
        self._dovecot = fmt in ("auto", "dovecot")
        self._exim = fmt in ("auto", "exim")
        self._clock = stamps.Clock(year, tz)
        self._key = "\0"  # the text of the last whole-second stamp (with its space) ...
        self._key_ts = 0.0  # ... and its time
        self._prev_ts: float | None = None  # the latest stamp read, for lines without one
        self._heads: dict[str, Head] = {}
        self._tag_formats: dict[str, int] = {}
        # outcomes, by LINE_FORMATS index: lines with events, lines without
        self.signal_lines = [0] * len(LINE_FORMATS)
        self.quiet_lines = [0] * len(LINE_FORMATS)
        self.missed: list[tuple[int, str, int]] = []  # (line, first chars, length)

    def parse(self, text: str, lineno: int) -> list[Event]:
        """The events of one line (``text`` without its newline); [] when it has none."""
        out: list[Event] = []
        self.parse_many((text,), lineno - 1, out)
        return out

    def parse_many(self, lines: Iterable[str], lineno: int, out: list[Event]) -> int:
        """The events of consecutive lines (each without its newline), numbered from
        ``lineno + 1``, appended to ``out``; returns the last line's number.

        The same events, and the same state after, as :meth:`parse` line by line.
        """
        maybe = _maybe_signal
        heads = self._heads
        file = self.file
        new = _new
        add = out.append
        clock = self._clock
        postfix_on, dovecot_on, exim_on = self._postfix, self._dovecot, self._exim
        key = self._key
        klen = len(key)
        key_ts = self._key_ts
        quiet = self.quiet_lines
        fmt = _F_UNDECIDED  # the format of the line before (none yet)
        prev = ""
        n0 = len(out)
        # Postfix's and Dovecot's lines (almost all) are tallied in native ints, added to
        # the lists at the end: a list item += 1 boxes a new int object per line.
        quiet_pf = quiet_dc = signal_pf = signal_dc = 0
        for text in lines:
            if fmt >= 0:  # the outcome of the line before: a few operations per line
                if len(out) == n0:
                    if fmt == _F_POSTFIX:
                        quiet_pf += 1
                    elif fmt == _F_DOVECOT:
                        quiet_dc += 1
                    else:
                        quiet[fmt] += 1
                        if fmt >= _F_OTHER and len(self.missed) < MAX_MISSED:
                            self._miss(lineno, prev)
                else:
                    if fmt == _F_POSTFIX:  # (what _signal counts for them)
                        signal_pf += 1
                    elif fmt == _F_DOVECOT:
                        signal_dc += 1
                    else:
                        self._signal(fmt, out)
                    n0 = len(out)
            lineno += 1
            prev = text
            if text.startswith(key):  # the cached stamp
                k = klen
                ts = key_ts
            else:
                # The next second's stamp, most likely: see Clock.minute.
                minute = clock.minute
                if minute is not None and text.startswith(minute[0]):
                    n = minute[1]
                    sec = text[n : n + 2]
                    if text[n + 2 : n + 3] == " " and sec.isdecimal() and sec.isascii():
                        ts = minute[2] + int(sec)
                        if ts <= minute[3]:  # what _epoch would read and keep
                            k = klen = n + 3
                            self._prev_ts = self._key_ts = key_ts = ts
                            self._key = key = text[:k]
                        else:
                            k = 0
                    else:
                        k = 0
                else:
                    k = 0
                if not k:  # any other stamp (or none): the general way
                    fmt = self._general(text, lineno, out)
                    key, key_ts = self._key, self._key_ts
                    klen = len(key)
                    continue

            # The header: "host tag[pid]: " or "host tag: " (host optional), what
            # header.tagged reads when "host tag" is all of _HEAD (no ": " in it).
            head = _NO_HEAD
            pid: str | None = None
            m = k  # the message (what a plain header leaves)
            b = text.find("[", k)
            if 0 <= b < k + 48:
                found = heads.get(text[k:b])
                head = found if found is not None else self._head(text[k:b])
            kind = head[0]
            if kind == _BAD:  # not "host tag[": "host tag: "?
                j = text.find(": ", k)
                if j >= 0:
                    found = heads.get(text[k:j])
                    head = found if found is not None else self._head(text[k:j])
                    kind = head[0]
                    if kind == _SKIP_PID:
                        kind = _SKIP
                    m = j + 2
            elif kind != _SKIP:  # "[pid]: "
                e = text.find("]: ", b)
                pid = text[b + 1 : e]
                if e < 0 or not pid.isdecimal():
                    kind = _BAD
                elif kind == _SKIP_PID:
                    kind = _SKIP
                m = e + 3
            fmt = head[6]
            if fmt < 0:
                fmt = self._untagged_format(text, k)
            if kind == _SKIP:  # a Postfix process other than smtpd: no signal whatever
                continue
            if text[-1] == ")" and text.endswith("Time(s)"):  # the general way
                fmt = self._general(text, lineno, out)
                continue
            general = False  # the line needs LogParser._rest (if it passes the prefilter)
            implied = False  # the line passes the prefilter
            signals: list[Signal] | None = None
            if kind == _BAD:
                general = True
            elif kind == _SMTPD:
                if text.startswith(("connect from ", "disconnect from "), m):  # a phrase
                    # postfix.session_line's pattern, read in place
                    dis = text[m] == "d"
                    n = m + 16 if dis else m + 13
                    nb = text.find("[", n)
                    name = text[n:nb]
                    ne = text.find("]", nb + 1)
                    if (
                        pid is None or nb < 0 or ne < 0 or not postfix_on
                        or " " in name or not name.isprintable()  # \s in the name
                    ):
                        self._rest(text, k, ts, lineno, out)
                        continue
                    ip = ip_of(text[nb + 1 : ne])
                    if ip is None:
                        continue
                    session = f"{head[3]}{pid}]"
                    if not dis:
                        add(new(Event, ("connect", ip, ts, "smtp", None, file, lineno, 1,
                                        "postfix", session, name)))
                        continue
                    add(new(Event, ("disconnect", ip, ts, "smtp", None, file, lineno, 1,
                                    "postfix", session, name)))
                    # postfix._ended: the counters (most disconnects have neither; a
                    # phrase not in the line is not after the address: `in` is cheap)
                    if " rset=" in text:
                        rset = postfix._counter(text, " rset=", ne + 1)
                        if rset is not None and rset[1] > 0:
                            add(new(Event, ("rset", ip, ts, "smtp", None, file, lineno,
                                            rset[1], "postfix", session, name)))
                    if " auth=" in text:
                        auth = postfix._counter(text, " auth=", ne + 1)
                        if auth is not None and auth[0] > 0:
                            add(new(Event, ("auth_success", ip, ts, "smtp", None, file,
                                            lineno, 1, "postfix", session, name)))
                    continue
                # What else postfix.parse reads, in its order (the rest is no signal),
                # unless header.tagged would take a stamp off the message first.
                if "0" <= text[m : m + 1] <= "9" and text[m + 4 : m + 5] == "-":
                    general = True
                elif text.startswith("warning: ", m):
                    read = postfix.sasl_failure
                else:  # "QUEUEID: client=" / "QUEUEID: reject: "
                    q = text.find(": ", m) + 2
                    if q < 2:
                        continue
                    if text.startswith("client=", q):
                        if "sasl_username=" not in text or text.find("sasl_username=", m) < 0:
                            continue
                        read = postfix.sasl_success
                        implied = True  # (a phrase)
                    elif text.startswith("reject: ", q):
                        if (
                            "Recipient address rejected: " not in text
                            or text.find("Recipient address rejected: ", m) < 0
                        ):
                            continue
                        read = postfix.rejected
                    else:
                        continue
            elif kind == _DOVECOT and dovecot_on:
                c = text[m : m + 1]
                # dovecot.parse: _WRAP takes "dovecot[pid]: " off, and no more?
                if c in _WRAPS or "0" <= c <= "9" and text[m + 4 : m + 5] == "-":  # ("" too)
                    general = True
                else:
                    p = text.find("-login: ", m, m + 20) if "-login: " in text else -1
                    service = _LOGIN.get(text[m:p]) if p >= 0 else None
                    if service is not None:  # a login summary (a phrase)
                        p += 8
                        if text[p : p + 1] in "IWEDFP" and text.startswith(_LEVELS, p):
                            p = text.index(": ", p) + 2
                        signals = dovecot._summary(service, text, p)
                        if not signals and exim_on and not head[5]:
                            signals = exim.parse(text[k:])
                        for s in signals:
                            add(new(Event, (s[0], s[1], ts, s[2], s[3], file, lineno,
                                            s[4], s[5], s[6], s[7])))
                        continue
                    if not (c == "a" and text.startswith("auth", m)) and (
                        _PAM not in text or text.find(_PAM, m) < 0
                    ):
                        # dovecot.unwrapped has nothing to say: Exim's own log may
                        if not exim_on or head[5]:
                            continue
                        signals = exim.parse(text[k:])
                        if not signals:
                            continue
                        implied = True  # (what exim.parse reads holds a phrase)
            else:
                general = "0" <= text[m : m + 1] <= "9" and text[m + 4 : m + 5] == "-"

            if not implied and not maybe(text):
                continue
            if general:
                self._rest(text, k, ts, lineno, out)
                continue
            if signals is None:
                if kind == _SMTPD:  # postfix.parse
                    sess = f"{head[3]}{pid}]" if pid else None
                    signals = read(text[m:], sess) if postfix_on else []
                elif kind == _DOVECOT and dovecot_on:  # not a login summary
                    signals = dovecot.unwrapped(text[m:])
                    if not signals and exim_on and not head[5]:
                        signals = exim.parse(text[k:])
                elif kind == _EXIM:  # LogParser._tagged, the header read
                    signals = exim.parse(text[m:], head[1], pid) if exim_on else []
                else:
                    signals = self._other(text[k + head[4] :], text[k:])
            for s in signals:
                add(new(Event, (s[0], s[1], ts, s[2], s[3], file, lineno, s[4], s[5], s[6],
                                s[7])))
        if fmt >= 0:  # the last line's outcome
            if len(out) == n0:
                quiet[fmt] += 1
                if fmt >= _F_OTHER and len(self.missed) < MAX_MISSED:
                    self._miss(lineno, prev)
            else:
                self._signal(fmt, out)
        quiet[_F_POSTFIX] += quiet_pf
        quiet[_F_DOVECOT] += quiet_dc
        self.signal_lines[_F_POSTFIX] += signal_pf
        self.signal_lines[_F_DOVECOT] += signal_dc
        return lineno

    def outcomes(self) -> dict[str, tuple[int, int]]:
        """Lines read so far, by format (LINE_FORMATS): (with events, without)."""
        return {
            name: (self.signal_lines[i], self.quiet_lines[i])
            for i, name in enumerate(LINE_FORMATS)
        }

    def _signal(self, fmt: int, out: list[Event]) -> None:
        """A line gave events: understood, in the format of the parser that read it."""
        if fmt >= _F_OTHER:
            fmt = _ORIGIN_FORMAT.get(out[-1].origin, fmt)
        self.signal_lines[fmt] += 1

    def _miss(self, lineno: int, text: str) -> None:
        self.missed.append((lineno, text[:MISSED_CHARS], len(text)))

    def _tag_format(self, tag: str) -> int:
        """The format of the lines of a program tag (whether its parser is on included)."""
        found = self._tag_formats.get(tag)
        if found is not None:
            return found
        if tag.startswith("postfix"):
            fmt = _F_POSTFIX if self._postfix else _F_OTHER
        elif tag.startswith("exim"):
            fmt = _F_EXIM if self._exim else _F_OTHER
        elif tag in _DOVECOT_TAGS:
            fmt = _F_DOVECOT if self._dovecot else _F_OTHER
        else:
            fmt = _F_OTHER
        if len(self._tag_formats) >= _HEADS_MAX:
            self._tag_formats.clear()
        self._tag_formats[tag] = fmt
        return fmt

    def _untagged_format(self, text: str, k: int) -> int:
        """The format of a line whose header is not the plain one (after its stamp at k)."""
        tag = header.tagged(text[k:] if k else text)[2]
        if tag:
            return self._tag_format(tag)
        if k and self._exim and _EXIM_OWN.match(text, k) is not None:
            return _F_EXIM
        m = _DOVECOT_PROCESS.match(text, k)
        if m is not None and m[1] in _DOVECOT_TAGS:
            return _F_DOVECOT if self._dovecot else _F_OTHER
        return _F_UNKNOWN

    def _head(self, text: str) -> Head:
        """What a line's "host tag" means (cached per file: a log has few of them)."""
        m = _HEAD.fullmatch(text)
        if m is None:
            found = _NO_HEAD
        else:
            host, tag = m[1] or "", m[2]
            quiet = host != "" and not ("0" <= host[0] <= "9" or host[0] == "<")
            if tag.startswith("postfix"):
                if not tag.endswith("/smtpd"):
                    # No message of it is a signal; what follows "host tag[" does not
                    # matter either, unless the line is not this header after all: then
                    # it goes to dovecot.parse and exim.parse whole, which read nothing
                    # in it but after a host that is not quiet.
                    kind = _SKIP if quiet else _SKIP_PID
                elif _SMTPD_TAG.fullmatch(tag) is not None:
                    kind = _SMTPD
                else:
                    kind = _BAD
            elif tag.startswith("exim"):
                kind = _EXIM
            elif tag == "dovecot":
                kind = _DOVECOT
            else:
                kind = _OTHER
            fmt = self._tag_format(tag) if kind != _BAD else _F_UNDECIDED
            found = (kind, host, tag, f"{host}/{tag}[", len(host) + 1 if host else 0, quiet, fmt)
        if len(self._heads) >= _HEADS_MAX:
            self._heads.clear()
        self._heads[text] = found
        return found

    def _general(self, text: str, lineno: int, out: list[Event]) -> int:
        """One line the general way: stamps of any shape, ``<PRI>``, ``Time(s)``; returns
        the line's format (LINE_FORMATS).

        A leading stamp is read (and becomes the previous stamp) whatever the line
        says; the rest only when the line may carry a signal.
        """
        if text[:1] == "<":  # <PRI>, RFC 5424: the stamp behind it is read for a signal
            stamp, rest, parts = header.split(text)
            if parts[2]:
                fmt = self._tag_format(parts[2])
            elif stamp is not None and self._exim and _EXIM_OWN.match(rest) is not None:
                fmt = _F_EXIM
            else:
                fmt = _F_UNKNOWN
            if not _maybe_signal(text):
                return fmt
            n = len(out)
            self._framed(text, lineno, out)
            if len(out) == n:
                bare = _untimed(text, 0)
                if bare is not text:
                    self._framed(bare, lineno, out)
            return fmt
        k = 0
        when: float | None = None
        if text.startswith(self._key):
            k, when = len(self._key), self._key_ts
        else:
            lead = stamps.match(text)
            if lead is not None:
                when = self._epoch(lead, lead=True)
                k = lead.end()
        if _maybe_signal(text):
            n = len(out)
            self._rest(text, k, when, lineno, out)
            if len(out) == n:
                bare = _untimed(text, k)
                if bare is not text:
                    self._rest(bare, k, when, lineno, out)
        return self._untagged_format(text, k)

    def _framed(self, text: str, lineno: int, out: list[Event]) -> None:
        """A line that starts with ``<PRI>`` (RFC 5424 or a <PRI> before any shape)."""
        stamp, rest, parts = header.split(text)
        ts = self._epoch(stamp, lead=False) if stamp is not None else None
        self._tagged(parts, rest, ts, lineno, out)

    def _rest(self, text: str, k: int, ts: float | None, lineno: int, out: list[Event]) -> None:
        """A line after its leading stamp (at ``k``; ts None: none, or not a date)."""
        rest = text[k:] if k else text
        if self._postfix and "connect from " in rest:
            fast = postfix.session_line(rest)
            if fast is not None:
                if fast:
                    self._events(fast, ts, lineno, out)
                return
        self._tagged(header.tagged(rest), rest, ts, lineno, out)

    def _tagged(
        self,
        parts: header.Tagged,
        rest: str,
        ts: float | None,
        lineno: int,
        out: list[Event],
    ) -> None:
        inner, host, tag, pid, body, msg = parts
        if tag.startswith("postfix"):
            signals = postfix.parse(host, tag, pid, msg) if self._postfix else []
        elif tag.startswith("exim"):
            signals = exim.parse(msg, host, pid) if self._exim else []
        else:
            signals = self._other(body, rest)
        if not signals:
            return
        if ts is None and inner is not None:
            ts = self._epoch(inner, lead=False)
        self._events(signals, ts, lineno, out)

    def _events(
        self, signals: list[Signal], ts: float | None, lineno: int, out: list[Event]
    ) -> None:
        if ts is None:  # a line without a stamp: the file's previous one
            ts = self._prev_ts if self._prev_ts is not None else time.time()
        file = self.file
        out += [
            _new(Event, (s.kind, s.ip, ts, s.service, s.user, file, lineno, s.count,
                         s.origin, s.session, s.host))
            for s in signals
        ]

    def timestamp(self, text: str) -> float | None:
        """The line's time (Unix seconds) if it has one (used to merge files in time order)."""
        if text.startswith(self._key):
            return self._key_ts
        m = stamps.match(text)
        if m is not None:
            return self._epoch(m, lead=True)
        stamp, _, tagged = header.split(text)
        if stamp is not None:
            return self._epoch(stamp, lead=False)  # behind a <PRI>: not where the cache looks
        return self._epoch(tagged[0], lead=False) if tagged[0] is not None else None

    def _other(self, body: str, rest: str) -> list[Signal]:
        """A line of no Postfix or Exim tag: Dovecot's or pam's, else Exim's own log."""
        if self._dovecot:
            found = dovecot.parse(body)
            if found:
                return found
        return exim.parse(rest) if self._exim else []

    def _epoch(self, m: re.Match[str], *, lead: bool) -> float | None:
        """A stamp's time; a whole-second stamp that starts its line is kept for the
        lines that repeat it."""
        ts = self._clock.epoch(m)
        if ts is not None:
            self._prev_ts = ts
            key = m[0]
            if lead and key[-1:] == " " and "." not in key and m.re is not stamps.TAI:
                self._key, self._key_ts = key, ts
        return ts
