import time
from ipaddress import ip_network

from dynscreen.control.dataplane import bpfsys

from packets import v4_syn

XDP_DROP, XDP_PASS = 1, 2


def test_blocked_source_is_dropped(dp):
    dp.add_block(ip_network("198.51.100.7/32"), time.time() + 60, "manual", "manual")
    assert bpfsys.prog_test_run(dp.prog_fd, v4_syn("198.51.100.7")).retval == XDP_DROP
    assert bpfsys.prog_test_run(dp.prog_fd, v4_syn("198.51.100.8")).retval == XDP_PASS


def test_maps_are_fresh_per_test(dp):
    assert dp.list_blocks() == []
