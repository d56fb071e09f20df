"""[fleet]: the keys, their checks, and a password that never shows in an error."""

from __future__ import annotations

import pytest

from dynscreen.control.config import ConfigError, parse_config
from dynscreen.control.fleet import url


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/etc/dynscreen/dynscreen.toml")
    return str(info.value)


def test_fleet_keys_parse() -> None:
    cfg = parse_config('[fleet]\nredis = "rediss://:pw@redis.example:6380/2"\nname = "mx-1"\n'
                       'password_file = "/etc/dynscreen/redis.pw"\nshare = ["blocks"]\n', "t")
    f = cfg.fleet
    assert (f.enabled, f.name, f.password_file, f.share) == (
        True, "mx-1", "/etc/dynscreen/redis.pw", ("blocks",))
    assert parse_config('[fleet]\nredis = "unix:///run/redis/redis.sock"\n', "t").fleet.enabled
    assert not parse_config("", "t").fleet.enabled


@pytest.mark.parametrize(("text", "said"), [
    ('redis = "http://host"', "redis://, rediss://"),
    ('redis = "redis://"', "expected a host"),
    ('redis = "unix://relative.sock"', "absolute"),
    ('redis = "redis://host:99999"', "port"),
    ('redis = "redis://host/x"', "database number"),
    ('name = "bad name"', "fleet.name"),
    ('password_file = "relative"', "absolute path"),
    ('share = ["blocks", "kernel"]', "fleet.share[1]"),
    ('share = ["blocks", "blocks"]', "listed twice"),
    ('shares = []', 'did you mean "share"'),
])
def test_bad_fleet_keys_are_named(text: str, said: str) -> None:
    assert said.lower() in error_of(f"[fleet]\n{text}\n").lower()


def test_a_password_never_shows_in_an_error() -> None:
    message = error_of('[fleet]\nredis = "redis://admin:s3cret@host:99999/0"\n')
    assert "fleet.redis" in message
    assert "s3cret" not in message and "admin" not in message


def test_shown_url_has_no_credentials() -> None:
    assert url.shown("rediss://u:p@h:6380/1") == "rediss://h:6380/1"
    assert url.shown("redis://:p@10.0.0.1") == "redis://10.0.0.1"
    assert url.shown("unix:///run/redis.sock") == "unix:///run/redis.sock"
    assert url.shown("redis://h/0?password=x") == "redis://h/0"
    # A password with an unencoded "/" or "@" stays out too.
    assert url.shown("redis://:pa/ss@h/0") == "redis://h/0"
    assert url.shown("redis+sentinel://:p@s1:26379,s2/mymaster/1") == \
        "redis+sentinel://s1:26379,s2/mymaster/1"


def test_a_sentinel_url_is_taken_apart() -> None:
    got = url.sentinel("redis+sentinel://:p%40ss@10.0.0.1:26380,[2001:db8::1],s3/mymaster/2")
    assert got.sentinels == (("10.0.0.1", 26380), ("2001:db8::1", 26379), ("s3", 26379))
    assert (got.service, got.db, got.username, got.password) == ("mymaster", 2, None, "p@ss")
    plain = url.sentinel("redis+sentinel://s1/mx.fleet")
    assert (plain.sentinels, plain.service, plain.db, plain.password) == (
        (("s1", 26379),), "mx.fleet", 0, None)
    cfg = parse_config('[fleet]\nredis = "redis+sentinel://s1:26379,s2:26379/mymaster"\n', "t")
    assert cfg.fleet.enabled


@pytest.mark.parametrize(("value", "said"), [
    ("redis+sentinel://s1:26379", "service name"),
    ("redis+sentinel://s1:26379/", "service name"),
    ("redis+sentinel://s1,/mymaster", "Sentinel 2: expected host[:port]"),
    ("redis+sentinel://s1:99999/mymaster", "Sentinel 1: the port"),
    ("redis+sentinel://s1:x/mymaster", "Sentinel 1: not a host[:port]"),
    ("redis+sentinel://s1/my$master", "service name holds"),
    ("redis+sentinel://s1/mymaster/x", "database after the service"),
    ("redis+sentinel://s1/mymaster?x=1", "no query"),
])
def test_bad_sentinel_urls_are_named(value: str, said: str) -> None:
    message = error_of(f'[fleet]\nredis = "{value}"\n')
    assert "fleet.redis" in message and said.lower() in message.lower()


@pytest.mark.parametrize("value", [
    "redis+sentinel://:s3cret@s1:99999/mymaster",
    "redis+sentinel://:s3/cret@s1/mymaster",   # an unencoded "/" in the password
    "redis+sentinel://:s3cret@s1/my$ervice",
])
def test_a_sentinel_password_never_shows_in_an_error(value: str) -> None:
    message = error_of(f'[fleet]\nredis = "{value}"\n')
    assert "fleet.redis" in message and "s3" not in message


def test_check_config_warns_of_an_unreadable_password_file(tmp_path) -> None:  # noqa: ANN001
    from dynscreen.control.hostcheck import host_warnings

    text = (f'[screening]\ninterfaces = ["lo"]\n[[logs]]\npath = "{tmp_path}/mail.log"\n'
            f'[fleet]\nredis = "redis://h"\npassword_file = "{tmp_path}/pw"\n')
    said = host_warnings(parse_config(text, "t"))
    assert any("fleet.password_file" in w for w in said)
    (tmp_path / "pw").write_text("x\n")
    assert not any("fleet.password_file" in w for w in host_warnings(parse_config(text, "t")))
