"""How the daemon writes its own messages: for a terminal, or for the systemd journal.

Run by systemd, stderr is a stream into journald, which stamps each line itself and
reads a leading ``<N>`` as the line's syslog priority. There the daemon writes no
timestamp of its own and prefixes every line with its level's priority, so
``journalctl -p warning -u dynscreen`` shows blocks, freezes and failures and
nothing else. In a terminal (`make run`, `dynscreen run` by hand) lines keep a time
and a level name.

A flood's kernel blocks (thousands a second) are not a line each: each batch the
daemon takes from the kernel is one line naming the first few sources and how
many more (``listing``); every one of them is in the history.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

# syslog(3) priorities (RFC 5424): what journald files each line under.
PRIORITY = {
    logging.CRITICAL: 2,  # crit
    logging.ERROR: 3,  # err
    logging.WARNING: 4,  # warning
    logging.INFO: 6,  # info
    logging.DEBUG: 7,  # debug
}
TERMINAL_FORMAT = "%(asctime)s %(levelname)s %(message)s"
SHOWN = 8  # items a summary line names before "(+N more)"


def listing(items: Sequence[str], total: int | None = None, shown: int = SHOWN) -> str:
    """``a, b, c, ... (+N more)``: many like events in one log line (a flood's blocks,
    thousands a second, would else be a line each and hold the loop writing them).
    ``items`` may be only the first ``shown`` of ``total``: the rest need no text."""
    total = len(items) if total is None else total
    head = ", ".join(items[:shown])
    return head if total <= min(shown, len(items)) else f"{head}, ... (+{total - shown} more)"


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (custom levels: the next more severe one)."""
    for level in sorted(PRIORITY, reverse=True):
        if levelno >= level:
            return PRIORITY[level]
    return PRIORITY[logging.DEBUG]


class JournalFormatter(logging.Formatter):
    """``<N>message``, on every line of a multi-line message (a traceback too), so that
    no continuation line lands in the journal at the default priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stream_is_journal(stream: TextIO, env: dict[str, str] | None = None) -> bool:
    """systemd sets JOURNAL_STREAM=DEVICE:INODE for the stream it connects to journald;
    the stream is the journal only if it is that very file (a child that redirected
    its stderr inherits the variable, not the journal)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup(stream: TextIO | None = None, env: dict[str, str] | None = None) -> None:
    """Route the root logger (INFO and up) to stderr in the format that suits where it
    goes; like logging.basicConfig, nothing when the root logger has handlers already
    (a host program's, or a test runner's)."""
    root = logging.getLogger()
    if root.handlers:
        return
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if stream_is_journal(stream, env):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter(TERMINAL_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
