"""FileFollower on real files: start position, line splitting, rotation, deletion."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable
from pathlib import Path

import pytest

from dynscreen.control.logs import follow
from dynscreen.control.logs.follow import FileFollower

TIMEOUT = 5.0


def run(coro: Awaitable[None]) -> None:
    """Run one test coroutine, bounded in time."""

    async def bounded() -> None:
        await asyncio.wait_for(coro, TIMEOUT)

    asyncio.run(bounded())


def append(path: Path, data: str | bytes) -> None:
    """Append the way syslog does: O_APPEND, one write."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)


class Collector:
    """Drive FileFollower.lines() in a task; take what it yields, in order."""

    def __init__(self, follower: FileFollower) -> None:
        self.follower = follower
        self.queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for item in self.follower.lines():
            self.queue.put_nowait(item)

    async def take(self, n: int) -> list[tuple[int, str]]:
        return [await self.queue.get() for _ in range(n)]

    async def until(self, path: Path, marker: str) -> list[tuple[int, str]]:
        """Append a marker line and take everything up to it: proves nothing else came."""
        append(path, marker + "\n")
        out = []
        while True:
            n, text = await self.queue.get()
            if text == marker:
                return out
            out.append((n, text))

    async def close(self) -> None:
        self.follower.close()
        await self.task


def test_starts_at_end(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("one\ntwo\nthree\n")

    async def body() -> None:
        c = Collector(FileFollower(log))
        append(log, "four\n")
        assert await c.take(1) == [(4, "four")]
        assert await c.until(log, "END") == []
        await c.close()

    run(body())


def test_from_start_reads_what_is_there(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("one\ntwo\n")

    async def body() -> None:
        c = Collector(FileFollower(log, from_start=True))
        assert await c.take(2) == [(1, "one"), (2, "two")]
        append(log, "three\n")
        assert await c.take(1) == [(3, "three")]
        await c.close()

    run(body())


def test_partial_line_waits_for_newline(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "hel")
        assert f.read_available() == []
        append(log, "lo\nwor")
        assert f.read_available() == [(1, "hello")]
        append(log, "ld\n")
        assert f.read_available() == [(2, "world")]


def test_start_at_end_keeps_a_line_being_written(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("old\nhal")
    with FileFollower(log) as f:
        assert f.read_available() == []
        append(log, "f\nnext\n")
        assert f.read_available() == [(2, "half"), (3, "next")]


def test_partial_line_async(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")

    async def body() -> None:
        c = Collector(FileFollower(log))
        append(log, "conn")
        await asyncio.sleep(0.05)
        assert c.queue.empty()
        append(log, "ect from x\n")
        assert await c.take(1) == [(1, "connect from x")]
        await c.close()

    run(body())


def test_oversized_line_skipped_with_warning(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    warnings: list[str] = []

    async def body() -> None:
        f = FileFollower(log, on_warning=warnings.append)
        c = Collector(f)
        append(log, "before\n")
        assert await c.take(1) == [(1, "before")]
        # 300 KiB without a newline, in pieces: dropped as it comes, never buffered.
        for _ in range(30):
            append(log, b"x" * 10240)
            await asyncio.sleep(0)
            assert len(f._buf) <= 65536
        append(log, b"x" * 100 + b"\nafter\n")
        assert await c.take(1) == [(3, "after")]
        assert len(warnings) == 1
        assert "line 2" in warnings[0] and "65536" in warnings[0]
        await c.close()

    run(body())


def test_line_limit_boundaries(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    warnings: list[str] = []
    with FileFollower(log, max_line=10, on_warning=warnings.append) as f:
        # exactly the limit passes; one more byte is skipped; inside one chunk and split
        append(log, "0123456789\n01234567890\nok\n0123456")
        assert f.read_available() == [(1, "0123456789"), (3, "ok")]
        append(log, "7890\nlast\n")
        assert f.read_available() == [(5, "last")]
    assert [w.split(": ", 1)[1] for w in warnings] == [
        "line 2 is longer than 10 bytes; skipped",
        "line 4 is longer than 10 bytes; skipped",
    ]


def test_invalid_utf8_replaced(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    with FileFollower(log) as f:
        append(log, b"caf\xe9 \xff\xfe ok\n\xe2\x82")
        assert f.read_available() == [(1, "caf\ufffd \ufffd\ufffd ok")]
        append(log, b"\xac\n\xe2\x82\nend\n")  # a character split across writes is whole
        assert f.read_available() == [(2, "\u20ac"), (3, "\ufffd"), (4, "end")]


def test_many_chunks_numbered(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    lines = [f"line {i} " + "y" * (i % 97) for i in range(40000)]
    log.write_text("\n".join(lines) + "\n")
    assert log.stat().st_size > 2 * follow.CHUNK
    with FileFollower(log, from_start=True) as f:
        got = f.read_available()
    assert got == list(enumerate(lines, 1))
    with FileFollower(log) as f:
        append(log, "new\n")
        assert f.read_available() == [(40001, "new")]


def test_file_created_later(tmp_path: Path) -> None:
    log = tmp_path / "var" / "log" / "mail.log"  # not even the directory exists yet

    async def body() -> None:
        c = Collector(FileFollower(log))
        await asyncio.sleep(0.02)
        log.parent.parent.mkdir()
        await asyncio.sleep(0.02)
        log.parent.mkdir()
        append(log, "first\nsecond\n")  # a new file is read from its start
        assert await c.take(2) == [(1, "first"), (2, "second")]
        assert await c.until(log, "END") == []
        await c.close()

    run(body())


def test_rename_and_create_rotation(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("old 1\n")

    async def body() -> None:
        c = Collector(FileFollower(log))
        append(log, "old 2\n")
        assert await c.take(1) == [(2, "old 2")]
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)  # the writer keeps its descriptor
        os.write(fd, b"old 3\n")
        log.rename(tmp_path / "mail.log.1")
        log.write_text("")  # logrotate's create: empty until the writer reopens
        os.write(fd, b"old 4\n")  # written after the rename, before the HUP
        await asyncio.sleep(0.02)
        os.write(fd, b"old 5\n")
        os.close(fd)
        append(log, "new 1\nnew 2\n")
        got = await c.take(5)
        assert got == [(3, "old 3"), (4, "old 4"), (5, "old 5"), (1, "new 1"), (2, "new 2")]
        assert await c.until(log, "END") == []
        await c.close()

    run(body())


def test_rename_rotation_without_pause(tmp_path: Path) -> None:
    """Everything happens before the follower looks: still all lines, once."""
    log = tmp_path / "mail.log"
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a\nb\n")
        log.rename(tmp_path / "mail.log.1")
        append(log, "c\n")
        (tmp_path / "mail.log.1").unlink()  # compressed away, while we hold it open
        assert f.read_available() == [(1, "a"), (2, "b"), (1, "c")]
        append(log, "d\n")
        assert f.read_available() == [(2, "d")]


def test_rotated_file_unterminated_last_line_kept(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a\ncut")
        log.rename(tmp_path / "mail.log.1")
        append(log, "b\n")
        assert f.read_available() == [(1, "a"), (2, "cut"), (1, "b")]


def test_copytruncate(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("x\n" * 5)

    async def body() -> None:
        c = Collector(FileFollower(log))
        append(log, "before rotation\n")
        assert await c.take(1) == [(6, "before rotation")]
        shutil.copyfile(log, tmp_path / "mail.log.1")
        os.truncate(log, 0)
        append(log, "after 1\nafter 2\n")
        assert await c.take(2) == [(1, "after 1"), (2, "after 2")]
        assert await c.until(log, "END") == []
        await c.close()

    run(body())


def test_copytruncate_refilled_past_position(tmp_path: Path) -> None:
    """Truncated and refilled beyond the old size before the follower looked."""
    log = tmp_path / "mail.log"
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a\nb\n")
        assert f.read_available() == [(1, "a"), (2, "b")]
        os.truncate(log, 0)
        append(log, "first new line\nsecond\n")
        assert f.read_available() == [(1, "first new line"), (2, "second")]


def test_deleted_then_recreated(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")

    async def body() -> None:
        c = Collector(FileFollower(log))
        append(log, "a\n")
        assert await c.take(1) == [(1, "a")]
        log.unlink()
        await asyncio.sleep(0.02)
        assert c.queue.empty()
        append(log, "b\n")
        assert await c.take(1) == [(1, "b")]
        assert await c.until(log, "END") == []
        await c.close()

    run(body())


def test_directory_removed_and_recreated(tmp_path: Path) -> None:
    log = tmp_path / "d" / "mail.log"
    log.parent.mkdir()
    log.write_text("")

    async def body() -> None:
        c = Collector(FileFollower(log))
        append(log, "a\n")
        assert await c.take(1) == [(1, "a")]
        shutil.rmtree(log.parent)
        await asyncio.sleep(0.02)
        log.parent.mkdir()
        append(log, "b\n")
        assert await c.take(1) == [(1, "b")]
        await c.close()

    run(body())


def test_close_ends_iteration(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"

    async def body() -> None:
        c = Collector(FileFollower(log))
        await asyncio.sleep(0.01)
        c.follower.close()
        await c.task  # returns instead of waiting forever
        c.follower.close()  # idempotent

    run(body())


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="not a regular file"):
        FileFollower(tmp_path)


# ---- a restarted follower resumes ----------------------------------------------------------


def test_a_restarted_follower_resumes_at_its_offset(tmp_path: Path) -> None:
    """Lines written while no follower ran (a crash's backoff) come to the next one."""
    log = tmp_path / "mail.log"
    append(log, "old 1\nold 2\n")
    f = FileFollower(log)
    append(log, "a\nhalf")
    assert f.read_available() == [(3, "a")]
    at = f.detach()
    append(log, " line\nb\n")  # during the backoff
    g = FileFollower(log, resume=at)
    assert g.read_available() == [(4, "half line"), (5, "b")]
    append(log, "c\n")
    assert g.read_available() == [(6, "c")]
    g.close()


def test_a_restarted_follower_finishes_the_rotated_file_then_reads_the_new(
        tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    append(log, "")
    f = FileFollower(log)
    append(log, "a\n")
    assert f.read_available() == [(1, "a")]
    at = f.detach()
    append(log, "b\n")                       # the old file, after the stop
    log.rename(tmp_path / "mail.log.1")     # rotated during the backoff ...
    append(tmp_path / "mail.log.1", "c\n")  # ... the writer's last lines to the old one
    append(log, "new 1\nnew 2\n")           # ... and the new file's first
    g = FileFollower(log, resume=at)
    assert g.read_available() == [(2, "b"), (3, "c"), (1, "new 1"), (2, "new 2")]
    g.close()


def test_a_restarted_follower_keeps_lines_read_but_not_taken(tmp_path: Path) -> None:
    """A stop between two lines of one read: the rest come first after the restart."""
    log = tmp_path / "mail.log"
    append(log, "")
    f = FileFollower(log)
    got: list[tuple[int, str]] = []

    async def take_two() -> None:
        gen = f.lines()
        append(log, "1\n2\n3\n4\n")
        async for item in gen:
            got.append(item)
            if len(got) == 2:
                break
        await gen.aclose()

    run(take_two())
    at = f.detach()
    g = FileFollower(log, resume=at)
    assert got + g.read_available() == [(1, "1"), (2, "2"), (3, "3"), (4, "4")]
    g.close()


def test_a_restarted_follower_that_was_waiting_reads_the_file_from_its_start(
        tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    f = FileFollower(log)
    at = f.detach()
    append(log, "first\n")  # created during the backoff
    g = FileFollower(log, resume=at)
    assert g.read_available() == [(1, "first")]
    g.close()
