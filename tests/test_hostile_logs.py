"""Hostile input for the log parsers: client-chosen text in every field a client shapes.

A user name, a HELO, a sender or a recipient is written into the log by the
server, between fields the server writes itself. Whatever a client puts there,
a line must never:

- raise (a parser error drops the line for the follower and kills a replay);
- name an address other than the one the server wrote (framing a third party);
- count more than once, except the counters the server itself writes: Dovecot's
  ``(auth failed, N attempts`` in a login summary and Postfix's ``rset=N`` on a
  disconnect line (a ``: N Time(s)`` suffix counts as one);
- lose the signal (a client hiding its own failures in the text it sends).

Each line shape is filled from a fixed seed with random pieces of the text the
parsers look for (``rip=``, ``, sasl_username=``, ``[6.6.6.6]``, ``Time(s)``, ...);
the fixtures are mutated the same way. Bounded by iterations, not time: the
same lines every run.
"""

# ruff: noqa: E501  (log lines are written out verbatim, as the servers write them)

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dynscreen.cli.app as cli_app
from dynscreen.cli.app import app
from dynscreen.control.logs.parse import LogParser

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "logs"
SEED = 20261206
ROUNDS = 400  # filled lines per shape
MUTATIONS = 3000  # mutated fixture lines

REAL = "203.0.113.7"  # the address the server wrote; every other address is a lure
REAL6 = "2001:db8:7::7"

# What the parsers look for, as a client would type it into a field.
PIECES = [
    ",", ")", "(", ": ", ":", "<", ">", "[", "]", " ", "  ", '"', "\\", "=", ";", "@",
    "rip=", ", rip=", "rip=6.6.6.6", ", rip=6.6.6.6", "lip=", ", lip=1.1.1.1",
    "user=<", "user=<x>", ">, method=PLAIN", ", method=", "session=<evil>", ", session=<x",
    "[6.6.6.6]", " [6.6.6.6]", "[6.6.6.6]:25", "x[6.6.6.6]", "unknown[6.6.6.6]",
    "[2001:db8:6::6]", "6.6.6.6", ",6.6.6.6", ",6.6.6.6,<s>", "(6.6.6.6)",
    ": 9 Time(s)", " Time(s)", "Time(s)", ": 99 Time(s)", ": " + "9" * 4400 + " Time(s)",
    "rset=99", " rset=99", " auth=5/5", " auth=1", "rcpt=0/9",
    "(auth failed, 99 attempts", "(auth failed, 99 attempts in 1 secs)", "99 attempts",
    ", sasl_username=", ", sasl_username=root", ", sasl_sender=", ", sasl_method=PLAIN",
    "sasl_username=x", "client=x[6.6.6.6]", "warning: ",
    "Recipient address rejected: User unknown", ": Recipient address rejected: ",
    ">: Recipient address rejected: User unknown", "NOQUEUE: reject: RCPT from x[6.6.6.6]: ",
    "connect from x[6.6.6.6]", "disconnect from x[6.6.6.6] rset=99",
    " rhost=6.6.6.6", "rhost=", "  user=", "  user=x", " ruser=x",
    "H=[6.6.6.6]", " H=x [6.6.6.6]:1", " P=esmtpsa", " A=plain:root", " S=1", "(set_id=x)",
    ") [6.6.6.6]:1 I=[1.1.1.1]:25: 535 x (", " rejected RCPT <x>: Unknown user",
    "authenticator failed for ", "(last was \"RSET\")", "SMTP connection from [6.6.6.6]:1",
    ": Password mismatch", "): Password mismatch", "): unknown user", "(x,6.6.6.6)",
    "imap-login: ", "Disconnected (auth failed, 9 attempts in 1 secs): ",
    "pam_unix(dovecot:auth): authentication failure; ",
    "\t", "\u00e9", "\u202e", "\x00", "[/x]", "[bold red]x[/]",
]
WORD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@"
# Dovecot's default auth_username_chars: a passdb line names a user made of these
# (the auth process refuses any other before the lookup it logs).
AUTH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@"
# Exim refuses a HELO that is not a host name or an address literal (helo_allow_chars
# unset), and so logs only those in "(helo)".
HELO_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-"


def hostile(rng: random.Random) -> str:
    """A client's field: a few pieces and letters, in any order."""
    parts = []
    for _ in range(rng.randint(1, 6)):
        if rng.random() < 0.7:
            parts.append(rng.choice(PIECES))
        else:
            parts.append("".join(rng.choice(WORD) for _ in range(rng.randint(1, 8))))
    return "".join(parts)


def word(rng: random.Random, chars: str = WORD) -> str:
    return "".join(rng.choice(chars) for _ in range(rng.randint(1, 12)))


def helo(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(["[6.6.6.6]", "[198.51.100.1]", "[IPv6:2001:db8::6]", "[" + REAL + "]"])
    return word(rng, HELO_CHARS)


Fill = Callable[[random.Random], dict[str, str]]
# name: (template, fill, the events every filling must give: [(kind, count)])
PF = "Mar  1 00:00:01 mx postfix/smtpd[4242]: "
PS = "Mar  1 00:00:01 mx postfix/submission/smtpd[4243]: "
DV = "Mar  1 00:00:01 mx dovecot: "
EX = "2024-03-21 19:26:07 [4401] "


def address(rng: random.Random) -> str:
    """A sender or recipient as the servers log it: a quoted local part may hold
    anything but an unescaped quote; the rest holds no <, >, quote or white space
    (the servers refuse such an address with a syntax error)."""
    inner = hostile(rng).replace("\\", "\\\\").replace('"', '\\"')
    tail = "".join(c for c in hostile(rng) if not c.isspace() and c not in '<>"')
    if rng.random() < 0.6:
        return f'"{inner}"{tail}@example.com'
    return (tail or "x") + "@example.com"


def _u(rng: random.Random) -> dict[str, str]:
    return {"U": hostile(rng), "S": address(rng), "R": address(rng), "H": hostile(rng)}


def _auth_user(rng: random.Random) -> dict[str, str]:
    return {"U": word(rng, AUTH_CHARS)}


def _exim(rng: random.Random) -> dict[str, str]:
    return {"U": hostile(rng), "S": address(rng), "R": address(rng), "H": helo(rng)}


SHAPES: dict[str, tuple[str, Fill, list[tuple[str, int]]]] = {
    "postfix sasl failure": (
        PS + "warning: unknown[{IP}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username={U}",
        _u, [("auth_failure", 1)],
    ),
    "postfix sasl failure, port": (
        PF + "warning: mail.example.net[{IP}]:49152: SASL PLAIN authentication failed: authentication failure, sasl_username={U}",
        _u, [("auth_failure", 1)],
    ),
    "postfix sasl success": (
        PS + "4T9xMB0Rkbz9sRc: client=laptop.example.org[{IP}], sasl_method=PLAIN, sasl_username={U}",
        _u, [("auth_success", 1)],
    ),
    "postfix sasl success, sender": (
        PS + "4T9xMB0Rkbz9sRc: client=laptop.example.org[{IP}], sasl_method=LOGIN, sasl_username={U}, sasl_sender={S}",
        _u, [("auth_success", 1)],
    ),
    "postfix unknown recipient": (
        PF + "NOQUEUE: reject: RCPT from unknown[{IP}]:40112: 550 5.1.1 <{R}>: Recipient address rejected: User unknown in virtual mailbox table; from=<{S}> to=<{R}> proto=ESMTP helo=<{H}>",
        _u, [("rcpt_unknown", 1)],
    ),
    "postfix unknown recipient, queued": (
        PF + "4T9xLq1kZ3z9sRb: reject: RCPT from unknown[{IP}]: 550 5.1.1 <{R}>: Recipient address rejected: User unknown in local recipient table; from=<{S}> to=<{R}> proto=ESMTP helo=<{H}>",
        _u, [("rcpt_unknown", 1)],
    ),
    "postfix relay denied": (
        PF + "NOQUEUE: reject: RCPT from unknown[{IP}]: 554 5.7.1 <{R}>: Relay access denied; from=<{S}> to=<{R}> proto=ESMTP helo=<{H}>",
        _u, [],
    ),
    "postfix verify failure": (
        PF + "NOQUEUE: reject: RCPT from unknown[{IP}]: 450 4.1.1 <{R}>: Recipient address rejected: undeliverable address: connect to backend.example.org[192.0.2.25]:25: Connection refused; from=<{S}> to=<{R}> proto=ESMTP helo=<{H}>",
        _u, [],
    ),
    "postfix disconnect": (
        PF + "disconnect from unknown[{IP}] ehlo=1 mail=1 rcpt=0/7 rset=4 quit=1 commands=7/14",
        _u, [("disconnect", 1), ("rset", 4)],
    ),
    "dovecot 2.3 failure": (
        DV + "imap-login: Disconnected: Connection closed (auth failed, 3 attempts in 12 secs): user=<{U}>, method=PLAIN, rip={IP}, lip=192.0.2.1, TLS, session=<Ab12Cd34Ef56Gh78>",
        _u, [("auth_failure", 3)],
    ),
    "dovecot 2.4 failure": (
        DV + "pop3-login: Login aborted: Connection closed (auth failed, 2 attempts in 20 secs) (auth_failed): user=<{U}>, method=PLAIN, rip={IP}, lip=192.0.2.1, TLS, session=<Ab00Cd11Ef22Gh33>",
        _u, [("auth_failure", 2)],
    ),
    "dovecot 2.2 failure": (
        "Mar  1 00:00:01 imap-login: Info: Aborted login (auth failed, 1 attempts): user=<{U}>, method=PLAIN, rip={IP}, lip=192.0.2.1",
        _u, [("auth_failure", 1)],
    ),
    "dovecot plaintext": (
        DV + "pop3-login: Disconnected (tried to use disallowed plaintext auth): user=<{U}>, rip={IP}, lip=192.0.2.1, session=<Zz99Yy88Xx77Ww66>",
        _u, [("auth_failure", 1)],
    ),
    "dovecot login": (
        DV + "submission-login: Login: user=<{U}>, method=LOGIN, rip={IP}, lip=192.0.2.1, mpid=31300, TLS, session=<Cc44Dd55Ee66Ff77>",
        _u, [("auth_success", 1)],
    ),
    "dovecot 2.3 detail": (
        "Mar  1 00:00:01 auth-worker(15987): Info: passwd-file({U},{IP},<Ab12Cd34Ef56Gh78>): Password mismatch",
        _auth_user, [("auth_failure", 1)],
    ),
    "dovecot 2.4 detail": (
        DV + "auth({U},{IP},sasl:plain)<Ij44Kl55Mn66Op77>: sql: Password mismatch",
        _auth_user, [("auth_failure", 1)],
    ),
    "pam_unix": (
        DV + "auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 tty=dovecot ruser={U} rhost={IP}  user={U}",
        _u, [("auth_failure", 1)],
    ),
    "exim auth failure": (
        EX + "dovecot_login authenticator failed for ({H}) [{IP}]:51002 I=[192.0.2.1]:587: 535 Incorrect authentication data (set_id={U})",
        _exim, [("auth_failure", 1)],
    ),
    "exim unknown recipient": (
        EX + "H=({H}) [{IP}]:40000 I=[192.0.2.1]:25 F=<{S}> rejected RCPT <{R}>: Unknown user",
        _exim, [("rcpt_unknown", 1)],
    ),
    "exim nonmail": (
        EX + 'SMTP call from ({H}) [{IP}]:40000 I=[192.0.2.1]:25 dropped: too many nonmail commands (last was "RSET")',
        _exim, [("rset", 1)],
    ),
    "exim arrival": (
        EX + "1rnBcd-000AbC-7q <= {Q} H=laptop.example.org ({H}) [{IP}]:50110 I=[192.0.2.1]:587 P=esmtpsa X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=no A=dovecot_plain:{W} S=1520 id=87abc@laptop.example.org",
        lambda rng: {**_exim(rng), "Q": address(rng), "W": word(rng)},
        [("auth_success", 1)],
    ),
    "exim no mail": (
        EX + "no MAIL in SMTP connection from ({H}) [{IP}]:50111 I=[192.0.2.1]:587 D=5s A=dovecot_login:{W} C=EHLO,AUTH,QUIT",
        lambda rng: {**_exim(rng), "W": word(rng)},
        [("auth_success", 1)],
    ),
    "exim disconnect": (
        EX + "SMTP connection from ({H}) [{IP}]:51002 I=[192.0.2.1]:587 closed by QUIT",
        _exim, [("disconnect", 1)],
    ),
}


def _filled(name: str, rng: random.Random, ip: str) -> str:
    template, fill, _ = SHAPES[name]
    values = fill(rng)
    text = template.replace("{IP}", ip)
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _events(line: str) -> list[tuple[str, str, int]]:
    """The line's events, read the general way (a fresh parser) and again the bulk
    reader's quick way (its stamp now cached): the same either way."""
    parser = LogParser("hostile.log", year=2024)
    first = [(e.kind, e.ip, e.count) for e in parser.parse(line, 1)]
    again: list = []
    parser.parse_many([line], 1, again)
    assert [(e.kind, e.ip, e.count) for e in again] == first, line
    return first


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_client_text_cannot_move_the_address_or_the_count(name: str) -> None:
    rng = random.Random(f"{SEED}:{name}")
    want = SHAPES[name][2]
    for i in range(ROUNDS):
        ip = REAL6 if i % 5 == 4 else REAL
        line = _filled(name, rng, ip)
        if i % 7 == 6:  # logwatch's suffix, or a client's imitation of it
            line += f": {rng.choice(['2', '10', '9' * 4400])} Time(s)"
        got = _events(line)
        assert got == [(kind, ip, n) for kind, n in want], line


def test_a_times_suffix_counts_once() -> None:
    """Issue 10: the user name that ended in ``: 10 Time(s)`` counted 10, and 4,300
    digits raised in int()."""
    for n in ("10", "9" * 4400):
        line = PS + f"warning: unknown[{REAL}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username=x: {n} Time(s)"
        assert _events(line) == [("auth_failure", REAL, 1)]
        line = DV + f"imap-login: Disconnected (auth failed, 3 attempts in 9 secs): user=<a>, method=PLAIN, rip={REAL}, lip=192.0.2.1: {n} Time(s)"
        assert _events(line) == [("auth_failure", REAL, 3)]


def test_a_times_suffix_is_cut_only_from_a_line_that_means_nothing_as_written() -> None:
    """Cutting the suffix off a user name that ends in one moves the fields after it:
    here pam_unix's ``rhost=`` would be read inside the user name."""
    user = "a rhost=6.6.6.6  user=b: 9 Time(s)"
    line = DV + f"auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 tty=dovecot ruser={user} rhost={REAL}  user={user}"
    events = LogParser("hostile.log", year=2024).parse(line, 1)
    assert [(e.kind, e.ip, e.user, e.count) for e in events] == [("auth_failure", REAL, user, 1)]
    # logwatch's own line: nothing as written (the address is not "REAL: 2 Time(s)")
    line = DV + f"imap-login: Disconnected (auth failed, 2 attempts in 9 secs): user=<a>, method=PLAIN, rip={REAL}: 2 Time(s)"
    assert _events(line) == [("auth_failure", REAL, 2)]


# --- mutated fixtures ------------------------------------------------------------------------

SERVER_COUNTS = {  # (kind, origin): how the server writes the count it reports
    ("rset", "postfix"): r" rset=(?:\d+/)?{n}\b",
    ("auth_failure", "dovecot-login"): r"\(auth failed, {n} attempts?\b",
}


def _fixture_lines() -> list[str]:
    lines = []
    for path in sorted(FIXTURES.glob("*.log")):
        lines += path.read_text(encoding="utf-8").splitlines()
    return lines


def _mutate(rng: random.Random, line: str) -> str:
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(line) + 1)
        j = min(len(line), i + rng.randint(0, 12))
        how = rng.random()
        if how < 0.5:
            line = line[:i] + rng.choice(PIECES) + line[i:]
        elif how < 0.7:
            line = line[:i] + line[j:]
        elif how < 0.85:
            line = line[:i] + line[i:j] * 2 + line[j:]
        else:
            line = line[:i] + hostile(rng) + line[j:]
    return line


def test_mutated_fixtures_never_raise_or_overcount() -> None:
    rng = random.Random(SEED)
    base = _fixture_lines()
    mutated = [_mutate(rng, rng.choice(base)) for _ in range(MUTATIONS)]
    parser = LogParser("mutated.log", year=2024)
    one_by_one = []
    for n, line in enumerate(mutated, 1):
        events = parser.parse(line, n)
        one_by_one += events
        for e in events:
            if e.count != 1:
                pattern = SERVER_COUNTS.get((e.kind, e.origin))
                assert pattern is not None, (e, line)
                assert re.search(pattern.format(n=e.count), line), (e, line)
    bulk: list = []
    LogParser("mutated.log", year=2024).parse_many(mutated, 0, bulk)
    assert bulk == one_by_one


# --- replay end to end ---------------------------------------------------------------------


def test_replay_survives_hostile_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shape filled with hostile text, and the mutated fixtures, through the
    command: exit 0, no traceback, every event from the server-written address."""
    monkeypatch.delenv("DYNSCREEN_CONFIG", raising=False)
    monkeypatch.setattr(cli_app, "DEFAULT_CONFIG", tmp_path / "none" / "dynscreen.toml")
    rng = random.Random(SEED)
    lines = [_filled(name, rng, REAL) for name in sorted(SHAPES) for _ in range(20)]
    lines += [ln + ": " + "9" * 4400 + " Time(s)" for ln in lines[::9]]
    log = tmp_path / "hostile.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    result = CliRunner().invoke(app, ["replay", "--json", str(log)])
    assert result.exit_code == 0, result.output
    assert result.exception is None
    import json

    records = [json.loads(x) for x in result.stdout.splitlines()]
    events = [r for r in records if r["type"] == "event"]
    assert events and {r["ip"] for r in events} == {REAL}
    assert {r["count"] for r in events if r["kind"] not in ("rset", "auth_failure")} == {1}
    summary = CliRunner().invoke(app, ["replay", str(log)])
    assert summary.exit_code == 0, summary.output
    assert summary.exception is None
