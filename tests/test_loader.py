"""The loader's promises: clear errors, native-else-generic attach, re-attach in the mode in use."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import sh

from dynscreen.control.dataplane import links
from dynscreen.control.dataplane.loader import DataPlane, DataPlaneError

from conftest import require_bpf

pytestmark = pytest.mark.root


@pytest.fixture
def dummy() -> Iterator[str]:
    """A bridge link: it has no native XDP, so attaching must fall back to generic."""
    require_bpf()
    name = f"dsdum{os.getpid() % 10000}"
    sh("ip", "link", "del", name, check=False)
    sh("ip", "link", "add", name, "type", "bridge")
    try:
        yield name
    finally:
        sh("ip", "link", "del", name, check=False)


def test_attach_falls_back_to_generic_and_says_so(dummy: str) -> None:
    dp = DataPlane(pin_path=None, max_blocks=64, max_tracked=64, tracepoint=False)
    dp.load()
    try:
        assert dp.attach([dummy], "auto") == {dummy: "generic"}
        prog_id, mode = links.xdp_state(dummy)
        assert prog_id and mode == "generic"
        dp.detach([dummy])
        with pytest.raises(DataPlaneError, match=f"cannot attach XDP to {dummy}: native"):
            dp.attach([dummy], "native")
    finally:
        dp.detach([dummy])
        dp.close()


def test_reattach_keeps_the_mode_in_use(dummy: str) -> None:
    first = DataPlane(pin_path=None, max_blocks=64, max_tracked=64, tracepoint=False)
    first.load()
    first.attach([dummy], "generic")
    old_id = links.xdp_state(dummy)[0]
    second = DataPlane(pin_path=None, max_blocks=64, max_tracked=64, tracepoint=False)
    second.load()
    try:
        assert second.attach([dummy], "auto") == {dummy: "generic"}
        new_id, mode = links.xdp_state(dummy)
        assert mode == "generic" and new_id != old_id, "replaced in place, same mode"
    finally:
        second.detach([dummy])
        first.close()
        second.close()


def test_missing_interface_is_named() -> None:
    require_bpf()
    dp = DataPlane(pin_path=None, max_blocks=64, max_tracked=64, tracepoint=False)
    dp.load()
    try:
        with pytest.raises(DataPlaneError, match="interface 'nosuch0' does not exist"):
            dp.attach(["nosuch0"])
    finally:
        dp.close()


def test_another_programs_xdp_is_not_replaced(dummy: str) -> None:
    from bcc import BPF  # test-side only: a foreign program on the link

    other = BPF(text=b"int other_prog(struct xdp_md *ctx) { return XDP_PASS; }")
    fn = other.load_func(b"other_prog", BPF.XDP)
    BPF.attach_xdp(dummy.encode(), fn, 1 << 1)
    dp = DataPlane(pin_path=None, max_blocks=64, max_tracked=64, tracepoint=False)
    dp.load()
    try:
        with pytest.raises(DataPlaneError, match="already runs XDP program 'other_prog'"):
            dp.attach([dummy])
    finally:
        BPF.remove_xdp(dummy.encode(), 1 << 1)
        dp.close()


def test_verifier_rejection_prints_the_verifier_lines() -> None:
    require_bpf()
    bad = """
    int xdp_screen(struct xdp_md *ctx) {
        unsigned char *p = (void *)(long)ctx->data;
        return p[20] ? XDP_PASS : XDP_DROP;   /* no bounds check: the verifier refuses */
    }
    """
    dp = DataPlane(pin_path=None, tracepoint=False, source=bad)
    with pytest.raises(DataPlaneError) as e:
        dp.load()
    msg = str(e.value)
    assert "did not load" in msg and "compiler/verifier says" in msg
    assert "invalid access to packet" in msg


def test_compile_error_is_reported() -> None:
    require_bpf()
    dp = DataPlane(pin_path=None, tracepoint=False, source="int xdp_screen(struct xdp_md *c) {")
    with pytest.raises(DataPlaneError, match="did not load"):
        dp.load()


def test_missing_headers_say_how_to_fix(tmp_path: Path) -> None:
    require_bpf()
    code = (
        "from dynscreen.control.dataplane.loader import DataPlane, DataPlaneError\n"
        "try:\n"
        "    DataPlane(pin_path=None, tracepoint=False).load()\n"
        "except DataPlaneError as e:\n"
        "    print(e)\n"
    )
    env = dict(os.environ, BCC_KERNEL_SOURCE=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=False)
    assert "has no include/ folder" in r.stdout
    assert "Traceback" not in r.stderr


def test_without_root_the_error_is_plain() -> None:
    require_bpf()
    code = (
        "from dynscreen.control.dataplane.loader import DataPlane, DataPlaneError\n"
        "try:\n"
        "    DataPlane(pin_path=None, tracepoint=False).load()\n"
        "except DataPlaneError as e:\n"
        "    print(e)\n"
    )
    # As nobody, keeping one capability: CAP_DAC_READ_SEARCH, so that the checkout and its
    # virtualenv can be read wherever they are (a clone inside a 0700 directory too); none
    # of root's BPF or network rights, and not root.
    keep = "dac_read_search"
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        f"--inh-caps=-all,+{keep}", f"--ambient-caps=+{keep}",
                        f"--bounding-set=-all,+{keep}",
                        sys.executable, "-c", "import os; print('euid', os.geteuid())\n" + code],
                       capture_output=True, text=True, check=False)
    assert "euid 65534" in r.stdout, r.stdout + r.stderr
    assert "needs root (CAP_BPF, CAP_NET_ADMIN)" in r.stdout, r.stderr


def test_pinned_table_of_another_size_is_refused(tmp_path: Path) -> None:
    require_bpf()
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    sh("mount", "-t", "bpf", "bpf", str(mnt))
    try:
        pin = mnt / "pins"
        first = DataPlane(pin_path=pin, max_blocks=64, max_tracked=64, tracepoint=False)
        first.load()
        first.close()
        second = DataPlane(pin_path=pin, max_blocks=128, max_tracked=64, tracepoint=False)
        with pytest.raises(DataPlaneError, match="holds 64 entries .* max_blocks is 128"):
            second.load()
        third = DataPlane(pin_path=pin, max_blocks=64, max_tracked=64, tracepoint=False)
        third.load()
        assert third.adopted
        third.close()
    finally:
        sh("umount", str(mnt), check=False)
