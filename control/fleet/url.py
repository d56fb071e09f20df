"""A Redis URL as the config gives it: checked, and shown without its credentials.

The URL may carry a password (``redis://:secret@host``); it must never reach a
log line, `status` or a config error message, so everything that shows the URL
shows ``shown()``'s form.

A highly available Redis is reached through its Sentinels:
``redis+sentinel://[[user]:password@]host1[:26379],host2[:26379]/SERVICE[/DB]``
names the Sentinels to ask (one or more, comma-separated; port 26379 by
default), the monitored service (the ``sentinel monitor`` name) and the
database (0 by default). The password (percent-encoded in the URL, or from
password_file) is the Redis master's; the Sentinels are asked without one.
The client library asks them for the current master before each new
connection, so after a failover the member reconnects to the new master.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SENTINEL = "redis+sentinel"
SCHEMES = ("redis", "rediss", "unix", SENTINEL)
SENTINEL_PORT = 26379
SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class UrlError(ValueError):
    """What is wrong with a Redis URL (the message never holds the credentials)."""


def shown(url: str) -> str:
    """The URL with user and password left out: safe to print."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.replace("+", "").isalpha():
        return "<unparsable URL>"
    # After the last "@" anywhere: a password holding an unencoded "/" or "@" stays out
    # too. The query and fragment may hold a password as well: left out.
    rest = rest.rpartition("@")[2]
    return f"{scheme}://{rest.split('?')[0].split('#')[0]}"


def check(url: str) -> str:
    """The URL if the client library can use it; UrlError says what is wrong."""
    if url.startswith(SENTINEL + "://"):  # several host:port (urlsplit takes one)
        if any(c.isspace() or ord(c) < 32 for c in url):
            raise UrlError("a URL holds no spaces or control characters")
        sentinel(url)
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UrlError(f"not a valid URL ({e})") from None
    if parts.scheme not in SCHEMES:
        raise UrlError('expected a URL starting with redis://, rediss:// (TLS), unix:// or '
                       'redis+sentinel://, or "" for off')
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UrlError("a URL holds no spaces or control characters")
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise UrlError("expected unix:///absolute/path/to/redis.sock")
        return url
    if not parts.hostname:
        raise UrlError(f"expected a host: {parts.scheme}://host:6379/0")
    if port is not None and not 0 < port < 65536:
        raise UrlError("the port must be 1 to 65535")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise UrlError("the path is the database number (/0)")
    return url


@dataclass(frozen=True)
class SentinelUrl:
    """A redis+sentinel:// URL taken apart."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None


def sentinel(url: str) -> SentinelUrl:
    """The parts of a redis+sentinel:// URL; UrlError (without the credentials) if bad."""
    form = f"{SENTINEL}://[:password@]host1:26379,host2:26379/SERVICE[/DB]"
    rest = url.partition("://")[2]
    netloc, _, path = rest.partition("/")
    if "?" in path or "#" in path:
        raise UrlError(f"no query or fragment in a Sentinel URL: {form}")
    creds, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = creds.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon and pw else None
    sentinels = []
    for i, item in enumerate(hosts.split(","), 1):
        try:
            one = urlsplit(f"//{item}")
            port = one.port
        except ValueError:  # (its message would quote the text)
            if item.rpartition(":")[2].isdigit():
                raise UrlError(f"Sentinel {i}: the port must be 1 to 65535") from None
            raise UrlError(f"Sentinel {i}: not a host[:port]; {form}") from None
        if not one.hostname or one.username is not None or one.path:
            raise UrlError(f"Sentinel {i}: expected host[:port]; {form}")
        if port is not None and not 0 < port < 65536:
            raise UrlError(f"Sentinel {i}: the port must be 1 to 65535")
        sentinels.append((one.hostname, port or SENTINEL_PORT))
    service, _, db = path.partition("/")
    if not service:
        raise UrlError(f"expected the Sentinel service name after the hosts: {form}")
    if not SERVICE.fullmatch(service):
        raise UrlError("the service name holds characters other than letters, digits, '.', "
                       "'_' and '-'")
    db = db.rstrip("/")
    if db and not db.isdigit():
        raise UrlError(f"the database after the service name is a number (/{service}/0)")
    return SentinelUrl(tuple(sentinels), service, int(db or 0), username, password)


def has_password(url: str) -> bool:
    """Whether the URL carries credentials of its own."""
    return "@" in urlsplit(url).netloc
