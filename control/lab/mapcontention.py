"""The hard case for the socket tracepoint: bpf() map calls running on the CPU that
handles the gateway's packets.

The kernel skips a tracing program on a CPU where a `bpf()` map call is in progress
(bpf_prog_active); a softirq that interrupts such a call has every socket tracepoint
skipped. ``steer_packets`` hands a namespace interface's received packets to one CPU
(RPS) and ``start_walker`` runs a process there that walks a 300,000-entry hash map of
its own, in batches, until its stdin closes. Run as a module, it is that walker.
"""

from __future__ import annotations

import ctypes
import os
import select
import subprocess
import sys

ENTRIES = 300_000
KEY, VALUE = 16, 24


def steer_packets(ns: str, ifname: str, cpu: int) -> None:
    """RPS: every receive queue of ``ifname`` in namespace ``ns`` hands over to ``cpu``."""
    run = ["ip", "netns", "exec", ns, "sh", "-c"]
    queues = subprocess.run([*run, f"ls -d /sys/class/net/{ifname}/queues/rx-*"],
                            capture_output=True, text=True, check=True).stdout.split()
    for q in queues:
        subprocess.run([*run, f"echo {1 << cpu:x} > {q}/rps_cpus"], check=True)


def start_walker(cpu: int) -> subprocess.Popen[str]:
    """The walker on ``cpu``, once its map is filled and it walks (close stdin to end it)."""
    walker = subprocess.Popen(
        ["taskset", "-c", str(cpu), sys.executable, "-m", "dynscreen.control.lab.mapcontention"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert walker.stdout is not None
    said = walker.stdout.readline().strip()
    if said != "walking":
        walker.kill()
        walker.wait()
        raise RuntimeError(f"the map walker did not start: {said or walker.returncode}")
    return walker


def walk() -> None:
    from dynscreen.control.dataplane import bpfsys

    lib = bpfsys._libbpf()
    lib.bpf_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32,
                                   ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p]
    fd = lib.bpf_map_create(1, b"walked", KEY, VALUE, ENTRIES, None)  # BPF_MAP_TYPE_HASH
    if fd < 0:
        sys.exit(f"bpf_map_create: {os.strerror(ctypes.get_errno())}")
    bpfsys.map_update_batch(fd, b"".join(i.to_bytes(KEY, "little") for i in range(ENTRIES)),
                            bytes(VALUE * ENTRIES), ENTRIES)
    print("walking", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        for _ in bpfsys.map_walk(fd, KEY, VALUE):
            pass


if __name__ == "__main__":
    walk()
