"""A realistic synthetic mail log for the replay benchmark: Postfix 3.7 and Dovecot 2.3.

Deterministic for a seed: the same lines every run, so benchmark numbers compare.
The traffic is what a small gateway's ``/var/log/mail.log`` holds: inbound
deliveries (smtpd, cleanup, qmgr, lmtp), authenticated submissions, IMAP and POP
logins, postscreen and anvil chatter, and, about 8% of the lines, screening
signals from a pool of misbehaving sources: SMTP AUTH guessing (Postfix and
Dovecot's auth process both describe each attempt, sometimes pam_unix too), IMAP
guessing (auth details plus the login summary), recipient harvesting, RSET
loops. The address pools are bounded, like a real gateway's, so state grows with
sources, not with lines.

Usage: python bench/loggen.py --lines 1000000 [--seed 1] --out FILE
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

START = time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))  # local time, as syslog writes it
HOST = "mx1"
SIGNAL = "\0"  # marks a signal line inside the generator; never written
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B64 = _ALNUM + "+/"
DOMAINS = ("example.com", "example.org", "example.net")


@dataclass
class Stats:
    """What was generated: lines in all, and lines carrying a screening signal."""

    lines: int = 0
    signal_lines: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, lines: int = 1) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + lines


class LogGen:
    """Emits episodes (one client's visit: several lines) at a steady log-time pace."""

    def __init__(self, seed: int = 1, lines_per_second: float = 6.0) -> None:
        self.rng = random.Random(seed)
        self.now = START
        self.pace = 1.0 / lines_per_second
        self._stamp_key = -1
        self._stamp = ""
        r = self.rng
        self.senders = [self._v4() for _ in range(3000)]
        self.clients = [self._v4() for _ in range(700)] + [self._v6() for _ in range(150)]
        self.attackers = [self._v4() for _ in range(250)] + [self._v6() for _ in range(50)]
        self.users = [f"user{i}@{r.choice(DOMAINS)}" for i in range(600)]
        self.guesses = ["admin", "info", "test", "support", "sales", "office", "webmaster"]
        # Guessers try real accounts too, in any case: de-duplication compares case-blind.
        self.guesses += [u.capitalize() for u in self.users[:80]]
        self.stats = Stats()
        self.episodes: list[tuple[float, Callable[[], list[str]]]] = []
        total = 0.0
        for weight, fn in (
            (40.0, self.inbound),
            (7.0, self.submission),
            (22.0, self.imap_session),
            (6.0, self.pop_session),
            (6.0, self.postscreen_noise),
            (3.0, self.no_auth),
            (4.5, self.smtp_guessing),
            (3.1, self.imap_guessing),
            (2.8, self.harvest),
            (1.55, self.rset_loop),
        ):
            total += weight
            self.episodes.append((total, fn))
        self.total_weight = total

    # --- building blocks ------------------------------------------------------------------

    def _v4(self) -> str:
        r = self.rng
        return f"{r.choice((45, 62, 77, 91, 103, 141, 185, 193, 212))}.{r.randrange(256)}." \
               f"{r.randrange(256)}.{r.randrange(1, 255)}"

    def _v6(self) -> str:
        r = self.rng
        return f"2001:db8:{r.randrange(65536):x}:{r.randrange(65536):x}::{r.randrange(1, 65536):x}"

    def _id(self, n: int, alphabet: str = _ALNUM) -> str:
        return "".join(self.rng.choices(alphabet, k=n))

    def _pid(self) -> int:
        return self.rng.randrange(1000, 65000)

    def _ts(self) -> str:
        self.now += self.rng.expovariate(1.0 / self.pace)
        sec = int(self.now)
        if sec != self._stamp_key:
            self._stamp_key = sec
            self._stamp = time.strftime("%b %e %H:%M:%S", time.localtime(sec))
        return self._stamp

    def line(self, text: str) -> str:
        return f"{self._ts()} {HOST} {text}\n"

    def signal(self, text: str) -> str:
        """A line that carries a screening signal (marked for the statistics)."""
        return f"{SIGNAL}{self._ts()} {HOST} {text}\n"

    @staticmethod
    def name(ip: str) -> str:
        if ":" in ip or ip.endswith("7"):
            return "unknown"
        return f"host-{ip.replace('.', '-')}.isp.net"

    # --- normal traffic ---------------------------------------------------------------------

    def inbound(self) -> list[str]:
        r = self.rng
        ip = r.choice(self.senders)
        n = self.name(ip)
        pid, qid = self._pid(), self._id(15)
        rcpt = r.choice(self.users)
        out = [
            self.line(f"postfix/smtpd[{pid}]: connect from {n}[{ip}]"),
            self.line(f"postfix/smtpd[{pid}]: {qid}: client={n}[{ip}]"),
            self.line(f"postfix/cleanup[{self._pid()}]: {qid}: message-id=<{self._id(20)}@{n}>"),
            self.line(f"postfix/qmgr[812]: {qid}: from=<news@{n}>, size={r.randrange(2000, 90000)}"
                      ", nrcpt=1 (queue active)"),
            self.line(f"postfix/smtpd[{pid}]: disconnect from {n}[{ip}] ehlo=1 mail=1 rcpt=1 "
                      "data=1 quit=1 commands=5"),
            self.line(f"postfix/lmtp[{self._pid()}]: {qid}: to=<{rcpt}>, relay=mail.example.com"
                      f"[private/dovecot-lmtp], delay=0.{r.randrange(10, 99)}, delays=0.1/0/0/0.1,"
                      f" dsn=2.0.0, status=sent (250 2.0.0 <{rcpt}> {self._id(22, _B64)} Saved)"),
            self.line(f"postfix/qmgr[812]: {qid}: removed"),
        ]
        self.stats.add("inbound", len(out))
        return out

    def submission(self) -> list[str]:
        r = self.rng
        ip = r.choice(self.clients)
        n = self.name(ip)
        pid, qid = self._pid(), self._id(15)
        user = r.choice(self.users)
        out = [
            self.line(f"postfix/submission/smtpd[{pid}]: connect from {n}[{ip}]"),
            self.line(f"postfix/submission/smtpd[{pid}]: {qid}: client={n}[{ip}], "
                      f"sasl_method=PLAIN, sasl_username={user}"),
            self.line(f"postfix/cleanup[{self._pid()}]: {qid}: message-id=<{self._id(24)}@"
                      f"{user.split('@')[1]}>"),
            self.line(f"postfix/qmgr[812]: {qid}: from=<{user}>, size={r.randrange(900, 40000)}, "
                      "nrcpt=1 (queue active)"),
            self.line(f"postfix/smtp[{self._pid()}]: {qid}: to=<friend@elsewhere.test>, "
                      "relay=mx.elsewhere.test[192.0.2.80]:25, delay=1.2, delays=0.1/0/0.5/0.6, "
                      "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued)"),
            self.line(f"postfix/submission/smtpd[{pid}]: disconnect from {n}[{ip}] ehlo=2 "
                      "starttls=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=8"),
            self.line(f"postfix/qmgr[812]: {qid}: removed"),
        ]
        self.stats.add("submission", len(out))
        return out

    def imap_session(self) -> list[str]:
        r = self.rng
        ip = r.choice(self.clients)
        user = r.choice(self.users)
        sess, mpid = self._id(16, _B64), self._pid()
        out = [
            self.line(f"dovecot: imap-login: Login: user=<{user}>, method=PLAIN, rip={ip}, "
                      f"lip=192.0.2.25, mpid={mpid}, TLS, session=<{sess}>"),
            self.line(f"dovecot: imap({user})<{mpid}><{sess}>: Logged out in={r.randrange(90, 900)}"
                      f" out={r.randrange(400, 90000)} deleted=0 expunged=0 trashed=0 "
                      "hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0"),
        ]
        self.stats.add("imap", len(out))
        return out

    def pop_session(self) -> list[str]:
        r = self.rng
        ip = r.choice(self.clients)
        user = r.choice(self.users)
        sess, mpid = self._id(16, _B64), self._pid()
        out = [
            self.line(f"dovecot: pop3-login: Login: user=<{user}>, method=PLAIN, rip={ip}, "
                      f"lip=192.0.2.25, mpid={mpid}, TLS, session=<{sess}>"),
            self.line(f"dovecot: pop3({user})<{mpid}><{sess}>: Disconnected: Logged out top=0/0, "
                      f"retr=1/{r.randrange(900, 40000)}, del=1/1, size={r.randrange(900, 40000)}"),
        ]
        self.stats.add("pop", len(out))
        return out

    def postscreen_noise(self) -> list[str]:
        r = self.rng
        ip = r.choice(self.senders + self.attackers[:50])
        port = r.randrange(1024, 65535)
        out = [
            self.line(f"postfix/postscreen[700]: CONNECT from [{ip}]:{port} to [192.0.2.25]:25"),
            self.line(f"postfix/postscreen[700]: PASS OLD [{ip}]:{port}"),
        ]
        if r.random() < 0.3:
            out.append(self.line(f"postfix/anvil[711]: statistics: max connection rate 3/60s for "
                                 f"(smtp:{ip}) at {self._ts()}"))
        self.stats.add("noise", len(out))
        return out

    def no_auth(self) -> list[str]:
        r = self.rng
        ip = r.choice(self.attackers + self.clients)
        proto = r.choice(("imap", "pop3"))
        out = [self.line(f"dovecot: {proto}-login: Disconnected: Connection closed (no auth "
                         f"attempts in {r.randrange(0, 20)} secs): user=<>, rip={ip}, "
                         f"lip=192.0.2.25, TLS handshaking: SSL_accept() failed: error:0A00006C:"
                         f"SSL routines::bad key share, session=<{self._id(16, _B64)}>")]
        self.stats.add("noise", len(out))
        return out

    # --- screening signals ------------------------------------------------------------------

    def smtp_guessing(self) -> list[str]:
        """SMTP AUTH guessing through Postfix with Dovecot SASL: two or three lines an attempt."""
        r = self.rng
        ip = r.choice(self.attackers)
        n = self.name(ip)
        pid = self._pid()
        port = "submission/smtpd" if r.random() < 0.6 else "smtpd"
        out = [self.line(f"postfix/{port}[{pid}]: connect from {n}[{ip}]")]
        k = r.randint(1, 3)
        for _ in range(k):
            user = r.choice(self.guesses)
            if r.random() < 0.15:
                out.append(self.signal(
                    "auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 "
                    f"euid=0 tty=dovecot ruser={user} rhost={ip}"))
            out.append(self.signal(f"dovecot: auth: passwd-file({user},{ip}): "
                                   f"{r.choice(('unknown user', 'Password mismatch'))}"))
            out.append(self.signal(f"postfix/{port}[{pid}]: warning: {n}[{ip}]: SASL LOGIN "
                                   f"authentication failed: UGFzc3dvcmQ6, sasl_username={user}"))
        out.append(self.line(f"postfix/{port}[{pid}]: disconnect from {n}[{ip}] ehlo=1 "
                             f"auth=0/{k} quit=1 commands=2/{k + 2}"))
        self.stats.add("smtp_guessing", len(out))
        return out

    def imap_guessing(self) -> list[str]:
        r = self.rng
        ip = r.choice(self.attackers)
        sess = self._id(16, _B64)
        user = r.choice(self.guesses)
        k = r.randint(1, 3)
        out = [
            self.signal(f"dovecot: auth: passwd-file({user},{ip},<{sess}>): Password mismatch")
            for _ in range(k)
        ]
        proto = r.choice(("imap", "pop3"))
        out.append(self.signal(f"dovecot: {proto}-login: Disconnected: Connection closed (auth "
                               f"failed, {k} attempts in {2 * k + 1} secs): user=<{user}>, "
                               f"method=PLAIN, rip={ip}, lip=192.0.2.25, TLS, session=<{sess}>"))
        self.stats.add("imap_guessing", len(out))
        return out

    def harvest(self) -> list[str]:
        r = self.rng
        ip = r.choice(self.attackers)
        n = self.name(ip)
        pid = self._pid()
        out = [self.line(f"postfix/smtpd[{pid}]: connect from {n}[{ip}]")]
        m = r.randint(1, 4)
        for _ in range(m):
            who = f"{self._id(6).lower()}@{r.choice(DOMAINS)}"
            out.append(self.signal(
                f"postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from {n}[{ip}]: 550 5.1.1 <{who}>: "
                "Recipient address rejected: User unknown in virtual mailbox table; "
                f"from=<promo@{n}> to=<{who}> proto=ESMTP helo=<{n}>"))
        out.append(self.line(f"postfix/smtpd[{pid}]: disconnect from {n}[{ip}] ehlo=1 mail=1 "
                             f"rcpt=0/{m} quit=1 commands=3/{m + 3}"))
        self.stats.add("harvest", len(out))
        return out

    def rset_loop(self) -> list[str]:
        r = self.rng
        ip = r.choice(self.attackers)
        n = self.name(ip)
        pid = self._pid()
        k = r.randint(2, 6)
        out = [
            self.line(f"postfix/smtpd[{pid}]: connect from {n}[{ip}]"),
            self.signal(f"postfix/smtpd[{pid}]: disconnect from {n}[{ip}] ehlo=1 mail=2 "
                        f"rcpt=0/2 rset={k} quit=1 commands=5/{k + 5}"),
        ]
        self.stats.add("rset", len(out))
        return out

    # --- the stream -------------------------------------------------------------------------

    def lines(self, n: int) -> Iterator[str]:
        """Exactly n lines."""
        r = self.rng
        made = 0
        total = self.total_weight
        episodes = self.episodes
        stats = self.stats
        while made < n:
            pick = r.random() * total
            episode = episodes[-1][1]
            for limit, fn in episodes:
                if pick < limit:
                    episode = fn
                    break
            for text in episode():
                if made >= n:
                    return
                if text[0] == SIGNAL:
                    text = text[1:]
                    stats.signal_lines += 1
                stats.lines += 1
                yield text
                made += 1


def write_log(path: str, lines: int, seed: int = 1) -> Stats:
    """Write a log of exactly ``lines`` lines; the Stats say what went in."""
    gen = LogGen(seed)
    with open(path, "w", encoding="utf-8") as f:
        buf: list[str] = []
        for text in gen.lines(lines):
            buf.append(text)
            if len(buf) >= 8192:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    return gen.stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="generate a realistic synthetic mail log")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True, help="file to write ('-' for standard output)")
    a = ap.parse_args(argv)
    if a.out == "-":
        gen = LogGen(a.seed)
        sys.stdout.writelines(gen.lines(a.lines))
        stats = gen.stats
    else:
        stats = write_log(a.out, a.lines, a.seed)
    share = 100.0 * stats.signal_lines / max(1, stats.lines)
    print(f"{stats.lines} lines, {share:.1f}% screening signals", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
