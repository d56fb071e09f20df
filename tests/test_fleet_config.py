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


def test_check_config_warns_of_an_unreadable_password_file(tmp_path) -> None:  # noqa: ANN001
    from dynscreen.control.hostcheck import host_warnings

    text = (f'[screening]\ninterfaces = ["lo"]\n[[logs]]\npath = "{tmp_path}/mail.log"\n'
            f'[fleet]\nredis = "redis://h"\npassword_file = "{tmp_path}/pw"\n')
    said = host_warnings(parse_config(text, "t"))
    assert any("fleet.password_file" in w for w in said)
    (tmp_path / "pw").write_text("x\n")
    assert not any("fleet.password_file" in w for w in host_warnings(parse_config(text, "t")))
