"""An empty XDP program (returns XDP_PASS): the baseline the XDP benchmark subtracts.

Lives here because only control/dataplane/ may import bcc. Not used by the daemon.
"""

from __future__ import annotations

import os

from dynscreen.control.dataplane import kernel

PROG_NAME = "xdp_empty"
SOURCE = b"int xdp_empty(struct xdp_md *ctx) { return XDP_PASS; }\n"


class BaselineError(Exception):
    """The empty program did not load; the message says why."""


class EmptyXdp:
    """A loaded empty XDP program: run it with bpfsys.prog_test_run(.prog_fd, ...)."""

    def __init__(self, bpf, fn) -> None:  # noqa: ANN001 - bcc objects
        self._bpf = bpf
        self.prog_fd: int = fn.fd

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
            self.prog_fd = -1

    def __enter__(self) -> EmptyXdp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_empty_xdp() -> EmptyXdp:
    """Compile and load `int xdp_empty(struct xdp_md *ctx) { return XDP_PASS; }` with bcc."""
    if os.geteuid() != 0:
        raise BaselineError("loading BPF programs needs root (CAP_BPF)")
    try:
        kernel.ensure_headers()
    except kernel.HostError as e:
        raise BaselineError(str(e)) from None
    from bcc import BPF

    try:
        bpf = BPF(text=SOURCE)
        fn = bpf.load_func(PROG_NAME.encode(), BPF.XDP)
    except Exception as e:  # bcc raises bare Exception
        raise BaselineError(f"the empty XDP program did not load: {e}") from None
    return EmptyXdp(bpf, fn)
