"""The parsers against fail2ban's annotated mail-log samples (Debian's fail2ban package).

The samples are read where the package installed them (tests/fail2ban_samples.py);
checked against fail2ban 1.0.2 (Debian 12). Each log line follows an annotation

    # failJSON: { "time": "2005-08-04T16:47:52", "match": true , "host": "192.0.2.237" }

where ``match`` says whether fail2ban's filter flags the line and ``host`` which
address; ``# filterOptions:`` comments switch the filter's mode for the lines after
them (postfix: ``auth`` = SASL failures, ``normal`` = SMTP rejects, ``ddos``, ``rbl``,
``errors``; dovecot and exim: normal vs ``aggressive``).

This project's expectations, which ``expected`` below applies line by line:

- postfix, from the first ``auth`` section to the ``ddos`` section (its ``aggressive``
  sub-section included): lines with ``authentication failed`` and ``"match": true``
  are ``auth_failure`` for that host, and so are ``Connection lost to authentication
  server`` lines, which fail2ban leaves out: Postfix writes that reason when Dovecot's
  answer takes over 10 s, as its auth penalty makes it for a brute force from the
  third attempt on (control/logs/postfix.py); ``Invalid authentication mechanism``
  (no password was evaluated) is not.
- postfix ``Recipient address rejected: User unknown`` lines are ``rcpt_unknown``
  (the VRFY probe rejected the same way too: directory harvesting).
- dovecot: every ``"match": true`` line before the ``aggressive`` section is an
  authentication failure by that host (``tried to use disabled/disallowed plaintext
  auth`` included: the client sent credentials where it must not); the aggressive
  section flags disconnects without any authentication attempt (TLS handshake
  failures, ``no auth attempts``), which are not failures. Login-process summaries
  and auth-worker details of the same attempt both appear: the engine, not the
  parser, counts one attempt once in a live stream.
- exim: ``authenticator failed`` lines are ``auth_failure``; ``rejected RCPT ...:
  Unknown user`` lines are ``rcpt_unknown``.
- A ``: N Time(s)`` suffix (logwatch-style summaries) is accepted; its count is
  checked as the line states it.
- Lines fail2ban flags for other reasons (HELO rejects, RBL hits, relay denied,
  disconnect counters such as ``auth=0/1``, aggressive-mode disconnects) are not
  auth failures for dynscreen.

A parser change that loses a real-world line shape, or that starts flagging a line
fail2ban's users said is harmless, fails here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fail2ban_samples import SAMPLES, require_samples

from dynscreen.control.addr import normalize
from dynscreen.control.logs.parse import LogParser

SAMPLE_DIR = SAMPLES or Path("/nonexistent")

JUDGED = ("auth_failure", "rcpt_unknown")

# Lines whose annotated time is not checked (their events are, above).
TIME_EXCEPTIONS = {
    # TAI64N: fail2ban reads the label as 2^62 + Unix seconds, in its test's local
    # zone; libtai (multilog) writes 2^62 + 10 + Unix seconds: tests/test_logs_stamps.py
    # checks dynscreen's reading of TAI64N labels instead.
    ("dovecot", 2): "TAI64N leap-second offset",
    ("dovecot", 5): "TAI64N leap-second offset",
    ("dovecot", 8): "TAI64N leap-second offset",
    ("dovecot", 10): "TAI64N leap-second offset",
}


@dataclass(frozen=True)
class Sample:
    """One sample log line with the annotation before it and the section it is in."""

    file: str
    line: int
    text: str
    note: dict[str, object]
    modes: tuple[str, ...]  # the filter modes of the section (filterOptions)


def _loads(text: str) -> object:
    """The samples' JSON, which fail2ban's loader takes loosely: trailing commas,
    single quotes."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        fixed = re.sub(r",\s*([}\]])", r"\1", text)
        if '"' not in fixed:
            fixed = fixed.replace("'", '"')
        return json.loads(fixed)


def _modes(options: object) -> tuple[str, ...]:
    items = options if isinstance(options, list) else [options]
    return tuple(str(o.get("mode", "")) for o in items if isinstance(o, dict))


def samples(name: str) -> list[Sample]:
    """Every annotated line of a sample file."""
    out: list[Sample] = []
    note: dict[str, object] | None = None
    modes: tuple[str, ...] = ()
    for n, raw in enumerate((SAMPLE_DIR / name).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.rstrip("\r")
        m = re.match(r"#\s*(failJSON|filterOptions):\s*(.*)$", line)
        if m:
            value = _loads(m[2])
            if m[1] == "failJSON":
                assert isinstance(value, dict), f"{name}:{n}: {value!r}"
                note = value
            else:
                modes = _modes(value)
            continue
        if not line.strip() or line.startswith("#"):
            continue
        if note is not None:
            out.append(Sample(name, n, line, note, modes))
            note = None
    return out


def _section_start(name: str, mode: str) -> int:
    for n, line in enumerate((SAMPLE_DIR / name).read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("# filterOptions:") and f'"mode": "{mode}"' in line:
            return n
    raise AssertionError(f"{name}: no {mode} section")


def expected(s: Sample) -> tuple[str, str] | None:
    """(kind, host) the mapping above gives this line, or None: no auth failure, no
    unknown recipient."""
    match = s.note.get("match") is True
    host = s.note.get("host")
    text = s.text
    if s.file == "postfix":
        if "Recipient address rejected: User unknown" in text:
            assert match, f"postfix:{s.line}: mapped, fail2ban must flag it"
            return "rcpt_unknown", str(host)
        sasl_start = _section_start("postfix", "auth")
        ddos_start = _section_start("postfix", "ddos")
        in_sasl = sasl_start < s.line < ddos_start
        lost = "Connection lost to authentication server" in text
        if (
            in_sasl
            and (match or lost)
            and "authentication failed" in text
            and "Invalid authentication mechanism" not in text
        ):
            return "auth_failure", str(host or _bracketed(text))
        return None
    if s.file == "dovecot":
        aggressive = s.line > _section_start("dovecot", "aggressive")
        return ("auth_failure", str(host)) if match and not aggressive else None
    if s.file == "exim":
        if " authenticator failed " in text:
            assert match
            return "auth_failure", str(host)
        if re.search(r"rejected RCPT \S+: Unknown user", text):
            assert match
            return "rcpt_unknown", str(host)
        return None
    raise AssertionError(s.file)


def _bracketed(text: str) -> str:
    """The client address in a Postfix line, for lines fail2ban gives no host (it
    does not flag them)."""
    m = re.search(r": warning: [^\s\[]*\[([^\]]+)\]", text)
    assert m is not None, text
    return m[1]


def _expected_count(text: str) -> int:
    n = 1
    m = re.search(r"\(auth failed, (\d+) attempts", text)
    if m:
        n = int(m[1])
    return n  # a ": N Time(s)" suffix counts as one: a count is never read from it


ALL = [s for name in ("postfix", "dovecot", "exim") for s in samples(name)] if SAMPLES else []


@pytest.fixture(autouse=True)
def _samples_installed() -> None:
    require_samples()


def test_samples_are_installed() -> None:
    """Under CI=true a missing fail2ban package fails here (the cases below would be empty)."""
    require_samples()


def test_samples_have_the_sections_described() -> None:
    """The sections the mapping above names, in order, and enough samples to mean
    something (fail2ban 1.0.2: postfix auth from line 97, ddos 151; dovecot aggressive
    140; 153 annotated lines)."""
    assert _section_start("postfix", "auth") < _section_start("postfix", "ddos")
    assert _section_start("dovecot", "aggressive") > 100
    assert len(ALL) > 140
    mapped = [(s.file, e[0]) for s in ALL if (e := expected(s))]
    assert {kind for _, kind in mapped} == {"auth_failure", "rcpt_unknown"}
    assert {f for f, kind in mapped if kind == "auth_failure"} == {"postfix", "dovecot", "exim"}
    assert len(mapped) > 50


@pytest.mark.parametrize("name", ["postfix", "dovecot", "exim"])
def test_sample_file_in_one_parser(name: str) -> None:
    """One parser per file, as the daemon reads a file: every mapped line gives its
    event for its host, and no line gives a failure the mapping does not give."""
    parser = LogParser(name, "auto", year=2005, tz=timezone.utc)
    wanted = {s.line: expected(s) for s in samples(name)}
    for n, raw in enumerate((SAMPLE_DIR / name).read_text(encoding="utf-8").splitlines(), 1):
        events = parser.parse(raw, n)
        judged = [(e.kind, e.ip) for e in events if e.kind in JUDGED]
        exp = wanted.get(n)
        if exp is None:
            assert judged == [], f"{name}:{n}: unexpected {judged} from {raw!r}"
        else:
            assert judged == [(exp[0], normalize(exp[1]))], f"{name}:{n}: {raw!r}"
            assert all(e.line == n and e.file == name for e in events)


def _id(s: Sample) -> str:
    return f"{s.file}:{s.line}"


@pytest.mark.parametrize("s", [s for s in ALL if expected(s)], ids=_id)
def test_mapped_line(s: Sample) -> None:
    """Each mapped line alone, with its own format: kind, address, count, origin."""
    exp = expected(s)
    assert exp is not None
    events = LogParser(s.file, s.file, year=2005, tz=timezone.utc).parse(s.text, s.line)
    judged = [e for e in events if e.kind in JUDGED]
    assert [(e.kind, e.ip) for e in judged] == [(exp[0], normalize(exp[1]))]
    ev = judged[0]
    assert ev.count == _expected_count(s.text)
    if s.file == "postfix" or s.file == "exim":
        assert (ev.origin, ev.service) == (s.file, "smtp")
    elif "pam_unix" in s.text:
        assert (ev.origin, ev.service) == ("pam", None)
    elif "-login: " in s.text:
        assert ev.origin == "dovecot-login"
        assert ev.service in ("imap", "pop", "sieve", "smtp")
    else:
        assert (ev.origin, ev.service) == ("dovecot-auth", None)
    user = s.note.get("user")
    if user is not None:
        assert ev.user == user


@pytest.mark.parametrize("s", [s for s in ALL if not expected(s)], ids=_id)
def test_unmapped_line_is_no_failure(s: Sample) -> None:
    """Lines marked ``"match": false``, the aggressive/ddos/rbl/normal sections and
    the mapping's exclusions: no auth failure, no unknown recipient, in any format."""
    for fmt in ("auto", s.file):
        events = LogParser(s.file, fmt, year=2005, tz=timezone.utc).parse(s.text, s.line)
        assert [e.kind for e in events if e.kind in JUDGED] == []


@pytest.mark.parametrize("s", [s for s in ALL if expected(s) and "time" in s.note
                               and (s.file, s.line) not in TIME_EXCEPTIONS], ids=_id)
def test_mapped_line_time(s: Sample) -> None:
    """The event's time is the annotated one (the year given, as fail2ban's tests do)."""
    y, mo, d, rest = re.match(r"(\d{4})-(\d\d)-(\d{1,2})T(.*)$", str(s.note["time"])).groups()
    want = datetime.fromisoformat(f"{y}-{mo}-{int(d):02d}T{rest}").replace(tzinfo=timezone.utc)
    events = LogParser(s.file, year=int(y), tz=timezone.utc).parse(s.text, s.line)
    assert events and events[0].ts == want.timestamp()
