"""A Redis URL as the config gives it: checked, and shown without its credentials.

The URL may carry a password (``redis://:secret@host``); it must never reach a
log line, `status` or a config error message, so everything that shows the URL
shows ``shown()``'s form.
"""

from __future__ import annotations

from urllib.parse import urlsplit

SCHEMES = ("redis", "rediss", "unix")


class UrlError(ValueError):
    """What is wrong with a Redis URL (the message never holds the credentials)."""


def shown(url: str) -> str:
    """The URL with user and password left out: safe to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"  # (the query may hold a password too)


def check(url: str) -> str:
    """The URL if the client library can use it; UrlError says what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UrlError(f"not a valid URL ({e})") from None
    if parts.scheme not in SCHEMES:
        raise UrlError('expected a URL starting with redis://, rediss:// (TLS) or unix://, '
                       'or "" for off')
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


def has_password(url: str) -> bool:
    """Whether the URL carries credentials of its own."""
    return "@" in urlsplit(url).netloc
