"""Mail to the postmaster when an account reaches the session limit of failed logins,
or is under a password-spraying attack (``Notifier.protect``).

``Notifier.notify`` only queues a notice (a lock and a list append): the
daemon's event loop never waits for a mail relay. A worker thread sends with
smtplib. At most one mail per account per ``window_minutes``: the first
notice goes out at once, later ones wait and the next mail lists every
attempt since the last one. When the relay is down or refuses, the worker
retries with exponential backoff (BACKOFF_INITIAL doubling to BACKOFF_MAX, on
the injected clock) and keeps the notices; each failure is logged.

Pending notices and the time of each account's last mail are kept in a spool
file (JSON, rewritten atomically) beside the frozen file
(``spool_path(frozen_file)``), so that a restart neither loses an unsent
notice nor resets the rate limit. Without a spool file, notices still unsent
at stop() are logged as lost, one line per account.
"""

from __future__ import annotations

import contextlib
import email.policy
import json
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from dynscreen.control.accounts import account_key
from dynscreen.control.atomicfile import write_atomic

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 5.0  # seconds before the first retry
BACKOFF_MAX = 600.0  # the longest wait between retries
SMTP_TIMEOUT = 30.0  # per SMTP operation
MAX_LISTED = 200  # attempts listed in one mail; more are counted, not listed
SPOOL_VERSION = 1

# RFC 5322's hard limit, not 78: Python folds a long Subject before its first word,
# which some readers show with a leading space.
_POLICY = email.policy.default.clone(max_line_length=998)

SERVICE_NAMES = {"smtp": "SMTP", "pop": "POP3", "imap": "IMAP", "sieve": "ManageSieve"}


def spool_path(frozen_file: Path) -> Path:
    """Where the notices wait: beside the frozen file."""
    return frozen_file.with_name(frozen_file.name + ".notify")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One session that reached the failure limit."""

    user: str
    service: str | None
    ip: str | None
    failures: int
    ts: float
    frozen: bool
    # A spraying attack rather than one session: how many sources, some of them by
    # name, and how long the account is protected (0: a session notice).
    spray_sources: int = 0
    sample: tuple[str, ...] = ()
    protect_minutes: int = 0


@dataclass(slots=True)
class _Account:
    user: str  # the spelling of the first notice
    last_sent: float | None = None
    pending: list[Any] = field(default_factory=list)  # Attempt, or a subclass's items
    omitted: int = 0  # attempts beyond MAX_LISTED, counted only


class Notifier:
    """Queues notices and mails them from a worker thread; counters are plain attributes.

    The queue, the rate limit per key, the backoff and the spool are not about mail: a
    subclass that overrides ``_send`` (and ``_encode``/``_decode`` for what it queues)
    delivers by other means with the same guarantees (control/webhook.py).
    """

    thread_name = "dynscreen-notify"

    def __init__(
        self,
        postmaster: str,
        smtp_relay: tuple[str, int],
        window_minutes: float,
        *,
        starttls: bool = False,
        tls_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        clock: Callable[[], float] = time.time,
        spool: Path | None = None,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        timeout: float = SMTP_TIMEOUT,
        hostname: str | None = None,
        sender: str | None = None,
    ) -> None:
        self.postmaster = postmaster
        self.relay = smtp_relay
        self.window = window_minutes * 60.0
        self.starttls = starttls
        self.tls_context = tls_context  # None: the system's CAs, the relay's name checked
        self.username = username
        self.password = password
        self.clock = clock
        self.spool = spool
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.timeout = timeout
        # gethostname, not getfqdn: no DNS lookup that could hang.
        self.hostname = hostname or socket.gethostname() or "localhost"
        self.sender = sender or f"dynscreen@{self.hostname}"
        # metrics
        self.queued = 0  # notices accepted
        self.sent = 0  # mails delivered to the relay
        self.send_failures = 0  # mails (or connections) that failed, each retried
        self.retry_at: float | None = None  # when the worker tries again after a failure
        self._accounts: dict[str, _Account] = {}
        self._cond = threading.Condition()
        self._dirty = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        if spool is not None:
            self._load_spool()

    # --- the daemon's side ---------------------------------------------------------------

    def notify(
        self,
        user: str,
        service: str | None,
        ip: str | None,
        failures: int,
        ts: float,
        frozen: bool,
    ) -> None:
        """Queue a notice about `user`; returns at once."""
        self._queue(user, Attempt(user, service, ip, int(failures), float(ts), bool(frozen)))

    def protect(
        self, user: str, sources: int, sample: tuple[str, ...], minutes: int, ts: float
    ) -> None:
        """Queue the notice of a spraying attack on `user` (one per protection); returns at once."""
        self._queue(user, Attempt(user, None, sample[0] if sample else None, 0, float(ts), False,
                                  int(sources), tuple(sample), int(minutes)))

    def _queue(self, user: str, attempt: Attempt) -> None:
        with self._cond:
            key = account_key(user)
            acct = self._accounts.get(key)
            if acct is None:
                acct = self._accounts[key] = _Account(user)
            if len(acct.pending) < MAX_LISTED:
                acct.pending.append(attempt)
            else:
                acct.omitted += 1
            self.queued += 1
            self._dirty = True
            self._cond.notify_all()

    def pending(self) -> int:
        """Notices not yet mailed (listed and counted)."""
        with self._cond:
            return sum(len(a.pending) + a.omitted for a in self._accounts.values())

    def wake(self) -> None:
        """Look at the clock again now (after an injected clock moved)."""
        with self._cond:
            self._cond.notify_all()

    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def revive(self) -> bool:
        """Start the worker again if its thread died (a bug); True if it had died.

        The daemon's thread watch calls this; the traceback went to the log through
        threading.excepthook when the thread ended.
        """
        t = self._thread
        if t is None or t.is_alive() or self._stopping:
            return False
        self._thread = None
        self.start()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker (a mail being sent is finished first) and save the spool."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("notify: the worker is still sending after %g s", timeout)
            self._thread = None
        self._save_spool()
        if self.spool is None:
            with self._cond:
                for acct in self._accounts.values():
                    n = len(acct.pending) + acct.omitted
                    if n:
                        log.error(
                            "notify: %d notice(s) about %s not mailed and lost at stop "
                            "(no spool file)", n, acct.user,
                        )

    # --- the worker ----------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff_initial
        while True:
            self._save_spool()
            with self._cond:
                if self._stopping:
                    return
                now = self.clock()
                if self.retry_at is not None and now < self.retry_at:
                    # backing off, on the injected clock (wake() after moving a test's clock)
                    self._cond.wait(min(self.retry_at - now, 60.0))
                    continue
                batch = self._due(now)
                if not batch:
                    self._cond.wait(self._idle_wait(now))
                    continue
            try:
                failed = self._send(batch)
            except Exception:  # a bug must not end the worker: the notices stay queued
                log.exception("notify: unexpected error while mailing")
                failed = True
            if not failed:
                delay = self.backoff_initial
                self.retry_at = None
                continue
            log.warning(
                "notify: %d notice(s) waiting; next try in %g s", self.pending(), delay
            )
            self.retry_at = self.clock() + delay
            delay = min(delay * 2, self.backoff_max)

    def _due(self, now: float) -> list[tuple[str, str, list[Attempt], int]]:
        """(key, user, attempts, omitted) of the accounts whose mail may go now (lock held)."""
        due = []
        for key, acct in list(self._accounts.items()):
            if acct.pending or acct.omitted:
                if acct.last_sent is None or now >= acct.last_sent + self.window:
                    due.append((key, acct.user, list(acct.pending), acct.omitted))
            elif acct.last_sent is None or now >= acct.last_sent + self.window:
                del self._accounts[key]  # nothing to say, rate limit over: forget it
                self._dirty = True
        return due

    def _idle_wait(self, now: float) -> float | None:
        """Seconds until the next account's window opens; None: nothing pending (lock held)."""
        opens = [
            a.last_sent + self.window
            for a in self._accounts.values()
            if (a.pending or a.omitted) and a.last_sent is not None
        ]
        if not opens:
            return None if not self._accounts else 60.0
        return min(max(min(opens) - now, 0.01), 60.0)

    def _send(self, batch: list[tuple[str, str, list[Attempt], int]]) -> bool:
        """Mail each account's notices over one connection; True if anything failed."""
        host, port = self.relay
        try:
            smtp = smtplib.SMTP(host, port, self.hostname, timeout=self.timeout)
        except OSError as e:
            self.send_failures += 1
            log.warning("notify: cannot reach the mail relay %s:%d: %s", host, port, e)
            return True
        failed = False
        try:
            smtp.ehlo_or_helo_if_needed()
            if self.starttls:
                smtp.starttls(context=self.tls_context or ssl.create_default_context())
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password or "")
            for key, user, attempts, omitted in batch:
                msg = compose(
                    user, attempts, omitted, sender=self.sender, postmaster=self.postmaster,
                    hostname=self.hostname,
                )
                try:
                    smtp.send_message(msg, self.sender, [self.postmaster])
                except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused) as e:
                    failed = True
                    self.send_failures += 1
                    log.error("notify: the relay refused the notice about %s: %s", user, e)
                    continue
                self._sent(key, len(attempts), omitted)
                log.info("notify: mailed %s about %s", self.postmaster, user)
            with contextlib.suppress(OSError):
                smtp.quit()
        except OSError as e:  # smtplib.SMTPException is an OSError
            failed = True
            self.send_failures += 1
            log.warning("notify: mail relay %s:%d failed: %s", host, port, e)
        finally:
            smtp.close()
        return failed

    def _sent(self, key: str, listed: int, omitted: int) -> None:
        """Drop what was mailed (notices queued meanwhile stay) and start the window."""
        with self._cond:
            acct = self._accounts.get(key)
            if acct is None:
                return
            del acct.pending[:listed]
            acct.omitted -= omitted
            acct.last_sent = self.clock()
            self.sent += 1
            self._dirty = True

    # --- the spool -----------------------------------------------------------------------

    def _encode(self, item: Any) -> dict[str, Any]:
        """A queued item as the spool's JSON holds it."""
        return asdict(item)

    def _decode(self, item: dict[str, Any]) -> Any:
        """A queued item back from the spool (ValueError, TypeError, KeyError: unreadable)."""
        return _attempt(item)

    def _save_spool(self) -> None:
        with self._cond:
            if self.spool is None or not self._dirty:
                return
            data = {
                "version": SPOOL_VERSION,
                "accounts": [
                    {
                        "user": a.user,
                        "last_sent": a.last_sent,
                        "omitted": a.omitted,
                        "pending": [self._encode(p) for p in a.pending],
                    }
                    for a in self._accounts.values()
                ],
            }
            self._dirty = False
        try:
            write_atomic(self.spool, (json.dumps(data, indent=1) + "\n").encode(), 0o600)
        except OSError as e:
            with self._cond:
                self._dirty = True
            log.error("notify: cannot write the spool %s: %s", self.spool, e.strerror or e)

    def _load_spool(self) -> None:
        assert self.spool is not None
        try:
            raw = self.spool.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("notify: cannot read the spool %s: %s", self.spool, e.strerror or e)
            return
        try:
            self._accounts = _parse_spool(json.loads(raw), self._decode)
        except (ValueError, TypeError, KeyError) as e:
            aside = self.spool.with_name(self.spool.name + ".corrupt")
            with contextlib.suppress(OSError):
                self.spool.replace(aside)
            log.error("notify: spool %s unreadable (%s); kept it as %s", self.spool, e, aside)
            return
        n = sum(len(a.pending) + a.omitted for a in self._accounts.values())
        if n:
            log.info("notify: %d notice(s) waiting from before the restart", n)


def _parse_spool(data: Any, decode: Callable[[dict[str, Any]], Any]) -> dict[str, _Account]:
    if not isinstance(data, dict) or data.get("version") != SPOOL_VERSION:
        raise ValueError(f"not a version {SPOOL_VERSION} spool")
    accounts: dict[str, _Account] = {}
    for item in data["accounts"]:
        last = item["last_sent"]
        acct = _Account(
            user=str(item["user"]),
            last_sent=float(last) if last is not None else None,
            omitted=int(item["omitted"]),
            pending=[decode(p) for p in item["pending"]],
        )
        accounts[account_key(acct.user)] = acct
    return accounts


def _attempt(item: dict[str, Any]) -> Attempt:
    """An attempt from the spool (JSON has lists where the attempt has tuples)."""
    if "sample" in item:
        item = {**item, "sample": tuple(str(s) for s in item["sample"])}
    return Attempt(**item)


# --- the mail ----------------------------------------------------------------------------


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str) -> str:
    """Text from logs made safe for a header or a line of the body."""
    return _CONTROL.sub("?", text)


def _service(service: str | None) -> str:
    return SERVICE_NAMES.get(service or "", _clean(service or "unknown protocol"))


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _local(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _unique(values: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def subject(user: str, attempts: list[Attempt], omitted: int = 0) -> str:
    """``dynscreen: account alice@example.com frozen after 10 failed logins (imap)``."""
    spray = [a for a in attempts if a.spray_sources]
    if spray:
        text = (f"dynscreen: account {_clean(user)} under a password-spraying attack from "
                f"{max(a.spray_sources for a in spray)} addresses")
        more = len(attempts) - len(spray) + omitted
        if more:
            text += f" and {more} failed-login session{'s' if more > 1 else ''}"
        return text
    head = next((a for a in attempts if a.frozen), attempts[0])
    user = _clean(user)
    svc = _clean(head.service or "unknown protocol")
    if head.frozen:
        text = f"dynscreen: account {user} frozen after {head.failures} failed logins ({svc})"
    else:
        text = f"dynscreen: account {user}: {head.failures} failed logins in one session ({svc})"
    more = len(attempts) - 1 + omitted
    if more:
        text += f" and {more} more session{'s' if more > 1 else ''}"
    return text


def compose(
    user: str,
    attempts: list[Attempt],
    omitted: int = 0,
    *,
    sender: str,
    postmaster: str,
    hostname: str,
) -> EmailMessage:
    """The notice: which account, from where, which protocol, how many, when, frozen or not."""
    msg_subject = subject(user, attempts, omitted)
    spray = [a for a in attempts if a.spray_sources]
    lines = _spray_lines(user, spray, hostname) if spray else []
    attempts = [a for a in attempts if not a.spray_sources]
    if attempts:
        lines += _session_lines(user, attempts, omitted, hostname)
    lines += ["", "-- ", f"dynscreen on {hostname}", ""]

    msg = EmailMessage(policy=_POLICY)
    msg["From"] = sender
    msg["To"] = postmaster
    msg["Subject"] = msg_subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid("dynscreen", domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("\n".join(lines))
    return msg


def _spray_lines(user: str, spray: list[Attempt], hostname: str) -> list[str]:
    user = _clean(user)
    lines = [
        f"dynscreen on {hostname} sees a password-spraying attack on the account {user}:",
        "many different addresses fail to log in to it, each only a few times.",
        "",
        "The account is NOT locked: its user still logs in as usual. While it is",
        "protected, a failed login for it from an address that has not logged in",
        "as it lately blocks that address at once (reason: spray).",
        "",
    ]
    for a in spray:
        lines += [
            f"  when:       {_utc(a.ts)} ({_local(a.ts)} local time)",
            f"  sources:    {a.spray_sources} different addresses within the window",
            f"  protected:  {a.protect_minutes} minutes",
            "  some of them:",
            *(f"    {_clean(s)}" for s in a.sample),
            "",
        ]
    lines.append("If the account's password is weak or was reused elsewhere, change it.")
    return lines


def _session_lines(user: str, attempts: list[Attempt], omitted: int, hostname: str) -> list[str]:
    head = next((a for a in attempts if a.frozen), attempts[0])
    frozen = any(a.frozen for a in attempts)
    ips = _unique(_clean(a.ip) if a.ip else None for a in attempts)
    services = _unique(_service(a.service) for a in attempts)
    user = _clean(user)
    lines = [
        f"dynscreen on {hostname} saw {head.failures} failed logins for the account {user}",
        f"in one {_service(head.service)} session from {_clean(head.ip or 'an unknown address')}"
        + (", and froze the account." if head.frozen else "."),
        "",
        f"  account:    {user}",
        f"  protocol:   {', '.join(services)}",
        f"  from:       {', '.join(ips) or 'unknown'}",
        f"  failures:   {head.failures} in one session",
        f"  when:       {_utc(head.ts)} ({_local(head.ts)} local time)",
        f"  frozen:     {'yes' if frozen else 'no'}",
        "",
    ]
    if frozen:
        lines += [
            "A frozen account still receives mail but cannot send through this gateway",
            "until it is unfrozen. Check with the user whether these logins were theirs",
            "(an old password saved in a phone is a common cause); if they were not,",
            "change the password. Then unfreeze the account:",
            "",
            f"    dynscreen accounts unfreeze {user}",
            "",
            "`dynscreen accounts list` shows the frozen accounts and when each freeze ends.",
        ]
    else:
        lines += [
            "The account was not frozen. If these logins were not the user's, the",
            "password may be under attack: consider changing it.",
        ]
    lines += ["", f"Every session since the last notice about this account ({len(attempts)}):"]
    lines += [""]
    lines.append(f"  {'when (UTC)':<23}  {'protocol':<11}  {'from':<39}  failures  frozen")
    for a in attempts:
        lines.append(
            f"  {_utc(a.ts):<23}  {_service(a.service):<11}  {_clean(a.ip or '-'):<39}  "
            f"{a.failures:>8}  {'yes' if a.frozen else 'no'}"
        )
    if omitted:
        lines.append(f"  and {omitted} more, not listed")
    return lines
