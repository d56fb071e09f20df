"""The whitelist file: runtime `dynscreen allow` changes, kept across restarts.

One address or CIDR range per line, ``#`` comments; the config's
``[screening].whitelist`` and this file together make the whitelist. The
daemon rewrites it atomically after `allow add` / `allow remove`, and reads it
on start and on reload; an invalid file is refused with its line number.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

from dynscreen.control.addr import Network, network_key, parse_network
from dynscreen.control.atomicfile import write_atomic

HEADER = """\
# dynscreen whitelist: addresses and CIDR ranges never screened, one per line.
# `dynscreen allow add|remove` keeps this file; you may edit it too, then run
# `dynscreen reload`. Text after # is a comment. IPv4 and IPv6 both work:
#   192.0.2.10
#   198.51.100.0/24
#   2001:db8:5::/48
# These add to [screening].whitelist in the config.
"""


class WhitelistFileError(Exception):
    """An invalid whitelist file; str() is ``PATH:LINE: message``."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


def parse(text: str, path: str) -> list[Network]:
    """The networks a whitelist text lists, in order; WhitelistFileError at the first problem."""
    nets: list[Network] = []
    seen: dict[Network, int] = {}
    for no, raw in enumerate(text.split("\n"), 1):
        fields = raw.partition("#")[0].split()
        if not fields:
            continue
        if len(fields) > 1:
            raise WhitelistFileError(path, no, f'unexpected "{" ".join(fields[1:])}" after '
                                               "the address (one per line; comments start with #)")
        try:
            net = parse_network(fields[0])
        except ValueError:
            raise WhitelistFileError(path, no, _bad(fields[0])) from None
        if net in seen:
            raise WhitelistFileError(path, no, f"{network_key(net)} listed twice "
                                               f"(also on line {seen[net]})")
        seen[net] = no
        nets.append(net)
    return nets


def _bad(text: str) -> str:
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f'bad address "{text}": expected an IPv4 or IPv6 address or a CIDR range'
    return f'host bits set in address "{text}" (the range is {loose})'


def load(path: Path) -> list[Network]:
    """The whitelist file's networks; [] when there is no file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise WhitelistFileError(str(path), line,
                                 f"not UTF-8 text (byte 0x{data[e.start]:02x})") from None
    return parse(text, str(path))


def format_whitelist(nets: Iterable[Network]) -> str:
    """The file's text: the header, then the networks sorted, each once."""
    unique = sorted(set(nets), key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    body = "".join(f"{network_key(n)}\n" for n in unique)
    return f"{HEADER}\n{body}" if body else HEADER


def save(path: Path, nets: Iterable[Network]) -> None:
    """Write the whitelist atomically (temp file, fsync, rename), creating the folder."""
    write_atomic(Path(path), format_whitelist(nets).encode())
