"""Debian's Postfix and Dovecot, run in the lab's gateway namespace with configs of their own.

Nothing of the host's mail setup is used or touched: every run writes minimal
configs into its own folder and starts private instances from there:

- Postfix: ``postfix -c DIR start`` with its own config_directory,
  queue_directory and data_directory; logs through ``postlogd`` into a file
  (``maillog_file``: no syslog needed); no chroot. Port 25 takes mail for the
  virtual domain ``example.test``; submission (587) takes SASL logins through
  Dovecot's auth socket. ``smtpd_recipient_restrictions`` asks dynscreen's policy
  service before ``permit_sasl_authenticated``, so a frozen account cannot send.
- Dovecot: ``dovecot -c FILE`` with its own base_dir and state_dir; IMAP (143)
  and POP3 (110) with plaintext logins allowed (a lab without TLS), users from a
  passwd-file, ``auth_verbose`` detail lines, ``log_path`` into a file.

Mail is delivered by Postfix's ``virtual`` agent into Maildirs that Dovecot
serves: ``MAIL/example.test/USER/``, owned by one virtual uid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DOMAIN = "example.test"
VMAIL_UID = 5000  # the owner of the Maildirs; no passwd entry needed
SUBMISSION_PORT = 587
PORTS = {"smtp": 25, "submission": SUBMISSION_PORT, "imap": 143, "pop3": 110}

# Accounts of the lab: local part -> password. The postmaster is a mailbox too.
USERS = {
    "alice": "alice-secret",
    "bob": "bob-secret",
    "carol": "carol-secret",
    "dave": "dave-secret",
    "erin": "erin-secret",
    "frank": "frank-secret",
    "grace": "grace-secret",  # only the relay-down notice scenario uses her
    "postmaster": "postmaster-secret",
}


def address(user: str) -> str:
    return user if "@" in user else f"{user}@{DOMAIN}"


class MailError(RuntimeError):
    """A mail server did not start; the message carries what it logged."""


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command; its output goes through a file, not a pipe: a daemon that forks
    keeps the pipe open, and reading it would wait for the daemon to end."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out:
        r = subprocess.run(list(args), stdin=subprocess.DEVNULL, stdout=out,
                           stderr=subprocess.STDOUT, text=True, check=False, timeout=timeout)
        out.seek(0)
        text = out.read()
    return subprocess.CompletedProcess(r.args, r.returncode, text, text)


@dataclass
class MailPaths:
    root: Path

    @property
    def postfix_conf(self) -> Path:
        return self.root / "postfix"

    @property
    def queue(self) -> Path:
        return self.root / "spool"

    @property
    def data(self) -> Path:
        return self.root / "postfix-data"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def postfix_log(self) -> Path:
        return self.logs / "postfix.log"

    @property
    def dovecot_log(self) -> Path:
        return self.logs / "dovecot.log"

    @property
    def dovecot_conf(self) -> Path:
        return self.root / "dovecot" / "dovecot.conf"

    @property
    def dovecot_base(self) -> Path:
        return self.root / "dovecot" / "run"

    @property
    def mail(self) -> Path:
        return self.root / "mail"

    def maildir(self, user: str) -> Path:
        local, _, domain = address(user).partition("@")
        return self.mail / domain / local


class MailServers:
    """Postfix + Dovecot for one lab; ``start()`` in the namespace, ``stop()`` leaves nothing."""

    def __init__(self, root: Path, netns: str, listen: Iterable[str], *,
                 policy: str = "inet:127.0.0.1:10040", users: dict[str, str] | None = None,
                 hostname: str = f"gateway.{DOMAIN}", failure_delay: str = "0",
                 dovecot_extra: str = "") -> None:
        self.paths = MailPaths(root)
        self.netns = netns
        self.listen = list(listen)
        self.policy = policy
        self.users = dict(USERS if users is None else users)
        self.hostname = hostname
        self.failure_delay = failure_delay
        self.dovecot_extra = dovecot_extra  # more settings (the Dovecot auth policy's)
        self.dovecot_pid: int | None = None
        self.postfix_started = False

    # ---- configs -----------------------------------------------------------------------

    def write_configs(self) -> None:
        p = self.paths
        for d in (p.root, p.logs, p.postfix_conf, p.dovecot_conf.parent, p.dovecot_base):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        for d in (p.queue, p.data):
            d.mkdir(exist_ok=True)
        os.chown(p.data, _uid("postfix"), _gid("postfix"))
        p.mail.mkdir(exist_ok=True)
        (p.mail / DOMAIN).mkdir(exist_ok=True)
        for d in (p.mail, p.mail / DOMAIN):
            os.chown(d, VMAIL_UID, VMAIL_UID)
            d.chmod(0o750)
        for f in (p.postfix_log, p.dovecot_log):
            f.touch()
            f.chmod(0o644)
        (p.postfix_conf / "main.cf").write_text(self.main_cf())
        (p.postfix_conf / "master.cf").write_text(MASTER_CF)
        (p.postfix_conf / "vmailbox").write_text(
            "".join(f"{address(u)} {DOMAIN}/{u}/\n" for u in self.users))
        users = p.dovecot_conf.parent / "users"
        users.write_text("".join(f"{address(u)}:{{PLAIN}}{pw}::::::\n"
                                 for u, pw in self.users.items()))
        os.chown(users, 0, _gid("dovecot"))
        users.chmod(0o640)
        p.dovecot_conf.write_text(self.dovecot_conf())

    def main_cf(self) -> str:
        p = self.paths
        v6 = [a for a in self.listen if ":" in a]
        protocols = "all" if v6 else "ipv4"
        return f"""# generated by dynscreen.control.lab for one run
compatibility_level = 3.6
queue_directory = {p.queue}
data_directory = {p.data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {p.postfix_log}
maillog_file_prefixes = {p.logs}
myhostname = {self.hostname}
mydomain = {DOMAIN}
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery in the lab
alias_maps =
alias_database =
relayhost =
mynetworks = 127.0.0.0/8
inet_interfaces = {", ".join(self.listen)}
inet_protocols = {protocols}
smtp_dns_support_level = disabled
biff = no
append_dot_mydomain = no
smtputf8_enable = no
smtpd_banner = $myhostname ESMTP dynscreen lab
smtpd_tls_security_level = none
smtp_tls_security_level = none
smtpd_error_sleep_time = 0
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_security_options = noanonymous
smtpd_sasl_auth_enable = no
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = check_policy_service {self.policy},
    permit_sasl_authenticated, reject_unauth_destination
smtpd_policy_service_default_action = DUNNO
smtpd_policy_service_timeout = 10s
smtpd_policy_service_max_idle = 300s
smtpd_policy_service_try_limit = 2
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {p.mail}
virtual_mailbox_maps = texthash:{p.postfix_conf}/vmailbox
virtual_uid_maps = static:{VMAIL_UID}
virtual_gid_maps = static:{VMAIL_UID}
virtual_minimum_uid = 100
"""

    def dovecot_conf(self) -> str:
        p = self.paths
        return f"""# generated by dynscreen.control.lab for one run
protocols = imap pop3
listen = {", ".join(self.listen)}
base_dir = {p.dovecot_base}
state_dir = {p.dovecot_base.parent / "state"}
instance_name = dovecot-{p.root.name}
log_path = {p.dovecot_log}
auth_verbose = yes
auth_failure_delay = {self.failure_delay}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = {VMAIL_UID}
last_valid_uid = {VMAIL_UID}
mail_location = maildir:~
shutdown_clients = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {p.dovecot_conf.parent / "users"}
}}
userdb {{
  driver = static
  args = uid={VMAIL_UID} gid={VMAIL_UID} home={p.mail}/%d/%n
}}
service auth {{
  unix_listener {p.queue}/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
service anvil {{
  # No auth penalty: Dovecot would delay each further login from an address by up
  # to 15 s after failures; the lab's attacks would only run slower. The auth
  # process cannot open this socket, so it leaves the penalty off.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 143
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 110
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
  }}
}}
{self.dovecot_extra}"""

    # ---- run ---------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        self.write_configs()
        p = self.paths
        # Postfix first: it makes private/, where Dovecot puts its auth socket for it.
        r = _run("ip", "netns", "exec", self.netns, "postfix", "-c", str(p.postfix_conf), "start")
        if r.returncode != 0:
            raise MailError(f"postfix did not start: {r.stderr.strip()}\n"
                            f"{self._tail(p.postfix_log)}")
        self.postfix_started = True
        r = _run("ip", "netns", "exec", self.netns, "dovecot", "-c", str(p.dovecot_conf))
        if r.returncode != 0:
            raise MailError(f"dovecot did not start: {r.stderr.strip()}\n"
                            f"{self._tail(p.dovecot_log)}")
        pidfile = p.dovecot_base / "master.pid"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready = pidfile.exists() and (p.queue / "private/auth").exists()
            ready = ready and (p.queue / "pid/master.pid").exists()
            if ready:
                # (Dovecot creates its pid file before it writes the pid: an empty file
                # is not ready yet)
                with contextlib.suppress(ValueError, OSError, IndexError):
                    self.dovecot_pid = int(pidfile.read_text().split()[0])
                    break
            time.sleep(0.05)
        else:
            raise MailError("mail servers not ready in time:\n"
                            f"{self._tail(p.postfix_log)}\n{self._tail(p.dovecot_log)}")

    def stop(self) -> None:
        """Stop both servers (quickly; whatever remains dies with the namespace)."""
        p = self.paths
        if self.postfix_started:
            _run("ip", "netns", "exec", self.netns, "postfix", "-c", str(p.postfix_conf),
                 "stop", timeout=30)
            self.postfix_started = False
        if self.dovecot_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.dovecot_pid, signal.SIGTERM)
            end = time.monotonic() + 5
            while time.monotonic() < end and _alive(self.dovecot_pid):
                time.sleep(0.05)
            self.dovecot_pid = None

    def _tail(self, path: Path, n: int = 20) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # ---- mailboxes ---------------------------------------------------------------------

    def messages(self, user: str) -> list[str]:
        """The messages in a user's Maildir (new and cur), oldest first."""
        d = self.paths.maildir(user)
        files = [f for sub in ("new", "cur") if (d / sub).is_dir() for f in (d / sub).iterdir()]
        files.sort(key=lambda f: f.stat().st_mtime)
        return [f.read_text(errors="replace") for f in files]

    def remove(self) -> None:
        shutil.rmtree(self.paths.root, ignore_errors=True)


MASTER_CF = """# generated by dynscreen.control.lab: no chroot; submission with SASL
smtp       inet  n       -       n       -       -       smtpd
submission inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
virtual    unix  -       n       n       -       -       virtual
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
"""


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    return True
