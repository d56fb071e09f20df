"""The screening rules: events in, decisions out, nothing else.

The engine does no I/O and never reads the clock: the caller passes ``now``
(the daemon its wall clock, replay the logs' own timestamps), so every rule is
testable with a fake clock and replay decides exactly as the daemon would.

What it keeps, all bounded:

- per source (an IPv4 address or an IPv6 prefix): sliding windows of auth
  failures, failed RCPTs and RSETs, and, when simulating the kernel for replay,
  connections and concurrent sessions; block and exemption state. At most
  ``max_tracked`` sources, least recently seen evicted first; idle ones expire.
- per address: the descriptions of recent authentication attempts, so that one
  attempt told by Postfix, by Dovecot's auth process and by pam_unix (and
  summed up again by Dovecot's login process) counts once.
- per mail session: failures per account, for the freeze / notify rule.
- per account: the distinct sources failing on it (control/spray.py) and whether
  it is protected; per account and source, the last successful login (what
  makes a source *familiar*).
- per prefix: the recent blocks inside it (control/aggregate.py).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

from dynscreen.control.addr import Network, network_key, parse_address, source_key
from dynscreen.control.aggregate import PrefixCounter
from dynscreen.control.config import Config
from dynscreen.control.decisions import Block, Decision, Exempt, Freeze, Notify, Protect, Spare
from dynscreen.control.events import Event
from dynscreen.control.logs.signals import ipv4_int
from dynscreen.control.spray import DistinctSources

# Postfix logs its SASL failure after Dovecot's auth_failure_delay (2 s by
# default); Dovecot and pam_unix log theirs at once. Descriptions of one
# attempt from different programs within this many seconds are one attempt.
PAIR_WINDOW: Final = 10.0
# How far back a Dovecot login summary looks for the auth details of its
# session when neither carries a session id (Dovecot 2.2). Dovecot drops an
# idle login after 180 s, so a session's attempts lie within this.
CLAIM_WINDOW: Final = 300.0
# A session whose end never shows (lost line, rotated log) is forgotten.
SESSION_IDLE: Final = 3600.0
# A freeze waits this long for the session's protocol (Dovecot names it only
# in the login summary, at the session's end) before it goes out without it.
SERVICE_WAIT: Final = 300.0
# With freezing off, the postmaster hears about one account and protocol at
# most this often.
NOTIFY_COOLDOWN: Final = 3600.0
# Familiar sources remembered (the first remembered are forgotten first), and
# accounts remembered per source (a NAT address serves an office, not a city).
FAMILIAR_SOURCES: Final = 1 << 18
FAMILIAR_ACCOUNTS: Final = 32
# The origin of an event another gateway of the fleet counted (feed_remote).
REMOTE: Final = "fleet"

_V = TypeVar("_V")

# Which program described an authentication attempt (bits of _Attempt.mask).
_MTA: Final = 1  # Postfix or Exim: the SMTP server's own SASL failure line
_DAUTH: Final = 2  # Dovecot's auth process: passdb detail lines
_PAM: Final = 4  # pam_unix(dovecot:auth)
_POLICY: Final = 8  # Dovecot's auth policy report (control/dovecotpolicy.py), as it happens
_DOVECOT: Final = _DAUTH | _POLICY  # Dovecot's own views: they carry its session id when it has one
_BIT: Final = {"postfix": _MTA, "exim": _MTA, "": _MTA, "dovecot-auth": _DAUTH, "dovecot": _DAUTH}
_BIT["pam"] = _PAM
_BIT["dovecot-policy"] = _POLICY
# Session keys are namespaced by program: a Postfix "host/smtpd[123]" and a
# Dovecot session id never meet.
_NS: Final = {"postfix": "p:", "exim": "x:", "": "p:", "dovecot-auth": "d:", "dovecot": "d:"}
_NS["dovecot-login"] = "d:"
_NS["dovecot-policy"] = "d:"
# How many (source, account, password hash) of failed logins ignore_repeated_passwords keeps.
TRIED_PASSWORDS: Final = 1 << 16


class _Window:
    """A sliding window of weighted counts: what is within ``span`` seconds of now.

    Each entry keeps the file and line of the event it counts (references to what
    the event holds already): the window's entries are the evidence of a block it
    makes, and `explain` shows them for a source below its limits.
    """

    __slots__ = ("q", "total")

    def __init__(self) -> None:
        self.q: deque[tuple[float, int, str, int]] = deque()
        self.total = 0

    def add(self, ts: float, n: int, span: float, file: str, line: int) -> int:
        """Count n at ts and return the window's total (entries at ts - span are out)."""
        q = self.q
        q.append((ts, n, file, line))
        total = self.total + n
        cutoff = ts - span
        while q[0][0] <= cutoff:
            total -= q.popleft()[1]
        self.total = total
        return total

    def first(self) -> float:
        """Time of the oldest entry still counted."""
        return self.q[0][0] if self.q else 0.0

    def evidence(self, cutoff: float) -> tuple[tuple[float, str, int], ...]:
        """(time, file, line) of the entries counted after ``cutoff``, oldest first."""
        return tuple((e[0], e[2], e[3]) for e in self.q if e[0] > cutoff)

    def count(self, cutoff: float) -> int:
        """The total of the entries after ``cutoff`` (the window as of a later time)."""
        return sum(e[1] for e in self.q if e[0] > cutoff)

    def take_back(self, ts: float) -> bool:
        """Uncount one count made at ts (among the last few): an attempt found, once
        counted, to be a repeat of a password already tried."""
        q = self.q
        for i in range(len(q) - 1, max(-1, len(q) - 65), -1):
            t, n, file, line = q[i]
            if t < ts:
                break
            if t == ts and n > 0:
                q[i] = (t, n - 1, file, line)
                self.total -= 1
                return True
        return False


class _Source:
    """What the engine knows about one source."""

    __slots__ = (
        "key", "last", "auth", "rcpt", "rset", "conns", "open", "blocked", "exempt", "users"
    )

    def __init__(self, key: str, now: float) -> None:
        self.key = key
        self.last = now
        self.auth: _Window | None = None
        self.rcpt: _Window | None = None
        self.rset: _Window | None = None
        self.conns: _Window | None = None
        self.open = 0  # concurrent sessions (replay's simulation of the kernel)
        self.blocked = 0.0  # blocked until
        self.exempt = 0.0  # exempt until
        self.users: set[str] | None = None  # the accounts whose logins exempt it

    def reset(self) -> None:
        """Forget the counters: a blocked or unblocked source starts afresh."""
        self.auth = self.rcpt = self.rset = self.conns = None
        self.open = 0


class _Attempt:
    """One authentication attempt as one or more programs described it."""

    __slots__ = ("ts", "ip", "user", "mask", "session", "claimed", "acct")

    def __init__(self, ts: float, ip: str, user: str | None, mask: int, session: str | None):
        self.ts = ts
        self.ip = ip
        self.user = user
        self.mask = mask
        self.session = session
        self.claimed = False  # a login summary without session id took it as its own
        self.acct = False  # counted against its session's account


class _Recent:
    """An address's recent attempts, queued by what can still join them.

    ``lack[bit]`` holds the attempts that program ``bit`` has not described yet
    (what its next line may pair with), ``claimable`` those a Dovecot login
    summary may still take as its session's: both oldest first, so that a
    flood from one address costs O(1) per line, not a scan of the flood.
    """

    __slots__ = ("lack", "claimable", "live")

    def __init__(self) -> None:
        self.lack: dict[int, deque[_Attempt]] = {
            _MTA: deque(), _DAUTH: deque(), _PAM: deque(), _POLICY: deque()
        }
        self.claimable: deque[_Attempt] = deque()
        self.live = 0


class _Target:
    """An account that sources fail on: how many distinct ones, and whether it is protected."""

    __slots__ = ("sources", "protected", "last")

    def __init__(self, span: float) -> None:
        self.sources = DistinctSources(span)
        self.protected = 0.0  # protected until
        self.last = 0.0


class _Familiar:
    """A source's recent logins by account, and when its prefix was last seen shielded."""

    __slots__ = ("users", "shielded", "gen")

    def __init__(self) -> None:
        self.users: dict[str, float] = {}  # account -> last successful login (oldest first)
        # The stamp of the source's prefix in Engine._shielded after the last _shield
        # (-inf: none), valid while Engine._shield_gen == gen: within the hour of it, a
        # login need not look (_shield would do nothing).
        self.shielded = -math.inf
        self.gen = -1


@dataclass(slots=True)
class _Incident:
    """An account that reached the session limit, waiting for the session's protocol."""

    user: str
    count: int
    ts: float
    source: str
    file: str
    line: int
    freeze_owed: bool


class _Session:
    """A mail session: failures per account, and its protocol once known."""

    __slots__ = ("service", "fails", "described", "last", "reached", "pending", "source")

    def __init__(self, now: float) -> None:
        self.service: str | None = None
        self.fails: dict[str, int] = {}
        self.described = 0  # attempts whose detail lines carried this session's id
        self.last = now
        self.reached: set[str] = set()  # accounts that already made their incident here
        self.pending: list[_Incident] = []
        self.source = ""


class Engine:
    """The pure rule engine: ``feed`` events and ``tick`` the clock, act on the decisions.

    ``simulate_connections`` makes the engine count connections and concurrent
    sessions from connect/disconnect events (replay's approximation of what the
    kernel counts); the daemon leaves it off, the kernel does that job.
    """

    def __init__(self, config: Config, *, now: float, simulate_connections: bool = False) -> None:
        self._now = now
        self._simulate = simulate_connections
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._ipinfo: dict[str, tuple[str, bool] | None] = {}
        self._runtime_whitelist: tuple[Network, ...] = ()
        self._recent: dict[str, _Recent] = {}  # address -> its recent attempts
        self._attempt_q: deque[_Attempt] = deque()  # every recent attempt, oldest first
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._waiting: dict[str, _Session] = {}  # sessions with incidents owed a protocol
        self._open: OrderedDict[str, tuple[str, float]] = OrderedDict()  # session -> source
        self._history: OrderedDict[str, tuple[float, int]] = OrderedDict()  # last block
        self._ranges: list[tuple[Network, float]] = []  # blocks wider than one source
        self._frozen: OrderedDict[str, float] = OrderedDict()  # account -> frozen until
        self._notified: dict[tuple[str, str], float] = {}
        self._summaries = 0
        self._targets: OrderedDict[str, _Target] = OrderedDict()  # account -> spraying state
        # The first of _targets (None: none, or not known): a tick asks it, not the
        # OrderedDict, whether anything expires. Every change at the front resets it.
        self._target_front: _Target | None = None
        # source -> its accounts' last successful logins (what makes a source familiar)
        self._familiar: dict[str, _Familiar] = {}  # (oldest first out)
        # aggregation prefix -> last time something there had to be spared (trusted, familiar)
        self._shielded: dict[str, float] = {}  # (insertion order: oldest first)
        self._shield_gen = 0  # changes when a prefix leaves _shielded or prefixes change
        self._trust_cache: dict[str, str] = {}  # verified host name -> matching pattern or ""
        # address as logged -> (user as logged, when): the last failure counted for
        # spraying, so that the second and third descriptions of one attempt cost a lookup
        self._last_spray: dict[str, tuple[str, float]] = {}
        # (source, account, password hash) -> last failure with it (oldest first out):
        # ignore_repeated_passwords counts a stale password once
        self._tried: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._told: _Attempt | None = None  # the attempt _describe last told of
        # The fleet: what this engine counted toward the log-based limits, (limit, address
        # as logged, attempts, verified host name), for the daemon to share; None: off.
        self._counted: list[tuple[str, str, int, str | None]] | None = None
        self._handlers = {
            "connect": self._connect,
            "disconnect": self._disconnect,
            "auth_failure": self._auth_failure,
            "auth_success": self._auth_success,
            "rcpt_unknown": self._rcpt_unknown,
            "rset": self._rset,
        }
        self.reconfigure(config)

    # --- configuration -----------------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """Take a new config; state carries over (IPv6 sources start afresh on a new prefix)."""
        s = config.screening
        lim = s.limits
        old_prefix = getattr(self, "_prefix", s.ipv6_prefix)
        self.config = config
        self._enabled = s.enabled
        self._prefix = s.ipv6_prefix
        self._block_minutes = s.block_minutes
        self._escalate = s.escalation.escalate
        self._max_block = max(s.escalation.max_block_minutes, s.block_minutes)
        # A block starting within this long after the source's last block ended
        # doubles that block's duration; a source clean for this long starts afresh.
        self._escalation_memory = s.escalation.escalation_reset_hours * 3600.0
        self._exempt_auth = s.exempt_authenticated and s.exempt_minutes > 0
        self._exempt_all = s.exempt_scope == "all"
        self._trusted_senders = tuple(p.lower() for p in s.trusted_senders)
        self._trusted_networks = tuple(s.trusted_networks)
        self._trust_cache = {}
        self._aggregate = PrefixCounter(
            s.aggregate_sources,
            s.aggregate_v4_prefix,
            s.aggregate_v6_prefix if s.aggregate_v6_prefix < s.ipv6_prefix else 0,
            lim.window_minutes * 60.0,
            s.max_tracked,
        )
        self._exempt_minutes = s.exempt_minutes
        self._max_tracked = s.max_tracked
        self._config_whitelist = tuple(s.whitelist)
        self._lim_conns = lim.connections
        self._conn_span = lim.connections_minutes * 60.0
        self._lim_simul = lim.simultaneous
        self._lim_auth = lim.auth_failures
        self._lim_rcpt = lim.failed_rcpts
        self._lim_rset = lim.rsets
        self._span = lim.window_minutes * 60.0
        self._idle = max(self._span, self._conn_span)
        a = config.accounts
        self._max_session = a.max_session_auth_failures
        self._freeze = a.freeze
        self._freeze_secs = a.freeze_minutes * 60.0 if a.freeze_minutes else math.inf
        self._notify_services = frozenset(a.notify_postmaster)
        self._spray_sources = a.spray_sources
        self._spray_span = a.spray_minutes * 60.0
        self._protect_minutes = a.protect_minutes
        self._familiar_secs = a.familiar_days * 86400.0
        self._ignore_repeats = a.ignore_repeated_passwords
        self._shield_span = max(self._familiar_secs, 86400.0)  # how long a prefix stays spared
        self._shield_gen += 1  # (the aggregation prefixes may have changed)
        for target in self._targets.values():
            target.sources.span = self._spray_span
        if old_prefix != self._prefix:
            for key in [k for k in self._sources if ":" in k]:
                del self._sources[key]
            self._history = OrderedDict((k, v) for k, v in self._history.items() if ":" not in k)
        self._whitelist_changed()
        while len(self._sources) > self._max_tracked:
            self._sources.popitem(last=False)

    def set_whitelist(self, networks: Iterable[Network]) -> None:
        """The runtime whitelist (``allow add``), in addition to the config's."""
        self._runtime_whitelist = tuple(networks)
        self._whitelist_changed()

    # --- what the daemon tells the engine -------------------------------------------------

    def note_block(self, net: Network, until: float, *, now: float | None = None) -> None:
        """A block this engine did not decide (kernel, manual, block file): the source
        starts afresh. The daemon never reports the engine's own blocks back to it.

        ``net`` is a source or a CIDR range. A range wider than one source holds
        every source inside it; a part of an IPv6 source (one address) only resets
        it, as the rest of its prefix still gets through.
        """
        now = self._now if now is None else now
        width = 32 if net.version == 4 else self._prefix
        key = source_key(net.network_address, self._prefix)
        if net.prefixlen > width:
            src = self._sources.get(key)
            if src is not None:
                src.reset()
        elif net.prefixlen == width:
            self._hold(self._source(key, now), until, now)
        else:
            self._ranges.append((net, until))
            for src in self._sources_in(net):
                self._hold(src, until, now)

    def note_unblock(self, net: Network) -> None:
        """A block removed or expired: the source (every source of a range) starts afresh."""
        self._ranges = [(n, u) for n, u in self._ranges if n != net]
        width = 32 if net.version == 4 else self._prefix
        if net.prefixlen >= width:
            src = self._sources.get(source_key(net.network_address, self._prefix))
            found = [src] if src is not None else []
        else:
            found = self._sources_in(net)
        for src in found:
            src.blocked = 0.0
            src.reset()

    def note_unfreeze(self, user: str) -> None:
        """An administrator unfroze an account: a new incident may freeze it again."""
        self._frozen.pop(user.lower(), None)

    def note_freeze(self, user: str, until: float = math.inf) -> None:
        """An account frozen already (the daemon's store at start): no second freeze."""
        self._frozen[user.lower()] = until

    def _hold(self, src: _Source, until: float, now: float) -> None:
        src.reset()
        src.blocked = until
        self._remember_block(src.key, until, max(1, round((until - now) / 60)))

    def _sources_in(self, net: Network) -> list[_Source]:
        """The tracked sources inside a range (a manual CIDR block: rare, so a scan)."""
        return [src for key, src in self._sources.items() if _inside(key, net)]

    # --- the clock ---------------------------------------------------------------------

    def tick(self, now: float) -> list[Decision]:
        """Let time pass: expire idle state; freezes that waited too long for a protocol go out.

        Every structure is kept oldest first, so a tick looks only at what expires.
        """
        self._now = now
        out: list[Decision] = []
        if self._waiting:
            for key, sess in list(self._waiting.items()):
                if not sess.pending or now - sess.pending[0].ts >= SERVICE_WAIT:
                    self._overdue(sess, out)
                    del self._waiting[key]
        # (Each structure's oldest entry first: most ticks expire nothing.)
        sessions = self._sessions
        if sessions and now - next(iter(sessions.values())).last >= SESSION_IDLE:
            for key in _oldest(sessions, lambda s: now - s.last >= SESSION_IDLE):
                self._end_session(key, sessions.pop(key), out)
        opened = self._open
        if opened and now - next(iter(opened.values()))[1] >= SESSION_IDLE:
            for key in _oldest(opened, lambda o: now - o[1] >= SESSION_IDLE):
                src = self._sources.get(opened.pop(key)[0])
                if src is not None and src.open > 0:
                    src.open -= 1
        q = self._attempt_q
        horizon = now - CLAIM_WINDOW
        while q and q[0].ts < horizon:
            self._drop_attempt(q.popleft())
        self._expire_sources(now)
        history = self._history
        memory = self._escalation_memory
        if history and now - next(iter(history.values()))[0] >= memory:
            for key in _oldest(history, lambda h: now - h[0] >= memory):
                del history[key]
        targets = self._targets
        span = self._spray_span
        front = self._target_front
        if targets and (front is None or (now - front.last >= span and front.protected <= now)):
            front = None
            while targets:  # (the least recently failed first)
                target = next(iter(targets.values()))
                if now - target.last < span or target.protected > now:
                    front = target
                    break
                targets.popitem(last=False)
            self._target_front = front
        shielded = self._shielded
        if shielded and now - next(iter(shielded.values())) >= self._shield_span:
            shield_span = self._shield_span
            for key in _oldest(shielded, lambda ts: now - ts >= shield_span):
                del shielded[key]
            self._shield_gen += 1
        self._aggregate.expire(now)
        if self._ranges:
            self._ranges = [(n, u) for n, u in self._ranges if u > now]
        if len(self._notified) > 4096:
            self._notified = {k: t for k, t in self._notified.items() if now - t < NOTIFY_COOLDOWN}
        return out

    def _expire_sources(self, now: float) -> None:
        sources = self._sources
        cutoff = now - self._idle
        if not sources or next(iter(sources.values())).last > cutoff:
            return
        expired = []  # (_oldest, written out: sources come and go by the thousand)
        for key, src in sources.items():
            if src.last > cutoff:
                break
            expired.append(key)
        for key in expired:
            src = sources[key]
            if src.blocked > now or src.exempt > now or src.open > 0:
                sources.move_to_end(key)  # still holds something: keep, look again later
                src.last = now
            else:
                del sources[key]

    def _drop_attempt(self, rec: _Attempt) -> None:
        """Forget an attempt too old to pair or be claimed (the oldest of its address)."""
        recent = self._recent.get(rec.ip)
        if recent is None:
            return
        for q in recent.lack.values():
            if q and q[0] is rec:
                q.popleft()
        if recent.claimable and recent.claimable[0] is rec:
            recent.claimable.popleft()
        recent.live -= 1
        if recent.live <= 0:
            del self._recent[rec.ip]

    # --- events ------------------------------------------------------------------------

    def feed(self, event: Event, now: float) -> list[Decision]:
        """One event at time ``now``: the decisions it causes (mostly none)."""
        out: list[Decision] = []
        self._feed(event, now, out)
        return out

    def _feed(self, event: Event, now: float, out: list[Decision]) -> None:
        """feed(), its decisions appended to ``out``: the rules append what they decide
        to the caller's list, so that an event deciding nothing (almost all) makes none."""
        self._now = now
        if not self._enabled:
            return
        info = self._ipinfo.get(event.ip)
        if info is None:
            if event.ip in self._ipinfo:
                return  # not an address
            info = self._learn(event.ip)
            if info is None:
                return
        # The kinds of a log, by how often they come, called directly (mypyc: a C call,
        # not a bound method through the dict); any other kind goes through the dict.
        kind = event.kind
        if kind == "connect":
            self._connect(event, info[0], info[1], now, out)
        elif kind == "disconnect":
            self._disconnect(event, info[0], info[1], now, out)
        elif kind == "auth_success":
            self._auth_success(event, info[0], info[1], now, out)
        elif kind == "auth_failure":
            self._auth_failure(event, info[0], info[1], now, out)
        else:
            handler = self._handlers.get(kind)
            if handler is not None:
                handler(event, info[0], info[1], now, out)

    def feed_report(self, event: Event, pwhash: str, now: float) -> list[Decision]:
        """An attempt as Dovecot's auth policy reported it; ``pwhash``: its password's hash.

        It is one more description of the attempt: the log lines that tell it too pair
        with it and count nothing new. With ignore_repeated_passwords, a failure with a
        password already tried from the same source for the same account within the
        auth window is told but not counted (the window starts again at each repeat):
        a phone retrying a stale password stays unblocked, a guesser counts per password.
        """
        user = event.user
        if event.kind != "auth_failure" or not pwhash or not user or not self._ignore_repeats:
            return self.feed(event, now)
        self._now = now
        if not self._enabled:
            return []
        info = self._ipinfo.get(event.ip)
        if info is None:
            if event.ip in self._ipinfo:
                return []
            info = self._learn(event.ip)
            if info is None:
                return []
        tried = self._tried
        seen = (info[0], user.lower(), pwhash)
        last = tried.pop(seen, None)
        tried[seen] = now
        if len(tried) > TRIED_PASSWORDS:
            tried.popitem(last=False)
        out: list[Decision] = []
        if last is None or now - last >= self._span:
            self._auth_failure(event, info[0], info[1], now, out)
            return out
        self._told = None
        new = self._describe(event, now, out)
        told = self._last_told()  # (a call: mypy would keep self._told narrowed to None)
        if not new and told is not None:
            # A log line told this attempt first, and it was counted: take that back.
            src = self._sources.get(info[0])
            if src is not None and src.auth is not None:
                src.auth.take_back(told.ts)
        return out

    def _last_told(self) -> _Attempt | None:
        return self._told

    def feed_many(
        self, events: Iterable[Event], now: float, next_tick: float, every: float
    ) -> tuple[float, float, list[tuple[int, list[Decision]]]]:
        """Events on their own clock, as a replay reads them: each is fed at ``now``,
        the latest event time yet, after a ``tick(now)`` whenever ``now`` reaches
        ``next_tick`` (the next one ``every`` seconds later).

        Returns the new ``now`` and ``next_tick`` and the decisions with their place:
        ``(2 * i, ds)`` from the tick before event i, ``(2 * i + 1, ds)`` from event i
        itself, in order: tick and feed one by one, as replay batches them.
        """
        marks: list[tuple[int, list[Decision]]] = []
        pos = -2
        out: list[Decision] = []  # (a new one only once an event filled it)
        for ev in events:
            pos += 2
            ts = ev.ts
            if ts > now:
                now = ts
            if now >= next_tick:
                next_tick = now + every
                found = self.tick(now)
                if found:
                    marks.append((pos, found))
            self._feed(ev, now, out)
            if out:
                marks.append((pos + 1, out))
                out = []
        return now, next_tick, marks

    def _learn(self, ip: str) -> tuple[str, bool] | None:
        """Source key and whitelist status of an address as logged (cached)."""
        cache = self._ipinfo
        if len(cache) >= max(65536, self._max_tracked):
            cache.clear()
        info: tuple[str, bool] | None
        value = ipv4_int(ip)
        if value is not None:  # the common case, without ipaddress's cost
            listed = any(value & mask == net for net, mask in self._v4_whitelist)
            info = (ip, listed)
        else:
            try:
                addr = parse_address(ip)
            except ValueError:
                cache[ip] = None
                return None
            listed = any(
                addr.version == net.version and addr in net
                for net in self._config_whitelist + self._runtime_whitelist
            )
            info = (source_key(addr, self._prefix), listed)
        cache[ip] = info
        return info

    def _whitelist_changed(self) -> None:
        self._ipinfo.clear()
        self._v4_whitelist = [
            (int(net.network_address), int(net.netmask))
            for net in self._config_whitelist + self._runtime_whitelist
            if net.version == 4
        ]

    def _source(self, key: str, now: float) -> _Source:
        sources = self._sources
        src = sources.get(key)
        if src is None:
            if len(sources) >= self._max_tracked:
                sources.popitem(last=False)
            src = sources[key] = _Source(key, now)
        else:
            sources.move_to_end(key)
            src.last = now
        return src

    def _connect(self, ev: Event, key: str, listed: bool, now: float, out: list[Decision]) -> None:
        skey = None
        session = ev.session
        if session is not None:
            skey = _NS.get(ev.origin, "p:") + session
            # (`in` first: a C slot, where an OrderedDict's .pop() is a method call by name,
            # and a new connection seldom finds the session still there)
            if skey in self._sessions:  # the process serves a new client now
                self._end_session(skey, self._sessions.pop(skey), out)
        if not self._simulate or listed:
            return
        # Replay's stand-in for the kernel: connection rate and concurrency per source.
        src = self._source(key, now)
        if src.blocked > now:
            return
        if skey is not None:
            opened = self._open
            if skey in opened:
                prev = self._sources.get(opened.pop(skey)[0])
                if prev is not None and prev.open > 0:
                    prev.open -= 1
            opened[skey] = (key, now)
        src.open += 1
        if src.exempt > now:
            return
        if self._lim_conns:
            win = src.conns
            if win is None:
                win = src.conns = _Window()
            n = win.add(now, 1, self._conn_span, ev.file, ev.line)
            if n > self._lim_conns:
                self._block(src, "connections", n, win.first(), now, ev, out)
                return
        if self._lim_simul and src.open > self._lim_simul:
            self._block(src, "simultaneous", src.open, now, now, ev, out)

    def _disconnect(
        self, ev: Event, key: str, listed: bool, now: float, out: list[Decision]
    ) -> None:
        sess = ev.session
        if sess is not None:
            skey = _NS.get(ev.origin, "p:") + sess
            state = self._sessions.pop(skey, None)
            if state is not None:
                if ev.service is not None and state.service is None:
                    state.service = ev.service
                self._end_session(skey, state, out)
            if self._simulate:
                old = self._open.pop(skey, None)
                if old is not None:
                    src = self._sources.get(old[0])
                    if src is not None and src.open > 0:
                        src.open -= 1
        elif self._simulate and not listed:
            src = self._sources.get(key)
            if src is not None and src.open > 0:
                src.open -= 1

    def _rcpt_unknown(
        self, ev: Event, key: str, listed: bool, now: float, out: list[Decision]
    ) -> None:
        if listed or not self._lim_rcpt:
            return
        src = self._source(key, now)
        if src.blocked > now or src.exempt > now:
            return
        win = src.rcpt
        if win is None:
            win = src.rcpt = _Window()
        n = win.add(now, ev.count, self._span, ev.file, ev.line)
        if self._counted is not None and ev.origin != REMOTE:
            self._counted.append(("failed_rcpts", ev.ip, ev.count, ev.host))
        if n >= self._lim_rcpt:
            self._block_or_spare(src, "failed_rcpts", n, win.first(), now, ev, out)

    def _rset(self, ev: Event, key: str, listed: bool, now: float, out: list[Decision]) -> None:
        if listed or not self._lim_rset:
            return
        src = self._source(key, now)
        if src.blocked > now or src.exempt > now:
            return
        win = src.rset
        if win is None:
            win = src.rset = _Window()
        n = win.add(now, ev.count, self._span, ev.file, ev.line)
        if self._counted is not None and ev.origin != REMOTE:
            self._counted.append(("rsets", ev.ip, ev.count, ev.host))
        if n >= self._lim_rset:
            self._block_or_spare(src, "rsets", n, win.first(), now, ev, out)

    # --- trusted senders: spared for what big providers cannot help -------------------------

    def _block_or_spare(
        self, src: _Source, reason: str, count: int, first: float, now: float, ev: Event,
        out: list[Decision],
    ) -> None:
        """A block for unknown recipients or RSETs, unless the sender is trusted: a
        provider's relay passes on its users' stale addresses, it is no attacker."""
        trusted = self._trusted(ev)
        if not trusted:
            self._block(src, reason, count, first, now, ev, out)
            return
        src.reset()  # counted afresh: one record of sparing per window's worth
        self._shield(src.key, now)
        out.append(Spare(src.key, reason, trusted, now, count, ev.file, ev.line))

    def _trusted(self, ev: Event) -> str:
        """What makes the event's sender trusted (its verified name's pattern, its
        trusted network), or "" when nothing does."""
        host = ev.host
        if host and host != "unknown" and self._trusted_senders:
            found = self._trust_cache.get(host)
            if found is None:
                if len(self._trust_cache) >= 4096:
                    self._trust_cache.clear()
                name = host.lower().rstrip(".")
                found = next(
                    (p for p in self._trusted_senders if fnmatch.fnmatchcase(name, p)), ""
                )
                self._trust_cache[host] = found
            if found:
                return f"{host} ({found})"
        if self._trusted_networks:
            try:
                addr = parse_address(ev.ip)
            except ValueError:
                return ""
            for net in self._trusted_networks:
                if addr.version == net.version and addr in net:
                    return str(net)
        return ""

    def _shield(self, key: str, now: float) -> float:
        """A source that must never be covered by a prefix block: its prefix is spared.

        Returns the prefix's stamp in _shielded (-inf: no prefix to spare)."""
        if self._aggregate.threshold <= 0:
            return -math.inf
        prefix = self._aggregate.prefix_of(key)
        if not prefix:
            return -math.inf
        shielded = self._shielded
        seen = shielded.get(prefix)
        if seen is not None and now - seen < 3600.0:
            return seen  # (refreshed hourly: the horizon is a day or more)
        if shielded.pop(prefix, None) is None and len(shielded) >= self._max_tracked:
            del shielded[next(iter(shielded))]
            self._shield_gen += 1
        shielded[prefix] = now
        return now

    def _auth_success(
        self, ev: Event, key: str, listed: bool, now: float, out: list[Decision]
    ) -> None:
        if ev.session is not None:
            skey = _NS.get(ev.origin, "p:") + ev.session
            state = self._sessions.get(skey)
            if state is not None:
                self._learn_service(skey, state, ev.service, out)
                if ev.origin == "dovecot-login":  # the login is over: no more attempts in it
                    del self._sessions[skey]
                    self._end_session(skey, state, out)
        logged = ev.user
        user: str | None = None
        if logged and not listed and self._familiar_secs > 0:
            fam = self._familiar.get(key)
            seen = fam.users.get(logged) if fam is not None else None
            # (refreshed hourly: a mailbox polled every minute costs two lookups)
            if seen is None or now - seen >= 3600.0:
                user = logged if logged.islower() else logged.lower()  # (no copy made)
                self._familiar_login(fam, user, key, now)
        if ev.service == "smtp" and self._exempt_auth and not listed:
            src = self._source(key, now)
            if src.exempt <= now:
                src.exempt = now + self._exempt_minutes * 60.0
                src.reset()
                src.users = None
                out.append(Exempt(_key_net(key), self._exempt_minutes, now, ev.user, ev.file,
                                  ev.line))
            if logged:
                if src.users is None:
                    src.users = set()
                if len(src.users) < 64:
                    src.users.add(user if user is not None else logged.lower())

    def _familiar_login(self, fam: _Familiar | None, user: str, key: str, now: float) -> None:
        """A successful login: the source is familiar to the account, its prefix spared.

        Bounded: FAMILIAR_SOURCES sources (the first remembered go first), each with
        the last FAMILIAR_ACCOUNTS accounts that logged in from it; an entry older
        than familiar_days no longer counts.
        """
        if fam is None:
            familiar = self._familiar
            if len(familiar) >= min(self._max_tracked, FAMILIAR_SOURCES):
                del familiar[next(iter(familiar))]
            fam = familiar[key] = _Familiar()
        users = fam.users
        if user not in users and len(users) >= FAMILIAR_ACCOUNTS:
            del users[next(iter(users))]
        users[user] = now
        # Its prefix is spared already when this source found it so within the hour
        # (a stamp only grows while _shield_gen stands): no need to look it up again.
        if fam.gen != self._shield_gen or now - fam.shielded >= 3600.0:
            fam.shielded = self._shield(key, now)
            fam.gen = self._shield_gen

    # --- authentication failures: one attempt, however many programs describe it -----------

    def _auth_failure(
        self, ev: Event, key: str, listed: bool, now: float, out: list[Decision]
    ) -> None:
        if ev.origin == "dovecot-login":
            new = self._summary(ev, now, out)
        else:
            new = self._describe(ev, now, out)
        if listed:
            return
        logged = ev.user
        if logged and self._spray_sources:
            # The same address and user within PAIR_WINDOW: another description of an
            # attempt already counted (the set of sources is the same either way).
            last = self._last_spray.get(ev.ip)
            if last is None or last[0] != logged or now - last[1] >= PAIR_WINDOW:
                if len(self._last_spray) >= 65536:
                    self._last_spray.clear()
                self._last_spray[ev.ip] = (logged, now)
                if self._spray(ev, logged.lower(), key, now, out):
                    return
        if new and self._lim_auth:
            src = self._source(key, now)
            if src.blocked <= now and (src.exempt <= now or self._counts_when_exempt(src, logged)):
                win = src.auth
                if win is None:
                    win = src.auth = _Window()
                n = win.add(now, new, self._span, ev.file, ev.line)
                if self._counted is not None:
                    self._counted.append(("auth_failures", ev.ip, new, ev.host))
                if n >= self._lim_auth:
                    self._block(src, "auth_failures", n, win.first(), now, ev, out,
                                exempt_too=True)

    def _counts_when_exempt(self, src: _Source, logged: str | None) -> bool:
        """Whether an auth failure from an exempt source counts: with exempt_scope =
        "limits", unless it is for an account whose login exempted the source (a
        stale password in a phone); a failure naming no account counts too."""
        if self._exempt_all:
            return False
        return not logged or src.users is None or logged.lower() not in src.users

    # --- password spraying: many sources, one account ---------------------------------------

    def _spray(self, ev: Event, user: str, key: str, now: float, out: list[Decision]) -> bool:
        """Count a failure on ``user`` from ``key``; True when it blocked the source.

        A familiar source (one that logged in as this account lately) is neither
        counted nor blocked: the account's own user with an old password is no attack.
        """
        fam = self._familiar.get(key)
        if fam is not None:
            seen = fam.users.get(user)
            if seen is not None and now - seen < self._familiar_secs:
                return False
        targets = self._targets
        target = targets.get(user)
        if target is None:
            if len(targets) >= self._max_tracked:
                targets.popitem(last=False)
                self._target_front = None
            target = targets[user] = _Target(self._spray_span)
        else:
            targets.move_to_end(user)
            if target is self._target_front:
                self._target_front = None  # (it is the last now)
        target.last = now
        n = target.sources.add(key, now)
        if target.protected <= now:
            if n < self._spray_sources:
                return False
            target.protected = now + self._protect_minutes * 60.0
            out.append(
                Protect(user, self._protect_minutes, n, now, target.sources.names(), ev.file,
                        ev.line)
            )
        src = self._source(key, now)
        if src.blocked > now or (src.exempt > now and self._exempt_all):
            return False
        first = target.protected - self._protect_minutes * 60.0
        self._block(src, "spray", n, first, now, ev, out, exempt_too=True)
        return True

    def _describe(self, ev: Event, now: float, out: list[Decision]) -> int:
        """A detail line (Postfix, Exim, Dovecot auth, pam): how many attempts are new."""
        origin = ev.origin
        bit = _BIT.get(origin, _MTA)
        user = ev.user.lower() if ev.user else None
        sess = None
        if ev.session is not None and bit != _PAM:
            sess = _NS.get(origin, "p:") + ev.session
        ip = ev.ip
        recent = self._recent.get(ip)
        if recent is None:
            recent = self._recent[ip] = _Recent()
        waiting = recent.lack[bit]
        new = 0
        for _ in range(min(ev.count, 1000)):
            rec = _match(waiting, bit, user, sess, now)
            if rec is None:
                rec = _Attempt(now, ip, user, bit, sess)
                for other, q in recent.lack.items():
                    if other != bit:
                        q.append(rec)
                if bit != _MTA and sess is None and not (bit == _POLICY and ev.service == "smtp"):
                    recent.claimable.append(rec)
                recent.live += 1
                self._attempt_q.append(rec)
                new += 1
                if sess is not None and bit & _DOVECOT:
                    self._session(sess, now).described += 1
            else:
                rec.mask |= bit
                if rec.user is None:
                    rec.user = user
                if rec.session is None and sess is not None:
                    rec.session = sess
                    if bit & _DOVECOT:
                        self._session(sess, now).described += 1
            if rec.session is not None and rec.user is not None and not rec.acct:
                rec.acct = True
                self._account(rec.session, rec.user, 1, now, ev, out)
            self._told = rec
        new += max(0, ev.count - 1000)
        if sess is not None and ev.service is not None:  # a detail that names its protocol
            state = self._sessions.get(sess)
            if state is not None:
                self._learn_service(sess, state, ev.service, out)
        if len(self._attempt_q) > self._max_tracked:
            self._drop_attempt(self._attempt_q.popleft())
        return new

    def _summary(self, ev: Event, now: float, out: list[Decision]) -> int:
        """A Dovecot login summary: N attempts, of which the detail lines told some already."""
        user = ev.user.lower() if ev.user else None
        n = ev.count
        if ev.session is not None:
            skey = "d:" + ev.session
        else:
            self._summaries += 1
            skey = f"d~{self._summaries}"
        state = self._session(skey, now)
        self._learn_service(skey, state, ev.service, out)
        told = state.described
        recent = self._recent.get(ev.ip) if told < n else None
        if recent is not None:
            told += self._claim(recent, skey, user, ev.session is not None, n - told, now, ev, out)
        new = n - told if n > told else 0
        if new and user is not None:
            self._account(skey, user, new, now, ev, out)
        # The summary ends the login session.
        if self._sessions.get(skey) is state:
            del self._sessions[skey]
        self._end_session(skey, state, out)
        return new

    def _claim(
        self,
        recent: _Recent,
        skey: str,
        user: str | None,
        with_id: bool,
        wanted: int,
        now: float,
        ev: Event,
        out: list[Decision],
    ) -> int:
        """Take up to ``wanted`` of an address's sessionless Dovecot details as this session's."""
        q = recent.claimable
        horizon = now - CLAIM_WINDOW
        while q and (q[0].ts < horizon or not _claimable(q[0])):
            q.popleft()
        taken: list[_Attempt] = []
        for i, rec in enumerate(q):
            if len(taken) >= wanted or i >= 1000:
                break
            if not _claimable(rec):
                continue
            # With session ids (2.3+), Dovecot's own details carry them: a detail
            # without one came from a client that sends none (Postfix). A policy report
            # carries one only when the site's auth_policy_request_attributes ask for it.
            if with_id and rec.mask & ~(_PAM | _POLICY):
                continue
            if user is not None and rec.user is not None and rec.user != user:
                continue
            taken.append(rec)
        for rec in taken:
            rec.claimed = True
            rec.session = skey
            if rec.user is not None and not rec.acct:
                rec.acct = True
                self._account(skey, rec.user, 1, now, ev, out)
        return len(taken)

    # --- sessions and accounts ------------------------------------------------------------

    def _session(self, skey: str, now: float) -> _Session:
        sessions = self._sessions
        state = sessions.get(skey)
        if state is None:
            if len(sessions) >= self._max_tracked:
                old_key, old = sessions.popitem(last=False)
                self._end_session(old_key, old, [])
            state = sessions[skey] = _Session(now)
            if skey[0] == "p" or skey[0] == "x":
                state.service = "smtp"
        else:
            sessions.move_to_end(skey)
            state.last = now
        return state

    def _account(
        self, skey: str, user: str, n: int, now: float, ev: Event, out: list[Decision]
    ) -> None:
        """Count n failures of an account in a session; the limit makes an incident once."""
        limit = self._max_session
        if not limit:
            return
        state = self._session(skey, now)
        total = state.fails.get(user, 0) + n
        state.fails[user] = total
        if total < limit or user in state.reached:
            return
        state.reached.add(user)
        state.source = ev.ip
        freeze_owed = False
        if self._freeze:
            until = self._frozen.get(user)
            if until is not None and until > now:
                return  # the freeze stands: nothing new to say
            self._frozen[user] = now + self._freeze_secs
            self._frozen.move_to_end(user)
            if len(self._frozen) > self._max_tracked:
                self._frozen.popitem(last=False)
            freeze_owed = True
        elif not self._notify_services:
            return
        inc = _Incident(user, total, now, ev.ip, ev.file, ev.line, freeze_owed)
        if state.service is not None:
            self._settle(inc, state.service, out)
        else:
            state.pending.append(inc)
            self._waiting[skey] = state

    def _settle(self, inc: _Incident, service: str | None, out: list[Decision]) -> None:
        """The incident's decisions, now that its protocol is known (or will never be)."""
        if inc.freeze_owed:
            inc.freeze_owed = False
            out.append(Freeze(inc.user, service, inc.ts, inc.count, inc.source, inc.file, inc.line))
        if service is None or service not in self._notify_services:
            return
        if not self._freeze:
            key = (inc.user, service)
            last = self._notified.get(key)
            if last is not None and inc.ts - last < NOTIFY_COOLDOWN:
                return
            self._notified[key] = inc.ts
        out.append(Notify(inc.user, service, inc.ts, inc.count, inc.source, inc.file, inc.line))

    def _learn_service(
        self, skey: str, state: _Session, service: str | None, out: list[Decision]
    ) -> None:
        if service is None or state.service is not None:
            return
        state.service = service
        if state.pending:
            for inc in state.pending:
                self._settle(inc, service, out)
            state.pending.clear()
            self._waiting.pop(skey, None)

    def _overdue(self, state: _Session, out: list[Decision]) -> None:
        """Freezes waited long enough for a protocol: out they go; notify keeps waiting."""
        keep = []
        for inc in state.pending:
            if inc.freeze_owed:
                inc.freeze_owed = False
                out.append(
                    Freeze(inc.user, None, inc.ts, inc.count, inc.source, inc.file, inc.line)
                )
            if self._notify_services:
                keep.append(inc)
        state.pending = keep

    def _end_session(self, skey: str, state: _Session, out: list[Decision]) -> None:
        """A session is over: what still waits for its protocol goes out with what is known."""
        if state.pending:
            for inc in state.pending:
                self._settle(inc, state.service, out)
            state.pending.clear()
        self._waiting.pop(skey, None)

    # --- blocks -------------------------------------------------------------------------

    def _block(
        self,
        src: _Source,
        reason: str,
        count: int,
        first: float,
        now: float,
        ev: Event,
        out: list[Decision],
        *,
        exempt_too: bool = False,
    ) -> None:
        """Block a source that reached a limit, unless something says it must not be.

        ``exempt_too``: the rule applies to exempt sources as well (the caller checked
        exempt_scope). A block may complete a prefix: its block follows.
        """
        if src.blocked > now or (src.exempt > now and not exempt_too):
            return
        if self._ranges and self._in_range(src.key, now):
            src.reset()
            return
        minutes = self._escalated(src.key, self._block_minutes, now)
        proof = self._proof(src, reason, now, ev)
        src.reset()
        src.exempt = 0.0
        src.users = None
        src.blocked = now + minutes * 60.0
        self._remember_block(src.key, src.blocked, minutes)
        out.append(Block(_key_net(src.key), reason, minutes, now, count, first, ev.file,
                         ev.line, proof))
        if self._aggregate.threshold > 0:
            self._aggregate_block(src.key, now, src.blocked, ev, out)

    def _proof(
        self, src: _Source, reason: str, now: float, ev: Event
    ) -> tuple[tuple[float, str, int], ...]:
        """The lines that made a block: the tipping window's entries (one block, one call:
        nothing of this runs per event). Rules without a window: the tipping line."""
        win = None
        span = self._span
        if reason == "auth_failures":
            win = src.auth
        elif reason == "failed_rcpts":
            win = src.rcpt
        elif reason == "rsets":
            win = src.rset
        elif reason == "connections":
            win, span = src.conns, self._conn_span
        if win is None:
            return ((now, ev.file, ev.line),)
        return win.evidence(now - span)

    def _escalated(self, key: str, minutes: int, now: float) -> int:
        """A block's minutes: doubled per re-block while the last one ended less than
        escalation_reset_hours ago; back to the start after a clean period that long."""
        if self._escalate:
            last = self._history.get(key)
            if last is not None and now - last[0] < self._escalation_memory:
                return min(max(last[1] * 2, minutes), self._max_block)
        return minutes

    # --- prefix aggregation -------------------------------------------------------------------

    def _aggregate_block(
        self, key: str, now: float, until: float, ev: Event, out: list[Decision]
    ) -> None:
        """Count a block in its prefix; enough of them block the prefix, unless something
        that must pass lies inside (a trusted network, a trusted or familiar source)."""
        found = self._aggregate.add(key, now, until)
        if found is None:
            return
        prefix, members = found
        net = ipaddress.ip_network(prefix)
        if self._shielded_prefix(prefix, net, now):
            return
        longest = max(m.until for m in members)
        minutes = max(1, math.ceil((longest - now) / 60.0))
        minutes = self._escalated(prefix, minutes, now)
        until = now + minutes * 60.0
        self._ranges.append((net, until))  # (its sources: held by _block's range check)
        self._remember_block(prefix, until, minutes)
        first = min(m.ts for m in members)
        out.append(Block(net, "prefix", minutes, now, len(members), first, ev.file, ev.line))

    def _shielded_prefix(self, prefix: str, net: Network, now: float) -> bool:
        seen = self._shielded.get(prefix)
        if seen is not None and now - seen < self._shield_span:
            return True
        return any(
            n.version == net.version and n.overlaps(net)  # type: ignore[arg-type]
            for n in self._trusted_networks
        )

    def _remember_block(self, key: str, until: float, minutes: int) -> None:
        history = self._history
        history[key] = (until, minutes)
        history.move_to_end(key)
        if len(history) > self._max_tracked:
            history.popitem(last=False)

    def _in_range(self, key: str, now: float) -> bool:
        return any(until > now and _inside(key, rng) for rng, until in self._ranges)

    # --- the fleet: attempts other gateways counted ------------------------------------------

    def share_counts(self, on: bool) -> None:
        """Keep what this engine counts from its logs for take_counted() (the fleet)."""
        self._counted = [] if on else None

    def take_counted(self) -> list[tuple[str, str, int, str | None]]:
        """What was counted since the last call: (limit, address, attempts, host name)."""
        out = self._counted
        if not out:
            return []
        self._counted = []
        return out

    def feed_remote(
        self, limit: str, ip: str, n: int, now: float, host: str | None = None
    ) -> list[Decision]:
        """Attempts another gateway counted toward ``limit`` (after its own
        de-duplication): they add to the source's window as if logged here, so a
        limit counts across the fleet. Not counted for sharing again."""
        self._now = now
        if not self._enabled or n <= 0:
            return []
        info = self._ipinfo.get(ip)
        if info is None:
            if ip in self._ipinfo:
                return []
            info = self._learn(ip)
            if info is None:
                return []
        key, listed = info
        if listed:
            return []
        kind = {"failed_rcpts": "rcpt_unknown", "rsets": "rset"}.get(limit, "auth_failure")
        ev = Event(kind, ip, now, None, None, "", 0, n, REMOTE, None, host)
        out: list[Decision] = []
        if limit == "failed_rcpts":
            self._rcpt_unknown(ev, key, listed, now, out)
            return out
        if limit == "rsets":
            self._rset(ev, key, listed, now, out)
            return out
        if limit != "auth_failures" or not self._lim_auth:
            return []
        src = self._source(key, now)
        if src.blocked > now or (src.exempt > now and self._exempt_all):
            return []
        win = src.auth
        if win is None:
            win = src.auth = _Window()
        total = win.add(now, n, self._span, ev.file, ev.line)
        if total >= self._lim_auth:
            self._block(src, "auth_failures", total, win.first(), now, ev, out, exempt_too=True)
        return out

    # --- for the daemon's status and tests -------------------------------------------------

    def tracked(self) -> int:
        """How many sources the engine holds state for."""
        return len(self._sources)

    def counters(self, ip: str) -> dict[str, int]:
        """A source's current window totals (zeros when untracked)."""
        src = self._sources.get(source_key(ip, self._prefix))
        if src is None:
            return {"auth_failures": 0, "failed_rcpts": 0, "rsets": 0, "connections": 0, "open": 0}
        return {
            "auth_failures": src.auth.total if src.auth else 0,
            "failed_rcpts": src.rcpt.total if src.rcpt else 0,
            "rsets": src.rset.total if src.rset else 0,
            "connections": src.conns.total if src.conns else 0,
            "open": src.open,
        }

    def explain(self, ip: str, now: float) -> dict[str, object]:
        """What the engine holds about the source of ``ip`` (read only, for `explain`):
        its key, whether it is tracked, blocked or exempt until when and by which
        logins, and each limit's window as of ``now``: (limit, count, max, minutes,
        evidence as (time, file, line))."""
        try:
            key = source_key(ip, self._prefix)
        except ValueError:
            key = ip
        src = self._sources.get(key)
        windows: list[tuple[str, int, int, float, tuple[tuple[float, str, int], ...]]] = []
        rules: list[tuple[str, int, float, _Window | None]] = [
            ("auth_failures", self._lim_auth, self._span, src.auth if src else None),
            ("failed_rcpts", self._lim_rcpt, self._span, src.rcpt if src else None),
            ("rsets", self._lim_rset, self._span, src.rset if src else None),
        ]
        if self._simulate:
            rules.append(("connections", self._lim_conns, self._conn_span,
                          src.conns if src else None))
        for name, limit, span, win in rules:
            if not limit:
                continue
            cutoff = now - span
            count = win.count(cutoff) if win is not None else 0
            proof = win.evidence(cutoff) if win is not None else ()
            windows.append((name, count, limit, span / 60.0, proof))
        return {
            "key": key,
            "tracked": src is not None,
            "blocked_until": src.blocked if src is not None else 0.0,
            "exempt_until": src.exempt if src is not None else 0.0,
            "exempt_users": sorted(src.users) if src is not None and src.users else [],
            "windows": windows,
            "trusted_network": next((network_key(n) for n in self._trusted_networks
                                     if _holds(n, ip)), None),
        }

    def is_blocked(self, ip: str, now: float) -> bool:
        """Whether a block the engine holds or was told of covers this address now
        (its source, or a range around it): a dict probe, and a scan of the few ranges."""
        try:
            key = source_key(ip, self._prefix)
        except ValueError:
            return False
        src = self._sources.get(key)
        if src is not None and src.blocked > now:
            return True
        return bool(self._ranges) and self._in_range(key, now)

    def blocked_until(self, ip: str) -> float:
        """Until when the engine holds this source blocked (0.0 when it does not)."""
        src = self._sources.get(source_key(ip, self._prefix))
        return src.blocked if src is not None else 0.0


# source key -> its network: a source exempt or blocked again (every hour, every
# spraying guess) reuses the one made before; ipaddress's parsing is pure Python.
_NETS: Final[dict[str, Network]] = {}
_NETS_MAX: Final = 4096


def _key_net(key: str) -> Network:
    """The typed source of a key (canonical: an IPv4 address or an IPv6 prefix), made once
    per source while it is in the cache: the block list and the kernel take it as it is."""
    net = _NETS.get(key)
    if net is None:
        if len(_NETS) >= _NETS_MAX:
            _NETS.clear()
        value = ipv4_int(key)  # (the common case: from the integer, no text parsed again)
        net = ipaddress.IPv4Network(value) if value is not None else ipaddress.ip_network(key)
        _NETS[key] = net
    return net


def _holds(net: Network, ip: str) -> bool:
    """Whether an address or range given as text lies within a network."""
    try:
        head = ipaddress.ip_network(ip, strict=False)
    except ValueError:
        return False
    return head.version == net.version and head.subnet_of(net)  # type: ignore[arg-type]


def _inside(key: str, net: Network) -> bool:
    """Whether a source key lies within a network."""
    head = ipaddress.ip_network(key, strict=False)
    if head.version != net.version:
        return False
    return head.subnet_of(net)  # type: ignore[arg-type]


def _match(
    waiting: deque[_Attempt], bit: int, user: str | None, sess: str | None, now: float
) -> _Attempt | None:
    """The oldest recent attempt a new description can be another view of (same user first).

    ``waiting`` holds the attempts the describing program has not described
    yet; the one returned leaves it.
    """
    lo = now - PAIR_WINDOW
    while waiting and waiting[0].ts < lo:
        waiting.popleft()
    hi = now + PAIR_WINDOW
    loose = None
    for i, rec in enumerate(waiting):
        if i >= 256:
            break
        if rec.ts > hi:
            continue
        if sess is not None and rec.session is not None and rec.session != sess:
            continue
        if bit == _MTA:
            if rec.claimed or (rec.session is not None and rec.session[0] == "d"):
                continue  # part of a Dovecot login session: not an SMTP attempt
        elif sess is not None and rec.mask & _MTA:
            continue  # Postfix sends Dovecot no session id
        ru = rec.user
        if ru is not None and user is not None:
            if ru == user:
                waiting.remove(rec)
                return rec
        elif loose is None:
            loose = rec
            if user is None:
                break  # no exact match possible: the oldest will do
    if loose is not None:
        waiting.remove(loose)
    return loose


def _oldest(items: dict[str, _V], expired: Callable[[_V], bool]) -> list[str]:
    """The keys at the front of an oldest-first mapping for which ``expired`` holds."""
    keys = []
    for key, value in items.items():
        if not expired(value):
            break
        keys.append(key)
    return keys


def _claimable(rec: _Attempt) -> bool:
    """Whether a login summary may still take this attempt as its session's."""
    return rec.session is None and not rec.claimed and not rec.mask & _MTA
