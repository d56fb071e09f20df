"""The config contract: docs/design.md's defaults, merging, errors that name key, value and file."""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import dynscreen.control
from dynscreen.control.config import (
    Config,
    ConfigError,
    LogSource,
    default_config,
    from_dict,
    load_config,
    parse_config,
    read_socket_path,
    split_host_port,
)

# docs/design.md's "Config contract (TOML)" block, verbatim: the defaults are a contract.
DESIGN_DEFAULTS = """
[screening]
enabled = true
mode = "enforce"                 # or "monitor": count and log, never drop
interfaces = []                  # empty: the default-route interface
xdp_mode = "auto"                # auto (native, else generic) | native | generic
ports = [25, 465, 587, 110, 995, 143, 993]
block_minutes = 10
close_session = true
exempt_authenticated = true
exempt_minutes = 60              # how long a successful SMTP AUTH exempts its source
ipv6_prefix = 64
whitelist = ["127.0.0.0/8", "::1/128"]
max_blocks = 1000000             # block table size; when full, new blocks are refused loudly
max_tracked = 1000000            # sources tracked by the engine (oldest evicted)
exempt_scope = "limits"          # "limits": a successful SMTP AUTH exempts its source from
                                 # connections, simultaneous, failed_rcpts and rsets, not from
                                 # auth failures on other accounts; "all": from everything
trusted_senders = ["*.google.com", "*.outlook.com", "*.yahoo.com"]  # verified host names:
                                 # never blocked for failed_rcpts or rsets
trusted_networks = []            # CIDRs with the same meaning
aggregate_sources = 8            # blocked sources in one prefix within window_minutes
                                 # that block the prefix; 0 = off
aggregate_v4_prefix = 24
aggregate_v6_prefix = 48         # (only when wider than ipv6_prefix)

[screening.limits]               # 0 = no limit
connections = 60                 # X ...
connections_minutes = 1          # ... in Y minutes
simultaneous = 20
auth_failures = 5
failed_rcpts = 10
rsets = 20
window_minutes = 10              # window for auth_failures, failed_rcpts, rsets
syn_per_second = 50              # raw SYN cap per source: excess dropped, no block

[screening.escalation]
escalate = false                 # each re-block within 24 h doubles the duration
max_block_minutes = 1440
escalation_reset_hours = 24      # clean this long after a block ended: back to block_minutes

[accounts]
max_session_auth_failures = 10   # 0 = off
freeze = false
freeze_minutes = 0               # 0 = until an administrator unfreezes
frozen_reply = "5.7.1 account temporarily frozen after repeated authentication failures"
notify_postmaster = []           # any of "smtp", "pop", "imap"
postmaster = "postmaster@localhost"
smtp_relay = "127.0.0.1:25"
policy_listen = "127.0.0.1:10040"  # or a unix socket path
spray_sources = 10               # distinct sources failing on one account ... (0 = off)
spray_minutes = 60               # ... within this window: the account is protected
protect_minutes = 60
familiar_days = 30               # a login as the account this recent: a familiar source
freeze_scope = "send"            # "login": frozen accounts also refused at IMAP/POP3 login
dovecot_policy_listen = ""       # "" = off; "127.0.0.1:10041" or a unix socket path
dovecot_policy_api_key_file = "" # a key Dovecot must send (auth_policy_server_api_header)
dovecot_policy_delay = 0         # seconds Dovecot holds a login from a failing source
ignore_repeated_passwords = true # the same failed password, source and account count once

# No [[logs]] table: the daemon discovers the sources (a table replaces discovery).

[daemon]
state_file = "/var/lib/dynscreen/blocks.dat"
whitelist_file = "/var/lib/dynscreen/whitelist"
frozen_file = "/var/lib/dynscreen/frozen"
socket = "/run/dynscreen/control.sock"
pin_path = "/sys/fs/bpf/dynscreen"
metrics_listen = "127.0.0.1:9466"  # "" = off
history_file = "/var/lib/dynscreen/history.sqlite"
history_days = 90

[notify]
webhook = ""
events = ["block", "freeze", "protect"]

[fleet]
redis = ""                       # "" = off; redis://, rediss://, unix://
name = ""                        # default: the host name
password_file = ""
share = ["blocks", "counters", "accounts", "whitelist"]
"""

SRC = "/etc/dynscreen/dynscreen.toml"


def error_of(text: str, source: str = SRC) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return info.value


# --- defaults ----------------------------------------------------------------------------


def test_defaults_are_designs_table() -> None:
    assert default_config().to_dict() == tomllib.loads(DESIGN_DEFAULTS)
    assert parse_config(DESIGN_DEFAULTS, "design") == default_config()


def test_defaults_typed() -> None:
    c = default_config()
    assert c == Config()
    assert c.screening.ports == (25, 465, 587, 110, 995, 143, 993)
    assert c.screening.whitelist == (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))
    assert c.screening.limits.auth_failures == 5
    assert c.screening.escalation.max_block_minutes == 1440
    assert c.accounts.notify_postmaster == ()
    assert c.logs is None  # discovered
    assert c.daemon.socket == Path("/run/dynscreen/control.sock")
    assert not c.screening.monitor


def test_no_file_and_empty_file_are_defaults(tmp_path: Path) -> None:
    assert load_config(None) == default_config()
    assert parse_config("", "empty") == default_config()
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing changed\n")
    assert load_config(empty) == default_config()


def test_to_dict_is_json_and_reads_back() -> None:
    c = parse_config(
        """
        [screening]
        whitelist = ["192.0.2.1", "2001:db8::/32"]
        [[logs]]
        format = "dovecot"
        journal = "dovecot.service"
        """,
        "x",
    )
    data = json.loads(json.dumps(c.to_dict()))
    assert data["screening"]["whitelist"] == ["192.0.2.1", "2001:db8::/32"]
    assert data["logs"] == [{"format": "dovecot", "journal": "dovecot.service"}]
    assert from_dict(data) == c


def test_frozen() -> None:
    c = default_config()
    with pytest.raises(AttributeError):
        c.screening.mode = "monitor"  # type: ignore[misc]


# --- a file sets only what it changes ------------------------------------------------------


def test_partial_file_merges_key_by_key(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text("[screening.limits]\nauth_failures = 3\n[daemon]\nmetrics_listen = ''\n")
    c = load_config(path)
    d = default_config()
    assert c.screening.limits.auth_failures == 3
    assert c.screening.limits.connections == d.screening.limits.connections
    assert c.screening.mode == "enforce"
    assert c.daemon.metrics_listen == ""
    assert c.daemon.metrics_address is None
    assert c.daemon.socket == d.daemon.socket
    assert c.logs == d.logs


def test_dotted_keys_work_like_tables() -> None:
    c = parse_config('screening.mode = "monitor"\nscreening.limits.rsets = 0\n', "x")
    assert c.screening.mode == "monitor" and c.screening.monitor
    assert c.screening.limits.rsets == 0


def test_arrays_replace_the_default() -> None:
    c = parse_config(
        """
        [screening]
        ports = [25]
        whitelist = []
        interfaces = ["eth0", "eth1"]
        [accounts]
        notify_postmaster = ["imap", "smtp"]
        """,
        "x",
    )
    assert c.screening.ports == (25,)
    assert c.screening.whitelist == ()
    assert c.screening.interfaces == ("eth0", "eth1")
    assert c.accounts.notify_postmaster == ("imap", "smtp")


def test_logs_given_replace_discovery() -> None:
    c = parse_config(
        """
        [[logs]]
        format = "dovecot"
        path = "/var/log/dovecot.log"
        [[logs]]
        format = "auto"
        journal = "postfix@-.service"
        """,
        "x",
    )
    assert c.logs == (
        LogSource(format="dovecot", path="/var/log/dovecot.log"),
        LogSource(format="auto", journal="postfix@-.service"),
    )
    assert c.logs[1].name == "journal:postfix@-.service"
    assert parse_config("logs = []", "x").logs == ()


def test_addresses_parsed() -> None:
    c = parse_config(
        """
        [screening]
        whitelist = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/48", "::ffff:198.51.100.0/120"]
        [accounts]
        smtp_relay = "[::1]:2525"
        policy_listen = "/run/dynscreen/policy.sock"
        [daemon]
        metrics_listen = "localhost:9000"
        """,
        "x",
    )
    assert c.screening.whitelist == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("192.0.2.7/32"),
        IPv6Network("2001:db8::/48"),
        IPv4Network("198.51.100.0/24"),
    )
    assert c.accounts.relay_address == ("::1", 2525)
    assert c.accounts.policy_address == Path("/run/dynscreen/policy.sock")
    assert default_config().accounts.policy_address == ("127.0.0.1", 10040)
    assert default_config().accounts.dovecot_policy_address is None
    assert c.daemon.metrics_address == ("localhost", 9000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:25", ("127.0.0.1", 25)),
        ("mail.example.com:587", ("mail.example.com", 587)),
        ("[2001:db8::1]:10040", ("2001:db8::1", 10040)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    "text", ["", "25", ":25", "host:", "host:0", "host:65536", "::1:25", "[::1]", "[x]:25", "a b:1"]
)
def test_split_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text)


# --- every error names the file, the key and the value ---------------------------------------

BAD = [
    # (file text, dotted key, the value as the message quotes it)
    ("[screening.limits]\nauth_failures = 'five'", "screening.limits.auth_failures", '"five"'),
    ("[screening.limits]\nauth_failures = true", "screening.limits.auth_failures", "true"),
    ("[screening.limits]\nauth_failures = 5.0", "screening.limits.auth_failures", "5.0"),
    ("[screening.limits]\nconnections = -1", "screening.limits.connections", "-1"),
    ("[screening.limits]\nwindow_minutes = 0", "screening.limits.window_minutes", "0"),
    ("[screening.limits]\nconnections_minutes = 0", "screening.limits.connections_minutes", "0"),
    ("[screening.limits]\nsyn_per_second = 'x'", "screening.limits.syn_per_second", '"x"'),
    ("[screening.limits]\nauth_failure = 5", "screening.limits.auth_failure", "5"),
    ("[screening]\nenabled = 1", "screening.enabled", "1"),
    ("[screening]\nenabled = 'yes'", "screening.enabled", '"yes"'),
    ("[screening]\nmode = 'dry-run'", "screening.mode", '"dry-run"'),
    ("[screening]\nxdp_mode = 'offload'", "screening.xdp_mode", '"offload"'),
    ("[screening]\ninterfaces = 'eth0'", "screening.interfaces", '"eth0"'),
    ("[screening]\ninterfaces = ['eth0', 'eth0']", "screening.interfaces[1]", '"eth0"'),
    ("[screening]\ninterfaces = ['a/b']", "screening.interfaces[0]", '"a/b"'),
    ("[screening]\ninterfaces = ['averyverylongname']", "screening.interfaces[0]", "averyvery"),
    ("[screening]\nports = []", "screening.ports", "[]"),
    ("[screening]\nports = [25, 0]", "screening.ports[1]", "0"),
    ("[screening]\nports = [25, 65536]", "screening.ports[1]", "65536"),
    ("[screening]\nports = [25, 587, 25]", "screening.ports[2]", "25"),
    ("[screening]\nports = ['25']", "screening.ports[0]", '"25"'),
    ("[screening]\nports = 25", "screening.ports", "25"),
    ("[screening]\nblock_minutes = 0", "screening.block_minutes", "0"),
    ("[screening]\nblock_minutes = -5", "screening.block_minutes", "-5"),
    ("[screening]\nexempt_minutes = -1", "screening.exempt_minutes", "-1"),
    ("[screening]\nipv6_prefix = 7", "screening.ipv6_prefix", "7"),
    ("[screening]\nipv6_prefix = 129", "screening.ipv6_prefix", "129"),
    ("[screening]\nmax_blocks = 0", "screening.max_blocks", "0"),
    ("[screening]\nmax_tracked = 0", "screening.max_tracked", "0"),
    ("[screening]\nwhitelist = ['10.0.0.1/8']", "screening.whitelist[0]", '"10.0.0.1/8"'),
    ("[screening]\nwhitelist = ['::1', 'mail.example']", "screening.whitelist[1]", "mail.exam"),
    ("[screening]\nwhitelist = ['10.0.0.0/33']", "screening.whitelist[0]", '"10.0.0.0/33"'),
    ("[screening]\nwhitelist = [10]", "screening.whitelist[0]", "10"),
    ("[screening]\nwhitelist = '10.0.0.0/8'", "screening.whitelist", '"10.0.0.0/8"'),
    ("[screening]\nlimits = 5", "screening.limits", "5"),
    ("[screening.escalation]\nescalate = 'no'", "screening.escalation.escalate", '"no"'),
    (
        "[screening.escalation]\nescalate = true\nmax_block_minutes = 5",
        "screening.escalation.max_block_minutes",
        "5",
    ),
    ("[screeningg]\nenabled = true", "screeningg", "enabled = true"),
    ("screening = 1", "screening", "1"),
    ("[accounts]\nmax_session_auth_failures = -1", "accounts.max_session_auth_failures", "-1"),
    ("[accounts]\nfreeze = 'true'", "accounts.freeze", '"true"'),
    ("[accounts]\nfreeze_minutes = -1", "accounts.freeze_minutes", "-1"),
    ("[accounts]\nfrozen_reply = ''", "accounts.frozen_reply", '""'),
    ('[accounts]\nfrozen_reply = "a\\nb"', "accounts.frozen_reply", '"a\\nb"'),
    ("[accounts]\nnotify_postmaster = ['smtp', 'pop3']", "accounts.notify_postmaster[1]", "pop3"),
    ("[accounts]\nnotify_postmaster = 'smtp'", "accounts.notify_postmaster", '"smtp"'),
    ("[accounts]\npostmaster = 'postmaster'", "accounts.postmaster", '"postmaster"'),
    ("[accounts]\npostmaster = 'a b@example.org'", "accounts.postmaster", "a b@"),
    ("[accounts]\nsmtp_relay = 'localhost'", "accounts.smtp_relay", '"localhost"'),
    ("[accounts]\nsmtp_relay = '::1:25'", "accounts.smtp_relay", '"::1:25"'),
    ("[accounts]\nsmtp_relay = 25", "accounts.smtp_relay", "25"),
    ("[accounts]\npolicy_listen = 'policy.sock'", "accounts.policy_listen", '"policy.sock"'),
    ("[accounts]\npolicy_listen = 'h:99999'", "accounts.policy_listen", '"h:99999"'),
    ("[accounts]\npolicy_listen = '/" + "s" * 120 + "'", "accounts.policy_listen", "sss"),
    ("[accounts]\nfreez = true", "accounts.freez", "true"),
    ("[accounts]\nfreeze_scope = 'imap'", "accounts.freeze_scope", '"imap"'),
    ("[accounts]\ndovecot_policy_listen = '192.0.2.1:10041'", "accounts.dovecot_policy_listen",
     "loopback"),
    ("[accounts]\ndovecot_policy_listen = 'mail.example:10041'",
     "accounts.dovecot_policy_listen", "mail.example"),
    ("[accounts]\ndovecot_policy_listen = 'policy.sock'", "accounts.dovecot_policy_listen",
     '"policy.sock"'),
    ("[accounts]\ndovecot_policy_listen = '127.0.0.1:10040'", "accounts.dovecot_policy_listen",
     "same as accounts.policy_listen"),
    ("[accounts]\ndovecot_policy_listen = '/run/dynscreen/control.sock'",
     "accounts.dovecot_policy_listen", "same file as daemon.socket"),
    ("[accounts]\ndovecot_policy_api_key_file = 'key.txt'",
     "accounts.dovecot_policy_api_key_file", '"key.txt"'),
    ("[accounts]\ndovecot_policy_delay = 31", "accounts.dovecot_policy_delay", "31"),
    ("[accounts]\nignore_repeated_passwords = 1", "accounts.ignore_repeated_passwords", "1"),
    ("[[logs]]\nformat = 'sendmail'\npath = '/x'", "logs[0].format", '"sendmail"'),
    ("[[logs]]\npath = '/a'\n[[logs]]\npath = 'mail.log'", "logs[1].path", '"mail.log"'),
    ("[[logs]]\npath = '/var/log/'", "logs[0].path", '"/var/log/"'),
    ("[[logs]]\nformat = 'auto'", "logs[0]", 'format = "auto"'),
    ("[[logs]]\npath = '/a'\njournal = 'postfix.service'", "logs[0]", "postfix.service"),
    ("[[logs]]\njournal = 'post fix'", "logs[0].journal", '"post fix"'),
    ("[[logs]]\npath = '/a'\nfile = '/b'", "logs[0].file", '"/b"'),
    ("[[logs]]\npath = '/a'\n[[logs]]\npath = '/a'", "logs[1].path", '"/a"'),
    ("[logs]\npath = '/a'", "logs", 'path = "/a"'),
    ("logs = ['/var/log/mail.log']", "logs[0]", '"/var/log/mail.log"'),
    ("[daemon]\nsocket = 'control.sock'", "daemon.socket", '"control.sock"'),
    ("[daemon]\nsocket = '/" + "s" * 120 + "'", "daemon.socket", "sss"),
    ("[daemon]\nstate_file = 5", "daemon.state_file", "5"),
    ("[daemon]\nwhitelist_file = '/'", "daemon.whitelist_file", '"/"'),
    ("[daemon]\nfrozen_file = '/var/lib/dynscreen/blocks.dat'", "daemon.frozen_file", "blocks"),
    ("[daemon]\npin_path = 'dynscreen'", "daemon.pin_path", '"dynscreen"'),
    ("[notify]\nwebhook = 'ftp://example.com/x'", "notify.webhook", '"ftp://example.com/x"'),
    ("[notify]\nwebhook = 'http://host:99999/'", "notify.webhook", '"http://host:99999/"'),
    ("[notify]\nevents = ['block', 'tea']", "notify.events[1]", '"tea"'),
    ("[daemon]\nhistory_days = 0", "daemon.history_days", "0"),
    ("[daemon]\nhistory_file = 'history.sqlite'", "daemon.history_file", '"history.sqlite"'),
    ("[daemon]\nmetrics_listen = '9466'", "daemon.metrics_listen", '"9466"'),
    ("[daemon]\nmetrics_listen = false", "daemon.metrics_listen", "false"),
    ("[daemon]\nmetrics_listen = '127.0.0.1:10040'", "daemon.metrics_listen", "10040"),
    ("[daemon]\nsockets = '/run/x.sock'", "daemon.sockets", '"/run/x.sock"'),
]


@pytest.mark.parametrize(("text", "key", "value"), BAD, ids=[b[1] for b in BAD])
def test_error_names_file_key_and_value(text: str, key: str, value: str) -> None:
    e = error_of(text)
    message = str(e)
    assert e.file == SRC and message.startswith(f"{SRC}: {key}: ")
    assert e.key == key
    assert value in message, message
    assert "\n" not in message


def test_error_message_format() -> None:
    e = error_of("[screening.limits]\nauth_failures = 'five'")
    assert str(e) == (
        f'{SRC}: screening.limits.auth_failures: expected a whole number >= 0, got "five"'
    )


def test_unknown_key_suggests_the_nearest() -> None:
    assert 'did you mean "auth_failures"' in str(error_of("[screening.limits]\nauth_failure=5"))
    assert 'did you mean "screening"' in str(error_of("[screenings]\nmode='enforce'"))
    far = str(error_of("[daemon]\nzzz = 1"))
    assert "unknown key" in far and "state_file" in far  # no near match: the known keys


def test_host_bits_error_shows_the_range() -> None:
    message = str(error_of("[screening]\nwhitelist = ['127.0.0.0/8', '192.0.2.9/24']"))
    assert "screening.whitelist[1]" in message and '"192.0.2.9/24"' in message
    assert "192.0.2.0/24" in message


def test_escalation_cap_only_checked_when_escalating() -> None:
    c = parse_config("[screening]\nblock_minutes = 2000\n", "x")
    assert c.screening.block_minutes == 2000


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[screening]\nmode = 'monitor'\nports = [25,, 587]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    e = info.value
    assert e.line == 3 and e.column is not None
    assert str(e).startswith(f"{path}: line 3, column {e.column}: invalid TOML")


def test_toml_error_at_end_of_text_still_has_a_line() -> None:
    e = error_of("[screening]\nmode = ")
    assert e.line == 2 and e.column == 8
    assert "line 2" in str(e)


def test_duplicate_table_is_a_syntax_error() -> None:
    e = error_of("[screening]\nmode = 'monitor'\n[screening]\nenabled = false\n")
    assert e.line == 3


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: cannot read")


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[accounts]\npostmaster = 'r\xe9gis@example.org'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 2 and "UTF-8" in str(info.value)


# --- [daemon].socket for the CLI, even from a broken file ------------------------------------


def test_read_socket_path_none_and_absent(tmp_path: Path) -> None:
    assert read_socket_path(None) is None
    assert read_socket_path(tmp_path / "absent.toml") is None
    other = tmp_path / "other.toml"
    other.write_text("[screening]\nmode = 'monitor'\n")
    assert read_socket_path(other) is None


def test_read_socket_path_valid(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text("[daemon]\nsocket = '/run/ds/ctl.sock'\n")
    assert read_socket_path(path) == Path("/run/ds/ctl.sock")


def test_read_socket_path_when_the_rest_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "invalid.toml"
    path.write_text("[screening]\nmode = 'bogus'\nport = 25\n[daemon]\nsocket = '/run/ds/a.sock'\n")
    with pytest.raises(ConfigError):
        load_config(path)
    assert read_socket_path(path) == Path("/run/ds/a.sock")


def test_read_socket_path_when_the_toml_is_broken(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        "[screening]\nports = [25,,\n"
        "[[logs]]\nsocket = '/wrong/logs.sock'\n"
        '[daemon]   # where the CLI finds us\n  socket = "/run/ds/b.sock"  # note\n'
        "[accounts]\nsocket = '/wrong/accounts.sock'\n"
    )
    with pytest.raises(ConfigError):
        load_config(path)
    assert read_socket_path(path) == Path("/run/ds/b.sock")


def test_read_socket_path_broken_dotted_key(tmp_path: Path) -> None:
    path = tmp_path / "dotted.toml"
    path.write_text("daemon.socket = '/run/ds/c.sock'\nmode = = 1\n")
    assert read_socket_path(path) == Path("/run/ds/c.sock")


def test_read_socket_path_ignores_a_relative_socket(tmp_path: Path) -> None:
    path = tmp_path / "rel.toml"
    path.write_text("[daemon]\nsocket = 'control.sock'\n")
    assert read_socket_path(path) is None


def test_example_config_shows_the_defaults() -> None:
    """The commented example shipped with the code must stay true to the defaults."""
    example = Path(dynscreen.control.__file__).parent / "dynscreen.example.toml"
    assert parse_config(example.read_text(), str(example)) == default_config()


def test_dovecot_policy_keys() -> None:
    c = parse_config(
        """
        [accounts]
        freeze_scope = "login"
        dovecot_policy_listen = "[::1]:10041"
        dovecot_policy_api_key_file = "/etc/dynscreen/dovecot-policy.key"
        ignore_repeated_passwords = false
        """,
        "x",
    )
    a = c.accounts
    assert a.freeze_scope == "login"
    assert a.dovecot_policy_address == ("::1", 10041)
    assert a.dovecot_policy_api_key_file == "/etc/dynscreen/dovecot-policy.key"
    assert a.ignore_repeated_passwords is False
    d = default_config().accounts
    assert (d.freeze_scope, d.dovecot_policy_listen, d.ignore_repeated_passwords) == (
        "send", "", True)
    sock = parse_config('[accounts]\ndovecot_policy_listen = "/run/dovecot/dynscreen"', "x")
    assert sock.accounts.dovecot_policy_address == Path("/run/dovecot/dynscreen")
    assert parse_config('[accounts]\ndovecot_policy_listen = "localhost:1"', "x")
