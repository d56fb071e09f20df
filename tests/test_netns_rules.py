"""The kernel enforces the blocks of the new rules: `spray` per address, `prefix` as an
IPv4 CIDR block that a whitelisted host inside still passes (network namespaces, real
TCP; never in parallel: run under flock /tmp/dynscreen-netns.lock)."""

from __future__ import annotations

import pytest
from netns import (
    CL2_V4,
    CL_V4,
    GW_V4,
    Agent,
    NetLab,
    lab_fixture,  # noqa: F401  (provides the `lab` fixture)
)

pytestmark = [pytest.mark.root, pytest.mark.tracepoint]


def test_a_spray_block_drops_its_source_only(lab: NetLab) -> None:
    srv = lab.listener(25)
    agent = Agent(lab, "--connections", "1000")
    assert agent.ask("block", net=CL_V4, minutes=5, reason="spray") is True
    assert lab.connect(GW_V4) is None
    assert lab.connect(GW_V4, src=CL2_V4) is not None
    blocks = {b["ip"]: b for b in agent.ask("blocks")}  # type: ignore[union-attr]
    assert blocks[f"{CL_V4}/32"]["reason"] == "spray"
    srv.close()


def test_a_prefix_block_passes_a_whitelisted_host_inside(lab: NetLab) -> None:
    srv = lab.listener(25)
    agent = Agent(lab, "--connections", "1000")
    agent.ask("whitelist", nets=[f"{CL2_V4}/32"])
    assert agent.ask("block", net="10.77.0.0/24", minutes=5, reason="prefix") is True
    assert lab.connect(GW_V4) is None, "a member of the prefix is dropped"
    assert lab.connect(GW_V4, src=CL2_V4) is not None, "the whitelisted host inside passes"
    blocks = {b["ip"]: b for b in agent.ask("blocks")}  # type: ignore[union-attr]
    assert blocks["10.77.0.0/24"]["reason"] == "prefix"
    assert agent.ask("counters")["whitelist_pass"] >= 1  # type: ignore[index]
    srv.close()
