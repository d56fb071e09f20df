"""`dynscreen explain`: the daemon's answer (on a data plane without a kernel) and the
offline one, for a log-based block, a kernel block, a whitelisted, a trusted and an
address below its limits; and the history the daemon writes as it goes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from fakeplane import FakePlane

from dynscreen.control.config import from_dict
from dynscreen.control.daemon import Daemon, Options
from dynscreen.control.dataplane.loader import KernelEvent
from dynscreen.control.logs.parse import LogParser

ROOT = Path(__file__).resolve().parents[1]
DYNSCREEN = str(ROOT / ".venv/bin/dynscreen")
TARGET = "203.0.113.7"


def sasl(ip: str, user: str, pid: int = 4242) -> str:
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime())
    return (f"{stamp} mx postfix/smtpd[{pid}]: warning: unknown[{ip}]: SASL LOGIN "
            f"authentication failed: authentication failure, sasl_username={user}")


def settings(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    screening = {"close_session": False, "whitelist": ["127.0.0.0/8", "192.0.2.0/28"],
                 "trusted_networks": ["198.51.100.0/24"],
                 "limits": {"auth_failures": 3}}
    return {
        "screening": screening,
        "daemon": {"state_file": str(tmp_path / "blocks"), "socket": str(tmp_path / "sock"),
                   "whitelist_file": str(tmp_path / "wl"), "frozen_file": str(tmp_path / "fz"),
                   "history_file": str(tmp_path / "history.sqlite"),
                   "pin_path": str(tmp_path / "no-pins"), "metrics_listen": ""},
        **extra,
    }


def daemon(tmp_path: Path, **extra: Any) -> tuple[Daemon, FakePlane]:
    dp = FakePlane()
    cfg = from_dict(settings(tmp_path, **extra))
    return Daemon(Options(None), cfg, dp, ["fake0"], []), dp  # type: ignore[arg-type]


class Feed:
    """Lines into the daemon as a followed log file hands them over."""

    def __init__(self, d: Daemon, path: str = "/var/log/mail.log") -> None:
        self.d = d
        self.parser = LogParser(path, "postfix")
        self.n = 0

    def __call__(self, *lines: str) -> list[int]:
        numbers = []
        for text in lines:
            self.n += 1
            self.d._handle_line(self.parser, text, self.n)
            numbers.append(self.n)
        return numbers


def test_a_log_block_shows_exactly_the_lines_that_tipped_it(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path)
    feed = Feed(d)

    async def main() -> dict[str, Any]:
        d.history.start()
        feed(sasl("192.0.2.200", "x@example.com"))  # whitelisted: never counted
        first = feed(sasl(TARGET, "a@example.com", 1))
        feed(sasl("203.0.113.99", "b@example.com"))  # another source
        rest = feed(sasl(TARGET, "c@example.com", 2), sasl(TARGET, "d@example.com", 3))
        assert ip_network(TARGET) in dp.blocks
        feed(sasl(TARGET, "e@example.com", 4))  # after the block: not evidence
        answer = await d.explain(ip_network(TARGET))
        d.history.stop()
        answer["_lines"] = first + rest
        return answer

    r = asyncio.run(main())
    assert r["ip"] == TARGET and not r["whitelisted"] and not r["trusted"] and not r["exempt"]
    b = r["block"]
    assert b["reason"] == "auth_failures" and b["origin"] == "logs"
    assert b["made_at"] is not None and b["expires"] > time.time() + 500
    assert [e["line"] for e in r["evidence"]] == r["_lines"]
    assert all(e["source"] == "/var/log/mail.log" for e in r["evidence"])
    assert [e["text"].rsplit("=", 1)[1] for e in r["evidence"]] == [
        "a@example.com", "c@example.com", "d@example.com"]
    assert [(h["action"], h["reason"], h["origin"]) for h in r["history"]] == [
        ("block", "auth_failures", "logs")]
    # The history row holds the same evidence, for after the block (and offline).
    assert r["history"][0]["evidence"] == r["evidence"]


def test_below_its_limits_the_counters_and_their_lines(tmp_path: Path) -> None:
    d, _ = daemon(tmp_path)
    feed = Feed(d)

    async def main() -> dict[str, Any]:
        lines = feed(sasl(TARGET, "a@example.com", 1), sasl(TARGET, "b@example.com", 2))
        r = await d.explain(ip_network(TARGET))
        r["_lines"] = lines
        return r

    r = asyncio.run(main())
    assert r["block"] is None
    counters = {c["limit"]: c for c in r["counters"]}
    assert counters["auth_failures"] == {"limit": "auth_failures", "count": 2, "max": 3,
                                         "window_minutes": 10}
    assert counters["failed_rcpts"]["count"] == 0 and counters["failed_rcpts"]["max"] == 10
    assert counters["connections"]["max"] == 60 and counters["connections"]["window_minutes"] == 1
    assert [e["line"] for e in r["evidence"]] == r["_lines"]
    assert {e["limit"] for e in r["evidence"]} == {"auth_failures"}


def test_a_kernel_block_and_its_expiry_are_recorded(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path)
    net = ip_network("203.0.113.50")

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        d.history.start()
        until = time.time() + 1.2  # expires while the sweep below runs
        dp.add_block(net, until, "connections", "kernel")
        dp.events.append(KernelEvent(net, until, "connections", 61, False, False, False))
        task = asyncio.create_task(d._kernel_events())
        await asyncio.sleep(0.3)
        task.cancel()
        r = await d.explain(net)
        task = asyncio.create_task(d._sweep())  # the index's expiry, not a kernel walk
        await asyncio.sleep(2.3)
        task.cancel()
        rows = await d.history_rows({"ip": "203.0.113.50"})
        d.history.stop()
        return r, rows

    r, rows = asyncio.run(main())
    assert r["block"]["reason"] == "connections" and r["block"]["origin"] == "kernel"
    assert r["evidence"] == []  # the kernel counts packets, not lines
    assert r["block"]["made_at"] is not None
    assert [(x["action"], x["origin"], x["reason"]) for x in rows["rows"]] == [
        ("block", "kernel", "connections"), ("expire", "kernel", "connections")]


def test_whitelisted_and_trusted_say_by_which_entry(tmp_path: Path) -> None:
    d, _ = daemon(tmp_path)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        return (await d.explain(ip_network("192.0.2.5")),
                await d.explain(ip_network("198.51.100.20")))

    listed, trusted = asyncio.run(main())
    assert listed["whitelisted"] and listed["whitelist_entry"] == "192.0.2.0/28"
    assert listed["whitelist_origin"] == "config" and not listed["trusted"]
    assert trusted["trusted"] and trusted["trusted_entry"] == "198.51.100.0/24"
    assert not trusted["whitelisted"] and trusted["block"] is None


def test_the_history_survives_a_damaged_database_while_screening_goes_on(
        tmp_path: Path) -> None:
    d, dp = daemon(tmp_path)
    feed = Feed(d)
    db = tmp_path / "history.sqlite"

    async def main() -> list[dict[str, Any]]:
        d.history.start()
        feed(*(sasl("203.0.113.1", f"u{i}@example.com", i) for i in range(3)))
        d.history.flush()
        db.unlink()
        db.write_bytes(b"garbage, not a database" * 200)
        feed(*(sasl("203.0.113.2", f"u{i}@example.com", i) for i in range(3)))
        rows = (await d.history_rows({}))["rows"]
        d.history.stop()
        return rows

    rows = asyncio.run(main())
    assert {ip_network("203.0.113.1"), ip_network("203.0.113.2")} <= set(dp.blocks)
    assert [(r["action"], r["ip"]) for r in rows] == [("block", "203.0.113.2")]
    assert list(tmp_path.glob("history.sqlite.corrupt-*"))


def test_offline_explain_reads_the_block_file_and_the_history(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path)
    feed = Feed(d)

    async def main() -> None:
        d.history.start()
        await d.keeper.save_now(force=True)
        feed(*(sasl(TARGET, f"u{i}@example.com", i) for i in range(3)))
        await d.keeper.save_now(force=True)
        d.history.stop()

    asyncio.run(main())
    cfg = tmp_path / "dynscreen.toml"
    s = settings(tmp_path)["daemon"]
    cfg.write_text("[screening]\nwhitelist = [\"192.0.2.0/28\"]\n[daemon]\n" + "".join(
        f'{k} = "{v}"\n' for k, v in s.items()))
    env = {**os.environ, "DYNSCREEN_SOCKET": str(tmp_path / "sock")}
    run = subprocess.run([DYNSCREEN, "--config", str(cfg), "explain", TARGET, "--json"],
                         capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout)
    assert r["daemon"] == {"running": False}
    assert r["block"]["reason"] == "auth_failures" and r["block"]["origin"] == "logs"
    assert len(r["evidence"]) == 3 and r["history"][0]["action"] == "block"
    assert r["counters"] == [] and any("no daemon" in n for n in r["notes"])
    text = subprocess.run([DYNSCREEN, "--config", str(cfg), "explain", "192.0.2.3"],
                          capture_output=True, text=True, env=env, check=False)
    assert text.returncode == 0, text.stderr
    assert "whitelisted: yes, by 192.0.2.0/28 (config)" in text.stdout
    assert "blocked:     no" in text.stdout


def test_a_block_lifted_by_the_whitelist_is_in_the_history(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path)

    async def main() -> list[dict[str, Any]]:
        d.history.start()
        d.blocks.add(ip_network("203.0.113.77"), time.time() + 600, "manual", "manual")
        d.whitelist.add(ip_network("203.0.113.0/24"))
        rows = (await d.history_rows({"ip": "203.0.113.77"}))["rows"]
        d.history.stop()
        return rows

    rows = asyncio.run(main())
    assert ip_network("203.0.113.77") not in dp.blocks
    assert [(r["action"], r["reason"], r["origin"], r["detail"]) for r in rows] == [
        ("unblock", "manual", "whitelist", "whitelisted by 203.0.113.0/24")]


def test_an_exempt_address_says_by_which_login(tmp_path: Path) -> None:
    d, _ = daemon(tmp_path)
    feed = Feed(d)
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime())

    async def main() -> dict[str, Any]:
        feed(f"{stamp} mx postfix/smtpd[77]: 4T9xMB0Rkbz9sRc: client=laptop.example.org"
             f"[{TARGET}], sasl_method=LOGIN, sasl_username=alice@example.com")
        return await d.explain(ip_network(TARGET))

    r = asyncio.run(main())
    assert r["exempt"] and r["exempt_by"] == ["alice@example.com"]
    assert r["exempt_until"] > time.time() + 3000 and r["block"] is None


def test_a_journal_line_is_named_by_its_cursor(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path)
    parser = LogParser("journal:postfix@-.service", "postfix")

    async def main() -> dict[str, Any]:
        d.history.start()
        for i in range(3):
            d._handle_line(parser, sasl(TARGET, f"u{i}@example.com", i), i + 1,
                           f"s=4b1c;i={i + 100}")
        r = await d.explain(ip_network(TARGET))
        d.history.stop()
        return r

    r = asyncio.run(main())
    assert ip_network(TARGET) in dp.blocks
    assert [(e["source"], e["line"]) for e in r["evidence"]] == [
        ("journal:postfix@-.service", f"s=4b1c;i={i}") for i in (100, 101, 102)]


def test_explain_asks_the_index_not_every_block(tmp_path: Path) -> None:
    """At a million blocks building every one would hold the loop for seconds: explain
    asks the index for the blocks covering the address (its own, a range around it)."""
    d, dp = daemon(tmp_path, screening={"max_blocks": 20_000, "close_session": False})
    dp.max_blocks = 20_000
    now = time.time()
    for i in range(10_000):
        d.blocks.add(ip_network(f"10.9.{i >> 8}.{i & 255}"), now + 600, "manual", "manual")
    d.blocks.add(ip_network("203.0.113.0/24"), now + 900, "manual", "manual", "a range")
    d.blocks.add(ip_network("203.0.113.9"), now - 1, "manual", "manual")  # expired, unswept

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("built every block")

    d.blocks.current = refuse  # type: ignore[method-assign]
    d.blocks.select = refuse  # type: ignore[method-assign]
    d.blocks.entries = refuse  # type: ignore[method-assign]

    async def main() -> list[dict[str, Any]]:
        return [await d.explain(ip_network(a)) for a in ("10.9.3.7", "203.0.113.9", "10.8.0.1")]

    own, ranged, none = asyncio.run(main())
    assert own["block"]["ip"] == "10.9.3.7" and own["block"]["reason"] == "manual"
    # The expired /32 is not in force: the range around it is.
    assert ranged["block"]["ip"] == "203.0.113.0/24" and ranged["block"]["note"] == "a range"
    assert none["block"] is None


def test_block_file_edits_are_in_the_history(tmp_path: Path) -> None:
    """A hand edit of the block file and `dynscreen blocks edit` (text and base) block and
    unblock: each change is a history row, origin "file", with its line's reason."""
    d, dp = daemon(tmp_path)
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))

    async def main() -> list[dict[str, Any]]:
        d.history.start()
        d.blocks.add(ip_network("203.0.113.10"), time.time() + 600, "auth_failures", "logs")
        d.blocks.add(ip_network("203.0.113.11"), time.time() + 600, "manual", "manual")
        await d.keeper.save_now(force=True)
        text = d.keeper.path.read_text()
        edited = "".join(line for line in text.splitlines(keepends=True)
                         if not line.startswith("203.0.113.10 "))
        d.keeper.path.write_text(edited + f"198.51.100.0/24 {expiry} manual # spam run\n")
        assert await d.keeper.check_edit() == (1, 1, 0)
        base = await d.keeper.text()
        await d.keeper.apply_text(base.replace("203.0.113.11 ", "203.0.113.12 "), base)
        rows = (await d.history_rows({}))["rows"]
        d.history.stop()
        return rows

    rows = asyncio.run(main())
    assert set(dp.blocks) == {ip_network("198.51.100.0/24"), ip_network("203.0.113.12")}
    got = sorted((r["action"], r["ip"], r["reason"], r["origin"], r.get("detail"))
                 for r in rows)
    assert got == [
        ("block", "198.51.100.0/24", "manual", "file", "spam run"),
        ("block", "203.0.113.12", "manual", "file", None),
        ("unblock", "203.0.113.10", "auth_failures", "file", None),
        ("unblock", "203.0.113.11", "manual", "file", None),
    ]
    assert all(58 <= r["minutes"] <= 60 for r in rows if r["action"] == "block"
               and r["ip"] == "198.51.100.0/24")


def test_a_big_edit_reaches_the_history_without_overflowing_its_queue(tmp_path: Path) -> None:
    """An edit's rows are told in chunks, the history's writer draining its bounded queue
    between them: none dropped, though the edit holds more than the queue."""
    from dynscreen.control.history import History

    d, dp = daemon(tmp_path)
    dp.max_blocks = 10_000
    d.history = History(tmp_path / "big.sqlite", 90, queue_size=2500)
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    n = 6000

    async def main() -> None:
        d.history.start()
        base = await d.keeper.text()
        lines = "".join(f"10.7.{i >> 8}.{i & 255} {expiry} manual\n" for i in range(n))
        assert await d.keeper.apply_text(base + lines, base) == (n, 0, 0)
        d.history.flush()
        d.history.stop()

    asyncio.run(main())
    assert d.history.dropped == 0 and d.history.written == n
