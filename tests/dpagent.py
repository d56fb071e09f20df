"""A minimal control plane for the data-plane integration tests.

Runs in the gateway namespace (`ip netns exec`): loads the programs with pins,
attaches to the interface, seeds established counts, stamps the heartbeat, and
answers JSON commands on stdin. The daemon does the same with more around it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from ipaddress import ip_network
from pathlib import Path

from dynscreen.control.addr import parse_network
from dynscreen.control.dataplane.links import interface_addresses
from dynscreen.control.dataplane.loader import DataPlane
from dynscreen.control.dataplane.sockets import established_by_source


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pin", required=True)
    ap.add_argument("--iface", required=True)
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--connections", type=int, default=60)
    ap.add_argument("--minutes", type=float, default=1)
    ap.add_argument("--simultaneous", type=int, default=20)
    ap.add_argument("--syn", type=int, default=50)
    ap.add_argument("--block-minutes", type=float, default=10)
    ap.add_argument("--heartbeat-timeout", type=float, default=10)
    ap.add_argument("--monitor", action="store_true")
    a = ap.parse_args()

    dp = DataPlane(pin_path=Path(a.pin), max_blocks=1024, max_tracked=1024)
    dp.load(adopt_from=[a.iface])
    ports = (25, 465, 587, 110, 995, 143, 993)
    local = interface_addresses([a.iface, "lo"])
    dp.configure(ports=ports, connections=a.connections, connections_minutes=a.minutes,
                 simultaneous=a.simultaneous, syn_per_second=a.syn,
                 block_minutes=a.block_minutes, heartbeat_timeout=a.heartbeat_timeout,
                 monitor=a.monitor, local_addrs=local)
    dp.heartbeat()
    modes = dp.attach([a.iface], a.mode)
    dp.set_established(established_by_source(ports, local, dp.ipv6_prefix))

    beating = threading.Event()
    beating.set()

    def beat() -> None:
        while True:
            if beating.is_set():
                dp.heartbeat()
            time.sleep(0.5)

    threading.Thread(target=beat, daemon=True).start()
    print(f"ready {json.dumps({'modes': modes, 'adopted': dp.adopted})}", flush=True)
    events: list[dict[str, object]] = []
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        try:
            if op == "quit":
                print(json.dumps({"result": True}), flush=True)
                dp.close()
                return
            result: object
            if op == "block":
                dp.add_block(parse_network(req["net"]), time.time() + req.get("minutes", 10) * 60,
                             req.get("reason", "manual"), "manual")
                result = True
            elif op == "unblock":
                result = dp.remove_block(parse_network(req["net"]))
            elif op == "blocks":
                result = [{"ip": str(b.source), "reason": b.reason, "origin": b.origin,
                           "drops": b.drops, "left": b.expires - time.time()}
                          for b in dp.list_blocks()]
            elif op == "counters":
                result = dp.counters()
            elif op == "established":
                result = {str(k): v for k, v in dp.established().items()}
            elif op == "events":
                for ev in dp.poll_events(req.get("timeout_ms", 0)):
                    events.append({"ip": str(ev.source), "reason": ev.reason,
                                   "count": ev.count, "tracepoint": ev.tracepoint})
                result, events = events, []
            elif op == "whitelist":
                result = dp.sync_whitelist([ip_network(n) for n in req["nets"]])
            elif op == "heartbeat":
                (beating.set if req["on"] else beating.clear)()
                result = True
            elif op == "detach":
                dp.detach([a.iface], unpin=True)
                result = True
            else:
                raise ValueError(f"unknown op {op}")
            print(json.dumps({"result": result}), flush=True)
        except Exception as e:  # report to the test, keep serving
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)


if __name__ == "__main__":
    main()
