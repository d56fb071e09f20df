"""`dynscreen run`: the one asyncio process that joins the kernel and the logs.

Start-up order matters: the data plane is loaded and attached (adopting what
a previous run left), blocks are reconciled with the block file, the logs are
followed, and only then does the control socket answer, so a script that
waits for `dynscreen status` waits for screening to be live.

SIGTERM saves the block file and leaves the XDP program attached with its
pinned maps: blocks stay enforced, and expire, while no daemon runs. SIGHUP
(or `dynscreen reload`) re-reads config, whitelist and block file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import heapq
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynscreen.control import blockfile, ctlproto, daemonlog, sessions
from dynscreen.control.accounts import FrozenFileError, FrozenStore
from dynscreen.control.addr import Address, Network, network_key
from dynscreen.control.blockindex import rank_drops
from dynscreen.control.blockkeeper import BlockFileKeeper, limit_heap_arenas
from dynscreen.control.blocklist import BlockList
from dynscreen.control.commands import Commands
from dynscreen.control.config import Config, ConfigError, load_config
from dynscreen.control.ctlserver import ControlServer
from dynscreen.control.dataplane.blocktable import KernelBlockTable
from dynscreen.control.dataplane.links import default_route_interface, interface_addresses
from dynscreen.control.dataplane.loader import (
    EVENTS_PER_POLL,
    HEARTBEAT_SECONDS,
    DataPlane,
    DataPlaneError,
    KernelEvent,
)
from dynscreen.control.dataplane.sockets import established_by_source
from dynscreen.control.decisions import Block, Decision, Exempt, Freeze, Notify, Protect, Spare
from dynscreen.control.dovecotpolicy import (
    DovecotPolicyServer,
    Report,
    read_api_key,
    source_blocked,
)
from dynscreen.control.engine import Engine
from dynscreen.control.events import Event
from dynscreen.control.explain import Explainer, LineMemory, report
from dynscreen.control.fleet import wire as fleet_wire
from dynscreen.control.fleet.link import LinkError
from dynscreen.control.fleet.member import FleetMember, open_member
from dynscreen.control.heartbeat import HeartbeatThread
from dynscreen.control.history import ACTIONS, History, HistoryError, Record, request_filters
from dynscreen.control.localaddrs import AddressWatch
from dynscreen.control.logs.discover import LogSources, log_sources
from dynscreen.control.logs.follow import FileFollower, FollowPosition
from dynscreen.control.logs.journal import CursorFile, JournalFollower, JournalUnavailable
from dynscreen.control.logs.parse import LogParser
from dynscreen.control.logs.state import LogSourceState
from dynscreen.control.loopstall import LoopStallMeter
from dynscreen.control.metrics import Metrics, MetricsError, MetricsServer
from dynscreen.control.notify import Notifier, spool_path
from dynscreen.control.policy import PolicyServer
from dynscreen.control.supervise import Supervisor
from dynscreen.control.webhook import Webhook
from dynscreen.control.webhook import spool_path as webhook_spool
from dynscreen.control.whitelist import Whitelist

log = logging.getLogger("dynscreen")
THREAD_CHECK_SECONDS = 5.0
KERNEL_PIECE = 16  # kernel blocks handled between two looks at the clock
KERNEL_SLICE_SECONDS = 0.002  # a flood's blocks hold the loop about this long at a time
FREEZE_EVERY = 1024  # kernel blocks between two moves of the survivors out of the GC's reach
SHOWN_LINE = 300  # characters of a failing log line shown in the error log
LOG_EVERY = 60.0  # seconds between two tracebacks of one problem (each failure is still logged)
FORGEABLE = ("{path}: a syslog file can be written by any local user (`logger -t "
             "postfix/smtpd ...`): a forged line can block an address, freeze an account or "
             "exempt a source; follow the journal instead (journal = \"postfix.service\")")


def shown_line(text: str) -> str:
    """A log line as an error message quotes it: escaped (repr) and cut to SHOWN_LINE."""
    cut = text[:SHOWN_LINE]
    return repr(cut) + (f" (+{len(text) - SHOWN_LINE} chars)" if len(text) > SHOWN_LINE else "")


def map_full(e: BaseException) -> bool:
    """Did a kernel map refuse an entry because it is full? (bcc: E2BIG; an LPM trie: ENOSPC)"""
    if isinstance(e, OSError) and e.errno in (errno.E2BIG, errno.ENOSPC):
        return True
    text = str(e)
    return os.strerror(errno.E2BIG) in text or os.strerror(errno.ENOSPC) in text


@dataclass
class Problem:
    """A recurring failure the administrator must see: in `status`, the metrics and the log."""

    what: str
    message: str
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    traced: float = float("-inf")  # monotonic time of the last traceback logged for it

    def to_json(self) -> dict[str, object]:
        return {"what": self.what, "message": self.message, "count": self.count,
                "first": self.first, "last": self.last}


class StartError(Exception):
    """The daemon cannot start; the message says why (exit 1, or 2 for a bad config)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Options:
    config_path: Path | None
    ifaces: tuple[str, ...] = ()
    from_start: bool = False


def load_config_or_fail(opts: Options) -> Config:
    try:
        return load_config(opts.config_path)
    except ConfigError as e:
        raise StartError(str(e), 2) from None
    except OSError as e:
        raise StartError(f"cannot read config {opts.config_path}: {e.strerror}", 2) from None


def interfaces(opts: Options, cfg: Config) -> list[str]:
    """The interfaces to screen: the command line's, the config's, or the default route's."""
    if opts.ifaces:
        return list(opts.ifaces)
    if cfg.screening.interfaces:
        return list(cfg.screening.interfaces)
    dflt = default_route_interface()
    if dflt is None:
        raise StartError("no default route: name the interfaces to screen "
                         "(`--iface`, or [screening].interfaces)")
    return [dflt]


def open_data_plane(cfg: Config, ifaces: list[str]) -> tuple[DataPlane, list[Address]]:
    """Load (adopting what a previous run left), configure and attach the data plane."""
    s = cfg.screening
    dp = DataPlane(pin_path=cfg.daemon.pin_path, max_blocks=s.max_blocks,
                   max_tracked=s.max_tracked, ipv6_prefix=s.ipv6_prefix)
    try:
        dp.load(adopt_from=ifaces)
    except DataPlaneError as e:
        raise StartError(str(e)) from None
    local = interface_addresses(ifaces)
    dp.configure_from(cfg, local_addrs=local)
    dp.heartbeat()
    try:
        modes = dp.attach(ifaces, s.xdp_mode)
    except DataPlaneError as e:
        dp.close()
        raise StartError(str(e)) from None
    for iface, mode in modes.items():
        log.info("screening %s (%s XDP), ports %s, mode %s", iface, mode,
                 ",".join(map(str, s.ports)), s.mode)
    dp.set_established(established_by_source(s.ports, local, s.ipv6_prefix))
    return dp, local


class Daemon:
    """The assembly point: every part is built here, from the config and the data plane,
    and handed the parts it works with. The daemon's own jobs are the ones that join
    them: following logs into the engine, carrying out decisions, the periodic work,
    reload and stop."""

    def __init__(self, opts: Options, cfg: Config, dp: DataPlane, ifaces: list[str],
                 local: list[Address],
                 read_ahead: tuple[blockfile.BlockFile, Future[list[blockfile.FileRow]]]
                 | None = None) -> None:
        self.opts = opts
        self.cfg = cfg
        self.dp = dp
        self.ifaces = ifaces
        self.started = time.time()
        self.metrics = Metrics()
        self.metrics_server: MetricsServer | None = None  # none when metrics_listen = ""
        self.supervisor = Supervisor(on_restart=self.metrics.task_restarted,
                                     on_state=self.metrics.set_task_up)
        self.engine = Engine(cfg, now=self.started)
        self.blocks = BlockList(KernelBlockTable(dp) if isinstance(dp, DataPlane) else dp,
                                self._engine_hears)
        file, ahead = read_ahead or (blockfile.BlockFile(cfg.daemon.state_file), None)
        self.keeper = BlockFileKeeper(self.blocks, file, tell=self.tell, ahead=ahead)
        self.whitelist = Whitelist(list(cfg.screening.whitelist), cfg.daemon.whitelist_file,
                                   dp, self.engine, self.blocks)
        self.frozen = FrozenStore(cfg.daemon.frozen_file, reply=cfg.accounts.frozen_reply)
        self.policy: PolicyServer | None = None  # only with accounts.freeze
        self.notifier: Notifier | None = None  # only with accounts.notify_postmaster
        self.dovecot_policy: DovecotPolicyServer | None = None  # dovecot_policy_listen
        self.metrics.watch_services(lambda: self.policy, lambda: self.notifier)
        self.metrics.watch_dovecot_policy(lambda: self.dovecot_policy)
        self.addresses = AddressWatch(lambda: self.ifaces, dp.set_local_addrs, initial=local)
        try:  # the fleet (None when off): shares what the parts above report
            self.fleet: FleetMember | None = open_member(
                cfg.fleet, self.blocks, self.whitelist, self.frozen, self,
                notice_window=cfg.screening.limits.window_minutes * 60.0)
        except LinkError as e:
            raise StartError(str(e)) from None
        self.engine.share_counts(self.fleet is not None and "counters" in cfg.fleet.share)
        self.commands = Commands(self, dp, self.blocks, self.keeper, self.whitelist,
                                 self.frozen, self.engine, self.metrics)
        self.server = ControlServer(cfg.daemon.socket, self.commands.handlers())
        self.heartbeat = HeartbeatThread(dp.heartbeat_stamper(), HEARTBEAT_SECONDS,
                                         beat=self.metrics.heartbeat)
        self.stall = LoopStallMeter(self.metrics.set_loop_stall_max)
        self.log_tasks: list[str] = []  # names of the supervised log followers
        # Where each stopped file follower stood: its restart (after a crash's backoff, or a
        # reload) goes on from there instead of the file's end (follow.py, detach).
        self.file_positions: dict[str, FollowPosition] = {}
        self.log_choice = LogSources((), discovered=False)
        self.log_states: list[LogSourceState] = []
        self.problems: dict[str, Problem] = {}
        self.stop_event = asyncio.Event()
        self.detach_requested = False
        self.events_seen = 0
        self.close_session_runs = 0  # blocks whose open sessions were set to be closed
        self.hooks: list[Callable[[list[Decision]], None]] = []
        # What was done and why, off the loop (control/history.py); the text of recent
        # signal lines, for the evidence of blocks (control/explain.py).
        self.history = History(cfg.daemon.history_file, cfg.daemon.history_days)
        self.lines = LineMemory()
        self.webhook: Webhook | None = None  # only with [notify] webhook
        self.explainer = Explainer(lambda: self.cfg, self.whitelist, self.blocks, self.engine,
                                   dp, self.history, self.lines)
        self.metrics.watch_records(lambda: self.history, lambda: self.webhook)
        self.whitelist.on_lift = lambda net, reason, by: self.tell(
            "unblock", ip=network_key(net), reason=reason, origin="whitelist",
            detail=f"whitelisted by {network_key(by)}")
        if self.fleet is not None:
            self._watch_fleet(self.fleet)
        # Batched `ss` runs, a bounded number at once, a bounded queue (a flood of blocks).
        # Each `ss` is started and waited for in the closer's worker threads: an asyncio
        # child (pipes, a watcher thread, callbacks) cost the loop ~10 ms per block at a
        # million blocks, paid by whatever command came next (an `unblock` after a block).
        self.closer = sessions.SessionCloser(lambda: self.cfg.screening.ports)
        self.events_lost = 0  # the kernel's count when last reconciled
        self.kernel_unfrozen = 0  # kernel blocks told since the last gc.freeze()
        self.resyncs = 0  # reconciliations with the kernel's tables since start
        self.resync_wanted = asyncio.Event()
        self.drops_read = 0.0  # monotonic time of the last drop-count read

    # ---- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        """Blocks reconciled with the file, accounts, logs, metrics, then the socket."""
        cfg = self.cfg
        self.heartbeat.start()
        self.history.start()
        self.whitelist.load()
        gc.disable()  # a million rows at once: collections would walk them again and again
        try:
            saved = self.keeper.read_at_start()
            restored, kept = self.blocks.reconcile(saved or [], time.time())
            del saved
        finally:
            gc.enable()
        # What start built (the index's expiry buckets: lists of a million keys) is kept
        # out of the collector's full passes, each of which would else walk it (~50 ms).
        gc.freeze()
        log.info("blocks: %d restored from %s, %d kept from the kernel (%s)", restored,
                 self.keeper.path, kept, "adopted" if self.dp.adopted else "new maps")
        self.whitelist.lift_covered()
        self.events_lost = self.dp.counters().get("events_lost", 0)
        self.keeper.soon()  # the merged blocks are written by the keeper, off the loop
        await self._start_accounts()
        self._start_webhook()
        self._start_logs()
        for warning in self.warnings():
            log.warning("%s", warning)
        try:
            self.metrics_server = self.metrics.start_server(cfg.daemon.metrics_listen)
        except MetricsError as e:
            raise StartError(str(e)) from None
        self.metrics.set_mode(cfg.screening.mode)
        self.metrics.set_up(True)
        try:
            await self.server.start()
        except Exception as e:
            raise StartError(str(e)) from None
        log.info("control socket %s ready", cfg.daemon.socket)
        sd_notify(b"READY=1")

    async def _start_accounts(self) -> None:
        """Frozen accounts, the Postfix policy service that enforces them, the notifier."""
        a = self.cfg.accounts
        if self.frozen.loaded:
            self._check_frozen_file()
        else:
            try:
                for acc in self.frozen.load():  # a damaged file fails closed, and says so
                    self.engine.note_freeze(acc.user, acc.until or float("inf"))
            except FrozenFileError as e:
                raise StartError(f"{e}: not starting, as that would unfreeze every account "
                                 "it names") from None
        if a.freeze and self.policy is None:
            self.policy = PolicyServer(self.frozen, a.frozen_reply)
            try:
                await self.policy.start(a.policy_address)
            except OSError as e:
                raise StartError(f"policy_listen {a.policy_listen}: {e.strerror or e}") from None
            log.info("policy service on %s (frozen accounts: %d)", a.policy_listen,
                     len(self.frozen))
        await self._start_dovecot_policy()
        # (spraying: the postmaster hears of each protected account)
        if (a.notify_postmaster or a.spray_sources) and self.notifier is None:
            self.notifier = Notifier(a.postmaster, a.relay_address,
                                     self.cfg.screening.limits.window_minutes,
                                     spool=spool_path(self.cfg.daemon.frozen_file))
            self.notifier.start()

    async def _start_dovecot_policy(self) -> None:
        """Dovecot's auth policy server, when dovecot_policy_listen is set; a reload
        moves it, stops it, or passes it the new key, freeze scope and delay."""
        a = self.cfg.accounts
        server = self.dovecot_policy
        try:
            key = read_api_key(a.dovecot_policy_api_key_file)
        except (OSError, ValueError) as e:
            if server is None:
                raise StartError(f"dovecot_policy_api_key_file: {e}") from None
            log.error("dovecot_policy_api_key_file: %s: the key in use is kept", e)
            key = server.api_key
        if server is not None and server.where != a.dovecot_policy_address:
            await server.close()
            server = self.dovecot_policy = None
        if server is None and a.dovecot_policy_address is not None:
            server = DovecotPolicyServer(blocked=self._blocked_now, suspicious=self._failing,
                                         frozen=self.frozen, on_report=self._policy_report)
            try:
                await server.start(a.dovecot_policy_address)
            except OSError as e:
                raise StartError(f"dovecot_policy_listen {a.dovecot_policy_listen}: "
                                 f"{e.strerror or e}") from None
            self.dovecot_policy = server
        if server is not None:
            server.api_key = key
            server.freeze_login = a.freeze_scope == "login"
            server.delay = a.dovecot_policy_delay

    def _blocked_now(self, address: str) -> bool:
        """The Dovecot policy's question, from the block index: every block the kernel
        enforces (the engine's, adopted at start, manual, file, fleet, kernel-made), not
        only those the engine still tracks; never a kernel walk. Monitor mode drops
        nothing, so refuses nothing."""
        s = self.cfg.screening
        if not s.enabled or s.monitor:
            return False
        return source_blocked(self.blocks, self.whitelist, address, time.time())

    def _failing(self, address: str) -> bool:
        return self.engine.counters(address)["auth_failures"] > 0

    def _policy_report(self, report: Report) -> None:
        """A login Dovecot's policy reported: one more event for the engine."""
        self.events_seen += 1
        self.metrics.observe_event(report.event.kind)
        self.apply(self.engine.feed_report(report.event, report.pwhash, time.time()))

    def _engine_hears(self, net: Network, until: float | None) -> None:
        """A block the engine did not decide (kernel, manual, file, expiry) reaches it."""
        if until is None:
            self.engine.note_unblock(net)
        else:
            self.engine.note_block(net, until, now=time.time())

    # ---- logs ----------------------------------------------------------------------------

    def _start_logs(self, choice: LogSources | None = None) -> None:
        """Follow the config's [[logs]], or what discovery finds, each as a supervised task
        (a crash restarts it: see supervise.py); say what is missing."""
        self.log_choice = choice = choice or log_sources(self.cfg)
        for warning in choice.warnings:
            log.warning("logs: %s", warning)
        if choice.discovered and choice.sources:
            log.info("log sources discovered: %s", ", ".join(
                f"{src.name} ({src.format})" for src in choice.sources))
        self.log_states = []
        for src in choice.sources:
            state = LogSourceState(src.name, src.format)
            self.log_states.append(state)
            name = f"logs:{src.name}"
            if src.path:
                path, fmt = src.path, src.format
                self.supervisor.start(
                    name, lambda p=path, f=fmt, s=state: self._follow_file(p, f, s))
            elif src.journal:
                unit, fmt = src.journal, src.format
                self.supervisor.start(
                    name, lambda u=unit, f=fmt, s=state: self._follow_journal(u, f, s))
            else:
                continue
            self.log_tasks.append(name)

    async def _stop_logs(self) -> None:
        await self.supervisor.stop(*self.log_tasks)
        self.log_tasks.clear()

    async def _follow_file(self, path: str, fmt: str, state: LogSourceState) -> None:
        parser = LogParser(path, fmt)
        try:
            follower = FileFollower(Path(path), from_start=self.opts.from_start,
                                    on_warning=lambda m: log.warning("%s: %s", path, m),
                                    resume=self.file_positions.pop(path, None))
        except OSError as e:
            state.failed(str(e))
            log.error("log %s: %s", path, e)
            return
        state.is_open = lambda: follower.is_open
        log.info("following %s (%s)", path, fmt)
        self.metrics.log_source_started(parser.file)
        try:
            async for lineno, text in follower.lines():
                state.line_read(time.time())
                self._handle_line(parser, text, lineno)
        except Exception as e:  # the supervisor logs it and restarts the follower
            state.failed(str(e))
            raise
        finally:
            self.file_positions[path] = follower.detach()

    def cursor_folder(self) -> Path:
        """Journal cursors live beside the block file, in the state folder."""
        return self.cfg.daemon.state_file.parent / "journal"

    async def _follow_journal(self, unit: str, fmt: str, state: LogSourceState) -> None:
        """journalctl exiting is an error for the supervisor; a restart resumes at the saved
        cursor."""
        parser = LogParser(f"journal:{unit}", fmt)

        def warn(message: str) -> None:
            log.warning("journal %s: %s", unit, message)

        cursor = CursorFile.for_unit(self.cursor_folder(), unit, warn)
        try:
            follower = JournalFollower(unit, cursor_file=cursor, on_warning=warn)
        except JournalUnavailable as e:
            state.failed(str(e))
            log.error("journal %s: %s", unit, e)
            return
        log.info("following the journal for %s (%s)%s", unit, fmt,
                 ", from its saved cursor" if follower.after_cursor else "")
        self.metrics.log_source_started(parser.file)
        state.live()
        n = 0
        try:
            async for entry in follower.entries():
                n += 1
                state.line_read(time.time())
                self._handle_line(parser, entry.line(), n, entry.cursor)
        except Exception as e:
            state.failed(str(e))
            raise
        finally:
            follower.close()

    def _handle_line(self, parser: LogParser, text: str, lineno: int,
                     cursor: str | None = None) -> None:
        """Parse, decide, apply one line; a failure anywhere skips this line only.

        The error is logged with the line (escaped, cut) and counted by stage; the
        follower goes on with the next line.
        """
        self.metrics.lines_read(parser.file)
        stage = "parse"
        try:
            events = parser.parse(text, lineno)
            if events:
                self.metrics.observe_lag(parser.file, time.time() - events[0].ts)
                self.lines.keep(parser.file, lineno, text, cursor)
            for ev in events:
                self.metrics.observe_event(ev.kind)
                stage = "decide"
                self.events_seen += 1
                decisions = self.engine.feed(ev, time.time())
                stage = "apply"
                self.apply(decisions)
                if self.fleet is not None:
                    self.fleet.counted(self.engine.take_counted())
        except Exception as e:
            if stage == "parse":
                self.metrics.parse_error(parser.file)
            else:
                self.metrics.line_failed(parser.file, stage)
            self._problem(f"log line {stage} failed", f"{parser.file}:{lineno}: {stage} failed "
                          f"({type(e).__name__}: {e}); line skipped, following goes on: "
                          f"{shown_line(text)}", exc=e)

    def feed(self, ev: Event) -> None:
        self.events_seen += 1
        self.apply(self.engine.feed(ev, time.time()))
        if self.fleet is not None:
            self.fleet.counted(self.engine.take_counted())

    # ---- what other members of the fleet made (control/fleet/member.py) ------------------

    def remote_count(self, msg: fleet_wire.CountMsg) -> None:
        """Attempts another gateway counted: this engine counts them too."""
        self.apply(self.engine.feed_remote(msg.limit, msg.ip, msg.n, time.time(), msg.host))

    def remote_freeze(self, user: str, until: float) -> None:
        self.engine.note_freeze(user, until)
        self.metrics.set_frozen_accounts(len(self.frozen))

    def remote_unfreeze(self, user: str) -> None:
        self.engine.note_unfreeze(user)
        self.metrics.set_frozen_accounts(len(self.frozen))

    # ---- decisions -----------------------------------------------------------------------

    def apply(self, decisions: list[Decision]) -> None:
        """Carry the decisions out; one that fails (a full kernel map, say) is logged,
        counted and shown in `status`, and the others still apply."""
        frozen_now: set[str] = set()
        for d in decisions:
            if isinstance(d, Notify):
                continue
            try:
                if self._apply_one(d):
                    frozen_now.add(getattr(d, "user", "").lower())
            except Exception as e:
                self._decision_failed(d, e)
        for d in decisions:
            if isinstance(d, Protect) and self.notifier is not None:
                try:
                    self.notifier.protect(d.user, d.sources, d.sample, d.minutes,
                                          d.ts or time.time())
                except Exception as e:
                    self._decision_failed(d, e)
            if isinstance(d, Notify) and self.notifier is not None:
                frozen = d.user.lower() in frozen_now
                if self.fleet is not None:  # one notice per account and window, fleet-wide
                    self.fleet.claim_notice(d.user, lambda d=d, f=frozen: self._notify(d, f))
                else:
                    self._notify(d, frozen)
        for hook in self.hooks:
            hook(decisions)

    def _notify(self, d: Notify, frozen: bool) -> None:
        if self.notifier is None:
            return
        try:
            self.notifier.notify(d.user, d.service, d.source or None, d.count, d.ts or
                                 time.time(), frozen)
        except Exception as e:
            self._decision_failed(d, e)
            return
        log.info("postmaster notified: %s (%s), %d failures", d.user, d.service, d.count)

    def _apply_one(self, d: Decision) -> bool:
        """One decision; True when it froze an account (its notice says so)."""
        if isinstance(d, Block):
            until = time.time() + d.minutes * 60
            have = self.blocks.find(d.source)
            if have is not None and have.expires >= until:
                # Already blocked as long (adopted at start, the engine not told of every
                # one): the engine hears of it now; the longer block stays.
                self.engine.note_block(d.source, have.expires, now=time.time())
                return False
            if self.blocks.add(d.source, until, d.reason, "logs", decided=True):
                self.metrics.block_made(d.reason, "logs")
                where = f" ({d.file}:{d.line})" if d.file else ""
                log.warning("blocked %s for %d min: %s, %d%s", d.ip, d.minutes, d.reason,
                            d.count, where)
                self.tell("block", ip=d.ip, reason=d.reason, origin="logs", minutes=d.minutes,
                          evidence=self.lines.evidence(d.evidence or ((d.ts, d.file, d.line),)))
                self.close_sessions(d.source)
            else:
                self._problem("block table full", f"the block table is full (max_blocks = "
                              f"{self.cfg.screening.max_blocks}): {d.ip} not blocked "
                              f"({d.reason})")
                self.metrics.decision_failed("block", "map_full")
        elif isinstance(d, Exempt):
            self.dp.exempt(d.source, time.time() + d.minutes * 60)
            log.info("exempt %s for %d min after SMTP AUTH%s", d.ip, d.minutes,
                     f" by {d.user}" if d.user else "")
        elif isinstance(d, Freeze):
            return self._freeze(d)
        elif isinstance(d, Protect):  # (the kernel blocks its strangers one by one: spray)
            log.warning("account %s under a password-spraying attack from %d sources: "
                        "protected for %d min", d.user, d.sources, d.minutes)
            self.tell("protect", user=d.user, reason="spray", origin="logs", minutes=d.minutes,
                      detail=f"{d.sources} sources: {', '.join(d.sample)}",
                      evidence=self.lines.evidence(((d.ts, d.file, d.line),)))
        elif isinstance(d, Spare):
            log.info("spared %s (trusted: %s): %s reached %d", d.ip, d.trusted, d.reason,
                     d.count)
        return False

    def _decision_failed(self, d: Decision, e: Exception) -> None:
        action = type(d).__name__.lower()
        cause = "map_full" if map_full(e) else "error"
        self.metrics.decision_failed(action, cause)
        target = getattr(d, "ip", None) or getattr(d, "user", None) or "?"
        if cause == "map_full":
            table = {"exempt": "exemption", "block": "block"}.get(action, action)
            self._problem(f"{table} map full", f"the kernel's {table} map is full: {action} of "
                          f"{target} not done ({e})")
        else:
            self._problem(f"{action} failed", f"{action} of {target} failed: "
                          f"{type(e).__name__}: {e}", exc=e)

    def _problem(self, what: str, message: str, exc: BaseException | None = None) -> None:
        """Log a failure (a traceback at most once a minute per kind), keep it for `status`."""
        now = time.time()
        p = self.problems.get(what)
        if p is None:
            p = self.problems[what] = Problem(what, message, first=now)
        p.message = message
        p.count += 1
        p.last = now
        mono = time.monotonic()
        if exc is not None and mono - p.traced >= LOG_EVERY:
            p.traced = mono
            log.error("%s", message, exc_info=exc)
        else:
            log.error("%s", message)

    def _freeze(self, d: Freeze) -> bool:
        a = self.cfg.accounts
        try:
            acc = self.frozen.freeze(d.user, time.time(), minutes=a.freeze_minutes,
                                     service=d.service, ip=d.source or None, failures=d.count)
        except (ValueError, OSError) as e:
            log.error("freezing %s: %s", d.user, e)
            return False
        if acc is None:
            return False
        self.metrics.set_frozen_accounts(len(self.frozen))
        log.warning("froze account %s after %d failed logins in one %s session from %s%s",
                    d.user, d.count, d.service or "mail", d.source or "?",
                    f" for {a.freeze_minutes} min" if a.freeze_minutes else "")
        self.tell("freeze", user=d.user, ip=d.source or None, reason="session_auth_failures",
                  origin="logs", minutes=a.freeze_minutes or None, detail=d.service,
                  evidence=self.lines.evidence(((d.ts, d.file, d.line),)))
        return True

    def close_sessions_many(self, nets: list[Network]) -> None:
        """close_sessions for a batch of blocked sources (a flood's kernel blocks): the
        whitelist is looked at once for the batch."""
        if not self.cfg.screening.close_session or self.cfg.screening.mode == "monitor":
            return
        self.close_session_runs += self.closer.submit_many(nets, self.whitelist.all())

    def close_sessions(self, net: Network) -> None:
        """Close the open sessions of a source just blocked (`ss -K`, off the loop)."""
        if not self.cfg.screening.close_session or self.cfg.screening.mode == "monitor":
            return
        # Counted when set in motion, in the same step as the block: status shows at once
        # whether a block led to closing (monitor mode: never). Whitelisted addresses
        # inside a blocked range keep their sessions.
        if self.closer.submit(net, self.whitelist.inside(net)):
            self.close_session_runs += 1

    # ---- periodic work -------------------------------------------------------------------

    async def _kernel_events(self) -> None:
        while True:
            events = self.dp.poll_events(0)
            if events:
                await asyncio.sleep(0)  # the poll was a piece of the loop's time of its own
                await self._kernel_batch(events)
            await asyncio.sleep(0 if len(events) >= EVENTS_PER_POLL else 0.1)

    async def _kernel_batch(self, events: list[KernelEvent]) -> None:
        """One poll's kernel blocks (a flood: thousands), told as a batch: the index in one
        step, the engine and the block list's watchers (the fleet) of each, the session
        closer in one call per piece, then the history in one transaction and the log in
        one line. Pieces of KERNEL_PIECE blocks; the loop gets a turn whenever one
        KERNEL_SLICE_SECONDS has gone by."""
        made: list[KernelEvent] = []
        rows: list[dict[str, Any]] = []  # the history's, built piece by piece
        for ev in events:
            if ev.table_full:
                self._problem("block table full", f"kernel could not block "
                              f"{network_key(ev.source)} ({ev.reason}): the block table "
                              "is full (max_blocks)")
            else:
                made.append(ev)
        done = 0
        try:
            turn = time.monotonic()
            while done < len(made):
                piece = made[done:done + KERNEL_PIECE]
                now = time.time()
                self.blocks.kernel_made([(ev.source, ev.expires or now, ev.reason)
                                              for ev in piece])
                for reason, n in Counter(ev.reason for ev in piece).items():
                    self.metrics.block_made(reason, "kernel", n)
                self.close_sessions_many([ev.source for ev in piece])
                rows += self._kernel_rows(piece, now)
                done += len(piece)
                if time.monotonic() - turn >= KERNEL_SLICE_SECONDS:
                    await asyncio.sleep(0)
                    turn = time.monotonic()
        finally:  # (cancelled at stop: what was indexed is still recorded)
            self._kernel_told(made[:done], rows)
        self.kernel_unfrozen += len(made)
        if self.kernel_unfrozen >= FREEZE_EVERY:
            # The engine keeps an object per source told of (100,000 in a flood): each full
            # collection would walk them all on the loop (~50 ms). As at start, what
            # lives on is kept out of those passes, once the young cycles are collected.
            self.kernel_unfrozen = 0
            gc.collect(1)
            gc.freeze()

    @staticmethod
    def _kernel_rows(made: list[KernelEvent], now: float) -> list[dict[str, Any]]:
        return [{"ip": network_key(ev.source), "reason": ev.reason, "origin": "kernel",
                 "minutes": round(max(0.0, (ev.expires or 0) - now) / 60, 1),
                 "detail": f"{ev.reason} reached {ev.count} in the kernel"} for ev in made]

    def _kernel_told(self, made: list[KernelEvent], rows: list[dict[str, Any]]) -> None:
        """The history (one transaction) and the log (one line) of a batch of kernel blocks;
        the line names the first few, the history has each."""
        if not made:
            return
        self.tell_many("block", rows)
        monitor = " [monitor: not dropped]" if any(ev.monitor for ev in made) else ""
        if len(made) == 1:
            ev = made[0]
            log.warning("kernel blocked %s: %s (%d)%s", network_key(ev.source), ev.reason,
                        ev.count, monitor)
            return
        reasons = Counter(ev.reason for ev in made)
        log.warning("kernel blocked %d sources (%s): %s%s", len(made),
                    ", ".join(f"{r} {n}" for r, n in reasons.most_common()),
                    daemonlog.listing([network_key(ev.source) for ev in made[:daemonlog.SHOWN]],
                                      len(made)), monitor)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                for b in self.blocks.sweep():
                    log.info("block of %s (%s) expired", b.source, b.reason)
                    self.tell("expire", ip=str(b.source), reason=b.reason, origin=b.origin)
                self.dp.sweep_exempt()
                now = time.time()
                for acc in self.frozen.expire(now):
                    self.engine.note_unfreeze(acc.user)
                    log.info("account %s unfrozen: its freeze expired", acc.user)
                    self.tell("unfreeze", user=acc.user, reason="expired", origin="expiry")
                self.apply(self.engine.tick(now))
                self._check_frozen_file()
                self._update_metrics()
            except Exception as e:
                self._problem("sweep failed", f"periodic sweep failed: {type(e).__name__}: {e}",
                              exc=e)

    def _update_metrics(self) -> None:
        counters = self.dp.counters()
        self.metrics.set_kernel_counters(counters)
        if counters.get("events_lost", 0) > self.events_lost:
            self.resync_wanted.set()  # a kernel block the daemon may not know of
        by_reason = self.blocks.index.count_by_reason()
        self.metrics.set_block_counts(by_reason)
        self.metrics.set_map_fill("blocks", sum(by_reason.values()),
                                  self.cfg.screening.max_blocks)
        self.metrics.set_tracked_sources(self.engine.tracked())
        self.metrics.set_fleet_state(self.fleet.link.state if self.fleet is not None else "off")

    async def _kernel_walks(self) -> None:
        """The only full walks of the kernel's tables after start, each in a worker thread:
        a reconciliation when the kernel lost events (its events_lost counter grew) or one
        was asked for; else, every DROPS_SECONDS (5 times the last walk at most), the
        drop counts `status` shows."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.resync_wanted.wait(), 1.0)
            if self.resync_wanted.is_set():
                self.resync_wanted.clear()
                await self.resync()
            elif time.monotonic() - self.drops_read >= self.drops_every and len(self.blocks):
                await self._read_drops()

    drops_every = 10.0  # seconds between two drop-count reads (grows with the table)

    async def _walk(self, plan: bool) -> tuple[Any, set[int], float]:
        """A walk of the kernel's tables in a worker thread: (with ``plan``, the block list's
        resync_plan of it, else None; the keys changed meanwhile; Unix time it began).
        The drop counts are taken from it (ranked in the thread)."""
        blocks = self.blocks
        began, t0 = time.time(), time.monotonic()

        def walk() -> tuple[Any, tuple[dict[int, int], list[int]]]:
            if not plan:  # the drop counts alone: no row per block (a million objects)
                drops = blocks.table.read_drops()
                return None, (drops, heapq.nlargest(10_000, drops, key=drops.__getitem__))
            rows = list(blocks.table.read_rows())
            return blocks.resync_plan(rows), rank_drops(rows)
        with blocks.index.journal() as changed:
            found, (drops, rank) = await asyncio.to_thread(walk)
        blocks.index.replace_drops(drops, rank)
        took = time.monotonic() - t0
        self.drops_read = time.monotonic()
        self.drops_every = max(10.0, 5 * took)
        return found, changed, began

    async def resync(self) -> dict[str, int]:
        """Reconcile the index with the kernel (`events_lost` grew, or asked): blocks only the
        kernel holds are indexed and told to the engine; none is left unknown. The walk
        and the comparison run in a worker thread; the loop applies the differences."""
        lost = self.dp.counters().get("events_lost", 0)
        (differ, missing), changed, began = await self._walk(plan=True)
        r = self.blocks.resync(differ, missing, changed, began)
        self.events_lost = max(self.events_lost, lost)
        self.resyncs += 1
        if r.found or r.dropped or r.updated:
            log.warning("reconciled with the kernel: %d block(s) found only there, %d gone "
                        "from it, %d expiries taken from it", r.found, r.dropped, r.updated)
            self.keeper.soon()
        return {"found": r.found, "dropped": r.dropped, "updated": r.updated}

    async def _read_drops(self) -> None:
        await self._walk(plan=False)

    async def _watch_threads(self) -> None:
        """The notifier, the metrics endpoint and the heartbeat run in threads: one that died
        is restarted."""
        while True:
            await asyncio.sleep(THREAD_CHECK_SECONDS)
            if self.notifier is not None and self.notifier.revive():
                self.metrics.task_restarted("notify")
                self._problem("notify thread died", "the postmaster notifier's thread had "
                              "died (its traceback is above); restarted")
            ms = self.metrics_server
            if ms is not None and not ms.alive():
                self.metrics.task_restarted("metrics")
                self._problem("metrics thread died", "the metrics endpoint's thread had died "
                              "(its traceback is above); restarted")
                ms.close()
                self.metrics_server = None
                self.metrics_server = self.metrics.start_server(self.cfg.daemon.metrics_listen)
            if self.webhook is not None and self.webhook.revive():
                self.metrics.task_restarted("webhook")
                self._problem("webhook thread died", "the webhook sender's thread had died "
                              "(its traceback is above); restarted")
            if not self.history.alive():
                self.metrics.task_restarted("history")
                self._problem("history thread died", "the history writer's thread had died "
                              "(its traceback is above); restarted")
                self.history.start()
            if not self.heartbeat.alive():
                self.metrics.task_restarted("heartbeat")
                self._problem("heartbeat thread died", "the kernel heartbeat's thread had "
                              "died (its traceback is above); restarted")
                self.heartbeat.start()

    def _check_frozen_file(self) -> None:
        """A hand edit of the frozen-accounts file: apply what it changed, or keep it aside."""
        try:
            change = self.frozen.check_edit()
        except FrozenFileError as e:
            log.error("%s: edit refused, frozen accounts unchanged%s", e,
                      f"; the edited file is kept as {e.kept}" if e.kept else "")
            return
        except OSError as e:
            log.error("frozen-accounts file %s: %s", self.frozen.path, e)
            return
        if change is None:
            return
        frozen, unfrozen = change
        for acc in frozen:
            self.engine.note_freeze(acc.user, acc.until or float("inf"))
        for acc in unfrozen:
            self.engine.note_unfreeze(acc.user)
        self.metrics.set_frozen_accounts(len(self.frozen))
        log.info("frozen-accounts file edit applied: %d frozen or changed, %d unfrozen",
                 len(frozen), len(unfrozen))

    # ---- reload --------------------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Re-read config, whitelist and block file; a bad config keeps the running one."""
        try:
            cfg = load_config(self.opts.config_path)
        except ConfigError as e:
            log.error("reload refused, running config kept: %s", e)
            self.metrics.reloaded(False)
            raise ctlproto.RequestError(f"config not reloaded: {e}") from None
        except OSError as e:
            raise ctlproto.RequestError(
                f"config not reloaded: cannot read {self.opts.config_path}: {e.strerror}"
            ) from None
        old = self.cfg
        fixed = ("pin_path", "socket", "state_file", "history_file")
        for key in fixed:
            if getattr(old.daemon, key) != getattr(cfg.daemon, key):
                log.warning("daemon.%s changes only on restart", key)
        if old.fleet != cfg.fleet:
            log.warning("[fleet] changes only on restart")
        if (old.screening.max_blocks, old.screening.max_tracked, old.screening.ipv6_prefix) != (
                cfg.screening.max_blocks, cfg.screening.max_tracked, cfg.screening.ipv6_prefix):
            log.warning("max_blocks, max_tracked and ipv6_prefix change only after "
                        "`dynscreen detach` and a restart")
        try:
            new_ifaces = interfaces(self.opts, cfg)
        except StartError as e:  # no default route and none named
            raise ctlproto.OperationError(f"config not reloaded: {e}") from None
        self.cfg = cfg
        if set(new_ifaces) != set(self.ifaces):
            gone = [i for i in self.ifaces if i not in new_ifaces]
            try:
                self.dp.attach([i for i in new_ifaces if i not in self.ifaces],
                               cfg.screening.xdp_mode)
            except DataPlaneError as e:
                raise ctlproto.OperationError(str(e)) from None
            self.dp.detach(gone)
            self.ifaces = new_ifaces
        self.dp.configure_from(cfg, local_addrs=interface_addresses(self.ifaces))
        self.addresses.poke()  # the interfaces may have changed
        self.engine.reconfigure(cfg)
        self.history.days = cfg.daemon.history_days
        self.frozen.set_reply(cfg.accounts.frozen_reply)
        if self.policy is not None:
            self.policy.reply = cfg.accounts.frozen_reply
        await self._start_accounts()
        self._start_webhook()
        self.whitelist.path = cfg.daemon.whitelist_file
        unblocked = self.whitelist.load(list(cfg.screening.whitelist))
        choice = log_sources(cfg)  # discovery repeats: a server installed since shows up
        if choice.sources != self.log_choice.sources:
            await self._stop_logs()
            self._start_logs(choice)
            for warning in self.warnings():
                log.warning("%s", warning)
        else:
            self.log_choice = choice  # the same sources; what is missing may have changed
        await self.keeper.check_edit(force=True)
        self.resync_wanted.set()  # an explicit reconciliation with the kernel's tables
        self.metrics.set_mode(cfg.screening.mode)
        self.metrics.reloaded(True)
        log.info("reloaded %s", self.opts.config_path or "built-in defaults")
        return {"config": str(self.opts.config_path) if self.opts.config_path else None,
                "unblocked": unblocked}

    # ---- what the commands ask of the daemon ---------------------------------------------

    def status_parts(self) -> dict[str, Any]:
        """The daemon's own parts of `status`: its counters, logs, tasks, problems."""
        now = time.time()
        return {
            "counters": {
                "log_events": self.events_seen,
                "close_session_runs": self.close_session_runs,
                "sessions_closed": self.closer.closed,
                "close_session_dropped": self.closer.dropped,
                "close_session_ss_runs": self.closer.ss_runs,
                "tracked_sources": self.engine.tracked(),
            },
            "started": self.started,
            "logs": [{**st.to_json(now), "kind": "file" if src.path else "journal",
                      "forgeable": bool(src.path)}
                     for src, st in zip(self.log_choice.sources, self.log_states, strict=True)],
            "warnings": list(self.log_choice.warnings),
            "fleet": (self.fleet.status() if self.fleet is not None
                      else {"state": "off", "redis": "", "members": []}),
            "block_origin": self.fleet.origin_of if self.fleet is not None else None,
            "daemon": {
                "running": True,
                "pid": os.getpid(),
                "warnings": self.warnings(),
                "tasks": self.supervisor.status(),
                "problems": [p.to_json() for p in
                             sorted(self.problems.values(), key=lambda p: -p.last)],
                "local_addresses": self.addresses.current(),
                "loop_stall_max_ms": self.stall.worst_ms,
                "kernel_resyncs": self.resyncs,
                "heartbeats": self.heartbeat.beats,
            },
        }

    def tell(self, action: str, **fields: Any) -> None:
        """Something done: the history records it (a full queue drops the row, counted),
        the webhook hears of it if [notify] events names it. Neither waits."""
        now = time.time()
        if action in ACTIONS:
            self.history.record(action, ts=now, **fields)
        if self.webhook is not None and action in self.cfg.notify.events:
            self.webhook.send(action, now, **fields)

    def tell_many(self, action: str, rows: list[dict[str, Any]]) -> None:
        """tell() for a batch of one action (a flood's kernel blocks): one hand-over to the
        history (one transaction), the webhook row by row (its own queue, bounded)."""
        now = time.time()
        if action in ACTIONS:
            self.history.record_many(action, rows, ts=now)
        if self.webhook is not None and action in self.cfg.notify.events:
            for fields in rows:
                self.webhook.send(action, now, **fields)

    def _watch_fleet(self, fleet: FleetMember) -> None:
        """Other members' blocks and unblocks go to the history only (the webhook hears of
        them from the member that made them); the link's state changes to the webhook."""
        fleet.record = lambda action, **fields: self.history.record(action, **fields)
        fleet.link.on_change = lambda state, error: self.tell(
            "fleet_degraded" if state == "degraded" else "fleet_restored",
            redis=fleet.link.shown, member=fleet.name, error=error or None)

    def _start_webhook(self) -> None:
        """[notify] webhook: start, retarget or stop the sender (its spool stays)."""
        url = self.cfg.notify.webhook
        if self.webhook is not None and not url:
            self.webhook.stop()
            self.webhook = None
        elif self.webhook is not None:
            self.webhook.url = url  # the worker reads it at each POST: nothing waits here
        if url and self.webhook is None:
            self.webhook = Webhook(url, spool=webhook_spool(self.cfg.daemon.state_file))
            self.webhook.start()
            log.info("webhook: events %s go to %s", ", ".join(self.cfg.notify.events), url)

    async def explain(self, net: Network) -> dict[str, Any]:
        """`dynscreen explain`: the live facts from the loop, the past from a thread."""
        now = time.time()
        facts = self.explainer.facts(net, now)
        try:
            facts.history = await asyncio.to_thread(self.explainer.past, facts)
        except HistoryError as e:
            facts.notes += (str(e),)
        return report(facts, now)

    async def history_rows(self, req: dict[str, Any]) -> dict[str, Any]:
        """`dynscreen history` through the daemon: rows as the contract's JSON."""
        try:
            filters = request_filters(req, self.cfg.screening.ipv6_prefix)
        except ValueError as e:
            raise ctlproto.RequestError(str(e)) from None
        try:
            rows: list[Record] = await asyncio.to_thread(self.history.query, **filters)
        except HistoryError as e:
            raise ctlproto.OperationError(str(e)) from None
        return {"rows": [r.to_json() for r in rows], "dropped": self.history.dropped}

    def warnings(self) -> list[str]:
        """What the administrator should know about this setup (start-up log and `status`)."""
        return [FORGEABLE.format(path=src.path) for src in self.log_choice.sources if src.path]

    def detach(self) -> list[str]:
        """`dynscreen detach`: stop, taking the XDP program and its pins away."""
        self.detach_requested = True
        asyncio.get_running_loop().call_soon(self.stop_event.set)
        return list(self.ifaces)

    # ---- run and stop --------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            await self.start()
        except BaseException:
            self.heartbeat.stop()
            self.dp.close()
            raise
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._sighup()))
        self._start_tasks()
        await self.stop_event.wait()
        await self.stop()
        return 0

    def _start_tasks(self) -> None:
        """The periodic work, each supervised: a crash is logged, counted and restarted."""
        sup = self.supervisor
        sup.start("kernel-events", self._kernel_events)
        sup.start("sweep", self._sweep)
        sup.start("block-file", self.keeper.run)
        sup.start("kernel-walks", self._kernel_walks)
        sup.start("threads", self._watch_threads)
        sup.start("local-addresses", self.addresses.run)
        sup.start("loop-stall", self.stall.run)
        if self.fleet is not None:
            sup.start("fleet", self.fleet.run)

    async def _sighup(self) -> None:
        # Failures are logged by reload(); the running config stays.
        with contextlib.suppress(ctlproto.RequestError, ctlproto.OperationError):
            await self.reload()

    async def stop(self) -> None:
        sd_notify(b"STOPPING=1")
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.policy is not None:
            await self.policy.close()
        if self.dovecot_policy is not None:
            await self.dovecot_policy.close()
        if self.notifier is not None:
            self.notifier.stop()
        if self.webhook is not None:
            self.webhook.stop()
        await self.supervisor.stop(*(n for n in list(self.supervisor.tasks)
                                     if n not in self.log_tasks))
        await self.closer.drain(timeout=5)  # let session closing under way finish (bounded)
        await self._stop_logs()
        await self.server.close()
        await self.keeper.stop()
        if self.fleet is not None:
            await self.fleet.flush()
            await self.fleet.link.close()
        self.heartbeat.stop()
        self.history.stop()
        if self.detach_requested:
            self.dp.detach(self.ifaces, unpin=True)
            log.warning("detached from %s: screening is off until the next run",
                        ", ".join(self.ifaces))
        else:
            log.info("stopping: the XDP program stays attached and keeps enforcing %d "
                     "block(s)", len(self.blocks))
        self.dp.close()


def sd_notify(message: bytes) -> None:
    """Tell systemd (Type=notify) where we are; nothing when not run by systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    target = "\0" + addr[1:] if addr.startswith("@") else addr
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(target)
            s.sendall(message)
    except OSError as e:
        log.warning("cannot notify systemd: %s", e)


def _thread_crashed(args: threading.ExceptHookArgs) -> None:
    """A worker thread's uncaught exception goes to the log with its traceback (the thread
    watch restarts the thread)."""
    name = args.thread.name if args.thread is not None else "?"
    log.error("thread %s crashed", name,
              exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback))


async def _serve(opts: Options, cfg: Config, ifaces: list[str]) -> int:
    # The block file is parsed while the BPF program compiles in a thread (bcc, a C
    # library called through ctypes, releases the GIL); the compiler's heap stays that
    # thread's, apart from the rows'. No collections meanwhile (start() enables them
    # again after its reconcile).
    file = blockfile.BlockFile(cfg.daemon.state_file)
    limit_heap_arenas()
    gc.disable()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynscreen-compile") as pool:
        opening = pool.submit(open_data_plane, cfg, ifaces)
        ahead = BlockFileKeeper.read_now(file)
        dp, local = opening.result()
    try:
        daemon = Daemon(opts, cfg, dp, ifaces, local, (file, ahead))
    except BaseException:
        dp.close()
        raise
    del ahead  # the keeper's alone: held here, the rows (~300 MB at 1M) would live on
    return await daemon.run()


def run(opts: Options) -> int:
    """Run the daemon in the foreground until SIGTERM; the exit code."""
    daemonlog.setup()  # journald: <N> priorities, no second timestamp; else time and level
    threading.excepthook = _thread_crashed
    # A worker thread (the block file's rewrite, a walk of the kernel) hands the GIL back
    # after this long: the loop waits at most 1 ms, not 5, each time it needs it back.
    sys.setswitchinterval(0.001)
    try:
        cfg = load_config_or_fail(opts)
        ifaces = interfaces(opts, cfg)
        return asyncio.run(_serve(opts, cfg, ifaces))
    except StartError as e:
        log.error("%s", e)
        return e.code
