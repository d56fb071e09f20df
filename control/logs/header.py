"""The part of a log line before the message: host, program tag and pid.

Line shapes the parsers accept (STAMP: any shape of :mod:`.stamps`):

- ``STAMP host tag[pid]: msg`` (syslog, rsyslog's RFC 3339 files, journalctl
  ``short*`` outputs, Postfix ``maillog_file``, which writes the host's first label);
- ``STAMP tag[pid]: msg`` / ``STAMP tag(args): msg`` / ``STAMP tag: msg`` (no host:
  Dovecot ``log_path``, multilog, a Postfix log written without host);
- ``STAMP [pid] msg`` and ``STAMP msg`` (Exim's own log: no tag at all);
- ``host tag[pid]: STAMP msg`` (a stamp inside the message: Exim to syslog or the
  journal, Dovecot logging its own time to syslog);
- ``<PRI>1 STAMP HOST APP PROCID MSGID SD MSG`` (RFC 5424 on the wire) and a
  ``<PRI>`` in front of any of the above.

The caller finds the leading stamp (it caches it from line to line) and hands the
rest to :func:`tagged`; :func:`split` does both, for the lines that start with
``<PRI>`` and for the rare callers that need no speed.
"""

from __future__ import annotations

import re
from typing import Final

from . import stamps

# [host ]tag[[pid]|(args)[<session>]]: -- the host never ends in ':' (so "dovecot: x: "
# is a tag, not a host) and holds no brackets.
_TAGGED: Final = re.compile(
    r"(?:([^\s\[\]()]*[^\s:\[\]()]) )?"  # host
    r"(([A-Za-z][\w./-]*)(?:\[(\d+)\])?(?:\([^)]*\)(?:<[^>]*>)?)?: (.*))",  # body: tag, pid, msg
    re.S,
)
_PRI: Final = re.compile(r"<\d{1,3}>")
_RFC5424: Final = re.compile(
    r"<\d{1,3}>1 (\S+) (\S+) (\S+) (\S+) \S+ "
    r"(?:-|(?:\[(?:[^\]\\\"]|\\.|\"(?:[^\"\\]|\\.)*\")*\])+)(?: \ufeff?|$)"
)

Tagged = tuple[
    "re.Match[str] | None",  # inner: a stamp at the start of the message
    str,  # host ("" when none)
    str,  # tag ("" when none: Exim's own log)
    "str | None",  # pid
    str,  # body: from the tag on ("tag[pid]: msg"), all of ``rest`` without a tag
    str,  # msg: after "tag[pid]: " (and after an inner stamp)
]
Split = tuple["re.Match[str] | None", str, Tagged]  # leading stamp, rest after it, tagged(rest)


def tagged(rest: str) -> Tagged:
    """Host, tag and pid at the start of ``rest`` (the line after its stamp)."""
    m = _TAGGED.match(rest)
    if m is None:
        return None, "", "", None, rest, rest
    host, body, tag, pid, msg = m.groups()
    if "0" <= msg[:1] <= "9" and msg[4:5] == "-":
        inner = stamps.ISO.match(msg)
        if inner is not None:
            msg = msg[inner.end():]
            return inner, host or "", tag, pid, body[: m.start(5) - m.start(2)] + msg, msg
    return None, host or "", tag, pid, body, msg


def split(text: str) -> Split:
    """A whole line taken apart (never fails: unknown shapes are all message)."""
    if text[:1] == "<":
        m = _RFC5424.match(text)
        if m is not None:
            return _rfc5424(text, m)
        m = _PRI.match(text)
        if m is not None:
            text = text[m.end():]
    stamp = stamps.match(text)
    rest = text[stamp.end():] if stamp is not None else text
    return stamp, rest, tagged(rest)


def _rfc5424(text: str, m: re.Match[str]) -> Split:
    """An RFC 5424 frame, in the shape the other lines have."""
    stamp = stamps.ISO.match(m[1] + " ")
    host = "" if m[2] == "-" else m[2]
    tag = "" if m[3] == "-" else m[3]
    pid = m[4] if m[4].isdigit() else None
    msg = text[m.end():]
    body = (tag + (f"[{pid}]" if pid else "") + ": " + msg) if tag else msg
    return stamp, body, (None, host, tag, pid, body, msg)
