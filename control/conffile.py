"""The commented config file the Debian package installs, and the key list of dynscreen.toml(5).

Both are generated from the config model (control/config.py) at package build time, so a
key and its default cannot drift from the code: every key is walked from the dataclasses,
its default read from ``Config()``, and its description taken from DESCRIPTIONS below. A
key without a description stops the build (and tests/test_packaging.py) with its name.

In the file every key is commented out: the daemon's built-in defaults apply until an
administrator uncomments a line, so a later version's better default reaches every host
that did not choose otherwise.

    python -m dynscreen.control.conffile conffile          the /etc/dynscreen/dynscreen.toml text
    python -m dynscreen.control.conffile man TEMPLATE      dynscreen.toml(5) from its template
"""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from dynscreen.control.config import Config, LogSource

# One line per key (the man page may say more in its prose). Keys are "section.key".
DESCRIPTIONS: dict[str, str] = {
    "screening": "What is screened, how, and for how long a block lasts.",
    "screening.enabled": "The master switch: false screens nothing.",
    "screening.mode": '"enforce" drops; "monitor" counts and reports what it would block, '
                      "and drops nothing.",
    "screening.interfaces": 'Interfaces to screen, e.g. ["eth0", "eth1"]; empty: the '
                            "default-route interface.",
    "screening.xdp_mode": '"auto" (native driver mode, else generic), "native" or "generic".',
    "screening.ports": "TCP ports screened: SMTP, SMTPS, submission, POP3(S), IMAP(S).",
    "screening.block_minutes": "How long a block lasts; it expires in the kernel on time, "
                               "also while the daemon is stopped.",
    "screening.close_session": "Also close the open sessions of a source when it is blocked.",
    "screening.exempt_authenticated": "A source that passed SMTP AUTH is not blocked ...",
    "screening.exempt_minutes": "... for this long after its last successful login.",
    "screening.exempt_scope": '"limits": a login exempts from connections, simultaneous, '
                              'failed_rcpts and rsets, never from failures on other '
                              'accounts; "all": from everything.',
    "screening.trusted_senders": "Host names (globs) the mail server verified: never blocked "
                                 "for failed_rcpts or rsets.",
    "screening.trusted_networks": "CIDR ranges with the same meaning as trusted_senders.",
    "screening.aggregate_sources": "Block the whole prefix once this many of its sources "
                                   "are blocked within window_minutes; 0 = off ...",
    "screening.aggregate_v4_prefix": "... an IPv4 prefix of this length ...",
    "screening.aggregate_v6_prefix": "... or an IPv6 prefix of this length.",
    "screening.ipv6_prefix": "IPv6 sources are counted and blocked per prefix of this length.",
    "screening.whitelist": "Never screened: addresses or CIDR ranges, IPv4 and IPv6.",
    "screening.max_blocks": "Size of the kernel's block table; when full, new blocks are "
                            "refused loudly (changing it needs `dynscreen detach`).",
    "screening.max_tracked": "Sources the kernel and the engine keep counters for (oldest "
                             "evicted).",
    "screening.limits": "The thresholds that make a block; 0 = no limit.",
    "screening.limits.connections": "Block a source that connects more than this many "
                                    "times ...",
    "screening.limits.connections_minutes": "... within this many minutes.",
    "screening.limits.simultaneous": "Open connections per source at once.",
    "screening.limits.auth_failures": "Failed logins (SMTP AUTH, POP3, IMAP) per source ...",
    "screening.limits.failed_rcpts": '"Recipient unknown" rejections per source ...',
    "screening.limits.rsets": "SMTP RSET commands per source ...",
    "screening.limits.window_minutes": "... each counted over this many minutes.",
    "screening.limits.syn_per_second": "Raw SYN cap per source: the excess is dropped, no "
                                       "block is made.",
    "screening.escalation": "Longer blocks for sources that come back.",
    "screening.escalation.escalate": "true: each re-block within 24 hours doubles the "
                                     "duration ...",
    "screening.escalation.max_block_minutes": "... up to this many minutes.",
    "screening.escalation.escalation_reset_hours": "A source clean for this long starts "
                                                   "again at block_minutes.",
    "accounts": "What repeated authentication failures in one session do to the account.",
    "accounts.max_session_auth_failures": "Failed logins within one mail session (0 = off), "
                                          "then the account is frozen and/or reported.",
    "accounts.freeze": "Freeze the account: it still receives mail, cannot send (Postfix "
                       "policy service, see policy_listen).",
    "accounts.freeze_minutes": "How long a freeze lasts; 0 = until `dynscreen accounts "
                               "unfreeze USER`.",
    "accounts.frozen_reply": "What Postfix answers a frozen account.",
    "accounts.notify_postmaster": 'Mail the postmaster for these protocols: "smtp", "pop", '
                                  '"imap".',
    "accounts.postmaster": "Where those notices go.",
    "accounts.smtp_relay": "The SMTP server notices are sent through (host:port, [v6]:port).",
    "accounts.spray_sources": "An account that fails from this many distinct sources ...",
    "accounts.spray_minutes": "... within this many minutes is under a spraying attack "
                              "(0 sources = off) ...",
    "accounts.protect_minutes": "... and protected this long: a failure on it from a "
                                "source that is not familiar blocks that source.",
    "accounts.familiar_days": "A source that logged in as the account within this many "
                              "days is familiar.",
    "accounts.policy_listen": "The Postfix policy service: host:port, or a unix socket path "
                              "such as /var/spool/postfix/private/dynscreen.",
    "accounts.freeze_scope": '"send": a frozen account receives and reads mail, cannot send; '
                             '"login": also refused at IMAP/POP3 login (needs '
                             "dovecot_policy_listen).",
    "accounts.dovecot_policy_listen": 'Dovecot\'s auth policy server ("" = off): a loopback '
                                      "host:port such as 127.0.0.1:10041, or a unix socket "
                                      "path; Dovecot's auth_policy_server_url points here.",
    "accounts.dovecot_policy_api_key_file": "A file holding the key Dovecot must send "
                                            "(auth_policy_server_api_header); \"\" = none.",
    "accounts.dovecot_policy_delay": "Seconds Dovecot holds a login from a source with "
                                     "recent failures (0 = off).",
    "accounts.ignore_repeated_passwords": "A failed password already tried from the same "
                                          "source for the same account within the window "
                                          "counts once (needs dovecot_policy_listen).",
    "logs": "Without any [[logs]] entry the daemon finds its log sources itself: the "
            "journal of the installed mail servers' units where journald runs, else the "
            "classic files such as /var/log/mail.log. Any entry given replaces that "
            "discovery: one [[logs]] entry per log to watch.",
    "logs.format": '"postfix", "dovecot", "exim", or "auto" (detected per line).',
    "logs.path": "A log file to follow (rotation is handled) ...",
    "logs.journal": '... or instead a systemd unit to follow in the journal: Debian\'s '
                    'Postfix logs as "postfix@-.service", Dovecot as "dovecot.service".',
    "daemon": "Where the daemon keeps its state and where it listens.",
    "daemon.state_file": "The current blocks; editable (`dynscreen blocks edit`).",
    "daemon.whitelist_file": "Whitelist entries added at run time (`dynscreen allow add`).",
    "daemon.frozen_file": "Frozen accounts.",
    "daemon.socket": "The control socket the `dynscreen` command talks to.",
    "daemon.pin_path": "Where the BPF maps are pinned (a bpffs is mounted if missing).",
    "daemon.metrics_listen": 'Prometheus metrics (host:port); "" = off.',
    "daemon.history_file": "The history of blocks, unblocks, expiries, freezes and "
                           "protections (SQLite; `dynscreen history`, `dynscreen explain`).",
    "daemon.history_days": "How many days the history keeps.",
    "notify": "Events POSTed as JSON to a webhook.",
    "notify.webhook": 'The URL events are POSTed to (http:// or https://); "" = off.',
    "notify.events": ('Which events: "block", "freeze", "protect", "fleet_degraded", '
                      '"fleet_restored".'),
    "fleet": "Gateways that screen as one: blocks, counters, frozen accounts and the "
             "runtime whitelist shared through Redis.",
    "fleet.redis": '"" = off; "redis://host:6379/0", "rediss://host:6380/0" (TLS), '
                   '"unix:///run/redis/redis.sock" or, through Sentinels, '
                   '"redis+sentinel://host1:26379,host2:26379/SERVICE[/DB]". '
                   'Credentials may sit in the URL.',
    "fleet.name": "This gateway's name in the fleet; \"\" = the host name.",
    "fleet.password_file": "A file holding the Redis password (instead of the URL); "
                           "never printed.",
    "fleet.share": 'What is shared: "blocks", "counters" (auth_failures, failed_rcpts, '
                   'rsets), "accounts" (freezes, notices), "whitelist" (allow add/remove).',
}

# Shown (commented) as examples of [[logs]] entries: the journal of Debian's Postfix and
# Dovecot (their sender fields cannot be forged by local users), and a syslog file.
LOG_EXAMPLES = (
    ("format", "postfix"), ("journal", "postfix@-.service"),
    ("format", "dovecot"), ("journal", "dovecot.service"),
    ("format", "auto"), ("path", "/var/log/mail.log"),
)

HEADER = """\
# dynscreen configuration: /etc/dynscreen/dynscreen.toml
#
# Every key is shown commented out at its built-in default: the daemon uses the
# defaults for whatever is not set, so uncomment only what you change. A table
# merges key by key with the defaults; an array (ports, whitelist, [[logs]], ...)
# replaces the default array as a whole. dynscreen.toml(5) describes every key.
#
# After an edit:  dynscreen check-config && systemctl reload dynscreen"""


class MissingDescription(Exception):
    """A config key has no entry in DESCRIPTIONS."""


def toml_value(value: Any) -> str:
    """One TOML value (the config holds only these kinds)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, (IPv4Network, IPv6Network)):
        return json.dumps(value.with_prefixlen)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def describe(key: str) -> str:
    """The description of `key`, or an error naming it."""
    try:
        return DESCRIPTIONS[key]
    except KeyError:
        raise MissingDescription(
            f"config key {key!r} has no description in control/conffile.py DESCRIPTIONS"
        ) from None


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of the config: where it lives, its default, what it means."""

    section: str  # "screening.limits", "logs", ...
    name: str
    default: Any  # None: no default (an alternative such as logs.journal)

    @property
    def full(self) -> str:
        return f"{self.section}.{self.name}"


def sections(obj: Any = None, prefix: str = "") -> Iterator[tuple[str, list[Key]]]:
    """(section, its plain keys) for every table of the config, in file order."""
    obj = Config() if obj is None else obj
    keys: list[Key] = []
    nested: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            nested.append((f.name, value))
        elif f.name == "logs" and not prefix:
            nested.append(("logs", None))
        else:
            keys.append(Key(prefix, f.name, value))
    if prefix:
        yield prefix, keys
    for name, value in nested:
        full = f"{prefix}.{name}" if prefix else name
        if value is None:  # [[logs]]: an array of tables, documented from LogSource
            yield full, [Key(full, f.name, None) for f in dataclasses.fields(LogSource)]
        else:
            yield from sections(value, full)


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, 78)]


def conffile() -> str:
    """The text of /etc/dynscreen/dynscreen.toml: every key, commented out, described."""
    out = [HEADER]
    for section, keys in sections():
        out.append("")
        if section == "logs":
            out += _comment(describe(section))
            for key in keys:
                out += _comment(f"{key.name}: {describe(key.full)}")
            out.append("# Examples (commented: discovery is on until an entry is given):")
            for name, value in LOG_EXAMPLES:
                if name == "format":
                    out.append("#[[logs]]")
                out.append(f"#{name} = {toml_value(value)}")
            continue
        out.append(f"[{section}]")
        out += _comment(describe(section))
        for key in keys:
            out += _comment(describe(key.full))
            out.append(f"#{key.name} = {toml_value(key.default)}")
    return "\n".join(out) + "\n"


def _roff(text: str) -> str:
    """Plain text for a man page line: backslashes and leading dots escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def man_keys() -> str:
    """The KEYS part of dynscreen.toml(5): a subsection per table, a tagged paragraph per key."""
    out: list[str] = []
    for section, keys in sections():
        header = "[[logs]]" if section == "logs" else f"[{section}]"
        out.append(f".SS {_roff(header)}")
        out.append(_roff(describe(section)))
        for key in keys:
            default = key.default
            if section == "logs":  # no default entry: discovery
                default = None
            shown = "(none)" if default is None else toml_value(default)
            out.append(".TP")
            out.append(f"\\fB{key.name}\\fR = {_roff(shown)}")
            out.append(_roff(describe(key.full)))
    return "\n".join(out) + "\n"


def man_page(template: str) -> str:
    """dynscreen.toml(5): the template with its @KEYS@ line replaced by the key list."""
    if "@KEYS@\n" not in template:
        raise ValueError("the man page template has no @KEYS@ line")
    return template.replace("@KEYS@\n", man_keys())


def main(argv: list[str]) -> int:
    try:
        if argv == ["conffile"]:
            sys.stdout.write(conffile())
        elif len(argv) == 2 and argv[0] == "man":
            sys.stdout.write(man_page(Path(argv[1]).read_text()))
        else:
            print("usage: python -m dynscreen.control.conffile conffile | man TEMPLATE",
                  file=sys.stderr)
            return 2
    except MissingDescription as e:
        print(f"conffile: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
