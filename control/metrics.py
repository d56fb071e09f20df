"""Prometheus metrics: what the daemon is doing, for dashboards and alerts.

The daemon owns one :class:`Metrics` and updates it as it works; a scrape of
``[daemon].metrics_listen`` (``/metrics``) renders it. Everything lives in the
object's own ``CollectorRegistry``, never prometheus_client's global one, so
tests and a reload never see metrics of another instance.

Kernel packet counters (``abi.COUNTERS``, per-CPU sums read from the pinned
``counters`` map) are snapshots the daemon hands to :meth:`Metrics.set_kernel_counters`;
they are exported as read, so a counter that goes down (maps recreated after
``dynscreen detach``) is an ordinary Prometheus counter reset, and they are absent
until the first read (unknown is not zero). Label scheme:

``dynscreen_packets_total{verdict, reason}``: what XDP did with a packet; the
series are disjoint, one per kernel counter, so summing them counts packets.

=================  ================  ==========================================
kernel counter     verdict           reason
=================  ================  ==========================================
passed             passed            clean: screened, no block, no limit hit
whitelist_pass     passed            whitelist: whitelisted inside a blocked prefix
parse_fail         passed            malformed: truncated headers, passed unscreened
fragment           passed            fragment: non-first fragment, no TCP header
drop_blocked       dropped           blocked: a new connection of a blocked source
drop_session       dropped           session: other packets of a blocked source
drop_syn_cap       dropped           syn_cap: SYNs over syn_per_second (no block)
drop_fragment      dropped           fragment: a fragment or unwalkable header chain of a
                                     blocked source (any port)
drop_rate          dropped           connections: the SYN that tripped the rate limit
drop_simultaneous  dropped           simultaneous: the SYN that tripped the limit
monitor_pass       monitor_pass      would_drop: any of the drops above, in monitor mode
=================  ================  ==========================================

``dropped`` reasons ``connections`` and ``simultaneous`` are the block reasons
of ``dynscreen_blocks``. ``malformed`` and ``fragment`` count TCP packets of
any port (the port is unknown); the rest count screened ports only.

``dynscreen_kernel_events_total{event}``: kernel counters that are not packet
verdicts and overlap the packet series, named as in the kernel: ``blocks_made``,
``table_full`` (a block refused: table full), ``events_lost`` (ring buffer
full), ``paused`` (SYNs whose limits were skipped: heartbeat stale; also in
``passed/clean``), ``exempt_pass`` (limits reached by an exempt or whitelisted
source: counted per limit, so possibly twice for one SYN), ``track_fail`` (no
per-source track entry could be made or found: a SYN passed unchecked or a
handshake went uncounted; never expected, counted so it is never silent).

``dynscreen_kernel_program_skips_total{program}``: how often the kernel skipped one of
the daemon's BPF programs instead of running it (``bpf_prog_info.recursion_misses``;
``xdp_screen``, ``ds_handshake``, ``inet_sock_set_state``). Only a tracing program is ever
skipped: the socket tracepoint, on a CPU where another tracing program runs or a
``bpf()`` map call has paused them; without the sock_ops program each skip is a handshake
or a connection end left uncounted.

``dynscreen_connections_total{event="opened|closed"}``: the socket tracepoint's
completed handshakes and ended established connections on screened ports;
opened minus closed is what is established now.

Log lag is both a histogram (``dynscreen_log_lag_seconds``, its distribution)
and a gauge of the latest line's lag per source (``dynscreen_log_latest_lag_seconds``,
for "behind by more than a minute" alerts). It is the processing time minus the
line's own stamp: syslog stamps have whole seconds, so up to a second of it is
rounding, and a negative gauge means the log's clock or time zone disagrees with
the daemon's (the histogram counts it as 0).

Names follow Prometheus's conventions (https://prometheus.io/docs/practices/naming/):
base units (``_seconds``), ``_total`` on counters, no type in a name, build
information as ``dynscreen_build_info{version} 1``, and points in time as
``*_timestamp_seconds`` (Unix time) rather than ages, so that an alert computes
``time() - ...`` and a daemon that stopped updating shows an age that keeps
growing. The process collector's ``process_start_time_seconds`` is the daemon's
start time; no second copy is exported. The policy service's, the Dovecot auth
policy server's and the notifier's counters are read from those objects at scrape
time (absent while they are off).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dynscreen.control.config import split_host_port
from dynscreen.control.dataplane.abi import COUNTERS, ORIGINS, PROGRAM_SKIPS, REASONS
from dynscreen.control.events import KINDS

# kernel counter -> (verdict, reason) of dynscreen_packets_total
PACKET_COUNTERS: dict[str, tuple[str, str]] = {
    "passed": ("passed", "clean"),
    "whitelist_pass": ("passed", "whitelist"),
    "parse_fail": ("passed", "malformed"),
    "fragment": ("passed", "fragment"),
    "drop_blocked": ("dropped", "blocked"),
    "drop_session": ("dropped", "session"),
    "drop_syn_cap": ("dropped", "syn_cap"),
    "drop_fragment": ("dropped", "fragment"),
    "drop_rate": ("dropped", "connections"),
    "drop_simultaneous": ("dropped", "simultaneous"),
    "monitor_pass": ("monitor_pass", "would_drop"),
}
# kernel counters exported as dynscreen_kernel_events_total{event=<name>}
KERNEL_EVENTS = ("blocks_made", "table_full", "events_lost", "paused", "exempt_pass",
                 "track_fail")
# kernel counter -> event of dynscreen_connections_total
CONNECTION_COUNTERS = {"tp_opened": "opened", "tp_closed": "closed"}

MODES = ("enforce", "monitor", "disabled")
# dynscreen_fleet_state: "off" until a fleet (shared state between gateways) is configured.
FLEET_STATES = ("off", "connected", "degraded")

# Syslog stamps have whole seconds: finer buckets would only measure rounding.
LAG_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def package_version() -> str:
    """The installed distribution's version ("unknown" in a source tree never installed)."""
    try:
        return version("dynscreen")
    except PackageNotFoundError:
        return "unknown"


class MetricsError(Exception):
    """The metrics endpoint cannot start: the message names metrics_listen and why."""


class _KernelCounters:
    """The kernel keeps these totals itself, and a prometheus Counter cannot be set to a
    value: this collector reports the latest snapshot as it was read."""

    def __init__(self) -> None:
        self._snapshot: dict[str, int] = {}

    def update(self, counters: Mapping[str, int]) -> None:
        unknown = {k for k in counters if not k.startswith(PROGRAM_SKIPS)} - set(COUNTERS)
        if unknown:
            raise ValueError(f"unknown kernel counters: {', '.join(sorted(unknown))}")
        self._snapshot = {name: int(v) for name, v in counters.items()}  # one atomic swap

    def _families(self, snapshot: Mapping[str, int]) -> list[Metric]:
        packets = CounterMetricFamily(
            "dynscreen_packets",
            "Packets seen by the XDP program, by verdict and reason (one series per kernel "
            "counter; see the module doc of dynscreen.control.metrics).",
            labels=["verdict", "reason"],
        )
        for name, (verdict, reason) in PACKET_COUNTERS.items():
            if name in snapshot:
                packets.add_metric([verdict, reason], snapshot[name])
        events = CounterMetricFamily(
            "dynscreen_kernel_events",
            "Kernel counters that are not packet verdicts (they overlap dynscreen_packets).",
            labels=["event"],
        )
        for name in KERNEL_EVENTS:
            if name in snapshot:
                events.add_metric([name], snapshot[name])
        conns = CounterMetricFamily(
            "dynscreen_connections",
            "Screened connections seen by the socket tracepoint: handshakes completed "
            "(opened) and established connections ended (closed).",
            labels=["event"],
        )
        for name, event in CONNECTION_COUNTERS.items():
            if name in snapshot:
                conns.add_metric([event], snapshot[name])
        skips = CounterMetricFamily(
            "dynscreen_kernel_program_skips",
            "Runs of a dynscreen BPF program the kernel skipped instead of running it "
            "(bpf_prog_info.recursion_misses): only a tracing program is ever skipped.",
            labels=["program"],
        )
        for name, n in sorted(snapshot.items()):
            if name.startswith(PROGRAM_SKIPS):
                skips.add_metric([name[len(PROGRAM_SKIPS):]], n)
        return [packets, events, conns, skips]

    def describe(self) -> list[Metric]:
        return self._families({})

    def collect(self) -> list[Metric]:
        return self._families(self._snapshot)


class PolicyStats(Protocol):
    """What the Postfix policy service counts (control/policy.PolicyServer's attributes)."""

    requests: int
    rejects: int
    errors: int
    evicted: int
    active: int


class NotifierStats(Protocol):
    """What the postmaster notifier counts (control/notify.Notifier)."""

    queued: int
    sent: int
    send_failures: int

    def pending(self) -> int: ...


class _ServiceCounters:
    """The policy service and the notifier keep plain integer counters of their own (no
    prometheus import in them): read at scrape time, absent while a service is off."""

    def __init__(
        self,
        policy: Callable[[], PolicyStats | None],
        notifier: Callable[[], NotifierStats | None],
    ) -> None:
        self._policy = policy
        self._notifier = notifier

    def describe(self) -> list[Metric]:
        return []  # families come and go with the services; nothing to check up front

    def collect(self) -> list[Metric]:
        out: list[Metric] = []
        p = self._policy()
        if p is not None:
            for name, text, n in (
                ("dynscreen_policy_requests", "Policy requests answered (Postfix smtpd).",
                 p.requests),
                ("dynscreen_policy_rejects", "Policy requests answered REJECT (a frozen "
                 "account tried to send).", p.rejects),
                ("dynscreen_policy_connection_errors", "Policy connections closed for a "
                 "protocol violation, a timeout or an internal error.", p.errors),
                ("dynscreen_policy_evictions", "Idle policy connections closed to make room "
                 "for a new one (a cap was reached).", p.evicted),
            ):
                out.append(CounterMetricFamily(name, text, value=n))
            out.append(GaugeMetricFamily(
                "dynscreen_policy_connections", "Policy connections open now.", value=p.active
            ))
        n = self._notifier()
        if n is not None:
            out.append(CounterMetricFamily(
                "dynscreen_notices_queued", "Postmaster notices queued.", value=n.queued
            ))
            out.append(CounterMetricFamily(
                "dynscreen_notice_mails_sent", "Notice mails delivered to the relay.",
                value=n.sent,
            ))
            out.append(CounterMetricFamily(
                "dynscreen_notice_send_failures", "Failed attempts to mail notices (relay "
                "down or refusing); each is retried with backoff.", value=n.send_failures,
            ))
            out.append(GaugeMetricFamily(
                "dynscreen_notices_pending", "Notices not mailed yet (queued, waiting for "
                "their rate limit or for the relay).", value=n.pending(),
            ))
        return out


class DovecotPolicyStats(Protocol):
    """What the Dovecot auth policy server counts (control/dovecotpolicy.DovecotPolicyServer)."""

    requests: int
    rejects: int
    delays: int
    reports: int
    errors: int
    evicted: int
    active: int


class _DovecotPolicyCounters:
    """The Dovecot auth policy server's plain counters, read at scrape time; absent while
    it is off (named like the Postfix policy service's, under dynscreen_dovecot_policy_)."""

    def __init__(self, server: Callable[[], DovecotPolicyStats | None]) -> None:
        self._server = server

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        d = self._server()
        if d is None:
            return []
        out: list[Metric] = [CounterMetricFamily(name, text, value=n) for name, text, n in (
            ("dynscreen_dovecot_policy_requests", "Dovecot auth policy requests answered "
             "(allow and report).", d.requests),
            ("dynscreen_dovecot_policy_rejects", "Dovecot allow requests answered -1 (a "
             "blocked source, or a frozen account with freeze_scope login).", d.rejects),
            ("dynscreen_dovecot_policy_delays", "Dovecot allow requests answered with a "
             "delay (dovecot_policy_delay: a source with failed logins).", d.delays),
            ("dynscreen_dovecot_policy_reports", "Dovecot login reports handed to the "
             "engine.", d.reports),
            ("dynscreen_dovecot_policy_connection_errors", "Dovecot policy connections "
             "closed for a protocol violation, a timeout or an internal error.", d.errors),
            ("dynscreen_dovecot_policy_evictions", "Idle Dovecot policy connections closed "
             "to make room for a new one (a cap was reached).", d.evicted),
        )]
        out.append(GaugeMetricFamily("dynscreen_dovecot_policy_connections",
                                     "Dovecot policy connections open now.", value=d.active))
        return out


class _RecordCounters:
    """The history writer's and the webhook sender's plain counters (control/history.py,
    control/webhook.py), read at scrape time; the webhook's are absent while it is off."""

    def __init__(self, history: Callable[[], Any], webhook: Callable[[], Any]) -> None:
        self._history = history
        self._webhook = webhook

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        out: list[Metric] = []
        h = self._history()
        if h is not None:
            for name, text, n in (
                ("dynscreen_history_rows_written", "Rows written to the history.", h.written),
                ("dynscreen_history_rows_dropped", "History rows dropped: the writer was "
                 "behind (its queue full) or the database could not be written.", h.dropped),
                ("dynscreen_history_databases_replaced", "Damaged history databases set "
                 "aside and started anew.", h.replaced),
            ):
                out.append(CounterMetricFamily(name, text, value=n))
        w = self._webhook()
        if w is not None:
            for name, text, n in (
                ("dynscreen_webhook_events_queued", "Events queued for the webhook.",
                 w.queued),
                ("dynscreen_webhook_posts", "Batches of events the webhook accepted (2xx).",
                 w.sent),
                ("dynscreen_webhook_post_failures", "Failed POSTs to the webhook; each is "
                 "retried with backoff.", w.send_failures),
            ):
                out.append(CounterMetricFamily(name, text, value=n))
            out.append(GaugeMetricFamily(
                "dynscreen_webhook_events_pending", "Events not delivered to the webhook yet.",
                value=w.pending()))
        return out


class _WithoutCreated:
    """The metrics of `inner` without their ``*_created`` samples.

    prometheus_client exports a ``_created`` time for every counter and histogram
    series; in the text format each becomes a series of its own, doubling what
    Prometheus stores for nothing a mail administrator asks. (The library's own
    switch for this is process-global and missing from 0.16.)
    """

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():  # fresh objects on every collect
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class Metrics:
    """Every metric the daemon exports, in a registry of its own.

    ``wall`` is the clock (Unix time) of the heartbeat and log time stamps, so that
    tests can fake it.
    """

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        process: bool = True,
    ) -> None:
        r = CollectorRegistry(auto_describe=True)  # duplicate names fail here, at once
        self.registry = CollectorRegistry()  # what is served: r without _created
        self.registry.register(_WithoutCreated(r))
        self._lock = threading.Lock()
        if process:  # process_* and python_info, as the global registry would have them
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

        self._up = Gauge(
            "dynscreen_up",
            "1 while the daemon screens (XDP, tracepoint and log watches live), else 0.",
            registry=r,
        )
        info = Gauge(
            "dynscreen_build_info", "The running dynscreen's version (always 1).",
            ["version"], registry=r,
        )
        info.labels(package_version()).set(1)
        self._mode = Gauge(
            "dynscreen_mode",
            "The screening mode in force: 1 for the current one (enforce, monitor, disabled).",
            ["mode"],
            registry=r,
        )
        self._wall = wall
        self._heartbeat = Gauge(
            "dynscreen_heartbeat_timestamp_seconds",
            "When the daemon last renewed its heartbeat in the kernel (Unix time; its start "
            "until the first one): limits needing live counts pause when it goes stale.",
            registry=r,
        )
        self._heartbeat.set(wall())
        self._reloads = Counter(
            "dynscreen_config_reloads",
            "Config reloads (SIGHUP or `dynscreen reload`); a failed one keeps the running config.",
            ["result"],
            registry=r,
        )
        for result in ("ok", "failed"):
            self._reloads.labels(result)

        self._blocks = Gauge(
            "dynscreen_blocks", "Blocks standing now, by reason.", ["reason"], registry=r
        )
        self._block_reasons: set[str] = set(REASONS.values())
        for reason in self._block_reasons:
            self._blocks.labels(reason).set(0)
        self._blocks_made = Counter(
            "dynscreen_blocks_made",
            "Blocks made, by reason and by origin (kernel, logs, manual, file).",
            ["reason", "origin"],
            registry=r,
        )
        for reason in REASONS.values():
            for origin in ORIGINS.values():
                self._blocks_made.labels(reason, origin)

        self._kernel = _KernelCounters()
        r.register(self._kernel)
        self._map_entries = Gauge(
            "dynscreen_map_entries", "Entries in a BPF map.", ["map"], registry=r
        )
        self._map_capacity = Gauge(
            "dynscreen_map_capacity", "Capacity (max_entries) of a BPF map.", ["map"], registry=r
        )

        self._events = Counter(
            "dynscreen_log_events",
            "Events read from the mail logs, by kind (one per signal a line carries).",
            ["kind"],
            registry=r,
        )
        for kind in KINDS:
            self._events.labels(kind)
        self._lines = Counter(
            "dynscreen_log_lines", "Log lines read, by log source.", ["source"], registry=r
        )
        self._parse_errors = Counter(
            "dynscreen_log_parse_errors",
            "Log lines the parser failed on (skipped; the watch goes on), by log source.",
            ["source"],
            registry=r,
        )
        self._skipped = Counter(
            "dynscreen_log_lines_skipped",
            "Log lines skipped unread (longer than the line limit), by log source.",
            ["source"],
            registry=r,
        )
        self._last_read = Gauge(
            "dynscreen_log_last_read_timestamp_seconds",
            "When a line was last read from a log source (Unix time; when its watch started "
            "until the first line), by log source.",
            ["source"],
            registry=r,
        )
        self._lag = Gauge(
            "dynscreen_log_latest_lag_seconds",
            "Processing time minus the latest line's own time stamp, by log source.",
            ["source"],
            registry=r,
        )
        self._lag_hist = Histogram(
            "dynscreen_log_lag_seconds",
            "Distribution of processing time minus each line's own time stamp, by log source.",
            ["source"],
            buckets=LAG_BUCKETS,
            registry=r,
        )

        self._line_failures = Counter(
            "dynscreen_log_line_failures",
            "Log lines whose handling failed after parsing (deciding or applying; logged with "
            "the line, which is skipped; the watch goes on), by log source and stage.",
            ["source", "stage"],
            registry=r,
        )
        self._decision_errors = Counter(
            "dynscreen_decision_errors",
            "Decisions that could not be carried out, by action and cause (map_full: a kernel "
            "map is full; error: anything else). Logged; the other decisions still apply.",
            ["action", "cause"],
            registry=r,
        )
        self._task_restarts = Counter(
            "dynscreen_task_restarts",
            "Restarts of a supervised long-running task after it crashed or ended, by task.",
            ["task"],
            registry=r,
        )
        self._task_up = Gauge(
            "dynscreen_task_up",
            "1 while a supervised task runs, 0 while it waits to be restarted, by task.",
            ["task"],
            registry=r,
        )

        self._frozen = Gauge(
            "dynscreen_frozen_accounts", "Accounts frozen now (cannot send).", registry=r
        )
        self._stall = Gauge(
            "dynscreen_loop_stall_max_seconds",
            "The longest the daemon's event loop was late (a step that held it: logs, the "
            "control socket and the policy service all waited), since start.",
            registry=r,
        )
        self._tracked = Gauge(
            "dynscreen_engine_tracked_sources",
            "Sources the engine keeps counters for (bounded by screening.max_tracked).",
            registry=r,
        )
        self._fleet = Gauge(
            "dynscreen_fleet_state",
            "Sharing of state with other gateways: 1 for the current state (off: no fleet "
            "configured; connected; degraded: configured but not in touch).",
            ["state"],
            registry=r,
        )
        self.set_fleet_state("off")
        self._services: _ServiceCounters | None = None
        self._collected = r  # what _WithoutCreated serves: later collectors go here too

    # ---- daemon state ----------------------------------------------------------------

    def set_up(self, up: bool) -> None:
        """Screening is live (True) or not yet / no longer (False)."""
        self._up.set(1 if up else 0)

    def set_mode(self, mode: str) -> None:
        """The mode in force: enforce, monitor, or disabled (screening.enabled = false)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
        for m in MODES:
            self._mode.labels(m).set(1 if m == mode else 0)

    def heartbeat(self) -> None:
        """The daemon renewed its kernel heartbeat just now."""
        self._heartbeat.set(self._wall())

    def set_fleet_state(self, state: str) -> None:
        """The fleet link's state: off, connected or degraded (FLEET_STATES)."""
        if state not in FLEET_STATES:
            raise ValueError(f"unknown fleet state {state!r} (one of {', '.join(FLEET_STATES)})")
        for s in FLEET_STATES:
            self._fleet.labels(s).set(1 if s == state else 0)

    def watch_services(
        self,
        policy: Callable[[], PolicyStats | None],
        notifier: Callable[[], NotifierStats | None],
    ) -> None:
        """Export the counters of the policy service and the notifier that ``policy()`` and
        ``notifier()`` return at each scrape (None: that one is off)."""
        if self._services is not None:
            raise RuntimeError("watch_services was called already")
        self._services = _ServiceCounters(policy, notifier)
        self._collected.register(self._services)

    def watch_dovecot_policy(self, server: Callable[[], DovecotPolicyStats | None]) -> None:
        """Export the Dovecot auth policy server's counters (``server()`` None: it is off)."""
        self._collected.register(_DovecotPolicyCounters(server))

    def watch_records(self, history: Callable[[], Any], webhook: Callable[[], Any]) -> None:
        """Export the history's and the webhook's counters (``webhook()`` None: it is off)."""
        self._collected.register(_RecordCounters(history, webhook))

    def reloaded(self, ok: bool) -> None:
        """A reload was attempted; ok=False when the new config was refused."""
        self._reloads.labels("ok" if ok else "failed").inc()

    # ---- blocks and the kernel -------------------------------------------------------

    def set_blocks(self, reasons: Iterable[str]) -> None:
        """The blocks standing now, one reason per block; reasons absent drop to 0."""
        counts = Tally(reasons)
        with self._lock:  # two callers must not interleave their zeroing and setting
            self._block_reasons |= set(counts)
            for reason in self._block_reasons:
                self._blocks.labels(reason).set(counts.get(reason, 0))

    def set_block_counts(self, counts: Mapping[str, int]) -> None:
        """set_blocks from counts by reason (the block index keeps them: no walk)."""
        with self._lock:
            self._block_reasons |= set(counts)
            for reason in self._block_reasons:
                self._blocks.labels(reason).set(counts.get(reason, 0))

    def block_made(self, reason: str, origin: str, n: int = 1) -> None:
        """One block was made (origin: kernel, logs, manual or file); n: a batch of them."""
        self._blocks_made.labels(reason, origin).inc(n)

    def set_kernel_counters(self, counters: Mapping[str, int]) -> None:
        """The kernel's counters as read (names of abi.COUNTERS; ValueError on others)."""
        self._kernel.update(counters)

    def set_map_fill(self, name: str, entries: int, capacity: int) -> None:
        """How full a BPF map is: a full block table refuses new blocks."""
        self._map_entries.labels(name).set(entries)
        self._map_capacity.labels(name).set(capacity)

    # ---- logs ------------------------------------------------------------------------

    def observe_event(self, kind: str) -> None:
        """One event of `kind` (events.KINDS) came out of a log line."""
        self._events.labels(kind).inc()

    def log_source_started(self, source: str) -> None:
        """The watch of `source` started: a source that never says anything shows as silent."""
        self._lines.labels(source)
        self._last_read.labels(source).set(self._wall())

    def lines_read(self, source: str, n: int = 1) -> None:
        """`n` lines were read from log source `source` (its LogSource.name)."""
        self._lines.labels(source).inc(n)
        self._last_read.labels(source).set(self._wall())

    def parse_error(self, source: str) -> None:
        """The parser raised on a line of `source`; the line was skipped."""
        self._parse_errors.labels(source).inc()

    def line_skipped(self, source: str) -> None:
        """The follower skipped an over-long line of `source`."""
        self._skipped.labels(source).inc()

    def observe_lag(self, source: str, seconds: float) -> None:
        """A line of `source` stamped `seconds` ago was processed now."""
        self._lag.labels(source).set(seconds)
        self._lag_hist.labels(source).observe(max(0.0, seconds))

    def line_failed(self, source: str, stage: str) -> None:
        """Handling a line of `source` failed at `stage` (decide or apply); line skipped."""
        self._line_failures.labels(source, stage).inc()

    def decision_failed(self, action: str, cause: str) -> None:
        """A decision (block, exempt, freeze, notify) failed: cause map_full or error."""
        self._decision_errors.labels(action, cause).inc()

    # ---- supervised tasks ------------------------------------------------------------

    def task_restarted(self, task: str) -> None:
        """A supervised task crashed or ended and is being restarted."""
        self._task_restarts.labels(task).inc()

    def set_task_up(self, task: str, up: bool) -> None:
        """A supervised task runs (True) or waits for its restart (False)."""
        self._task_up.labels(task).set(1 if up else 0)

    # ---- accounts and engine ---------------------------------------------------------

    def set_frozen_accounts(self, n: int) -> None:
        """Accounts frozen now (accounts.freeze)."""
        self._frozen.set(n)

    def set_loop_stall_max(self, seconds: float) -> None:
        """The worst lateness of the event loop measured so far."""
        self._stall.set(seconds)

    def set_tracked_sources(self, n: int) -> None:
        """Sources the engine tracks now: near max_tracked, the oldest are being evicted."""
        self._tracked.set(n)

    # ---- serving ---------------------------------------------------------------------

    def start_server(self, listen: str) -> MetricsServer | None:
        """Serve these metrics on ``[daemon].metrics_listen``; see the module's start_server."""
        return start_server(self, listen)


# ---- the HTTP endpoint -------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (every scrape would write a line), and no idle client
    holds a thread forever."""

    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    """prometheus_client's ThreadingWSGIServer, with threads that never delay exit."""

    daemon_threads = True
    block_on_close = False


class MetricsServer:
    """The running endpoint: ``close()`` stops it and frees the port."""

    def __init__(self, httpd: WSGIServer, listen: str) -> None:
        self._httpd = httpd
        self.listen = listen
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="dynscreen-metrics", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (the port is real even when 0 was asked for)."""
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def alive(self) -> bool:
        """Is the serving thread still running? (the daemon restarts a dead endpoint)"""
        return self._thread.is_alive()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(metrics: Metrics, listen: str) -> MetricsServer | None:
    """Serve `metrics` on ``host:port`` in a thread; "" (metrics off) serves nothing.

    Serves prometheus_client's WSGI app on the metrics' own registry (any path,
    ``/metrics`` included). A bad address or a port in use is a MetricsError
    naming metrics_listen, for the daemon to report before it screens anything.
    """
    if listen == "":
        return None
    where = f'metrics_listen "{listen}"'
    try:
        host, port = split_host_port(listen)
    except ValueError as e:
        raise MetricsError(f"{where}: {e}") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise MetricsError(f"{where}: cannot resolve {host}: {e.strerror}") from None
    family, _, _, _, sockaddr = infos[0]

    class Server(_Server):
        address_family = family

    try:
        httpd = make_server(
            sockaddr[0], port, make_wsgi_app(metrics.registry), Server, handler_class=_QuietHandler
        )
    except OSError as e:
        raise MetricsError(f"{where}: cannot listen: {e.strerror or e}") from None
    return MetricsServer(httpd, listen)
