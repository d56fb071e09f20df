"""Pins left by an older dynscreen whose maps have another layout.

The program of the previous commit's layout is built from a copy of its source (kept
here as the two things that changed: the counters' count and the config's size), its
maps pinned; the current loader must adopt the blocks and replace the maps it rewrites
whole, instead of letting the verifier refuse the program with an out-of-bounds read.
"""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest
from netns import own_bpffs

from dynscreen.control.dataplane import abi, bpfsys, loader
from dynscreen.control.dataplane.loader import DataPlane

from packets import v4_syn

pytestmark = pytest.mark.root

XDP_DROP, XDP_PASS = 1, 2


def older_layout(tmp: Path) -> Path:
    """bpf/ as before the clock calibration and the drop_fragment and track_fail counters."""
    src = Path(loader.bpf_source()[1])
    header = (src / "dynscreen.h").read_text()
    header = re.sub(r"#define DS_NCOUNTERS\s+\d+", "#define DS_NCOUNTERS 17", header)
    header = re.sub(r"\s*/\* XDP's clock:.*?__u64 jiffies_base_ns;", "", header, flags=re.S)
    assert "jiffy_ns" not in header
    (tmp / "dynscreen.h").write_text(header)
    text = (src / "dynscreen.c").read_text()
    text = text.replace("if (cfg->jiffy_ns)\n        return bpf_jiffies64() * cfg->jiffy_ns"
                        " + cfg->jiffies_base_ns;\n", "")
    text = text.replace("count(DS_C_DROP_FRAGMENT)", "count(DS_C_DROP_SESSION)")
    text = text.replace("count(DS_C_TRACK_FAIL)", "count(DS_C_DROP_SESSION)")
    (tmp / "dynscreen.c").write_text(text)
    return tmp


@pytest.fixture
def pin_dir(tmp_path: Path) -> Iterator[Path]:
    with own_bpffs(f"upgrade-{tmp_path.name[-12:]}") as pins:
        yield pins


def _shape(pin: Path) -> tuple[int, int, int]:
    import os

    fd = bpfsys.obj_get(str(pin))
    try:
        i = bpfsys.map_info_fd(fd)
    finally:
        os.close(fd)
    return (i.key_size, i.value_size, i.max_entries)


def load_older(pin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataPlane:
    """The older layout's program loaded and pinned at ``pin_dir``."""
    old_src = older_layout(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(loader, "bpf_source", lambda: ((old_src / "dynscreen.c").read_text(), old_src))
        m.setattr(DataPlane, "_calibrate_clock", lambda self: (0, 0))
        old = DataPlane(pin_path=pin_dir, max_blocks=64, max_tracked=64, tracepoint=False)
        old.load()
    return old


def test_older_pins_are_adopted_with_their_blocks(pin_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    old = load_older(pin_dir, tmp_path, monkeypatch)
    old.add_block(ip_network("198.51.100.7/32"), time.time() + 600, "manual", "manual")
    old.close()
    assert _shape(pin_dir / "config")[1] == ctypes.sizeof(abi.Config) - 16
    assert _shape(pin_dir / "counters")[2] == 17

    new = DataPlane(pin_path=pin_dir, max_blocks=64, max_tracked=64, tracepoint=False)
    try:
        new.load()
        assert new.adopted
        assert sorted(new.replaced) == ["config", "counters"]
        assert _shape(pin_dir / "config")[1] == ctypes.sizeof(abi.Config)
        assert _shape(pin_dir / "counters")[2] == abi.NCOUNTERS
        new.configure(heartbeat_timeout=None)
        assert [str(b.source) for b in new.list_blocks()] == ["198.51.100.7/32"]
        assert bpfsys.prog_test_run(new.prog_fd, v4_syn("198.51.100.7")).retval == XDP_DROP
        assert new.counters()["drop_blocked"] == 1
    finally:
        new.close()


def test_block_filter_waits_while_another_program_uses_the_table(pin_dir: Path) -> None:
    """A program of an earlier load still using the pinned table (attached elsewhere) adds
    blocks without this load's filter bits: the filter stays disarmed (every packet looks
    the table up) until that program is gone, then arms with what the table holds."""
    old = DataPlane(pin_path=pin_dir, max_blocks=64, max_tracked=64, tracepoint=False)
    old.load()
    new = DataPlane(pin_path=pin_dir, max_blocks=64, max_tracked=64, tracepoint=False)
    try:
        new.load()
        assert not new.filter_armed
        new.configure(heartbeat_timeout=None)
        assert not new.read_config().flags & abi.F_FILTER
        old.add_block(ip_network("198.51.100.7/32"), time.time() + 600, "manual", "manual")
        assert bpfsys.prog_test_run(new.prog_fd, v4_syn("198.51.100.7")).retval == XDP_DROP
        old.close()
        assert new.arm_filter()
        assert new.read_config().flags & abi.F_FILTER
        assert bpfsys.prog_test_run(new.prog_fd, v4_syn("198.51.100.7")).retval == XDP_DROP
    finally:
        old.close()
        new.close()


def test_a_program_left_on_a_replaced_config_stops_trusting_its_cache(
        pin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade replaces the config's pin while the older program is still loaded: that
    program keeps its own config, where no block_gen is raised any more, so the loader
    clears its filter flag (it then looks every source up in the table) and a block the
    new control plane lifts is lifted for it too."""
    old = load_older(pin_dir, tmp_path, monkeypatch)
    new = DataPlane(pin_path=pin_dir, max_blocks=64, max_tracked=64, tracepoint=False)

    class OldConfig(ctypes.Structure):  # the older layout: no clock calibration
        _fields_ = [f for f in abi.Config._fields_
                    if f[0] not in ("jiffy_ns", "jiffies_base_ns")]

    def old_config() -> OldConfig:
        t = old.table("config")
        return OldConfig.from_buffer_copy(bytes(t[t.Key(0)]))

    try:
        old.set_ports([25])
        cfg = old_config()
        cfg.flags |= abi.F_ENABLED
        cfg.block_gen = 1
        t = old.table("config")
        t[t.Key(0)] = t.Leaf.from_buffer_copy(bytes(cfg))
        old.add_block(ip_network("198.51.100.7/32"), time.time() + 600, "manual", "manual")
        assert old_config().flags & abi.F_FILTER
        assert bpfsys.prog_test_run(old.prog_fd, v4_syn("198.51.100.7"), 3).retval == XDP_DROP
        new.load()
        assert "config" in new.replaced
        assert new.remove_block(ip_network("198.51.100.7/32"))
        assert not old_config().flags & abi.F_FILTER
        assert bpfsys.prog_test_run(old.prog_fd, v4_syn("198.51.100.7")).retval == XDP_PASS
    finally:
        old.close()
        new.close()
