"""The flood benchmark counts a connection as made only when the server has it.

connect() returns once the client has sent its final ACK. Under a flood the client's
veth drops packets on the way to a peer running XDP (its ring fills); a final ACK lost
there, then the client's reset, leaves the server a half-open request it discards: the
server never completed that handshake and dynscreen rightly never counted it. A
benchmark that counts it as made reports that source's next SYN as "answered though
over the limit" and the source as "never blocked" (126 of 100,000 sources in one run).
Here every pure ACK the client sends is dropped (nftables, in the client namespace), so no
handshake completes on the server: the client must report none made.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import NetLab, sh

from conftest import have, require, require_root

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import flood_bench  # noqa: E402

pytestmark = [pytest.mark.root]

PORT = 2525


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_root()
    require(have("ip") and have("nft") and have("nstat"), "needs iproute2 and nftables")
    lab = NetLab(prefix="fb").open()
    try:
        yield lab
    finally:
        lab.close()


def _in(ns: str, code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_a_handshake_the_server_never_completed_is_not_made(lab: NetLab) -> None:
    # Exactly ACK: SYN and the reset (RST|ACK) pass.
    rules = ("table ip ackloss {\n chain out {\n"
             "  type filter hook output priority 0; policy accept;\n"
             f"  tcp dport {PORT} tcp flags == ack drop\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", lab.cl, "nft", "-f", "-"], input=rules, text=True,
                   check=True, capture_output=True)
    server = _in(lab.gw, flood_bench.SERVER, str(PORT))
    client = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = _in(lab.cl, flood_bench.CLIENT, lab.gw_v4, str(PORT), "1", "0.25", "2.5")
        out, _ = client.communicate(lab.clients[0].v4[0], timeout=30)
        last = json.loads(out.splitlines()[-1])
        # The server never had the connection (its SYN-ACK was answered by ACKs that
        # were all dropped): nothing made, one failed.
        assert (last["handshakes"], last["handshake_failed"]) == (0, 1), last
        stats = json.loads(sh("ip", "netns", "exec", lab.gw, "nstat", "-asz", "--json").stdout)
        assert stats["kernel"].get("TcpPassiveOpens", 0) == 0
    finally:
        for p in (server, client):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
