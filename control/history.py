"""The history of what dynscreen did: every block, unblock, expiry, freeze, unfreeze and
protect, with its reason, origin and evidence, in an SQLite database.

Why SQLite: an administrator asks about last week's block of one address, so the
record must outlive the block, the daemon and a reboot, and be searchable without
reading everything (indexes on time, address and account). The standard library's
``sqlite3`` in WAL mode lets ``dynscreen history`` read while the daemon writes.

The daemon's loop never waits for the disk: ``record`` puts the row on a queue
bounded in rows (a full queue drops it, counted in ``dropped``) and one writer
thread inserts in batches. A flood's kernel blocks come as one batch per poll
(``record_many``): one queue item for the whole batch, inserted by the writer in
one transaction, so the loop pays one hand-over per batch, not one per row.
Rows older than ``days`` are deleted as the writer goes (hourly).

A lost or damaged database never stops screening: the writer sets the damaged
file aside under a timestamped name, says so in the log, and starts a new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

from dynscreen.control.addr import network_key, parse_network, source_of

log = logging.getLogger("dynscreen.history")

ACTIONS = ("block", "unblock", "expire", "freeze", "unfreeze", "protect")
QUEUE_SIZE = 100_000  # rows waiting for the writer (a flood's blocks); more are dropped
BATCH = 500  # rows per transaction at most, but a batch handed over whole is never split
PRUNE_EVERY = 3600.0  # seconds between two retention passes
REOPEN_EVERY = 60.0  # seconds between two attempts to open a database that failed
MAX_EVIDENCE = 64  # evidence items kept per row
MAX_ROWS = 10_000  # rows one query returns at most

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    action TEXT NOT NULL,
    ip TEXT,
    user TEXT,
    reason TEXT,
    origin TEXT,
    minutes REAL,
    detail TEXT,
    evidence TEXT
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_ip ON events(ip, time);
CREATE INDEX IF NOT EXISTS events_user ON events(user, time);
"""
_COLUMNS = "time, action, ip, user, reason, origin, minutes, detail, evidence"


class HistoryError(Exception):
    """The history cannot be read (a missing or unreadable database); the message says why."""


@dataclass(frozen=True, slots=True)
class Record:
    """One row: what happened, to which address or account, why, decided by whom."""

    time: float
    action: str
    ip: str | None = None
    user: str | None = None
    reason: str | None = None
    origin: str | None = None
    minutes: float | None = None
    detail: str | None = None  # e.g. the note of a manual block, the protocol of a freeze
    evidence: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The contract's JSON line (``history --json``), with the extras after it."""
        out: dict[str, Any] = {"time": self.time, "action": self.action}
        if self.ip is not None:
            out["ip"] = self.ip
        if self.user is not None:
            out["user"] = self.user
        out["reason"] = self.reason
        out["origin"] = self.origin
        if self.minutes is not None:
            out["minutes"] = self.minutes
        if self.detail is not None:
            out["detail"] = self.detail
        if self.evidence:
            out["evidence"] = list(self.evidence)
        return out


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0,
                             check_same_thread=False)
    else:
        if not path.exists():  # private, whatever the umask (SQLite's -wal and -shm follow it)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        db.commit()
    return db


def query(
    db: sqlite3.Connection,
    *,
    ip: str | None = None,
    user: str | None = None,
    since: float | None = None,
    reason: str | None = None,
    nets: Iterable[str] = (),
    limit: int = MAX_ROWS,
) -> list[Record]:
    """Rows matching every filter given, oldest first (the latest ``limit`` of them).

    ``ip`` matches the address exactly; ``nets`` adds the ranges that hold it (a
    prefix block of the address's /24 is part of its history).
    """
    where: list[str] = []
    args: list[Any] = []
    if ip is not None:
        keys = [ip, *nets]
        where.append(f"ip IN ({', '.join('?' * len(keys))})")
        args += keys
    if user is not None:
        where.append("user = ? COLLATE NOCASE")
        args.append(user)
    if since is not None:
        where.append("time >= ?")
        args.append(since)
    if reason is not None:
        where.append("reason = ?")
        args.append(reason)
    sql = f"SELECT {_COLUMNS} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY time DESC, id DESC LIMIT ?"
    args.append(limit)
    rows = db.execute(sql, args).fetchall()
    return [_record(row) for row in reversed(rows)]


def _record(row: tuple[Any, ...]) -> Record:
    evidence: tuple[dict[str, Any], ...] = ()
    if row[8]:
        with contextlib.suppress(ValueError, TypeError):
            evidence = tuple(e for e in json.loads(row[8]) if isinstance(e, dict))
    return Record(time=row[0], action=row[1], ip=row[2], user=row[3], reason=row[4],
                  origin=row[5], minutes=row[6], detail=row[7], evidence=evidence)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_since(text: str, now: float) -> float:
    """``--since``: a duration back from now (``90s``, ``30m``, ``2h``, ``7d``, ``1w``) or a
    date or time in ISO form (``2026-12-01``, ``2026-12-01T08:00``, local time unless
    it names a zone), as a Unix time. ValueError says what is expected."""
    value = text.strip()
    unit = _UNITS.get(value[-1:].lower())
    if unit is not None and value[:-1].replace(".", "", 1).isdigit():
        return now - float(value[:-1]) * unit
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(f"--since {text!r}: expected a duration such as 90s, 30m, 2h, 7d, "
                         "1w, or an ISO date or time such as 2026-12-01T08:00") from None


def source_text(text: str, ipv6_prefix: int) -> str:
    """An address or range as the history names it: an address by its source (an IPv6
    address by its prefix, as it is blocked). ValueError for what is neither."""
    net = parse_network(text)
    if isinstance(net, IPv6Network) and net.prefixlen == 128 and "/" not in text:
        net = source_of(net.network_address, ipv6_prefix)
    return network_key(net)


def request_filters(req: dict[str, Any], ipv6_prefix: int = 64) -> dict[str, Any]:
    """The filters of a `history` request to the daemon, checked (ValueError says which)."""
    out: dict[str, Any] = {}
    for name in ("ip", "user", "reason"):
        value = req.get(name)
        if value is not None:
            if not isinstance(value, str) or not value or len(value) > 320:
                raise ValueError(f'"{name}" must be a non-empty string')
            out[name] = value
    if "ip" in out:
        try:
            out["ip"] = source_text(out["ip"], ipv6_prefix)
        except ValueError as e:
            raise ValueError(f"{out['ip']!r} is not an address or CIDR range: {e}") from None
    since = req.get("since")
    if since is not None:
        if isinstance(since, bool) or not isinstance(since, int | float) \
                or not math.isfinite(since):
            raise ValueError('"since" must be a Unix time')
        out["since"] = float(since)
    limit = req.get("limit", MAX_ROWS)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_ROWS:
        raise ValueError(f'"limit" must be a whole number from 1 to {MAX_ROWS}')
    out["limit"] = limit
    return out


def read(path: Path, **filters: Any) -> list[Record]:
    """Query the database directly, read-only: `dynscreen history` without a daemon."""
    if not path.exists():
        raise HistoryError(f"no history at {path} (the daemon has recorded nothing yet, or "
                           "[daemon].history_file names another file)")
    try:
        db = _connect(path, readonly=True)
    except sqlite3.Error as e:
        raise HistoryError(f"cannot open the history {path}: {e}") from None
    try:
        return query(db, **filters)
    except sqlite3.Error as e:
        raise HistoryError(f"cannot read the history {path}: {e}") from None
    finally:
        db.close()


class History:
    """The daemon's history: ``record`` from the loop, a writer thread for the disk."""

    def __init__(self, path: Path, days: int, *, queue_size: int = QUEUE_SIZE,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.days = days
        self.clock = clock
        self.dropped = 0  # rows refused because the queue was full
        self.written = 0
        self.replaced = 0  # damaged databases set aside
        self.transactions = 0  # inserts committed (a batch handed over whole is one)
        self.queue_size = queue_size  # rows waiting at most
        # Batches of rows (a single record is a batch of one); None stops the writer.
        self._queue: queue.Queue[list[Record] | None] = queue.Queue()
        self._waiting = 0  # rows queued and not yet written (the bound is on rows)
        self._waiting_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._pruned = float("-inf")
        self._failed_at = float("-inf")
        self._inode: tuple[int, int] | None = None  # (device, inode) of the open database

    # --- the loop's side ------------------------------------------------------------------

    def record(self, action: str, *, ip: str | None = None, user: str | None = None,
               reason: str | None = None, origin: str | None = None,
               minutes: float | None = None, detail: str | None = None,
               evidence: Iterable[dict[str, Any]] = (), ts: float | None = None) -> bool:
        """Queue one row; returns at once (False: the queue was full, the row dropped)."""
        row = Record(self.clock() if ts is None else ts, action, ip, user, reason, origin,
                     minutes, detail, tuple(evidence)[:MAX_EVIDENCE])
        return self._put([row]) == 1

    def record_many(self, action: str, rows: Iterable[Mapping[str, Any]],
                    ts: float | None = None) -> int:
        """Queue a batch of rows of one action (each a mapping of ``record``'s fields) as
        one item: the writer inserts it whole, in one transaction. Returns at once, with
        how many were queued (the rest: the queue was full, dropped and counted)."""
        now = self.clock() if ts is None else ts
        batch = [Record(now, action, r.get("ip"), r.get("user"), r.get("reason"),
                        r.get("origin"), r.get("minutes"), r.get("detail"),
                        tuple(r.get("evidence", ()))[:MAX_EVIDENCE]) for r in rows]
        return self._put(batch) if batch else 0

    def _put(self, batch: list[Record]) -> int:
        """Hand a batch to the writer, as much of it as the bound on waiting rows allows."""
        wanted = len(batch)
        with self._waiting_lock:
            room = max(0, self.queue_size - self._waiting)
            if room < wanted:
                batch = batch[:room]
            self._waiting += len(batch)
        if batch:
            self._queue.put_nowait(batch)
        if len(batch) < wanted:
            before = self.dropped
            self.dropped += wanted - len(batch)
            if any(before < n <= self.dropped for n in (1, 10, 100)) \
                    or before // 1000 != self.dropped // 1000:
                log.error("history: the writer is behind, %d row(s) dropped so far",
                          self.dropped)
        return len(batch)

    def pending(self) -> int:
        """Rows queued and not yet written."""
        return self._waiting

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="dynscreen-history", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every row queued so far is written (tests, `history` via the daemon)."""
        end = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < end and self.alive():
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the thread."""
        if self._thread is None:
            return
        self._queue.put(None)  # (the queue is bounded in rows, not in items: no wait)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("history: the writer did not drain its queue at stop")
        self._thread = None
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def query(self, **filters: Any) -> list[Record]:
        """Rows for `history` and `explain` through the daemon (its own read connection),
        once what was queued before is written: run it in a thread, not on the loop."""
        self.flush(2.0)
        with self._read_lock:
            try:
                if self._reader is None:
                    if not self.path.exists():
                        return []
                    self._reader = _connect(self.path, readonly=True)
                return query(self._reader, **filters)
            except sqlite3.Error as e:
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
                raise HistoryError(f"cannot read the history {self.path}: {e}") from None

    # --- the writer -----------------------------------------------------------------------

    def _run(self) -> None:
        self._open()
        try:
            while True:
                # Batches waiting are joined up to BATCH rows in one transaction; a batch
                # is never split (a flood's poll: one transaction).
                item = self._queue.get()
                items = [item]
                n = 0 if item is None else len(item)
                while n < BATCH and item is not None:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    items.append(item)
                    n += 0 if item is None else len(item)
                rows = [r for batch in items if batch is not None for r in batch]
                try:
                    if rows:
                        self._write(rows)
                    self._prune()
                finally:
                    with self._waiting_lock:
                        self._waiting -= len(rows)
                    for _ in items:
                        self._queue.task_done()
                if any(batch is None for batch in items):
                    return
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _open(self) -> bool:
        """Open (or create) the database; a damaged one is set aside and replaced."""
        if self._db is not None:
            if self._inode == _identity(self.path):
                return True
            log.error("history: %s was removed or replaced under the daemon: a new history "
                      "starts", self.path)
            # The WAL beside it belongs to the file that was there: read as the new
            # file's, it would bring back what was removed (or hide the damage).
            self._db.close()
            self._db = None
            self._close_reader()
            _remove_wal(self.path)
        now = time.monotonic()
        if now - self._failed_at < REOPEN_EVERY:
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _connect(self.path, readonly=False)
            self._db.execute("SELECT count(*) FROM events WHERE id = 0").fetchone()
            self._inode = _identity(self.path)
            return True
        except sqlite3.DatabaseError as e:
            if self._db is not None:
                self._db.close()
                self._db = None
            if isinstance(e, sqlite3.OperationalError) and not _damaged(e):
                self._failed_at = now
                log.error("history: cannot open %s: %s; rows are dropped until it can be",
                          self.path, e)
                return False
            return self._replace(e)
        except OSError as e:
            self._failed_at = now
            log.error("history: cannot open %s: %s; rows are dropped until it can be",
                      self.path, e.strerror or e)
            return False

    def _replace(self, cause: Exception) -> bool:
        """Set a damaged database aside (timestamped) and start a new one."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():  # (twice in one second: neither is overwritten)
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{n}")
        try:
            self.path.replace(aside)
        except FileNotFoundError:
            pass
        except OSError as e:
            self._failed_at = time.monotonic()
            log.error("history: %s is damaged (%s) and cannot be set aside: %s", self.path,
                      cause, e.strerror or e)
            return False
        _remove_wal(self.path)
        self.replaced += 1
        log.error("history: %s was damaged (%s): kept as %s, a new history starts", self.path,
                  cause, aside)
        self._close_reader()
        try:
            self._db = _connect(self.path, readonly=False)
            self._inode = _identity(self.path)
        except (sqlite3.Error, OSError) as e:
            self._failed_at = time.monotonic()
            log.error("history: cannot create %s: %s", self.path, e)
            return False
        return True

    def _close_reader(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _write(self, rows: list[Record]) -> None:
        for attempt in (1, 2):
            if not self._open():
                self.dropped += len(rows)
                return
            assert self._db is not None
            try:
                with self._db:
                    self._db.executemany(
                        f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(r.time, r.action, r.ip, r.user, r.reason, r.origin, r.minutes,
                          r.detail, json.dumps(list(r.evidence)) if r.evidence else None)
                         for r in rows])
                self.written += len(rows)
                self.transactions += 1
                return
            except sqlite3.DatabaseError as e:
                self._db.close()
                self._db = None
                if attempt == 2 or (isinstance(e, sqlite3.OperationalError)
                                    and not _damaged(e)):
                    log.error("history: writing %d row(s) to %s failed: %s", len(rows),
                              self.path, e)
                    self.dropped += len(rows)
                    return
                if not self._replace(e):
                    self.dropped += len(rows)
                    return

    def _prune(self) -> None:
        now = self.clock()
        if now - self._pruned < PRUNE_EVERY or self._db is None:
            return
        self._pruned = now
        try:
            with self._db:
                gone = self._db.execute("DELETE FROM events WHERE time < ?",
                                        (now - self.days * 86400.0,)).rowcount
        except sqlite3.Error as e:
            log.error("history: retention pass on %s failed: %s", self.path, e)
            return
        if gone:
            log.info("history: %d row(s) older than %d days removed", gone, self.days)


def _remove_wal(path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(OSError):
            Path(f"{path}{suffix}").unlink()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _damaged(e: sqlite3.Error) -> bool:
    """Whether an error says the file is not a usable database (rather than busy, locked,
    or a folder that cannot be written)."""
    text = str(e).lower()
    return any(s in text for s in ("malformed", "not a database", "file is encrypted",
                                   "no such table", "disk image"))
