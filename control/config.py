"""The config: a TOML file over built-in defaults, checked before anything runs.

The dataclasses mirror docs/design.md's config contract key for key, with its
defaults. A file sets only what it changes (tables merge key by key, an array
replaces the default array), and any problem is a ConfigError naming the file,
the dotted key and the offending value, so that neither the daemon nor a
reload ever acts on a config it half understood.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Ubuntu 22.04): the same parser as `tomli`
    import tomli as tomllib  # type: ignore[no-redef]

from dynscreen.control.addr import Network, network_key, parse_network
from dynscreen.control.fleet import url as fleet_url

MODES = ("enforce", "monitor")
XDP_MODES = ("auto", "native", "generic")
LOG_FORMATS = ("postfix", "dovecot", "exim", "auto")
NOTIFY_SERVICES = ("smtp", "pop", "imap")
EXEMPT_SCOPES = ("limits", "all")
FREEZE_SCOPES = ("send", "login")
MAX_POLICY_DELAY = 30  # seconds Dovecot may be told to hold a suspicious login
FLEET_SHARES = ("blocks", "counters", "accounts", "whitelist")
# Providers whose outbound servers send for millions of users: one mail to stale
# addresses from any of them is no reason to refuse the provider for everyone.
DEFAULT_TRUSTED_SENDERS = ("*.google.com", "*.outlook.com", "*.yahoo.com")

# Counters live in 32-bit kernel and engine fields; minutes are capped at ten
# years so that an expiry in nanoseconds never overflows.
MAX_COUNT = 2**31 - 1
MAX_MINUTES = 10 * 366 * 24 * 60
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, one of them the NUL


class ConfigError(Exception):
    """An unusable config: the message names the file, the key and the offending value."""

    def __init__(
        self,
        file: str,
        problem: str,
        *,
        key: str | None = None,
        value: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.file = file
        self.problem = problem
        self.key = key
        self.value = value
        self.line = line
        self.column = column
        where = [file]
        if line is not None:
            where.append(f"line {line}, column {column}" if column is not None else f"line {line}")
        if key is not None:
            where.append(key)
        text = f"{': '.join(where)}: {problem}"
        if value is not None:
            text += f", got {value}"
        super().__init__(text)


class _Invalid(Exception):
    """A problem found while checking one key; parse_config adds the file name."""

    def __init__(self, key: str, value: Any, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.value = value
        self.problem = problem


Check = Callable[[Any, str], Any]  # (value from the file, dotted key) -> value for the model


def _show(value: Any, limit: int = 80) -> str:
    """A value as TOML would write it, cut short: error messages quote what the file says."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, float) and not math.isfinite(value):
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v, limit) for v in value) + "]"
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {_show(v, limit)}" for k, v in value.items()) + "}"
    elif hasattr(value, "isoformat"):
        text = value.isoformat()
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- checks: each turns a value from the file into the model's value, or says why not ---


def _boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(key, value, "expected true or false")
    return value


def _whole(low: int, high: int = MAX_COUNT) -> Check:
    """A whole number in [low, high]; a bool is not a number, whatever Python thinks."""
    if high == MAX_COUNT:
        expected = f"expected a whole number >= {low}"
    else:
        expected = f"expected a whole number from {low} to {high}"

    def check(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Invalid(key, value, expected)
        return value

    return check


def _minutes(low: int) -> Check:
    return _whole(low, MAX_MINUTES)


def _choice(options: tuple[str, ...]) -> Check:
    expected = "expected one of " + ", ".join(f'"{o}"' for o in options)

    def check(value: Any, key: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise _Invalid(key, value, expected)
        return value

    return check


def _line(value: Any, key: str) -> str:
    """A non-empty single line of text (it ends up in a protocol reply)."""
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(key, value, "expected a non-empty string")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _Invalid(key, value, "expected a single line without control characters")
    return value


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(key, value, "expected a string")
    return value


def _array(item: Check, *, unique: bool = False, nonempty: bool = False) -> Check:
    """An array whose elements are checked one by one, each error naming its index."""

    def check(value: Any, key: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(key, value, "expected an array")
        if nonempty and not value:
            raise _Invalid(key, value, "expected at least one entry")
        out: list[Any] = []
        for i, v in enumerate(value):
            converted = item(v, f"{key}[{i}]")
            if unique and converted in out:
                first = out.index(converted)
                raise _Invalid(f"{key}[{i}]", v, f"listed twice (also {key}[{first}])")
            out.append(converted)
        return tuple(out)

    return check


_PORT = _whole(1, 65535)

_IFNAME = re.compile(r"[^\s/:]{1,15}")


def _ifname(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _IFNAME.fullmatch(value) or value in (".", ".."):
        raise _Invalid(key, value, "expected a network interface name (1 to 15 characters)")
    return value


def _network(value: Any, key: str) -> Network:
    if not isinstance(value, str):
        raise _Invalid(key, value, "expected an IP address or CIDR range as a string")
    try:
        return parse_network(value)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise _Invalid(key, value, "expected an IP address or CIDR range") from None
    raise _Invalid(key, value, f'host bits set (the range is "{loose}")')


_SENDER = re.compile(r"(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")


def _sender_pattern(value: Any, key: str) -> str:
    """A verified host name to trust: ``mx.example.net``, or ``*.example.net`` (subdomains)."""
    if not isinstance(value, str) or len(value) > 253 or not _SENDER.fullmatch(value):
        raise _Invalid(
            key, value, 'expected a host name or "*." and a domain ("*.google.com")'
        )
    return value.lower()


_HOSTNAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) as (host, port); ValueError says what is wrong."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [IPv6]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("expected an IPv6 address inside the brackets") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected host:port")
        if ":" in host:
            raise ValueError("expected host:port with an IPv6 address in brackets ([::1]:25)")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError("expected host:port with a valid host name or address")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("expected host:port with a port from 1 to 65535")
    return host, int(port)


def _host_port(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(key, value, "expected host:port as a string")
    try:
        split_host_port(value)
    except ValueError as e:
        raise _Invalid(key, value, str(e)) from None
    return value


def _host_port_or_off(value: Any, key: str) -> str:
    if value == "":
        return value
    try:
        return _host_port(value, key)
    except _Invalid as e:
        raise _Invalid(key, value, f'{e.problem}, or "" for off') from None


def _loopback_endpoint_or_off(value: Any, key: str) -> str:
    """"" (off), a loopback host:port, or an absolute unix socket path: the Dovecot
    policy listener answers whether a login may go ahead, so no other host may ask."""
    if value == "":
        return value
    text = _endpoint(value, key)
    if text.startswith("/"):
        return text
    host = split_host_port(text)[0]
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise _Invalid(key, value, "expected a loopback address (127.0.0.1:10041, [::1]:10041), "
                       'an absolute unix socket path, or "" for off')
    return text


def _abs_path_or_off(value: Any, key: str) -> str:
    return value if value == "" else _abs_path(value, key)


def _abs_path(value: Any, key: str) -> str:
    """An absolute path naming a file (not the root, not a directory by its trailing slash)."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise _Invalid(key, value, "expected an absolute path")
    if value.endswith("/") or "\0" in value:
        raise _Invalid(key, value, "expected an absolute path to a file")
    return value


def _file(value: Any, key: str) -> Path:
    return Path(_abs_path(value, key))


def _unix_socket(value: Any, key: str) -> Path:
    path = _abs_path(value, key)
    if len(path.encode()) > UNIX_PATH_MAX:
        raise _Invalid(key, value, f"a unix socket path has at most {UNIX_PATH_MAX} bytes")
    return Path(path)


def _endpoint(value: Any, key: str) -> str:
    """host:port, or an absolute unix socket path."""
    if isinstance(value, str) and value.startswith("/"):
        _unix_socket(value, key)
        return value
    try:
        return _host_port(value, key)
    except _Invalid as e:
        raise _Invalid(key, value, f"{e.problem}, or an absolute unix socket path") from None


_MAILBOX = re.compile(r"[^@\s\"<>(),;:\\\[\]]+@([^@\s]+)")


def _mailbox(value: Any, key: str) -> str:
    m = _MAILBOX.fullmatch(value) if isinstance(value, str) else None
    domain = m.group(1) if m else ""
    literal = domain.startswith("[") and domain.endswith("]")
    if not m or not (_HOSTNAME.fullmatch(domain) or literal):
        raise _Invalid(key, value, "expected a mail address (user@domain)")
    return value


_UNIT = re.compile(r"[A-Za-z0-9:_.@\\-]+")


def _unit(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _UNIT.fullmatch(value):
        raise _Invalid(key, value, 'expected a systemd unit name ("postfix.service")')
    return value


def _opt(default: Any, check: Check) -> Any:
    """A config key: its built-in default and the check for a value from a file."""
    return field(default=default, metadata={"check": check})


def _section(cls: type) -> Any:
    """A sub-table whose keys default one by one."""
    return field(default_factory=cls, metadata={"check": _table(cls)})


def _table(cls: type) -> Check:
    def check(value: Any, key: str) -> Any:
        return _build(cls, value, key)

    return check


def _build(cls: type, table: Any, key: str) -> Any:
    """The dataclass `cls` from a TOML table: unknown keys refused, missing ones defaulted."""
    if not isinstance(table, dict):
        raise _Invalid(key, table, "expected a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in table.items():
        if name not in known:
            raise _Invalid(_join(key, name), value, _unknown(name, known))
    values = {name: known[name].metadata["check"](v, _join(key, name)) for name, v in table.items()}
    return cls(**values)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unknown(name: str, known: Mapping[str, Any]) -> str:
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if near:
        return f'unknown key (did you mean "{near[0]}"?)'
    return "unknown key (known: " + ", ".join(known) + ")"


# --- the model -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """[screening.limits]: the thresholds that make a block; 0 = no limit."""

    connections: int = _opt(60, _whole(0))
    connections_minutes: int = _opt(1, _minutes(1))
    simultaneous: int = _opt(20, _whole(0))
    auth_failures: int = _opt(5, _whole(0))
    failed_rcpts: int = _opt(10, _whole(0))
    rsets: int = _opt(20, _whole(0))
    window_minutes: int = _opt(10, _minutes(1))
    syn_per_second: int = _opt(50, _whole(0))


@dataclass(frozen=True, slots=True)
class Escalation:
    """[screening.escalation]: longer blocks for sources that come back."""

    escalate: bool = _opt(False, _boolean)
    max_block_minutes: int = _opt(1440, _minutes(1))
    escalation_reset_hours: int = _opt(24, _whole(1, MAX_MINUTES // 60))


DEFAULT_PORTS = (25, 465, 587, 110, 995, 143, 993)
DEFAULT_WHITELIST: tuple[Network, ...] = (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))


@dataclass(frozen=True, slots=True)
class Screening:
    """[screening]: what is screened, how, and for how long a block lasts."""

    enabled: bool = _opt(True, _boolean)
    mode: str = _opt("enforce", _choice(MODES))
    interfaces: tuple[str, ...] = _opt((), _array(_ifname, unique=True))
    xdp_mode: str = _opt("auto", _choice(XDP_MODES))
    ports: tuple[int, ...] = _opt(DEFAULT_PORTS, _array(_PORT, unique=True, nonempty=True))
    block_minutes: int = _opt(10, _minutes(1))
    close_session: bool = _opt(True, _boolean)
    exempt_authenticated: bool = _opt(True, _boolean)
    exempt_minutes: int = _opt(60, _minutes(0))
    ipv6_prefix: int = _opt(64, _whole(8, 128))
    whitelist: tuple[Network, ...] = _opt(DEFAULT_WHITELIST, _array(_network))
    max_blocks: int = _opt(1_000_000, _whole(1))
    max_tracked: int = _opt(1_000_000, _whole(1))
    exempt_scope: str = _opt("limits", _choice(EXEMPT_SCOPES))
    trusted_senders: tuple[str, ...] = _opt(
        DEFAULT_TRUSTED_SENDERS, _array(_sender_pattern, unique=True)
    )
    trusted_networks: tuple[Network, ...] = _opt((), _array(_network, unique=True))
    aggregate_sources: int = _opt(8, _whole(0))
    aggregate_v4_prefix: int = _opt(24, _whole(8, 31))
    aggregate_v6_prefix: int = _opt(48, _whole(8, 127))
    limits: Limits = _section(Limits)
    escalation: Escalation = _section(Escalation)

    @property
    def monitor(self) -> bool:
        """Count and log, never drop."""
        return self.mode == "monitor"


@dataclass(frozen=True, slots=True)
class Accounts:
    """[accounts]: what repeated authentication failures in one session do to the account."""

    max_session_auth_failures: int = _opt(10, _whole(0))
    freeze: bool = _opt(False, _boolean)
    freeze_minutes: int = _opt(0, _minutes(0))
    frozen_reply: str = _opt(
        "5.7.1 account temporarily frozen after repeated authentication failures", _line
    )
    notify_postmaster: tuple[str, ...] = _opt((), _array(_choice(NOTIFY_SERVICES), unique=True))
    postmaster: str = _opt("postmaster@localhost", _mailbox)
    smtp_relay: str = _opt("127.0.0.1:25", _host_port)
    policy_listen: str = _opt("127.0.0.1:10040", _endpoint)
    spray_sources: int = _opt(10, _whole(0))
    spray_minutes: int = _opt(60, _minutes(1))
    protect_minutes: int = _opt(60, _minutes(1))
    familiar_days: int = _opt(30, _whole(0, 3660))
    freeze_scope: str = _opt("send", _choice(FREEZE_SCOPES))
    dovecot_policy_listen: str = _opt("", _loopback_endpoint_or_off)
    dovecot_policy_api_key_file: str = _opt("", _abs_path_or_off)
    dovecot_policy_delay: int = _opt(0, _whole(0, MAX_POLICY_DELAY))
    ignore_repeated_passwords: bool = _opt(True, _boolean)

    @property
    def relay_address(self) -> tuple[str, int]:
        """smtp_relay as (host, port) for smtplib."""
        return split_host_port(self.smtp_relay)

    @property
    def policy_address(self) -> tuple[str, int] | Path:
        """policy_listen as (host, port), or the unix socket's Path."""
        if self.policy_listen.startswith("/"):
            return Path(self.policy_listen)
        return split_host_port(self.policy_listen)

    @property
    def dovecot_policy_address(self) -> tuple[str, int] | Path | None:
        """dovecot_policy_listen as (host, port), the unix socket's Path, or None (off)."""
        if not self.dovecot_policy_listen:
            return None
        if self.dovecot_policy_listen.startswith("/"):
            return Path(self.dovecot_policy_listen)
        return split_host_port(self.dovecot_policy_listen)


@dataclass(frozen=True, slots=True)
class LogSource:
    """One [[logs]] entry: a file to tail or a journal unit to follow, never both."""

    format: str = _opt("postfix", _choice(LOG_FORMATS))
    path: str | None = _opt(None, _abs_path)
    journal: str | None = _opt(None, _unit)

    @property
    def name(self) -> str:
        """How messages refer to this source."""
        return self.path if self.path is not None else f"journal:{self.journal}"


DEFAULT_LOGS: tuple[LogSource, ...] | None = None
"""No [[logs]] table: the daemon discovers the sources (control/logs/discover.py)."""


@dataclass(frozen=True, slots=True)
class Daemon:
    """[daemon]: where the daemon keeps its state and where it listens."""

    state_file: Path = _opt(Path("/var/lib/dynscreen/blocks.dat"), _file)
    whitelist_file: Path = _opt(Path("/var/lib/dynscreen/whitelist"), _file)
    frozen_file: Path = _opt(Path("/var/lib/dynscreen/frozen"), _file)
    socket: Path = _opt(Path("/run/dynscreen/control.sock"), _unix_socket)
    pin_path: Path = _opt(Path("/sys/fs/bpf/dynscreen"), _file)
    metrics_listen: str = _opt("127.0.0.1:9466", _host_port_or_off)
    history_file: Path = _opt(Path("/var/lib/dynscreen/history.sqlite"), _file)
    history_days: int = _opt(90, _whole(1, 36600))

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """metrics_listen as (host, port), None when metrics are off."""
        return split_host_port(self.metrics_listen) if self.metrics_listen else None


NOTIFY_EVENTS = ("block", "freeze", "protect", "fleet_degraded", "fleet_restored")


def _webhook(value: Any, key: str) -> str:
    """An http(s) URL to POST events to, or "" for off."""
    if value == "":
        return value
    if not isinstance(value, str) or any(c.isspace() or ord(c) < 32 for c in value):
        raise _Invalid(key, value, 'expected an http:// or https:// URL, or "" for off')
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError as e:
        raise _Invalid(key, value, f"expected an http:// or https:// URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(key, value, 'expected an http:// or https:// URL, or "" for off')
    return value


@dataclass(frozen=True, slots=True)
class Notify:
    """[notify]: events POSTed as JSON to a webhook (chat, ticketing, paging)."""

    webhook: str = _opt("", _webhook)
    events: tuple[str, ...] = _opt(("block", "freeze", "protect"),
                                   _array(_choice(NOTIFY_EVENTS), unique=True))
def _redis_url(value: Any, key: str) -> str:
    """"" (off), or a URL the Redis client can use; an error never shows the password."""
    if value == "":
        return value
    if not isinstance(value, str):
        raise _Invalid(key, value, 'expected a redis://, rediss:// or unix:// URL, or ""')
    try:
        return fleet_url.check(value)
    except fleet_url.UrlError as e:
        raise _Invalid(key, fleet_url.shown(value), str(e)) from None


_MEMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _member_name(value: Any, key: str) -> str:
    if value == "":
        return value
    if not isinstance(value, str) or not _MEMBER.fullmatch(value):
        raise _Invalid(key, value, "expected a name of 1 to 63 letters, digits, '.', '_' or "
                       "'-' (or \"\" for the host name)")
    return value


def _file_or_off(value: Any, key: str) -> str:
    return "" if value == "" else _abs_path(value, key)


@dataclass(frozen=True, slots=True)
class Fleet:
    """[fleet]: gateways that share their blocks, counters, accounts and whitelist."""

    redis: str = _opt("", _redis_url)
    name: str = _opt("", _member_name)
    password_file: str = _opt("", _file_or_off)
    share: tuple[str, ...] = _opt(FLEET_SHARES, _array(_choice(FLEET_SHARES), unique=True))

    @property
    def enabled(self) -> bool:
        return bool(self.redis)


def _log_source(value: Any, key: str) -> LogSource:
    source = _build(LogSource, value, key)
    if (source.path is None) == (source.journal is None):
        raise _Invalid(key, value, "expected exactly one of path or journal")
    return source


def _log_sources(value: Any, key: str) -> tuple[LogSource, ...]:
    if isinstance(value, dict):
        raise _Invalid(key, value, "expected an array of tables: write [[logs]], not [logs]")
    return _array(_log_source)(value, key)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole config; ``Config()`` is the built-in default."""

    screening: Screening = _section(Screening)
    accounts: Accounts = _section(Accounts)
    logs: tuple[LogSource, ...] | None = _opt(DEFAULT_LOGS, _log_sources)  # None: discover
    daemon: Daemon = _section(Daemon)
    notify: Notify = _section(Notify)
    fleet: Fleet = _section(Fleet)

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain TOML/JSON data; from_dict() reads it back unchanged."""
        return _plain(self)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        pairs = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
        return {name: _plain(v) for name, v in pairs if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (IPv4Network, IPv6Network)):
        return network_key(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _cross_checks(config: Config) -> None:
    """Rules between keys: each names the later key, which is the one to change."""
    s = config.screening
    if s.escalation.escalate and s.escalation.max_block_minutes < s.block_minutes:
        raise _Invalid(
            "screening.escalation.max_block_minutes",
            s.escalation.max_block_minutes,
            f"expected at least screening.block_minutes ({s.block_minutes}) when escalating",
        )
    seen: dict[tuple[str | None, str | None], int] = {}
    for i, source in enumerate(config.logs or ()):
        where = (source.path, source.journal)
        if where in seen:
            key = f"logs[{i}].path" if source.path is not None else f"logs[{i}].journal"
            raise _Invalid(key, source.path or source.journal, f"same as logs[{seen[where]}]")
        seen[where] = i
    d = config.daemon
    files = {"state_file": d.state_file, "whitelist_file": d.whitelist_file}
    files |= {"frozen_file": d.frozen_file, "socket": d.socket}
    files |= {"history_file": d.history_file}
    named: dict[Path, str] = {}
    for name, path in files.items():
        if path in named:
            raise _Invalid(f"daemon.{name}", str(path), f"same file as daemon.{named[path]}")
        named[path] = name
    policy = config.accounts.policy_listen
    if policy.startswith("/") and Path(policy) in named:
        raise _Invalid(
            "accounts.policy_listen", policy, f"same file as daemon.{named[Path(policy)]}"
        )
    if policy == d.metrics_listen:
        raise _Invalid("daemon.metrics_listen", d.metrics_listen, "same as accounts.policy_listen")
    dovecot = config.accounts.dovecot_policy_listen
    if dovecot:
        if dovecot.startswith("/") and Path(dovecot) in named:
            raise _Invalid("accounts.dovecot_policy_listen", dovecot,
                           f"same file as daemon.{named[Path(dovecot)]}")
        for other, where in ((policy, "accounts.policy_listen"),
                             (d.metrics_listen, "daemon.metrics_listen")):
            if dovecot == other:
                raise _Invalid("accounts.dovecot_policy_listen", dovecot, f"same as {where}")


# --- loading ---------------------------------------------------------------------------


def default_config() -> Config:
    """The built-in defaults (docs/design.md's table): what runs when there is no config file."""
    return Config()


def from_dict(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """A Config from parsed TOML data, checked as a file would be."""
    try:
        config = _build(Config, dict(data), "")
        _cross_checks(config)
    except _Invalid as e:
        raise ConfigError(source, e.problem, key=e.key, value=_show(e.value)) from None
    return config


def parse_config(text: str, source: str) -> Config:
    """A Config from TOML text; `source` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line, column, problem = _syntax_position(e, text)
        raise ConfigError(source, f"invalid TOML: {problem}", line=line, column=column) from None
    return from_dict(data, source)


def load_config(path: Path | None) -> Config:
    """The config in `path` over the defaults; None means the built-in defaults."""
    if path is None:
        return default_config()
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(source, f"cannot read the config: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(source, "invalid TOML: not UTF-8 text", line=line) from None
    return parse_config(text, source)


_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _syntax_position(e: Exception, text: str) -> tuple[int, int, str]:
    """Line, column and message of a TOML syntax error (the end of the text if it has none)."""
    message = str(getattr(e, "msg", None) or e)
    m = _POSITION.search(message)
    if m:
        return int(m.group(1)), int(m.group(2)), message[: m.start()]
    message = message.replace(" (at end of document)", "")
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1, message


_HEADER = re.compile(r"\s*\[\[?\s*([^\[\]]*?)\s*\]\]?\s*(?:#.*)?$")
_SOCKET_LINE = re.compile(r"\s*(daemon\s*\.\s*)?socket\s*=\s*(\"[^\"]*\"|'[^']*')\s*(?:#.*)?$")


def read_socket_path(path: Path | None) -> Path | None:
    """[daemon].socket from the file, even when the rest of it is broken; None if unknown.

    The CLI finds the daemon this way when the config on disk has a mistake,
    which is when an administrator most needs `status` or `reload` to work.
    """
    if path is None:
        return None
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
    try:
        daemon = tomllib.loads(text).get("daemon")
        value = daemon.get("socket") if isinstance(daemon, dict) else None
    except tomllib.TOMLDecodeError:
        value = _scan_socket(text)
    if isinstance(value, str) and value.startswith("/") and not value.endswith("/"):
        return Path(value)
    return None


def _scan_socket(text: str) -> str | None:
    """The socket key found line by line, for a file that is not valid TOML as a whole."""
    table = ""
    found = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            table = header.group(1).replace(" ", "")
            continue
        m = _SOCKET_LINE.match(line)
        if m and (table == "daemon" or (table == "" and m.group(1))):
            found = m.group(2)[1:-1]
    return found
