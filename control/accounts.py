"""Frozen accounts: the store the policy service asks, kept on disk across restarts.

An account is frozen after too many authentication failures in one mail
session (docs/design.md row 12): it still receives mail but can no longer send
through this gateway. The daemon freezes and unfreezes; Postfix asks the
policy service (control/policy.py), which asks ``FrozenStore.is_frozen``.

Account names are compared case-insensitively, domain AND local part
(``Alice@Example.COM`` == ``alice@example.com``). The local part is, by the
RFCs, case-sensitive, but every place that would consult this store folds it:
Dovecot's default ``auth_username_format = %Lu`` lowercases the login before
it is checked, Postfix folds the keys of its lookup tables, Exim's ``lsearch``
is case-insensitive, and the engine compares user names case-insensitively.
Two entries that differ only in case could never be told apart by them, and a
freeze that ``ALICE@…`` could dodge would be no freeze. The spelling first
seen is kept for display; the lookup tables carry the lowercased name.

Files (both rewritten atomically: temp file, fsync, rename, fsync of the
directory; the mode set on every rewrite, whatever the umask):

``frozen_file`` (default /var/lib/dynscreen/frozen), for people: ``#``
comments, then one account per line, fields separated by a TAB::

    user  since  until  service  ip  failures  session

with times in ISO 8601 UTC (``2026-11-30T14:05:00Z``), ``-`` for an empty
field and ``until`` = ``-`` for "until an administrator unfreezes". Use
``dynscreen accounts list`` and ``dynscreen accounts unfreeze USER`` rather
than editing it. Mode 0600: only the daemon reads it. It follows the block
file's rules (control/statefile.py): a hand edit is read within a second and
applied as the change it makes to the text it was started from (an account
frozen meanwhile stays frozen); an edit with a bad line is refused as a whole
(the message names the line), the accounts stay as they were and the text is
kept as ``frozen_file.rejected-<time>``; nothing is written over an edit not
read yet. A damaged file at start fails closed: every account it still names
stays frozen (a line that cannot be read but starts with an account name
freezes that account until unfrozen), the unreadable lines are logged with
their numbers, and the file is not rewritten until an edit fixes it.

``frozen_file + ".list"``, for mail servers: one account per line, the
lowercased name, a TAB and the action ``REJECT <frozen_reply>``. Mode 0640,
its group kept across rewrites: Postfix opens its lookup tables as root before
it drops privileges, so root's group does; Exim reads the file as its own user
in each SMTP process, so give it Exim's group once
(``chgrp Debian-exim /var/lib/dynscreen/frozen.list``). The name
alone would do for Exim, but Postfix tables need a value on every line
(postmap skips a line without one), so the line carries what Postfix should do.

Exim (no policy protocol; each SMTP connection's process reads the file
afresh; ``lsearch`` compares keys case-insensitively), in the ACL that runs for
each RCPT (acl_smtp_rcpt), before any accept for authenticated senders, with
``$authenticated_id`` the login name as the authenticators' server_set_id
sets it::

    deny  authenticated = *
          condition     = ${lookup{$authenticated_id}lsearch{/var/lib/dynscreen/frozen.list}\\
                                   {yes}{no}}
          message       = account temporarily frozen after repeated authentication failures

Postfix: use the policy service (control/policy.py); it answers at once.
Without the daemon running, the list works as a table, read when an smtpd
process starts (so a change reaches new processes only)::

    smtpd_recipient_restrictions = check_sasl_access texthash:/var/lib/dynscreen/frozen.list,
        permit_sasl_authenticated, ...

(or ``hash:`` after ``postmap``, which then has to be run after each change).
``load()`` writes the list even when no account is frozen: a missing file
would make Exim's lookup defer instead of answer "no".
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynscreen.control.atomicfile import write_atomic
from dynscreen.control.statefile import StateFile
from dynscreen.control.utctime import format_time, parse_time

log = logging.getLogger(__name__)

DEFAULT_REPLY = "5.7.1 account temporarily frozen after repeated authentication failures"
MAX_USER = 512  # bytes of an account name: longer is not a login name
LIST_MODE = 0o640  # the lookup table: a mail server's group may read it

HEADER = """\
# dynscreen: frozen accounts (they still receive mail, they cannot send).
# Written by the daemon; use `dynscreen accounts list` and
# `dynscreen accounts unfreeze USER` rather than editing this file.
# Fields, TAB-separated: user since until service ip failures session
# (times in UTC; until "-" = until an administrator unfreezes; "-" = none).
"""
LIST_HEADER = """\
# dynscreen: frozen accounts as a lookup table: account TAB action.
# Exim: ${lookup{$authenticated_id}lsearch{THIS FILE}{yes}{no}};
# Postfix: check_sasl_access texthash:THIS FILE. Written by the daemon.
"""

_BAD_USER = re.compile(r"[\s\x00-\x1f\x7f]")


class FrozenFileError(ValueError):
    """The frozen-accounts file cannot be read: the message names the file and the line."""

    def __init__(self, path: Path, problem: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        self.kept: Path | None = None  # where a refused edit was kept
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


def account_key(user: str) -> str:
    """How two account names are compared: case-insensitively (see the module docstring)."""
    return user.lower()


def check_user(user: str) -> str:
    """`user` if it can be stored (one field of a line); ValueError says why not."""
    if not user:
        raise ValueError("empty account name")
    if _BAD_USER.search(user):
        raise ValueError(f"account name {user!r} contains white space or control characters")
    if user.startswith("#"):
        raise ValueError(f"account name {user!r} starts with #")
    if len(user.encode("utf-8", "surrogateescape")) > MAX_USER:
        raise ValueError(f"account name longer than {MAX_USER} bytes")
    return user


@dataclass(frozen=True, slots=True)
class FrozenAccount:
    """One frozen account and the session that got it frozen."""

    user: str
    since: float
    until: float | None  # None: until an administrator unfreezes it
    service: str | None = None
    ip: str | None = None
    session: str | None = None
    failures: int = 0

    def active(self, now: float) -> bool:
        """Still frozen at `now`."""
        return self.until is None or now < self.until

    def to_dict(self) -> dict[str, Any]:
        """The control socket's ``accounts_list`` entry (times in Unix seconds)."""
        return {
            "user": self.user,
            "since": self.since,
            "until": self.until,
            "service": self.service,
            "ip": self.ip,
            "session": self.session,
            "failures": self.failures,
        }

    def to_line(self) -> str:
        """The account as a line of the frozen file."""
        until = format_time(self.until) if self.until is not None else "-"
        fields = (
            self.user, format_time(self.since), until, self.service or "-", self.ip or "-",
            str(self.failures), self.session or "-",
        )
        return "\t".join(fields)


def _field(value: str | None, name: str) -> str | None:
    """An optional text field: it must fit on the line as one field."""
    if value is None or value == "":
        return None
    if _BAD_USER.search(value):
        raise ValueError(f"{name} {value!r} contains white space or control characters")
    return value


def parse_line(text: str) -> FrozenAccount:
    """One line of the frozen file; ValueError says what is wrong with it."""
    fields = text.split("\t") if "\t" in text else text.split()
    if len(fields) not in (6, 7):
        raise ValueError(
            f"expected 6 or 7 TAB-separated fields "
            f"(user since until service ip failures [session]), got {len(fields)}"
        )
    fields = [f.strip() for f in fields]
    user = check_user(fields[0])
    since = parse_time(fields[1])
    until = None if fields[2] == "-" else parse_time(fields[2])
    if not fields[5].isascii() or not fields[5].isdigit():
        raise ValueError(f'bad failure count "{fields[5]}": expected a whole number')

    def opt(i: int) -> str | None:
        return None if i >= len(fields) or fields[i] in ("-", "") else fields[i]

    return FrozenAccount(
        user=user, since=since, until=until, service=opt(3), ip=opt(4), session=opt(6),
        failures=int(fields[5]),
    )


def parse_text(text: str, path: Path) -> dict[str, FrozenAccount]:
    """All accounts of a frozen file by key; FrozenFileError names the first bad line."""
    accounts: dict[str, FrozenAccount] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            account = parse_line(line)
        except ValueError as e:
            raise FrozenFileError(path, str(e), number) from None
        key = account_key(account.user)
        if key in accounts:
            raise FrozenFileError(
                path, f"account {account.user} listed twice (also line {lines[key]})", number
            )
        accounts[key] = account
        lines[key] = number
    return accounts


def _named_user(raw: bytes) -> str | None:
    """The account a line that cannot be read still names (its first field), if any."""
    fields = raw.split(b"\t") if b"\t" in raw else raw.split()
    if not fields:
        return None
    try:
        return check_user(fields[0].strip().decode("utf-8"))
    except ValueError:
        return None


def read_damaged(data: bytes, path: Path, now: float
                 ) -> tuple[dict[str, FrozenAccount], list[FrozenFileError]]:
    """Every account a file still names, and its unreadable lines: fail closed.

    A good line is read as usual; a bad line that starts with an account name
    freezes that account until an administrator unfreezes it; a name listed
    twice keeps the longer freeze. Never raises.
    """
    accounts: dict[str, FrozenAccount] = {}
    problems: list[FrozenFileError] = []
    lines: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line: str | None = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            line = None
        if line is not None and (not line.strip() or line.lstrip().startswith("#")):
            continue
        try:
            if line is None:
                raise ValueError("not UTF-8 text")
            account = parse_line(line)
        except ValueError as e:
            user = _named_user(raw)
            if user is None:
                problems.append(FrozenFileError(path, f"{e} (names no account)", number))
                continue
            account = FrozenAccount(user=user, since=now, until=None)
            problems.append(FrozenFileError(
                path, f"{e} ({user} stays frozen until an administrator unfreezes it)", number))
        key = account_key(account.user)
        if key in accounts:
            problems.append(FrozenFileError(
                path, f"account {account.user} listed twice (also line {lines[key]})", number))
            old = accounts[key]
            if old.until is not None and (account.until is None or account.until > old.until):
                accounts[key] = account
            continue
        accounts[key] = account
        lines[key] = number
    return accounts, problems


def parse_file(data: bytes, path: Path) -> dict[str, FrozenAccount]:
    """All accounts of a whole file's bytes; FrozenFileError names the first bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FrozenFileError(path, "not UTF-8 text", data.count(b"\n", 0, e.start) + 1) \
            from None
    return parse_text(text, path)


class FrozenStore:
    """The frozen accounts, in memory for fast lookups and on disk after every change.

    Safe to share between threads: changes hold a lock; ``is_frozen`` is one
    dict lookup and needs none.
    """

    def __init__(self, path: Path, *, reply: str = DEFAULT_REPLY) -> None:
        self.file = StateFile(path)
        self.path = self.file.path
        self.list_path = self.path.with_name(self.path.name + ".list")
        self.reply = reply  # the action text in the .list file
        self._accounts: dict[str, FrozenAccount] = {}
        self._lock = threading.Lock()
        self.loaded = False
        self.problems: list[FrozenFileError] = []  # unreadable lines found at start
        self._pending = False  # a change the file does not hold yet
        # Told of each freeze (the account) and unfreeze (None) made here: the fleet shares
        # them. Not of expiries, nor of edits of the file.
        self.watchers: list[Callable[[str, FrozenAccount | None], None]] = []

    def __len__(self) -> int:
        return len(self._accounts)

    @property
    def damaged(self) -> bool:
        """The file had unreadable lines at start: it is not rewritten until an edit fixes it."""
        return bool(self.problems)

    def load(self, now: float | None = None) -> list[FrozenAccount]:
        """The accounts in force: read at start (failing closed), later the edits since.

        At start a damaged file never raises: see read_damaged() and ``problems``
        (each logged with its line). Later, FrozenFileError refuses an edit as a
        whole and leaves the store unchanged (see check_edit()).
        """
        if self.loaded:
            self.check_edit()
            return self.list()
        now = time.time() if now is None else now
        try:
            data = self.file.read()
        except OSError as e:
            raise FrozenFileError(self.path, f"cannot read: {e.strerror or e}") from None
        accounts, problems = read_damaged(data, self.path, now) if data is not None else ({}, [])
        with self._lock:
            self._accounts = accounts
            self.problems = problems
            self.loaded = True
            if data is not None:
                self.file.remember(data)
            for p in problems:
                log.error("%s", p)
            if problems:
                log.error("%s: %d unreadable line(s); every account it names stays frozen, and "
                          "the file is not rewritten until they are fixed", self.path,
                          len(problems))
            self._sync_list()
            return list(accounts.values())

    def check_edit(self, now: float | None = None
                   ) -> tuple[list[FrozenAccount], list[FrozenAccount]] | None:
        """Apply a hand edit of the file, if there is one: (frozen or changed, unfrozen).

        The edit counts as the change it makes to the text it started from:
        accounts whose line it removed are unfrozen, lines it added or changed
        apply, an account frozen meanwhile stays. An edit with a bad line is
        refused as a whole: FrozenFileError (``kept`` names the copy of it),
        the accounts stay as they were. None: nothing to read.
        """
        if not self.file.edited():
            return None
        data = self.file.read()
        if data is None:
            return None
        now = time.time() if now is None else now
        try:
            new = parse_file(data, self.path)
        except FrozenFileError as e:
            e.kept = self.file.keep_rejected(data)
            with self._lock:
                if not self.damaged:  # the refused text is kept: show the accounts in force
                    self._pending = True
                    self._write_pending()
            raise
        base_data = self.file.base_for(data)
        base = read_damaged(base_data, self.path, now)[0] if base_data is not None else {}
        with self._lock:
            unfrozen = [self._accounts.pop(k) for k in base.keys() - new.keys()
                        if k in self._accounts]
            frozen = [a for k, a in new.items() if base.get(k) != a]
            for a in frozen:
                self._accounts[account_key(a.user)] = a
            self.file.remember(data)
            self.problems = []
            self._pending = True  # accounts frozen meanwhile, and a version line for the next edit
            self._write_pending()
        return frozen, unfrozen

    def set_reply(self, reply: str) -> None:
        """A new frozen_reply (config reload): the .list carries it from now on."""
        with self._lock:
            if reply != self.reply:
                self.reply = reply
                self._sync_list()

    def get(self, user: str) -> FrozenAccount | None:
        return self._accounts.get(account_key(user))

    def is_frozen(self, user: str, now: float) -> bool:
        """Whether `user` may not send at `now` (an expired entry not yet swept is not frozen)."""
        account = self._accounts.get(user.lower())
        return account is not None and (account.until is None or now < account.until)

    def freeze(
        self,
        user: str,
        now: float,
        *,
        minutes: float = 0,
        service: str | None = None,
        ip: str | None = None,
        session: str | None = None,
        failures: int = 0,
    ) -> FrozenAccount | None:
        """Freeze `user` from `now` for `minutes` (0: until unfrozen); None if frozen already.

        Raises ValueError for a name or field that cannot be stored, OSError if
        the file cannot be written (the account is frozen in memory all the same).
        """
        check_user(user)
        if not math.isfinite(now) or minutes < 0 or failures < 0:
            raise ValueError("freeze needs a finite time, minutes >= 0 and failures >= 0")
        account = FrozenAccount(
            user=user,
            since=now,
            until=now + minutes * 60 if minutes else None,
            service=_field(service, "service"),
            ip=_field(ip, "ip"),
            session=_field(session, "session"),
            failures=int(failures),
        )
        key = account_key(user)
        with self._lock:
            old = self._accounts.get(key)
            if old is not None and old.active(now):
                return None
            self._accounts[key] = account
            self._save()
        for watch in self.watchers:
            watch(user, account)
        return account

    def unfreeze(self, user: str) -> bool:
        """Let `user` send again; False if it was not frozen."""
        with self._lock:
            if self._accounts.pop(account_key(user), None) is None:
                return False
            self._save()
        for watch in self.watchers:
            watch(user, None)
        return True

    def expire(self, now: float) -> list[FrozenAccount]:
        """Remove and return the accounts whose freeze ended at or before `now`."""
        with self._lock:
            gone = [a for a in self._accounts.values() if not a.active(now)]
            if not gone:
                return []
            for a in gone:
                del self._accounts[account_key(a.user)]
            self._save()
        return gone

    def list(self) -> list[FrozenAccount]:
        """The frozen accounts, oldest freeze first."""
        return sorted(self._accounts.values(), key=lambda a: (a.since, account_key(a.user)))

    def text(self) -> str:
        """The frozen file as it is written."""
        return HEADER + "".join(a.to_line() + "\n" for a in self.list())

    def list_text(self) -> str:
        """The lookup table (.list) as it is written."""
        keys = sorted(self._accounts)
        return LIST_HEADER + "".join(f"{k}\tREJECT {self.reply}\n" for k in keys)

    def _save(self) -> None:
        """Write both files (the lock is held); OSError if the frozen file cannot be written."""
        self._pending = True
        try:
            self._write_pending()
        finally:
            self._sync_list()

    def _write_pending(self) -> None:
        """Write the frozen file if it lags behind, unless it is damaged or holds an unread
        edit (then the next check_edit() reads the edit first)."""
        if self._pending and not self.damaged and self.file.write(self.text().encode()):
            self._pending = False

    def _sync_list(self) -> None:
        """Rewrite the .list when it does not match the main file (a crash between the two)."""
        want = self.list_text().encode()
        try:
            with open(self.list_path, "rb") as f:
                if f.read() == want and os.fstat(f.fileno()).st_mode & 0o777 == LIST_MODE:
                    return
        except OSError:
            pass
        try:
            write_atomic(self.list_path, want, LIST_MODE)
        except OSError as e:
            log.error("cannot write %s: %s", self.list_path, e.strerror or e)
