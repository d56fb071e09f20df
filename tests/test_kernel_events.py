"""Kernel-made blocks at flood rate: the ring buffer holds a flood, and what does not fit is
counted (events_lost), in the kernel's counters, `status` and the metrics."""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dynscreen.control.addr import source_of
from dynscreen.control.dataplane import abi, bpfsys
from dynscreen.control.dataplane.loader import DataPlane, bpf_source, mono_ns
from dynscreen.control.metrics import Metrics

from conftest import require_bpf
from packets import v4_syn

XDP_DROP = 1
PAGE = 4096
RECORD = ctypes.sizeof(abi.Event) + 8  # BPF_RINGBUF_HDR_SZ, records 8-byte aligned
FLOOD = 100_000  # sources blocked within a minute (issue 12)


def ring_pages(text: str) -> int:
    m = re.search(r"#define DS_RING_PAGES (\d+)", text)
    assert m, "dynscreen.c defines DS_RING_PAGES"
    assert "BPF_RINGBUF_OUTPUT(events, DS_RING_PAGES)" in text
    return int(m.group(1))


def test_ring_buffer_holds_a_flood_unread() -> None:
    """100,000 kernel blocks fit even if the daemon read none of them in that minute."""
    pages = ring_pages(bpf_source()[0])
    assert pages & (pages - 1) == 0, "a ring buffer is a power of two pages"
    assert pages * PAGE // RECORD >= FLOOD


@pytest.fixture
def tiny_ring() -> Iterator[DataPlane]:
    """The real program with a one-page ring (85 records), connection limit 1."""
    require_bpf()
    text, _ = bpf_source()
    d = DataPlane(pin_path=None, tracepoint=False, max_blocks=4096, max_tracked=4096,
                  source="#define DS_RING_PAGES 1\n" + text)
    d.load()
    try:
        d.poll_events(0)
        d.configure(connections=1, syn_per_second=1000, heartbeat_timeout=None)
        yield d
    finally:
        d.close()


def trip(d: DataPlane, src: str) -> None:
    """A source at the connection limit (its handshakes, as the tracepoint counts them)
    sends one SYN more: the kernel blocks it."""
    tr = abi.Track()
    tr.win_start = tr.syn_start = mono_ns()
    tr.cur = 1
    t = d.table("track")
    t[t.Key.from_buffer_copy(bytes(abi.key_for(source_of(src))))] = \
        t.Leaf.from_buffer_copy(bytes(tr))
    assert bpfsys.prog_test_run(d.prog_fd, v4_syn(src)).retval == XDP_DROP, src


def trip_many(d: DataPlane, n: int) -> None:
    for i in range(n):
        trip(d, f"10.66.{i // 250}.{i % 250 + 1}")


def test_events_that_do_not_fit_are_counted_and_exported(tiny_ring: DataPlane) -> None:
    d = tiny_ring
    trip_many(d, 300)
    c = d.counters()
    assert c["blocks_made"] == 300
    fit = PAGE // RECORD
    assert c["events_lost"] == 300 - fit, c
    got = d.poll_events(100)
    assert len(got) == fit, "every record that fitted is delivered"
    assert len(got) + c["events_lost"] == c["blocks_made"], "none vanishes uncounted"
    # Once read, the ring has room again: a later block reaches the daemon.
    trip_more = "10.67.0.1"
    trip(d, trip_more)
    [ev] = d.poll_events(100)
    assert str(ev.source) == f"{trip_more}/32"
    assert d.counters()["events_lost"] == 300 - fit

    # Exported as the kernel's counters (what `status` shows) and as a metric.
    m = Metrics(process=False)
    m.set_kernel_counters(d.counters())
    text = generate_latest(m.registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("dynscreen_kernel_events_total", (("event", "events_lost"),))] == 300 - fit


def test_a_poll_takes_a_bounded_piece_of_a_flood(tiny_ring: DataPlane, monkeypatch) -> None:  # noqa: ANN001
    """One poll delivers at most EVENTS_PER_POLL events (the daemon's loop runs between
    polls); the rest stay in the ring for the next poll, none lost."""
    from dynscreen.control.dataplane import loader

    monkeypatch.setattr(loader, "EVENTS_PER_POLL", 20)
    d = tiny_ring
    trip_many(d, 50)
    assert d.counters()["events_lost"] == 0
    sizes = [len(d.poll_events(0)) for _ in range(4)]
    assert sizes == [20, 20, 10, 0]
