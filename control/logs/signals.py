"""What a format parser finds in one message, before the line's time and place are added.

The format parsers (postfix, dovecot, exim) stay free of file and clock state: they
return :class:`Signal` tuples, and :class:`~.parse.LogParser` turns them into
:class:`~dynscreen.control.events.Event` with the line's own time, file and number.
"""

from __future__ import annotations

from typing import Final, NamedTuple

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


# address as logged -> its normalised text, "" for none: the same few sources fill a log,
# and parsing an address (ipaddress: pure Python) is the costliest step of a signal line.
_IPS: Final[dict[str, str]] = {}
_IPS_MAX: Final = 65536


def ip_of(text: str) -> str | None:
    """The normalised address a server logged, or None (``unknown``, garbage)."""
    found = _IPS.get(text)
    if found is None:
        if len(_IPS) >= _IPS_MAX:
            _IPS.clear()
        if ipv4_int(text) is not None:
            found = text  # (a canonical dotted quad is its own normal form)
        else:
            try:
                found = normalize(text)
            except ValueError:
                found = ""
        _IPS[text] = found
    return found or None


def ipv4_int(text: str) -> int | None:
    """A canonical dotted quad as an integer; None for anything else (IPv6, odd forms).

    What ipaddress would read and write back unchanged, without its cost: the engine
    and replay key IPv4 sources by their text, this tells them when that is all it takes.
    """
    n = len(text)
    if n < 7 or n > 15:
        return None
    value = octet = digits = dots = 0  # (digits: of the octet being read)
    for i in range(n):
        c = ord(text[i])  # (mypyc: read in place, no str made)
        if c == 46:  # "."
            if digits == 0 or dots == 3:
                return None
            value = value << 8 | octet
            octet = digits = 0
            dots += 1
        elif 48 <= c <= 57:
            if digits == 1 and octet == 0:
                return None  # a leading zero: not ipaddress's own form
            octet = octet * 10 + c - 48
            digits += 1
            if octet > 255:
                return None
        else:
            return None
    if dots != 3 or digits == 0:
        return None
    return value << 8 | octet


def user_or_none(text: str | None) -> str | None:
    """A logged user name, or None when the server wrote none."""
    if not text or text == "(unavailable)":
        return None
    return text
