"""The Prometheus endpoint: names and labels dashboards depend on, and the HTTP server."""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dynscreen.control.dataplane.abi import COUNTERS, ORIGINS, REASONS
from dynscreen.control.events import KINDS
from dynscreen.control.lab.netns import inside, sh
from dynscreen.control.metrics import (
    CONNECTION_COUNTERS,
    KERNEL_EVENTS,
    PACKET_COUNTERS,
    Metrics,
    MetricsError,
    start_server,
)

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
    assert value(s, "dynscreen_log_lag_seconds", source=src) == 45.0  # the latest line
    assert value(s, "dynscreen_log_lag_histogram_seconds_count", source=src) == 2
    assert value(s, "dynscreen_log_lag_histogram_seconds_sum", source=src) == pytest.approx(45.7)
    assert value(s, "dynscreen_log_lag_histogram_seconds_bucket", source=src, le="1.0") == 1
    assert value(s, "dynscreen_log_lag_histogram_seconds_bucket", source=src, le="60.0") == 2


def test_negative_lag_shows_in_the_gauge_but_counts_as_zero(m: Metrics) -> None:
    """A log clock ahead of ours is worth seeing; it must not shrink the histogram's sum."""
    m.observe_lag("/var/log/mail.log", -3600.0)
    s = scrape(m)
    assert value(s, "dynscreen_log_lag_seconds", source="/var/log/mail.log") == -3600.0
    assert value(s, "dynscreen_log_lag_histogram_seconds_sum", source="/var/log/mail.log") == 0
    assert value(
        s, "dynscreen_log_lag_histogram_seconds_bucket", source="/var/log/mail.log", le="0.5"
    ) == 1


# ---- daemon state -------------------------------------------------------------------


def test_up_mode_start_time_frozen_tracked_reloads() -> None:
    m = Metrics(wall=FakeClock(1_700_000_000.0), process=False)
    s = scrape(m)
    assert value(s, "dynscreen_up") == 0
    assert value(s, "dynscreen_start_time_seconds") == 1_700_000_000.0
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


def test_heartbeat_age_grows_between_scrapes() -> None:
    """Computed at scrape time, so a daemon stuck elsewhere shows an age that keeps rising."""
    mono = FakeClock(100.0)
    m = Metrics(mono=mono, process=False)
    mono.t = 130.0
    assert value(scrape(m), "dynscreen_heartbeat_age_seconds") == 30.0  # never: since start
    m.heartbeat()
    mono.t = 132.5
    assert value(scrape(m), "dynscreen_heartbeat_age_seconds") == 2.5
    mono.t = 200.0
    assert value(scrape(m), "dynscreen_heartbeat_age_seconds") == 70.0


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
