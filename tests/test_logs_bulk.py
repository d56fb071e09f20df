"""LogParser.parse_many (replay's bulk reader) against LogParser.parse line by line.

The bulk reader takes shortcuts for the commonest line shapes; the contract is
that it yields exactly the events of ``parse`` called on each line in turn, counts
the same line outcomes (signal, understood, not understood, by format), and
leaves the parser in the same state (a later line without a stamp, or with a
stamp that needs the year inferred, reads the same). This runs both over every
line shape the project knows: its fixtures, fail2ban's annotated samples (from
Debian's fail2ban package), the single-line cases, a generated gateway log, and
sequences built to cross the shortcuts.
"""

from __future__ import annotations

import sys
from datetime import timezone
from pathlib import Path

import pytest
from fail2ban_samples import MAIL_FILES, require_samples
from test_logs_lines import LINES

from dynscreen.control.logs.parse import LogParser

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures/logs"
PROBES = [  # read after each run: they show the state left behind
    "no stamp: dovecot: auth: passwd-file(u,203.0.113.250): Password mismatch",
    "Dec 31 23:59:59 mx postfix/smtpd[9]: connect from x[203.0.113.251]",
    "Jan  1 00:00:01 mx postfix/smtpd[9]: connect from x[203.0.113.252]",
    "mx postfix/smtpd[9]: disconnect from x[203.0.113.253] rset=2",
]


def _flat(events: list) -> list[tuple]:
    return [tuple(e) for e in events]


def _one_by_one(lines: list[str], **kw: object) -> list[tuple]:
    p = LogParser("f", **kw)  # type: ignore[arg-type]
    out = []
    for n, text in enumerate(lines + PROBES, 1):
        out += p.parse(text, n)
    return _flat(out) + [("outcomes", p.outcomes(), tuple(p.missed))]


def _bulk(lines: list[str], size: int, **kw: object) -> list[tuple]:
    p = LogParser("f", **kw)  # type: ignore[arg-type]
    out: list = []
    n = 0
    for i in range(0, len(lines), size):
        n = p.parse_many(lines[i : i + size], n, out)
    for text in PROBES:
        n += 1
        out += p.parse(text, n)
    return _flat(out) + [("outcomes", p.outcomes(), tuple(p.missed))]


def _same(lines: list[str], **kw: object) -> None:
    want = _one_by_one(lines, **kw)
    for size in (1, 7, len(lines) or 1):
        assert _bulk(lines, size, **kw) == want, f"chunks of {size}"


def _read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir()))
def test_fixtures(name: str) -> None:
    _same(_read(FIXTURES / name), year=2024, tz=timezone.utc)


def test_fail2ban_samples() -> None:
    folder = require_samples()
    for path in (folder / name for name in MAIL_FILES):
        lines = [t for t in _read(path) if not t.startswith("#")]
        _same(lines, year=2024, tz=timezone.utc)


def test_single_lines() -> None:
    _same([line for line, _ in LINES], year=2024, tz=timezone.utc)


def test_generated_log(tmp_path: Path) -> None:
    sys.path.insert(0, str(HERE.parent / "bench"))
    try:
        from loggen import write_log
    finally:
        sys.path.pop(0)
    path = tmp_path / "mail.log"
    write_log(str(path), 20_000, seed=3)
    _same(_read(path), tz=timezone.utc)


S = "postfix/smtpd[7]: "
SEQUENCES = {
    # non-signal lines open a new second, a signal line of that second follows
    "run then signal": [
        "Mar  1 00:00:00 mx postfix/qmgr[1]: A: removed",
        "Mar  1 00:00:01 mx postfix/qmgr[1]: B: removed",
        "Mar  1 00:00:01 mx postfix/cleanup[2]: B: message-id=<x>",
        "Mar  1 00:00:01 mx " + S + "connect from a[203.0.113.1]",
        "continuation without a stamp: dovecot: auth: passwd-file(u,203.0.113.2): "
        "Password mismatch",
    ],
    # a second of non-signal lines only, then a line without a stamp
    "run only": [
        "Mar  1 00:00:00 mx " + S + "connect from a[203.0.113.1]",
        "Mar  1 00:00:05 mx postfix/qmgr[1]: A: removed",
        "Mar  1 00:00:05 mx dovecot: imap(u): Logged out",
        "mx postfix/smtpd[7]: disconnect from a[203.0.113.1] auth=0/3",
        "Mar  1 00:00:06 mx postfix/qmgr[1]: A: removed",
        "dovecot: auth: passwd-file(u,203.0.113.3): Password mismatch",
    ],
    # a skipped program's line that names a phrase a signal needs
    "phrase in a skipped program": [
        "Mar  1 00:00:00 mx " + S + "connect from a[203.0.113.1]",
        "Mar  1 00:00:09 mx postfix/smtp[3]: SASL authentication failed; server x[192.0.2.1]",
        "auth-worker(5): Info: passwd-file(u,203.0.113.4): Password mismatch",
    ],
    # Time(s), <PRI>, ISO and TAI64N stamps between traditional ones
    "mixed stamps": [
        "Mar  1 00:00:00 mx " + S + "connect from a[203.0.113.1]",
        "Mar  1 00:00:01 mx " + S + "warning: a[203.0.113.5]: SASL LOGIN authentication "
        "failed: UGFzc3dvcmQ6: 3 Time(s)",
        "<38>Mar  1 00:00:02 mx " + S + "connect from b[203.0.113.6]",
        "2026-03-01T00:00:03.5+00:00 mx " + S + "connect from c[203.0.113.7]",
        "@4000000069a380140000000000000000 dovecot: auth: passwd-file(u,203.0.113.8): "
        "Password mismatch",
        "Mar  1 00:00:04 mx " + S + "disconnect from c[203.0.113.7] rset=4 auth=1",
        "no stamp: dovecot: auth: passwd-file(u,203.0.113.9): Password mismatch",
    ],
    # a stamp that goes backwards, a minute and an hour boundary, a bad date
    "clock": [
        "Mar  1 00:59:59 mx " + S + "connect from a[203.0.113.1]",
        "Mar  1 00:59:58 mx " + S + "connect from a[203.0.113.1]",
        "Mar  1 01:00:00 mx postfix/qmgr[1]: A: removed",
        "Mar  1 01:00:61 mx " + S + "connect from a[203.0.113.1]",
        "Feb 30 01:00:00 mx " + S + "connect from a[203.0.113.1]",
        "Mar  1 01:00:60 mx " + S + "connect from a[203.0.113.1]",
        "no stamp: dovecot: auth: passwd-file(u,203.0.113.9): Password mismatch",
    ],
    # odd headers: a non-decimal pid, no host, a Postfix tag the session pattern refuses
    "headers": [
        "Mar  1 00:00:00 mx postfix/smtpd[x]: connect from a[203.0.113.1]",
        "Mar  1 00:00:00 postfix/smtpd[7]: connect from a[203.0.113.10]",
        "Mar  1 00:00:00 mx postfix/smtpd: connect from a[203.0.113.11]",
        "Mar  1 00:00:00 mx postfix/sm tpd[7]: connect from a[203.0.113.12]",
        "Mar  1 00:00:00 12.mx postfix/qmgr[1]: connect from a[203.0.113.13]",
        "Mar  1 00:00:00 mx postfix/qmgr[1] connect from a[203.0.113.14]",
        "Mar  1 00:00:00 mx dovecot[3]: imap-login: Login: user=<u>, method=PLAIN, "
        "rip=203.0.113.15, lip=192.0.2.1, session=<S>",
        "Mar  1 00:00:00 mx exim[4]: 2026-03-01 00:00:00 H=(x) [203.0.113.16] F=<a@b> "
        "rejected RCPT <c@d>: Unknown user",
    ],
}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_sequences(name: str) -> None:
    _same(SEQUENCES[name], year=2026, tz=timezone.utc)
