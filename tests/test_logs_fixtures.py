"""The project's own log samples (tests/fixtures/logs): exact events, line by line.

Written after Postfix 3.7, Dovecot 2.3/2.4 and Exim 4.96 output: syslog, RFC 3339
(rsyslog, journalctl -o short-iso), short-precise, short-unix, RFC 5424 frames,
Postfix maillog_file, Dovecot log_path, multilog TAI64N, Exim's own log with
+pid/+incoming_port/+smtp_connection and log_timezone; a dual-logged SASL attempt
(Postfix, Dovecot auth-worker, pam_unix); IPv6 and IPv4-mapped addresses; client
text that imitates the server's address fields; a year turning; ``: N Time(s)``
(counts as one).
Every line not listed must give no event.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dynscreen.control.logs.parse import LogParser

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "logs"
CET = timezone(timedelta(hours=1))

# line: [(kind, ip, service, user, count, origin, session), ...]
PF = "postfix"
SUB = "mx1/postfix/submission/smtpd[4120]"
SUB2 = "mx1/postfix/submission/smtpd[4160]"
REJ = "mx1/postfix/smtpd[4151]"
POSTFIX = {
    1: [("connect", "198.51.100.20", "smtp", None, 1, PF, "mx1/postfix/smtpd[4101]")],
    5: [("disconnect", "198.51.100.20", "smtp", None, 1, PF, "mx1/postfix/smtpd[4101]")],
    # 6, 7: postscreen CONNECT / PASS NEW: no events
    8: [("connect", "2001:db8:42::17", "smtp", None, 1, PF, SUB)],
    9: [("auth_failure", "2001:db8:42::17", "smtp", "alice@example.org", 1, PF, SUB)],
    10: [("auth_failure", "2001:db8:42::17", "smtp", None, 1, PF, SUB)],
    11: [
        ("disconnect", "2001:db8:42::17", "smtp", None, 1, PF, SUB),
        ("rset", "2001:db8:42::17", "smtp", None, 1, PF, SUB),
    ],
    # a mapped address with port; the user name imitates a second sasl_username
    12: [
        (
            "auth_failure", "203.0.113.50", "smtp", "bob, sasl_username=root [198.51.100.1]", 1,
            PF, "mx1/postfix/smtps/smtpd[4130]",
        )
    ],
    # 13: Connection lost to authentication server: Dovecot's answer came too late for
    # Postfix (its auth penalty), the password was checked all the same
    13: [("auth_failure", "203.0.113.51", "smtp", "carol", 1, PF, "mx1/postfix/smtpd[4140]")],
    # 14: Invalid authentication mechanism: no password evaluated
    15: [
        (
            "rcpt_unknown", "203.0.113.60", "smtp", "nobody@example.org", 1, PF,
            "mx1/postfix-out/smtpd[4150]",
        )
    ],
    16: [("rcpt_unknown", "203.0.113.60", "smtp", "info@example.org", 1, PF, REJ)],
    17: [("rcpt_unknown", "203.0.113.60", "smtp", "sales@example.org", 1, PF, REJ)],
    18: [("rcpt_unknown", "203.0.113.60", "smtp", "hr@relay.example.org", 1, PF, REJ)],
    19: [("rcpt_unknown", "203.0.113.60", "smtp", "admin", 1, PF, REJ)],  # VRFY probe
    # 20: a recipient imitating the rejection text, rejected for another reason
    21: [("rcpt_unknown", "203.0.113.60", "smtp", "ghost@example.org", 1, PF, REJ)],  # verify
    # 22: relay access denied
    23: [
        ("disconnect", "203.0.113.60", "smtp", None, 1, PF, REJ),
        ("rset", "203.0.113.60", "smtp", None, 4, PF, REJ),
    ],
    24: [("connect", "198.51.100.77", "smtp", None, 1, PF, SUB2)],
    25: [("auth_success", "198.51.100.77", "smtp", "dave@example.org", 1, PF, SUB2)],
    26: [
        ("disconnect", "198.51.100.77", "smtp", None, 1, PF, SUB2),
        ("auth_success", "198.51.100.77", "smtp", None, 1, PF, SUB2),  # auth=1
    ],
    # 27-29: unknown[unknown]
    # a logwatch ": 3 Time(s)" suffix: accepted, counts as one
    30: [("auth_failure", "203.0.113.80", "smtp", None, 1, PF, "mx1/postfix/smtpd[4180]")],
    31: [("connect", "192.0.2.200", "smtp", None, 1, PF, "mx1/postfix/smtpd[4190]")],
    32: [("disconnect", "192.0.2.200", "smtp", None, 1, PF, "/postfix/smtpd[4190]")],  # no host
    33: [("connect", "203.0.113.90", "smtp", None, 1, PF, "mx2/postfix/smtpd[5001]")],
    34: [("auth_failure", "203.0.113.90", "smtp", "eve", 1, PF, "mx2/postfix/smtpd[5001]")],
    35: [("disconnect", "203.0.113.90", "smtp", None, 1, PF, "mx2/postfix/smtpd[5001]")],
}

DL, DA = "dovecot-login", "dovecot-auth"
DOVECOT = {
    1: [
        (
            "auth_success", "2001:db8:1::7", "imap", "alice@example.org", 1, DL,
            "q9Wf1W0U7NcgAQ24AAAAAAAAAAAAAAAH",
        )
    ],
    3: [("auth_failure", "203.0.113.5", None, "bob@example.org", 1, DA, "Ab12Cd34Ef56Gh78")],
    4: [("auth_failure", "203.0.113.5", None, "nosuch@example.org", 1, DA, "Ab12Cd34Ef56Gh78")],
    5: [("auth_failure", "203.0.113.5", "imap", "nosuch@example.org", 2, DL, "Ab12Cd34Ef56Gh78")],
    6: [("auth_failure", "198.51.100.9", "pop", None, 1, DL, "Zz99Yy88Xx77Ww66")],  # plaintext
    # 7: no auth attempts (TLS handshake failure)
    8: [  # a user name imitating rip=, lip=, session=
        (
            "auth_failure", "203.0.113.66", "imap", "x>, rip=6.6.6.6, lip=1.1.1.1, session=<evil",
            1, DL, "Tt55Uu66Vv77Ww88",
        )
    ],
    9: [("auth_failure", "203.0.113.78", None, "mallory,6.6.6.6", 1, DA, "Yy12Zz34Aa56Bb78")],
    10: [("auth_failure", "203.0.113.70", "sieve", "sieveuser", 1, DL, "Mm00Nn11Oo22Pp33")],
    11: [("auth_success", "198.51.100.44", "smtp", "carol@example.org", 1, DL, "Cc44Dd55Ee66Ff77")],
    12: [("auth_failure", "198.51.100.45", "smtp", "carol@example.org", 1, DL, "Gg88Hh99Ii00Jj11")],
    # 13: auth service temporary failure; 14: unsupported mechanism
    15: [("auth_failure", "203.0.113.71", None, "erin,[198.51.100.1]", 1, DA, "Ss00Tt11Uu22Vv33")],
    16: [("auth_failure", "203.0.113.71", None, "erin", 1, "pam", None)],
    17: [("auth_failure", "203.0.113.72", None, "x rhost=6.6.6.6", 1, "pam", None)],  # injected
    18: [("auth_failure", "203.0.113.73", None, "frank", 1, DA, "Ww44Xx55Yy66Zz77")],
    # 19: lmtp; 20: a lookup without address
    21: [("auth_failure", "203.0.113.74", "imap", "heidi", 1, DL, None)],  # TAI64N, 2.2 shape
    22: [("auth_failure", "203.0.113.75", "imap", "ivan@example.org", 4, DL, "Ab00Cd11Ef22Gh33")],
    23: [("auth_failure", "203.0.113.76", None, "judy@example.org", 1, DA, "Ij44Kl55Mn66Op77")],
    # 24: 2.4 no_auth_attempts
}

EX = "exim"
EXIM = {
    1: [("connect", "203.0.113.20", "smtp", None, 1, EX, "/exim[203.0.113.20]:51002")],
    2: [
        (
            "auth_failure", "203.0.113.20", "smtp", "admin@example.org", 1, EX,
            "/exim[203.0.113.20]:51002",
        )
    ],
    # 3: 435, the server could not check
    4: [("disconnect", "203.0.113.20", "smtp", None, 1, EX, "/exim[203.0.113.20]:51002")],
    5: [("connect", "2001:db8:5::9", "smtp", None, 1, EX, "/exim[2001:db8:5::9]:40000")],
    6: [
        (
            "rcpt_unknown", "2001:db8:5::9", "smtp", "root@example.org", 1, EX,
            "/exim[2001:db8:5::9]:40000",
        )
    ],
    # 7: Unrouteable address; 8: a sender imitating a rejection, temporarily rejected
    9: [("rset", "2001:db8:5::9", "smtp", None, 1, EX, "/exim[2001:db8:5::9]:40000")],
    10: [("disconnect", "2001:db8:5::9", "smtp", None, 1, EX, "/exim[2001:db8:5::9]:40000")],
    11: [
        (
            "auth_success", "198.51.100.30", "smtp", "frank@example.org", 1, EX,
            "/exim[198.51.100.30]:50110",
        )
    ],
    # 12: a sender imitating H=, P=esmtpsa and A=, on an unauthenticated arrival
    13: [
        (
            "auth_success", "198.51.100.31", "smtp", "grace@example.org", 1, EX,
            "/exim[198.51.100.31]:50111",
        )
    ],
    14: [("auth_failure", "203.0.113.22", "smtp", None, 1, EX, "/exim[4406]")],  # ": 2 Time(s)"
    # 15: a delivery that authenticated to a smarthost
    16: [("auth_failure", "203.0.113.23", "smtp", "test", 1, EX, "mx3/exim[4407]")],
    17: [("rcpt_unknown", "203.0.113.24", "smtp", "nobody@example.org", 1, EX, "mx3/exim[4408]")],
}

MAIL = {  # one SASL attempt as Dovecot auth-worker, pam_unix and Postfix describe it
    1: [("connect", "203.0.113.100", "smtp", None, 1, PF, "mx/postfix/smtpd[6001]")],
    2: [("auth_failure", "203.0.113.100", None, "kim@example.org", 1, DA, None)],
    3: [("auth_failure", "203.0.113.100", None, "kim@example.org", 1, "pam", None)],
    4: [
        (
            "auth_failure", "203.0.113.100", "smtp", "kim@example.org", 1, PF,
            "mx/postfix/smtpd[6001]",
        )
    ],
    6: [("disconnect", "203.0.113.100", "smtp", None, 1, PF, "mx/postfix/smtpd[6001]")],
    8: [("connect", "203.0.113.101", "smtp", None, 1, PF, "mx/postfix/smtpd[6002]")],
    9: [("auth_success", "203.0.113.101", "imap", "lee@example.org", 1, DL, "Ll11Mm22Nn33Oo44")],
    10: [("disconnect", "203.0.113.101", "smtp", None, 1, PF, "mx/postfix/smtpd[6002]")],
}

CASES = {
    "postfix.log": (POSTFIX, "postfix", 2023, timezone.utc),
    "dovecot.log": (DOVECOT, "dovecot", 2024, timezone.utc),
    "exim.log": (EXIM, "exim", 2024, timezone.utc),
    "mail.log": (MAIL, "auto", 2024, CET),
}


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


# file: {line: time of its events}
TIMES = {
    "postfix.log": {
        1: _utc("2023-12-31T23:59:58"),
        5: _utc("2024-01-01T00:00:01"),  # the year turned
        31: _utc("2024-01-01T00:01:00"),  # maillog_file: zero-padded day
        33: _utc("2023-12-31T23:02:00.25"),  # RFC 3339, +01:00
        34: _utc("2024-01-01T00:02:01.5"),  # RFC 5424 frame
        35: _utc("2024-01-01T00:02:02"),  # short-iso, +0000
    },
    "dovecot.log": {
        1: _utc("2024-03-21T19:26:01"),
        21: 1711049234 + 0x2A05F200 / 1e9,  # TAI64N: label - 2^62 - 10
    },
    "exim.log": {
        1: _utc("2024-03-21T19:26:06"),
        11: _utc("2024-03-21T18:26:20.123"),  # log_timezone +0100, millisec
        16: _utc("2024-03-21T19:26:25"),  # exim[pid]: STAMP inside the message
        17: _utc("2024-03-21T19:26:26"),
    },
    "mail.log": {
        1: _utc("2024-03-21T18:30:00.1"),
        8: _utc("2024-03-21T18:31:00.654321"),  # short-precise, local zone CET
        9: 1711045861.25,  # short-unix
        10: _utc("2024-03-21T18:31:02"),
    },
}


def _run(name: str, fmt: str) -> dict[int, list]:
    _, _, year, tz = CASES[name]
    parser = LogParser(name, fmt, year=year, tz=tz)
    out: dict[int, list] = {}
    with open(FIXTURES / name, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            events = parser.parse(raw.rstrip("\n"), n)
            if events:
                out[n] = events
    return out


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("auto", [False, True], ids=["own-format", "auto"])
def test_fixture_events(name: str, auto: bool) -> None:
    want, fmt, _, _ = CASES[name]
    got = _run(name, "auto" if auto else fmt)
    flat = {
        n: [(e.kind, e.ip, e.service, e.user, e.count, e.origin, e.session) for e in evs]
        for n, evs in got.items()
    }
    assert flat == want
    for n, events in got.items():
        assert {(e.file, e.line) for e in events} == {(name, n)}
        assert len({e.ts for e in events}) == 1


@pytest.mark.parametrize("name", sorted(TIMES))
def test_fixture_times(name: str) -> None:
    got = _run(name, CASES[name][1])
    for n, ts in TIMES[name].items():
        assert got[n][0].ts == pytest.approx(ts, abs=1e-6), f"{name}:{n}"


def test_events_keep_file_order_of_time() -> None:
    """Within each fixture the times never go back by more than a second, the year
    inference included (except the RFC 3339 line deliberately an hour ahead)."""
    for name in CASES:
        times = [evs[0].ts for _, evs in sorted(_run(name, CASES[name][1]).items())]
        backs = [b - a for a, b in zip(times, times[1:], strict=False) if b < a - 1]
        assert len(backs) <= 1, name


def test_format_restriction_drops_other_programs() -> None:
    """A file declared postfix reads only Postfix lines, in any shape."""
    got = _run("mail.log", "postfix")
    assert sorted(got) == [1, 4, 6, 8, 10]
    assert all(e.origin == "postfix" for evs in got.values() for e in evs)
    assert _run("mail.log", "exim") == {}
    assert sorted(_run("mail.log", "dovecot")) == [2, 3, 9]


def test_json_shape() -> None:
    """What ``replay --json`` prints for a parsed line."""
    events = LogParser("mail.log", year=2024, tz=CET).parse(
        "2024-03-21T19:30:02.400000+01:00 mx postfix/smtpd[6001]: disconnect from "
        "unknown[203.0.113.100] ehlo=1 auth=1 rset=2/3 commands=4/5",
        6,
    )
    assert [e.to_json() for e in events] == [
        {"type": "event", "kind": k, "ip": "203.0.113.100", "service": "smtp", "user": None,
         "file": "mail.log", "line": 6, "count": c}
        for k, c in (("disconnect", 1), ("rset", 3), ("auth_success", 1))
    ]
