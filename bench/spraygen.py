"""A mail log with the attacks per-address counting misses, for `dynscreen replay`.

On top of bench/loggen.py's everyday traffic (deterministic for a seed):

- password spraying: a botnet of ``--spray-sources`` addresses tries a few real
  accounts over SMTP AUTH and IMAP, each address one or two guesses, never near
  a per-address limit;
- the targeted account's own user, whose phone keeps an old password, from the
  address the user logged in from before (familiar: never blocked for spraying);
- a rented /24 whose addresses take turns at guessing (prefix aggregation);
- Gmail relaying mail to stale addresses, its host name verified by Postfix
  (a trusted sender: spared), and a source of the same pattern whose name did not
  verify (blocked).

Usage: python bench/spraygen.py --lines 200000 [--seed 1] [--spray-sources 2000] --out FILE
then:  dynscreen replay FILE   (the summary shows protect, spray, prefix and the spared)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loggen import _B64, LogGen  # noqa: E402

TARGETS = ("ceo@example.com", "billing@example.com", "info@example.org")
PHONE = "192.0.2.77"  # where the CEO logs in from; the phone with the old password
RENTED = "198.18.7"  # a /24 whose addresses take turns
GMAIL = ("209.85.218.45", "mail-ej1-f45.google.com")


class SprayGen(LogGen):
    """LogGen with the attack episodes mixed in."""

    def __init__(self, seed: int = 1, spray_sources: int = 2000) -> None:
        super().__init__(seed)
        r = self.rng
        self.botnet = [f"{r.choice((5, 37, 94, 176, 188))}.{r.randrange(256)}."
                       f"{r.randrange(256)}.{r.randrange(1, 255)}" for _ in range(spray_sources)]
        self.next_bot = 0
        self.phone_logged_in = False
        extra = (
            (6.0, self.spray),
            (0.4, self.stale_phone),
            (0.6, self.rented_prefix),
            (0.3, self.gmail_stale),
            (0.3, self.unverified_stale),
        )
        total = self.total_weight
        for weight, fn in extra:
            total += weight
            self.episodes.append((total, fn))
        self.total_weight = total

    def spray(self) -> list[str]:
        """One guess or two from the botnet's next address, on one of the targets."""
        r = self.rng
        ip = self.botnet[self.next_bot % len(self.botnet)]
        self.next_bot += 1
        user = r.choice(TARGETS)
        if r.random() < 0.5:
            pid = self._pid()
            out = [self.line(f"postfix/submission/smtpd[{pid}]: connect from unknown[{ip}]")]
            for _ in range(r.randint(1, 2)):
                out.append(self.signal(f"dovecot: auth: passwd-file({user},{ip}): "
                                       "Password mismatch"))
                out.append(self.signal(f"postfix/submission/smtpd[{pid}]: warning: unknown[{ip}]"
                                       ": SASL LOGIN authentication failed: UGFzc3dvcmQ6, "
                                       f"sasl_username={user}"))
            out.append(self.line(f"postfix/submission/smtpd[{pid}]: disconnect from "
                                 f"unknown[{ip}] ehlo=1 auth=0/1 quit=1 commands=2/3"))
        else:
            sess = self._id(16, _B64)
            out = [self.signal(f"dovecot: auth: passwd-file({user},{ip},<{sess}>): "
                               "Password mismatch"),
                   self.signal(f"dovecot: imap-login: Disconnected: Connection closed (auth "
                               f"failed, 1 attempts in 3 secs): user=<{user}>, method=PLAIN, "
                               f"rip={ip}, lip=192.0.2.25, TLS, session=<{sess}>")]
        self.stats.add("spray", len(out))
        return out

    def stale_phone(self) -> list[str]:
        """The CEO: logged in once from PHONE, then the phone retries an old password."""
        sess = self._id(16, _B64)
        if not self.phone_logged_in:
            self.phone_logged_in = True
            out = [self.line(f"dovecot: imap-login: Login: user=<{TARGETS[0]}>, method=PLAIN, "
                             f"rip={PHONE}, lip=192.0.2.25, mpid={self._pid()}, TLS, "
                             f"session=<{sess}>")]
        else:
            out = [self.signal(f"dovecot: auth: passwd-file({TARGETS[0]},{PHONE},<{sess}>): "
                               "Password mismatch"),
                   self.signal("dovecot: imap-login: Disconnected: Connection closed (auth "
                               f"failed, 1 attempts in 2 secs): user=<{TARGETS[0]}>, "
                               f"method=PLAIN, rip={PHONE}, lip=192.0.2.25, TLS, "
                               f"session=<{sess}>")]
        self.stats.add("stale_phone", len(out))
        return out

    def rented_prefix(self) -> list[str]:
        """Guessing from a /24, each address to its own per-address limit."""
        r = self.rng
        ip = f"{RENTED}.{r.randrange(1, 255)}"
        pid = self._pid()
        out = [self.line(f"postfix/smtpd[{pid}]: connect from unknown[{ip}]")]
        for _ in range(r.randint(3, 6)):
            user = r.choice(self.guesses)
            out.append(self.signal(f"postfix/smtpd[{pid}]: warning: unknown[{ip}]: SASL LOGIN "
                                   f"authentication failed: UGFzc3dvcmQ6, sasl_username={user}"))
        out.append(self.line(f"postfix/smtpd[{pid}]: disconnect from unknown[{ip}] ehlo=1 "
                             "auth=0/6 quit=1 commands=2/8"))
        self.stats.add("rented_prefix", len(out))
        return out

    def _stale(self, ip: str, name: str, kind: str) -> list[str]:
        pid = self._pid()
        out = [self.line(f"postfix/smtpd[{pid}]: connect from {name}[{ip}]")]
        for i in range(12):
            who = f"left{i}@example.com"
            out.append(self.signal(
                f"postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from {name}[{ip}]: 550 5.1.1 "
                f"<{who}>: Recipient address rejected: User unknown in virtual mailbox table; "
                f"from=<list@gmail.com> to=<{who}> proto=ESMTP helo=<{name}>"))
        out.append(self.line(f"postfix/smtpd[{pid}]: disconnect from {name}[{ip}] ehlo=1 "
                             "mail=1 rcpt=0/12 quit=1 commands=3/15"))
        self.stats.add(kind, len(out))
        return out

    def gmail_stale(self) -> list[str]:
        return self._stale(GMAIL[0], GMAIL[1], "gmail_stale")

    def unverified_stale(self) -> list[str]:
        return self._stale("203.0.113.45", "unknown", "unverified_stale")


def write_spray_log(path: str, lines: int, seed: int = 1, spray_sources: int = 2000) -> None:
    gen = SprayGen(seed, spray_sources)
    with open(path, "w", encoding="utf-8") as f:
        buf: list[str] = []
        for text in gen.lines(lines):
            buf.append(text)
            if len(buf) >= 8192:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(gen.stats.kinds.items()))
    print(f"{gen.stats.lines} lines ({kinds})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="a mail log with spraying and prefix attacks")
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--spray-sources", type=int, default=2000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    write_spray_log(a.out, a.lines, a.seed, a.spray_sources)
    return 0


if __name__ == "__main__":
    sys.exit(main())
