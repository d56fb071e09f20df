"""The Prometheus endpoint: names and labels dashboards depend on, and the HTTP server."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dynscreen.control.dataplane.abi import COUNTERS, ORIGINS, REASONS
from dynscreen.control.dovecotpolicy import DovecotPolicyServer
from dynscreen.control.events import KINDS
from dynscreen.control.lab.netns import inside, sh
from dynscreen.control.metrics import (
    CONNECTION_COUNTERS,
    FLEET_STATES,
    KERNEL_EVENTS,
    PACKET_COUNTERS,
    Metrics,
    MetricsError,
    start_server,
)
from dynscreen.control.notify import Notifier
from dynscreen.control.policy import PolicyServer

from conftest import require, require_root

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def scrape(m: Metrics) -> Samples:
    return parse(generate_latest(m.registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def m() -> Metrics:
    return Metrics(process=False)


# ---- kernel counters ----------------------------------------------------------------


def test_every_kernel_counter_is_exported_exactly_once() -> None:
    mapped = list(PACKET_COUNTERS) + list(KERNEL_EVENTS) + list(CONNECTION_COUNTERS)
    assert sorted(mapped) == sorted(COUNTERS)
    assert len(set(PACKET_COUNTERS.values())) == len(PACKET_COUNTERS)  # disjoint series


def test_kernel_counters_become_packets_events_and_connections(m: Metrics) -> None:
    n = {name: i + 1 for i, name in enumerate(COUNTERS)}
    m.set_kernel_counters(n)
    s = scrape(m)
    packets = series(s, "dynscreen_packets_total")
    assert len(packets) == len(PACKET_COUNTERS)
    for name, (verdict, reason) in PACKET_COUNTERS.items():
        assert value(s, "dynscreen_packets_total", verdict=verdict, reason=reason) == n[name]
    # The scheme, spelled out where a dashboard would rely on it:
    expected = {
        ("passed", "clean"): "passed",
        ("passed", "whitelist"): "whitelist_pass",
        ("dropped", "blocked"): "drop_blocked",
        ("dropped", "session"): "drop_session",
        ("dropped", "syn_cap"): "drop_syn_cap",
        ("dropped", "connections"): "drop_rate",
        ("dropped", "simultaneous"): "drop_simultaneous",
        ("monitor_pass", "would_drop"): "monitor_pass",
    }
    for (verdict, reason), name in expected.items():
        assert value(s, "dynscreen_packets_total", verdict=verdict, reason=reason) == n[name]
    assert {dict(k)["verdict"] for k in packets} == {"passed", "dropped", "monitor_pass"}
    for name in KERNEL_EVENTS:
        assert value(s, "dynscreen_kernel_events_total", event=name) == n[name]
    assert value(s, "dynscreen_connections_total", event="opened") == n["tp_opened"]
    assert value(s, "dynscreen_connections_total", event="closed") == n["tp_closed"]


def test_drop_reasons_match_block_reasons() -> None:
    """A dashboard joins drops and blocks on `reason`: the limit drops use block reasons."""
    limit_drops = {PACKET_COUNTERS["drop_rate"][1], PACKET_COUNTERS["drop_simultaneous"][1]}
    assert limit_drops <= set(REASONS.values())


def test_kernel_counters_absent_until_read_and_exported_as_read(m: Metrics) -> None:
    assert series(scrape(m), "dynscreen_packets_total") == {}
    m.set_kernel_counters({"passed": 100, "drop_blocked": 7})
    m.set_kernel_counters({"passed": 3})  # maps recreated after a detach: a counter reset
    s = scrape(m)
    assert value(s, "dynscreen_packets_total", verdict="passed", reason="clean") == 3
    assert ("dynscreen_packets_total",
            frozenset({"verdict": "dropped", "reason": "blocked"}.items())) not in s


def test_program_skips_become_their_own_series(m: Metrics) -> None:
    """DataPlane.counters() carries each program's skip count under PROGRAM_SKIPS + its
    label: one series per program, not a packet or event series."""
    from dynscreen.control.dataplane.abi import PROGRAM_SKIPS

    m.set_kernel_counters({"passed": 1, PROGRAM_SKIPS + "inet_sock_set_state": 129,
                           PROGRAM_SKIPS + "xdp_screen": 0})
    s = scrape(m)
    assert value(s, "dynscreen_kernel_program_skips_total", program="inet_sock_set_state") == 129
    assert value(s, "dynscreen_kernel_program_skips_total", program="xdp_screen") == 0
    assert len(series(s, "dynscreen_kernel_events_total")) == 0
    assert value(s, "dynscreen_packets_total", verdict="passed", reason="clean") == 1


def test_unknown_kernel_counter_is_refused(m: Metrics) -> None:
    with pytest.raises(ValueError, match="drop_bogus"):
        m.set_kernel_counters({"passed": 1, "drop_bogus": 2})


def test_map_fill(m: Metrics) -> None:
    m.set_map_fill("blocks", 12, 1_000_000)
    m.set_map_fill("track", 300, 1_000_000)
    m.set_map_fill("blocks", 11, 1_000_000)
    s = scrape(m)
    assert value(s, "dynscreen_map_entries", map="blocks") == 11
    assert value(s, "dynscreen_map_entries", map="track") == 300
    assert value(s, "dynscreen_map_capacity", map="blocks") == 1_000_000


# ---- blocks -------------------------------------------------------------------------


def test_blocks_standing_by_reason_drop_back_to_zero(m: Metrics) -> None:
    s = scrape(m)
    assert series(s, "dynscreen_blocks") == {
        frozenset({("reason", r)}): 0 for r in REASONS.values()
    }
    m.set_blocks(["auth_failures", "auth_failures", "connections", "manual"])
    s = scrape(m)
    assert value(s, "dynscreen_blocks", reason="auth_failures") == 2
    assert value(s, "dynscreen_blocks", reason="connections") == 1
    assert value(s, "dynscreen_blocks", reason="rsets") == 0
    m.set_blocks(["manual"])
    s = scrape(m)
    assert value(s, "dynscreen_blocks", reason="auth_failures") == 0
    assert value(s, "dynscreen_blocks", reason="manual") == 1


def test_blocks_made_by_reason_and_origin(m: Metrics) -> None:
    s = scrape(m)
    made = series(s, "dynscreen_blocks_made_total")
    assert len(made) == len(REASONS) * len(ORIGINS)  # every series exists from the start
    assert set(made.values()) == {0}
    m.block_made("connections", "kernel")
    m.block_made("connections", "kernel")
    m.block_made("auth_failures", "logs")
    s = scrape(m)
    assert value(s, "dynscreen_blocks_made_total", reason="connections", origin="kernel") == 2
    assert value(s, "dynscreen_blocks_made_total", reason="auth_failures", origin="logs") == 1
    assert value(s, "dynscreen_blocks_made_total", reason="manual", origin="manual") == 0


# ---- logs ---------------------------------------------------------------------------


def test_log_events_lines_and_errors(m: Metrics) -> None:
    assert set(series(scrape(m), "dynscreen_log_events_total").values()) == {0}
    for kind in ("auth_failure", "auth_failure", "connect"):
        m.observe_event(kind)
    m.lines_read("/var/log/mail.log", 40)
    m.lines_read("journal:dovecot.service")
    m.parse_error("/var/log/mail.log")
    m.line_skipped("journal:dovecot.service")
    s = scrape(m)
    assert {dict(k)["kind"] for k in series(s, "dynscreen_log_events_total")} == set(KINDS)
    assert value(s, "dynscreen_log_events_total", kind="auth_failure") == 2
    assert value(s, "dynscreen_log_events_total", kind="connect") == 1
    assert value(s, "dynscreen_log_lines_total", source="/var/log/mail.log") == 40
    assert value(s, "dynscreen_log_lines_total", source="journal:dovecot.service") == 1
    assert value(s, "dynscreen_log_parse_errors_total", source="/var/log/mail.log") == 1
    assert value(s, "dynscreen_log_lines_skipped_total", source="journal:dovecot.service") == 1


def test_log_lag_gauge_and_histogram(m: Metrics) -> None:
    src = "/var/log/mail.log"
    m.observe_lag(src, 0.7)
    m.observe_lag(src, 45.0)
    s = scrape(m)
    assert value(s, "dynscreen_log_latest_lag_seconds", source=src) == 45.0  # the latest line
    assert value(s, "dynscreen_log_lag_seconds_count", source=src) == 2
    assert value(s, "dynscreen_log_lag_seconds_sum", source=src) == pytest.approx(45.7)
    assert value(s, "dynscreen_log_lag_seconds_bucket", source=src, le="1.0") == 1
    assert value(s, "dynscreen_log_lag_seconds_bucket", source=src, le="60.0") == 2


def test_negative_lag_shows_in_the_gauge_but_counts_as_zero(m: Metrics) -> None:
    """A log clock ahead of ours is worth seeing; it must not shrink the histogram's sum."""
    m.observe_lag("/var/log/mail.log", -3600.0)
    s = scrape(m)
    assert value(s, "dynscreen_log_latest_lag_seconds", source="/var/log/mail.log") == -3600.0
    assert value(s, "dynscreen_log_lag_seconds_sum", source="/var/log/mail.log") == 0
    assert value(s, "dynscreen_log_lag_seconds_bucket", source="/var/log/mail.log", le="0.5") == 1


# ---- daemon state -------------------------------------------------------------------


def test_up_mode_build_info_frozen_tracked_reloads() -> None:
    m = Metrics(process=False)
    s = scrape(m)
    assert value(s, "dynscreen_up") == 0
    assert series(s, "dynscreen_build_info") == {
        frozenset({("version", importlib.metadata.version("dynscreen"))}): 1
    }
    assert not [n for n, _ in s if "start_time" in n]  # the process collector's job
    m.set_up(True)
    m.set_mode("monitor")
    m.set_frozen_accounts(2)
    m.set_tracked_sources(1234)
    m.reloaded(True)
    m.reloaded(False)
    m.reloaded(True)
    s = scrape(m)
    assert value(s, "dynscreen_up") == 1
    assert series(s, "dynscreen_mode") == {
        frozenset({("mode", "enforce")}): 0,
        frozenset({("mode", "monitor")}): 1,
        frozenset({("mode", "disabled")}): 0,
    }
    assert value(s, "dynscreen_frozen_accounts") == 2
    assert value(s, "dynscreen_engine_tracked_sources") == 1234
    assert value(s, "dynscreen_config_reloads_total", result="ok") == 2
    assert value(s, "dynscreen_config_reloads_total", result="failed") == 1
    with pytest.raises(ValueError, match="bogus"):
        m.set_mode("bogus")


def test_heartbeat_is_a_timestamp() -> None:
    """A point in time, so `time() - x` keeps growing while a stuck daemon renews nothing."""
    wall = FakeClock(1_700_000_000.0)
    m = Metrics(wall=wall, process=False)
    wall.t += 30
    assert value(scrape(m), "dynscreen_heartbeat_timestamp_seconds") == 1_700_000_000.0  # start
    m.heartbeat()
    wall.t += 70
    assert value(scrape(m), "dynscreen_heartbeat_timestamp_seconds") == 1_700_000_030.0


def test_log_source_last_read_timestamp() -> None:
    wall = FakeClock(1_700_000_000.0)
    m = Metrics(wall=wall, process=False)
    m.log_source_started("journal:postfix@-.service")  # silent from the start: still shown
    m.log_source_started("/var/log/mail.log")
    wall.t += 5
    m.lines_read("/var/log/mail.log", 3)
    s = scrape(m)
    assert value(s, "dynscreen_log_last_read_timestamp_seconds",
                 source="journal:postfix@-.service") == 1_700_000_000.0
    assert value(s, "dynscreen_log_lines_total", source="journal:postfix@-.service") == 0
    assert value(s, "dynscreen_log_last_read_timestamp_seconds",
                 source="/var/log/mail.log") == 1_700_000_005.0


def test_fleet_state_is_off_until_a_fleet_says_otherwise(m: Metrics) -> None:
    off = {frozenset({("state", st)}): float(st == "off") for st in FLEET_STATES}
    assert series(scrape(m), "dynscreen_fleet_state") == off
    m.set_fleet_state("degraded")
    assert value(scrape(m), "dynscreen_fleet_state", state="degraded") == 1
    assert value(scrape(m), "dynscreen_fleet_state", state="off") == 0
    with pytest.raises(ValueError, match="bogus"):
        m.set_fleet_state("bogus")


# ---- the policy service and the notifier ---------------------------------------------


class FrozenEve:
    def is_frozen(self, user: str, now: float) -> bool:
        return user == "eve"


def test_policy_and_notifier_counters_are_exported_while_they_run(
    m: Metrics, tmp_path: Path
) -> None:
    policy: list[PolicyServer | None] = [None]
    notifier: list[Notifier | None] = [None]
    m.watch_services(lambda: policy[0], lambda: notifier[0])
    s = scrape(m)
    assert not [n for n, _ in s if n.startswith(("dynscreen_policy", "dynscreen_notice"))]

    p = PolicyServer(FrozenEve())
    for user in ("alice", "eve", "eve"):
        p.decide({"request": "smtpd_access_policy", "sasl_username": user})
    p.errors, p.evicted, p.active = 4, 5, 6
    policy[0] = p
    n = Notifier("postmaster@example.com", ("127.0.0.1", 9), 10, spool=tmp_path / "spool")
    n.notify("bob", "imap", "203.0.113.7", 10, 1_700_000_000.0, False)
    n.notify("carol", "pop", "203.0.113.8", 10, 1_700_000_000.0, True)
    n.sent, n.send_failures = 7, 8
    notifier[0] = n
    s = scrape(m)
    assert value(s, "dynscreen_policy_requests_total") == 3
    assert value(s, "dynscreen_policy_rejects_total") == 2
    assert value(s, "dynscreen_policy_connection_errors_total") == 4
    assert value(s, "dynscreen_policy_evictions_total") == 5
    assert value(s, "dynscreen_policy_connections") == 6
    assert value(s, "dynscreen_notices_queued_total") == 2
    assert value(s, "dynscreen_notices_pending") == 2
    assert value(s, "dynscreen_notice_mails_sent_total") == 7
    assert value(s, "dynscreen_notice_send_failures_total") == 8


def dovecot_server() -> DovecotPolicyServer:
    """A Dovecot policy server whose counters moved through its own answers."""
    d = DovecotPolicyServer(blocked={"203.0.113.9"}.__contains__, frozen=FrozenEve(),
                            on_report=lambda r: None, suspicious={"192.0.2.7"}.__contains__,
                            delay=2)
    for remote in ("203.0.113.9", "203.0.113.9", "192.0.2.7", "198.51.100.1"):
        d.allow({"remote": remote, "login": "alice"})
    report = d.report({"remote": "192.0.2.7", "login": "alice", "success": False})
    assert report is not None
    d._report(report)
    d.requests = 5  # (counted as HTTP requests are read)
    d.errors, d.evicted, d.active = 3, 4, 6
    return d


def test_dovecot_policy_counters_are_exported_while_it_runs(m: Metrics) -> None:
    server: list[DovecotPolicyServer | None] = [None]
    m.watch_dovecot_policy(lambda: server[0])
    assert not [n for n, _ in scrape(m) if n.startswith("dynscreen_dovecot_policy")]
    server[0] = dovecot_server()
    s = scrape(m)
    assert value(s, "dynscreen_dovecot_policy_requests_total") == 5
    assert value(s, "dynscreen_dovecot_policy_rejects_total") == 2
    assert value(s, "dynscreen_dovecot_policy_delays_total") == 1
    assert value(s, "dynscreen_dovecot_policy_reports_total") == 1
    assert value(s, "dynscreen_dovecot_policy_connection_errors_total") == 3
    assert value(s, "dynscreen_dovecot_policy_evictions_total") == 4
    assert value(s, "dynscreen_dovecot_policy_connections") == 6
    server[0] = None  # stopped by a reload: its series go
    assert not [n for n, _ in scrape(m) if n.startswith("dynscreen_dovecot_policy")]


# ---- names ----------------------------------------------------------------------------

_TYPE_WORDS = {"counter", "gauge", "histogram", "summary", "info"}


def full_metrics() -> Metrics:
    """Every family the daemon can export, each with a sample (the dashboard test's too)."""
    m = Metrics()
    m.set_mode("enforce")
    from dynscreen.control.dataplane.abi import PROGRAM_SKIPS

    m.set_kernel_counters({**dict.fromkeys(COUNTERS, 1), PROGRAM_SKIPS + "ds_handshake": 1})
    m.watch_services(lambda: PolicyServer(FrozenEve()),
                     lambda: Notifier("pm@example.com", ("127.0.0.1", 9), 10))
    m.watch_dovecot_policy(dovecot_server)
    m.set_map_fill("blocks", 1, 10)
    m.log_source_started("f")
    m.lines_read("f")
    m.parse_error("f")
    m.line_skipped("f")
    m.observe_lag("f", 1.0)
    m.line_failed("f", "decide")
    m.decision_failed("block", "error")
    m.task_restarted("t")
    m.set_task_up("t", True)
    return m


def test_names_follow_prometheus_conventions() -> None:
    text = generate_latest(full_metrics().registry).decode()
    families = [f for f in text_string_to_metric_families(text) if f.name.startswith("dynscreen_")]
    assert len(families) > 30
    for f in families:
        assert f.samples, f"{f.name}: no sample in the full scrape"
        words = f.name.split("_")
        typed = _TYPE_WORDS & set(words[:-1] if f.name.endswith("_info") else words)
        assert not typed, f"{f.name}: the type is in the name"
        for sample in f.samples:
            if f.type == "counter":
                assert sample.name == f.name + "_total", sample.name
            else:
                assert not sample.name.endswith("_total"), f"{sample.name}: a {f.type}"
        if {"lag", "time", "timestamp", "duration"} & set(words):
            assert f.name.endswith("_seconds"), f"{f.name}: time in base units, _seconds"
        assert "age" not in words, f"{f.name}: export a timestamp, not an age"
    info = [f for f in families if f.name == "dynscreen_build_info"]
    assert [(s.labels.keys(), s.value) for s in info[0].samples] == [({"version"}, 1)]


# ---- the registry -------------------------------------------------------------------


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(process=False), Metrics(process=False)  # a global registry would refuse b
    a.block_made("rsets", "logs")
    assert value(scrape(b), "dynscreen_blocks_made_total", reason="rsets", origin="logs") == 0
    global_names = {name for name, _ in parse(generate_latest(REGISTRY).decode())}
    assert not [n for n in global_names if n.startswith("dynscreen_")]


def test_no_created_series_and_process_metrics_present() -> None:
    s = scrape(Metrics())
    assert not [name for name, _ in s if name.endswith("_created")]
    assert ("process_start_time_seconds", frozenset()) in s


# ---- the HTTP endpoint --------------------------------------------------------------


def free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture
def listening() -> Iterator[tuple[str, socket.socket]]:
    """A loopback port held by another listener."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield f"127.0.0.1:{s.getsockname()[1]}", s
    finally:
        s.close()


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:  # loopback only
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def test_server_serves_metrics_and_frees_its_port(m: Metrics) -> None:
    m.block_made("manual", "manual")
    m.set_kernel_counters({"drop_blocked": 5})
    port = free_port()
    server = start_server(m, f"127.0.0.1:{port}")
    assert server is not None
    try:
        assert server.address == ("127.0.0.1", port)
        s = parse(fetch(f"http://127.0.0.1:{port}/metrics"))
        assert value(s, "dynscreen_blocks_made_total", reason="manual", origin="manual") == 1
        assert value(s, "dynscreen_packets_total", verdict="dropped", reason="blocked") == 5
        m.block_made("manual", "manual")  # live: the next scrape sees it
        s = parse(fetch(f"http://127.0.0.1:{port}/metrics"))
        assert value(s, "dynscreen_blocks_made_total", reason="manual", origin="manual") == 2
    finally:
        server.close()
    again = start_server(m, f"127.0.0.1:{port}")  # closed: a restarted daemon gets the port
    assert again is not None
    again.close()


def _serves_on_ipv6_loopback(m: Metrics) -> None:
    port = free_port(socket.AF_INET6, "::1")
    with m.start_server(f"[::1]:{port}") as server:  # type: ignore[union-attr]
        assert server.address[1] == port
        assert "dynscreen_up" in fetch(f"http://[::1]:{port}/metrics")


def _has_ipv6_loopback() -> bool:
    try:
        free_port(socket.AF_INET6, "::1")
    except OSError:
        return False
    return True


def test_server_on_ipv6_loopback(m: Metrics) -> None:
    """On the host's own ::1 (a host without IPv6 loopback skips, CI=true fails)."""
    require(_has_ipv6_loopback(), "no IPv6 loopback on this host")
    _serves_on_ipv6_loopback(m)


def test_server_on_ipv6_loopback_of_a_namespace(m: Metrics) -> None:
    """The same in a network namespace of its own, where lo has ::1 whatever the host's
    settings: it runs wherever root does."""
    require_root()
    ns = f"dsmetrics{os.getpid() % 100000}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        with inside(ns):  # the server's socket and the client's are made in the namespace
            _serves_on_ipv6_loopback(m)
    finally:
        sh("ip", "netns", "del", ns, check=False)


def test_empty_listen_means_off(m: Metrics) -> None:
    assert start_server(m, "") is None


def test_port_in_use_names_metrics_listen(m: Metrics, listening: tuple[str, socket.socket]) -> None:
    listen, _ = listening
    with pytest.raises(MetricsError) as e:
        start_server(m, listen)
    assert f'metrics_listen "{listen}"' in str(e.value)
    assert "in use" in str(e.value)


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("127.0.0.1", "host:port"),
        ("127.0.0.1:99999", "port from 1 to 65535"),
        ("203.0.113.1:9466", "cannot listen"),  # TEST-NET-3: no local interface has it
    ],
)
def test_bad_address_names_metrics_listen(m: Metrics, listen: str, why: str) -> None:
    with pytest.raises(MetricsError) as e:
        start_server(m, listen)
    assert str(e.value).startswith(f'metrics_listen "{listen}": ')
    assert why in str(e.value)


# ---- the daemon's wiring ----------------------------------------------------------


def test_the_daemon_exports_its_log_sources_and_services(tmp_path: Path) -> None:
    """What the daemon runs shows up: a log source from its start, the policy service and
    the notifier while they exist (the daemon's own objects, read at each scrape)."""
    from test_supervise import make_daemon, sasl_failure, wait

    d, _, log = make_daemon(tmp_path)
    assert not [n for n, _ in scrape(d.metrics) if n.startswith("dynscreen_policy")]

    async def main() -> tuple[Samples, Samples]:
        d._start_logs()
        assert await wait(lambda: series(scrape(d.metrics),
                                         "dynscreen_log_last_read_timestamp_seconds"))
        silent = scrape(d.metrics)  # watched, nothing read yet
        with log.open("a") as f:
            f.write(sasl_failure("10.9.0.6", "u@example.com", 1) + "\n")
        assert await wait(lambda: value(scrape(d.metrics), "dynscreen_log_lines_total",
                                        source=str(log)) == 1)
        await d._stop_logs()
        return silent, scrape(d.metrics)

    before = time.time()
    silent, after = asyncio.run(main())
    assert value(silent, "dynscreen_log_lines_total", source=str(log)) == 0
    started = value(silent, "dynscreen_log_last_read_timestamp_seconds", source=str(log))
    read = value(after, "dynscreen_log_last_read_timestamp_seconds", source=str(log))
    assert before - 1 <= started <= read <= time.time()

    d.policy = PolicyServer(FrozenEve())
    d.policy.decide({"request": "smtpd_access_policy", "sasl_username": "eve"})
    d.notifier = Notifier("postmaster@localhost", ("127.0.0.1", 9), 10)
    d.notifier.notify("bob", "imap", "203.0.113.7", 10, 1_700_000_000.0, False)
    d.dovecot_policy = dovecot_server()
    s = scrape(d.metrics)
    assert value(s, "dynscreen_policy_rejects_total") == 1
    assert value(s, "dynscreen_notices_pending") == 1
    assert value(s, "dynscreen_dovecot_policy_rejects_total") == 2
