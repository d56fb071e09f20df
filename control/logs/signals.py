"""What a format parser finds in one message, before the line's time and place are added.

The format parsers (postfix, dovecot, exim) stay free of file and clock state: they
return :class:`Signal` tuples, and :class:`~.parse.LogParser` turns them into
:class:`~dynscreen.control.events.Event` with the line's own time, file and number.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from dynscreen.control.addr import normalize


class Signal(NamedTuple):
    """One event a message carries (see ``Event`` for the fields)."""

    kind: str
    ip: str
    service: str | None
    user: str | None
    count: int  # type: ignore[assignment]  # (the contract's name; shadows tuple.count)
    origin: str
    session: str | None
    host: str | None


def new_signal(
    fields: tuple[str, str, str | None, str | None, int, str, str | None, str | None],
) -> Signal:
    """``Signal(*fields)``, made the way a tuple is (a NamedTuple's own ``__new__`` is
    Python code with keyword handling: twice the cost)."""
    return _new(Signal, fields)


_new = tuple.__new__


@lru_cache(maxsize=65536)
def ip_of(text: str) -> str | None:
    """The normalised address a server logged, or None (``unknown``, garbage).

    Cached: the same few sources fill a log, and parsing an address is the
    costliest step of a signal line.
    """
    try:
        return normalize(text)
    except ValueError:
        return None


def user_or_none(text: str | None) -> str | None:
    """A logged user name, or None when the server wrote none."""
    if not text or text == "(unavailable)":
        return None
    return text
