#!/usr/bin/env python3
"""The attacker's side of e2e.sh (runs on the attacker VM; standard library only).

    attack.py --target IP smtp-auth [--count N] [--user U]   SMTP AUTH brute force (port 25)
    attack.py --target IP imap-auth [--count N] [--user U]   IMAP LOGIN brute force (port 143)
    attack.py --target IP flood [--count N] [--port P]       connect and close, fast
    attack.py --target IP probe [--port P] [--expect open|timeout]

A blocked source's packets are dropped by the gateway's XDP program, so a connection
attempt from it times out (no refusal comes back). Every command stops at the first
timeout and says after how many attempts it came; `probe` exits 0 when the result is
the one expected, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import smtplib
import socket
import sys
import time


def log(msg: str) -> None:
    print(f"attacker: {msg}", flush=True)


# A connection attempt waits `timeout` seconds (then the source is taken as blocked); once
# connected, a reply may take longer: servers delay their answer to a failed login
# (Dovecot's auth_failure_delay, Postfix's error sleep), more so on a slow VM.
REPLY_TIMEOUT = 30.0


def _connect(target: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((target, port), timeout=timeout)
    sock.settimeout(REPLY_TIMEOUT)
    return sock


class SMTP(smtplib.SMTP):
    """smtplib.SMTP with a short connect timeout and a long one for replies."""

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        super().__init__(timeout=REPLY_TIMEOUT)

    def _get_socket(self, host: str, port: int, timeout: float | None) -> socket.socket:
        return _connect(host, port, self.connect_timeout)


class IMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 with a short connect timeout and a long one for replies."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return _connect(self.host, self.port, timeout or 5.0)


def smtp_auth(target: str, count: int, user: str, timeout: float) -> int:
    for i in range(1, count + 1):
        try:
            s = SMTP(timeout)
            s.connect(target, 25)
        except TimeoutError:
            log(f"attempt {i}: connection timed out (blocked)")
            return i
        except (OSError, smtplib.SMTPException) as e:
            log(f"attempt {i}: {e}")
            continue
        try:
            s.ehlo("attacker.example")
            # One mechanism, so one connection is one failed login (login() would try
            # every mechanism the server offers, each a failure of its own).
            s.user, s.password = user, f"wrong-password-{i}"
            s.auth("PLAIN", s.auth_plain)
            log(f"attempt {i}: AUTH accepted?!")
        except smtplib.SMTPAuthenticationError as e:
            log(f"attempt {i}: {e.smtp_code} {e.smtp_error.decode(errors='replace')}")
        except smtplib.SMTPServerDisconnected as e:
            log(f"attempt {i}: disconnected by the server ({e})")
        except (OSError, smtplib.SMTPException) as e:
            log(f"attempt {i}: {e}")
        finally:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                s.quit()
            s.close()
    return 0


def imap_auth(target: str, count: int, user: str, timeout: float) -> int:
    for i in range(1, count + 1):
        try:
            m = IMAP4(target, 143, timeout=timeout)
        except TimeoutError:
            log(f"attempt {i}: connection timed out (blocked)")
            return i
        except (OSError, imaplib.IMAP4.error) as e:
            log(f"attempt {i}: {e}")
            continue
        try:
            m.login(user, f"wrong-password-{i}")
            log(f"attempt {i}: LOGIN accepted?!")
        except (OSError, imaplib.IMAP4.error) as e:
            log(f"attempt {i}: {e}")
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                m.logout()
    return 0


def flood(target: str, port: int, count: int, timeout: float) -> int:
    t0 = time.monotonic()
    for i in range(1, count + 1):
        try:
            socket.create_connection((target, port), timeout=timeout).close()
        except TimeoutError:
            log(f"{i - 1} connections in {time.monotonic() - t0:.1f}s, "
                f"connection {i} timed out (blocked)")
            return i
        except OSError as e:
            log(f"connection {i}: {e}")
    log(f"{count} connections in {time.monotonic() - t0:.1f}s, none timed out")
    return 0


def probe(target: str, port: int, timeout: float) -> str:
    try:
        socket.create_connection((target, port), timeout=timeout).close()
        return "open"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return f"error: {e}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="192.168.56.10")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per connection")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("smtp-auth", "imap-auth"):
        p = sub.add_parser(name)
        p.add_argument("--count", type=int, default=8)
        p.add_argument("--user", default="alice")
    p = sub.add_parser("flood")
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--port", type=int, default=25)
    p = sub.add_parser("probe")
    p.add_argument("--port", type=int, default=25)
    p.add_argument("--expect", choices=("open", "timeout"))
    a = ap.parse_args()

    if a.cmd == "smtp-auth":
        smtp_auth(a.target, a.count, a.user, a.timeout)
    elif a.cmd == "imap-auth":
        imap_auth(a.target, a.count, a.user, a.timeout)
    elif a.cmd == "flood":
        flood(a.target, a.port, a.count, a.timeout)
    else:
        got = probe(a.target, a.port, a.timeout)
        log(f"connect to {a.target}:{a.port}: {got}")
        return 0 if a.expect is None or got == a.expect else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
