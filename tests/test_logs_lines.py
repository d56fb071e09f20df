"""Single lines: shapes and client text the fixtures do not already cover."""

from __future__ import annotations

import ipaddress
from datetime import timezone

import pytest

from dynscreen.control.logs.parse import LogParser, _maybe_signal

S = "Mar 21 19:26:06 "

LINES = [
    # Exim: a HELO that imitates the address part
    (
        S + "mx exim[7]: plain authenticator failed for (x) [6.6.6.6]) [203.0.113.9]:4000: "
        "535 Incorrect authentication data (set_id=a (set_id=b))",
        [("auth_failure", "203.0.113.9", "a (set_id=b)", 1)],
    ),
    # Exim without pid, port or HELO; lower-case reason
    (
        "2024-03-21 19:26:06 H=[203.0.113.10] F=<> rejected RCPT <x@example.org>: unknown user",
        [("rcpt_unknown", "203.0.113.10", "x@example.org", 1)],
    ),
    # Exim: IPv6 with an IPv4-mapped form
    (
        "2024-03-21 19:26:06 [9] SMTP connection from [::ffff:203.0.113.11]:5000 "
        "I=[::ffff:192.0.2.1]:25 (TCP/IP connection count = 3)",
        [("connect", "203.0.113.11", None, 1)],
    ),
    # Exim: authenticated arrival without an id after the authenticator
    (
        "2024-03-21 19:26:06 1rnBcd-000AbC-7q <= <> H=(x) [203.0.113.12] P=esmtpa A=cram S=1",
        [("auth_success", "203.0.113.12", None, 1)],
    ),
    # Dovecot 2.2 summary without session, ending at rip
    (
        S + "mx dovecot: pop3-login: Aborted login (auth failed, 5 attempts): user=<x>, "
        "method=PLAIN, rip=203.0.113.13",
        [("auth_failure", "203.0.113.13", "x", 5)],
    ),
    # Dovecot: macOS unified log prefix
    (
        "2016-10-15 14:12:29.250063+0100 localhost log[64346]: (libdovecot.0.dylib) "
        "imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<s>, method=PLAIN, "
        "rip=203.0.113.14, lip=192.168.1.4, TLS: Disconnected, session=<YDMtGOc+p6lexXmr>",
        [("auth_failure", "203.0.113.14", "s", 1)],
    ),
    # Dovecot: a summary whose user imitates the reason part of another summary
    (
        S + "mx dovecot: imap-login: Disconnected (no auth attempts in 0 secs): "
        "user=<a (auth failed, 9 attempts): user=<b>, rip=6.6.6.6>, rip=203.0.113.15, "
        "lip=192.0.2.1, session=<Q1>",
        [],
    ),
    # Dovecot: proxy
    (
        S + "mx dovecot: imap-login: Disconnected (proxy dest auth failed): user=<p>, "
        "method=PLAIN, rip=203.0.113.16, lip=192.0.2.2, session=<Q2>",
        [("auth_failure", "203.0.113.16", "p", 1)],
    ),
    # Dovecot: master user, IPv6 link-local with zone
    (
        S + "mx dovecot: auth: passwd-file(u*admin,fe80::1%eth0,master,<Q3>): Password mismatch",
        [("auth_failure", "fe80::1", "u*admin", 1)],
    ),
    # Dovecot: a detail line with no address is no event
    (S + "mx dovecot: auth-worker(9): sql(u,<Q4>): unknown user", []),
    # pam_unix for another service is not Dovecot's
    (S + "mx sshd[9]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
     "tty=ssh ruser= rhost=203.0.113.17  user=root", []),
    # pam_unix without ruser
    (
        S + "mx auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 "
        "tty=dovecot ruser= rhost=203.0.113.18  user=zed",
        [("auth_failure", "203.0.113.18", "zed", 1)],
    ),
    # Postfix: counters in ok/total form
    (
        S + "mx postfix/smtpd[9]: disconnect from x.example[203.0.113.19]:2525 ehlo=1 auth=1/2 "
        "rset=0/3 quit=1 commands=3/7",
        [
            ("disconnect", "203.0.113.19", None, 1),
            ("rset", "203.0.113.19", None, 3),
            ("auth_success", "203.0.113.19", None, 1),
        ],
    ),
    # Postfix: long queue id starting with a letter the fast checks look at
    (
        S + "mx postfix/smtpd[9]: dT9xMB0Rkbz9sRc: client=x.example[203.0.113.20]:2526, "
        "orig_queue_id=4T9, orig_client=y[198.51.100.1], sasl_method=LOGIN, "
        "sasl_username=z@example.org, sasl_sender=other@example.org",
        [("auth_success", "203.0.113.20", "z@example.org", 1)],
    ),
    # Postfix: not smtpd
    (S + "mx postfix/smtp[9]: connect to mx.example[203.0.113.21]:25: Connection refused", []),
    # Postfix: an unverified recipient that is not an unknown user
    (
        S + "mx postfix/smtpd[9]: NOQUEUE: reject: RCPT from x[203.0.113.22]: 450 4.1.1 <a@b>: "
        "Recipient address rejected: unverified address: Address verification in progress; "
        "from=<c@d> to=<a@b> proto=ESMTP helo=<x>",
        [],
    ),
    # Postfix: IPv6 in the IPv6: notation
    (
        S + "mx postfix/smtpd[9]: connect from unknown[IPv6:2001:db8::9]",
        [("connect", "2001:db8::9", None, 1)],
    ),
    # Postfix: an address that is no address
    (S + "mx postfix/smtpd[9]: connect from unknown[999.1.1.1]", []),
]


@pytest.mark.parametrize(("line", "want"), LINES, ids=range(len(LINES)))
def test_line(line: str, want: list[tuple[str, str, str | None, int]]) -> None:
    events = LogParser("f", year=2024, tz=timezone.utc).parse(line, 1)
    assert [(e.kind, e.ip, e.user, e.count) for e in events] == want
    if want:
        assert _maybe_signal(line)


def test_prefilter_lets_no_signal_through_unchecked() -> None:
    """The prefilter's phrases: a line without any of them never reaches a parser."""
    assert not _maybe_signal(S + "mx postfix/qmgr[1]: 4F3A: removed")
    assert not _maybe_signal(S + "mx dovecot: imap(a)<1><b>: Connection closed in=0 out=0")


@pytest.mark.parametrize("text", [
    "192.0.2.1", "0.0.0.0", "255.255.255.255", "10.0.0.10", "256.1.1.1", "01.2.3.4",
    "0.00.1.1", "1000.1.1.1", "1.2.3", "1.2.3.4.5", "1..3.4", ".1.2.3", "1.2.3.", "",
    "\u0661.2.3.4", " 1.2.3.4", "1.2.3.4 ", "[1.2.3.4]", "::ffff:1.2.3.4", "2001:db8::1",
    "unknown",
])
def test_ipv4_int_takes_only_what_ipaddress_writes_back_unchanged(text: str) -> None:
    """ip_of, the engine and replay's summary skip ipaddress for what this accepts: it must
    be exactly a canonical dotted quad (ipaddress's own text, the same value)."""
    from dynscreen.control.logs.signals import ip_of, ipv4_int

    try:
        canonical = str(ipaddress.IPv4Address(text)) == text
    except ValueError:
        canonical = False
    value = ipv4_int(text)
    assert (value is not None) == canonical
    if canonical:
        assert value == int(ipaddress.IPv4Address(text))
        assert ip_of(text) == text
