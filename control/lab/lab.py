"""The mail-gateway lab: namespaces, real Postfix and Dovecot, and dynscreen screening them.

``MailLab`` builds, in this order:

1. a gateway network namespace and client namespaces joined to it by veth
   (:mod:`.netns`): client 0 plays attackers (many source addresses), client 1
   honest users, client 2 a partner network that the tests whitelist;
2. Postfix and Dovecot inside the gateway namespace (:mod:`.mail`), listening on
   the gateway's first veth address;
3. ``dynscreen run`` inside the gateway namespace, screening every gateway veth,
   following both mail logs, with the Postfix policy service, account freezing
   and postmaster notices on, and limits low enough for a quick demonstration.

Everything lives in one temp folder and is removed by ``close()``: processes,
namespaces, links, pinned maps, files. ``close()`` runs from the context
manager, from an atexit hook and (when ``signals`` is set) on SIGTERM/SIGHUP;
it is idempotent and keeps going past errors.
"""

from __future__ import annotations

import atexit
import contextlib
import imaplib
import json
import os
import poplib
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..dovecotpolicy import dovecot_settings
from . import labdaemon
from .labdaemon import dynscreen_command
from .mail import DOMAIN, USERS, MailServers, address
from .netns import NetLab, inside, sh, wait_for

# What the lab sets in dynscreen's config unless told otherwise: low limits, so that a
# demonstration or a test needs only a handful of connections and attempts.
LAB_LIMITS: dict[str, int] = {
    "connections": 12,
    "connections_minutes": 1,
    "simultaneous": 4,
    "auth_failures": 4,
    "failed_rcpts": 4,
    "rsets": 5,
    "window_minutes": 10,
    "syn_per_second": 50,
}
LAB_SCREENING: dict[str, Any] = {
    "block_minutes": 10,
    "exempt_minutes": 10,
    "close_session": True,
    "exempt_authenticated": True,
}
LAB_ACCOUNTS: dict[str, Any] = {
    "max_session_auth_failures": 3,
    "freeze": True,
    "notify_postmaster": ["smtp", "pop", "imap"],
}

DOVECOT_POLICY_LISTEN = "127.0.0.1:10041"  # inside the gateway namespace

_LIVE: list[MailLab] = []
_LIVE_LOCK = threading.Lock()


def _close_all() -> None:
    with _LIVE_LOCK:
        labs = list(_LIVE)
    for lab in labs:
        with contextlib.suppress(Exception):
            lab.close()


atexit.register(_close_all)


REGISTRY = Path("/run/dynscreen-lab")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_labs() -> list[str]:
    """Remove what labs of processes that died without cleaning up (SIGKILL, power cut of
    the test runner) left behind: their processes, namespaces, links, bpffs, files.
    Each lab records itself in REGISTRY while it is open. Returns what was removed."""
    removed: list[str] = []
    if not REGISTRY.is_dir():
        return removed
    for rec_path in sorted(REGISTRY.glob("*.json")):
        try:
            rec = json.loads(rec_path.read_text())
            pid = int(rec["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(pid):
            continue
        for ns in rec.get("netns", []):
            if not Path(f"/run/netns/{ns}").exists():
                continue
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for p in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(p), signal.SIGKILL)
            time.sleep(0.2)
            sh("ip", "netns", "del", ns, check=False)
            removed.append(f"netns {ns}")
        for link in rec.get("links", []):
            if sh("ip", "link", "del", link, check=False).returncode == 0:
                removed.append(f"link {link}")
        bpffs = rec.get("bpffs")
        if bpffs and os.path.ismount(bpffs):
            sh("umount", "-l", bpffs, check=False)
            with contextlib.suppress(OSError):
                os.rmdir(bpffs)
            removed.append(f"bpffs {bpffs}")
        d = rec.get("dir")
        if d and Path(d).is_dir() and Path(d).name.startswith("dynscreen-lab-"):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(f"dir {d}")
        with contextlib.suppress(OSError):
            rec_path.unlink()
    return removed


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


class LabError(RuntimeError):
    """The lab could not be built; the message says which part and what it logged."""


class MailLab:
    """Gateway + clients + Postfix + Dovecot + dynscreen; a context manager.

    ``screening``, ``limits`` and ``accounts`` override the lab's dynscreen
    settings key by key (see LAB_SCREENING, LAB_LIMITS, LAB_ACCOUNTS).
    """

    def __init__(self, *, tag: str | None = None, base: str | None = None, attackers: int = 60,
                 screening: dict[str, Any] | None = None, limits: dict[str, int] | None = None,
                 accounts: dict[str, Any] | None = None, signals: bool = False,
                 keep: bool = False, mail_failure_delay: str = "0",
                 dovecot_policy: bool = False) -> None:
        self.tag = tag or f"{os.getpid() % 100000}"
        if base is None:
            # The socket tracepoint sees every namespace of the machine and counts by local
            # address: two labs running at once must not share the gateway's address.
            base = f"10.{64 + os.getpid() % 36}"
        self.net = NetLab(self.tag, clients=3, addrs=attackers, base=base, prefix="dl")
        # client 1 (honest) and 2 (partner) need only a few addresses
        for c in self.net.clients[1:]:
            del c.v4[4:]
        self.screening = {**LAB_SCREENING, **(screening or {})}
        self.limits = {**LAB_LIMITS, **(limits or {})}
        self.accounts = {**LAB_ACCOUNTS, **(accounts or {})}
        self.signals = signals
        self.keep = keep
        self.mail_failure_delay = mail_failure_delay
        # Dovecot asks dynscreen about each login (auth policy), with an API key; the
        # partner network plays a webmail that Dovecot trusts to name its user's address.
        self.dovecot_policy = dovecot_policy
        self.dir: Path | None = None
        self.mail: MailServers | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self._daemon_out: Any = None
        self._next = 0
        self._old_handlers: dict[int, Any] = {}
        self._closed = True

    # ---- addresses -----------------------------------------------------------------------

    @property
    def gateway(self) -> str:
        """The address the mail servers listen on."""
        return self.net.gw_v4

    @property
    def attackers_ns(self) -> str:
        return self.net.clients[0].ns

    @property
    def honest(self) -> list[str]:
        return self.net.clients[1].v4

    @property
    def partner(self) -> list[str]:
        return self.net.clients[2].v4

    @property
    def partner_range(self) -> str:
        first = self.net.clients[2].gw_v4.rsplit(".", 1)[0]
        return f"{first}.0/24"

    def attacker(self) -> str:
        """A source address nobody has used yet in this lab (each scenario takes its own)."""
        pool = self.net.clients[0].v4
        if self._next >= len(pool):
            raise LabError(f"all {len(pool)} attacker addresses are used")
        self._next += 1
        return pool[self._next - 1]

    # ---- files ---------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        assert self.dir is not None, "the lab is not open"
        return self.dir

    @property
    def config(self) -> Path:
        return self.root / "dynscreen" / "dynscreen.toml"

    @property
    def socket(self) -> Path:
        return self.root / "dynscreen" / "control.sock"

    @property
    def state_file(self) -> Path:
        return self.root / "dynscreen" / "blocks.dat"

    @property
    def daemon_log(self) -> Path:
        return self.root / "dynscreen" / "daemon.log"

    @property
    def postfix_log(self) -> Path:
        assert self.mail is not None
        return self.mail.paths.postfix_log

    @property
    def dovecot_log(self) -> Path:
        assert self.mail is not None
        return self.mail.paths.dovecot_log

    def config_text(self) -> str:
        d = self.root / "dynscreen"
        s = self.screening
        whitelist = s.get("whitelist", ["127.0.0.0/8", "::1/128", f"{self.gateway}/32"])
        lines = ["# generated by dynscreen.control.lab", "[screening]",
                 f"interfaces = {_toml(self.net.gw_ifs)}", f"whitelist = {_toml(whitelist)}"]
        lines += [f"{k} = {_toml(v)}" for k, v in s.items() if k != "whitelist"]
        lines += ["", "[screening.limits]"]
        lines += [f"{k} = {_toml(v)}" for k, v in self.limits.items()]
        a = {"postmaster": f"postmaster@{DOMAIN}", "smtp_relay": f"{self.gateway}:25",
             "policy_listen": "127.0.0.1:10040", **self.accounts}
        if self.dovecot_policy:
            a = {"dovecot_policy_listen": DOVECOT_POLICY_LISTEN,
                 "dovecot_policy_api_key_file": str(self.dovecot_policy_key), **a}
        lines += ["", "[accounts]"] + [f"{k} = {_toml(v)}" for k, v in a.items()]
        for fmt, path in (("postfix", self.postfix_log), ("dovecot", self.dovecot_log)):
            lines += ["", "[[logs]]", f'format = "{fmt}"', f"path = {_toml(str(path))}"]
        lines += ["", labdaemon.files_section(d, self.socket, self.net.pin,
                                              state_file=self.state_file, history=True)]
        return "\n".join(lines)

    # ---- build and tear down --------------------------------------------------------------

    def open(self) -> MailLab:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, XDP)")
        for tool in ("postfix", "dovecot", "ip"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                raise LabError(f"{tool} is not installed: run `sudo make setup-dev`")
        sweep_stale_labs()
        with _LIVE_LOCK:
            _LIVE.append(self)
        self._closed = False
        if self.signals:
            self._install_signals()
        try:
            self.dir = Path(tempfile.mkdtemp(prefix="dynscreen-lab-"))
            self.dir.chmod(0o755)  # postfix, dovecot and the mailbox owner go through it
            (self.dir / "dynscreen").mkdir()
            self._register()
            self.net.open()
            self.mail = MailServers(self.dir / "mail", self.net.gw, [self.gateway],
                                    failure_delay=self.mail_failure_delay,
                                    dovecot_extra=self._dovecot_policy_settings())
            self.mail.start()
            self.config.write_text(self.config_text())
            self.start_daemon()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def dovecot_policy_key(self) -> Path:
        return self.root / "dynscreen" / "dovecot-policy.key"

    def _dovecot_policy_settings(self) -> str:
        """Dovecot's side of the auth policy (a fresh key and nonce each lab), or ""."""
        if not self.dovecot_policy:
            return ""
        key = secrets.token_hex(16)
        self.dovecot_policy_key.write_text(key + "\n")
        self.dovecot_policy_key.chmod(0o600)
        return (dovecot_settings(DOVECOT_POLICY_LISTEN, secrets.token_hex(16), key)
                + f"login_trusted_networks = {self.partner_range}\n")

    def start_daemon(self, timeout: float = 60) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            return
        self._daemon_out = self.daemon_log.open("ab")
        self.daemon = labdaemon.start(self.net.gw, self.config, self.socket, self._daemon_out,
                                      self.daemon_log, timeout, LabError)
        self.net.procs.append(self.daemon)

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Stop the daemon (SIGTERM: blocks stay in the kernel); its exit code."""
        code = labdaemon.stop(self.daemon, sig, timeout)
        self.daemon = None
        if self._daemon_out is not None:
            self._daemon_out.close()
            self._daemon_out = None
        return code

    def close(self) -> None:
        """Remove everything the lab made; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        masked = self._mask_sigint()
        try:
            if self.daemon is not None and self.daemon.poll() is None:
                # detach: the XDP program and the pins go; the namespaces go next anyway
                with contextlib.suppress(Exception):
                    self.request("detach", timeout=5)
                    self.daemon.wait(5)
            with contextlib.suppress(Exception):
                self.stop_daemon(signal.SIGKILL, timeout=5)
            if self.mail is not None:
                with contextlib.suppress(Exception):
                    self.mail.stop()
            with contextlib.suppress(Exception):
                self.net.close()
            if self.dir is not None and not self.keep:
                shutil.rmtree(self.dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                self._record.unlink()
        finally:
            with _LIVE_LOCK:
                if self in _LIVE:
                    _LIVE.remove(self)
            self._restore_signals()
            if masked is not None:
                signal.signal(signal.SIGINT, masked)

    @property
    def _record(self) -> Path:
        return REGISTRY / f"{self.tag}.json"

    def _register(self) -> None:
        """Note what this lab makes, for sweep_stale_labs() should this process die."""
        REGISTRY.mkdir(parents=True, exist_ok=True)
        self._record.write_text(json.dumps({
            "pid": os.getpid(), "netns": self.net.namespaces(),
            "links": self.net.gw_ifs, "bpffs": str(self.net.bpffs), "dir": str(self.dir),
        }))

    def leftovers(self) -> list[str]:
        """What close() should have removed (empty after a clean close)."""
        left = self.net.leftovers()
        if self.dir is not None and self.dir.exists() and not self.keep:
            left.append(f"dir {self.dir}")
        return left

    def __enter__(self) -> MailLab:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, stop)

    def _restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(Exception):
                signal.signal(sig, old)
        self._old_handlers.clear()

    def _mask_sigint(self) -> Any:
        """Ignore Ctrl-C while cleaning up (a second one must not leave things behind)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            return signal.signal(signal.SIGINT, signal.SIG_IGN)
        except (ValueError, OSError):
            return None

    # ---- talking to dynscreen ------------------------------------------------------------

    def request(self, cmd: str, timeout: float = 10, **kw: Any) -> dict[str, Any]:
        """One request on the control socket, the raw reply."""
        return labdaemon.ask(self.socket, cmd, timeout, **kw)

    def result(self, cmd: str, **kw: Any) -> Any:
        r = self.request(cmd, **kw)
        if not r.get("ok"):
            raise LabError(f"{cmd}: {r.get('error')}")
        return r["result"]

    def blocks(self) -> dict[str, dict[str, Any]]:
        """Current blocks by address, from the control socket (cheap: for polling)."""
        return {b["ip"]: b for b in self.result("status")["blocks"]}

    def cli(self, *args: str, check: bool = False, timeout: float = 30,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The `dynscreen` command with ``--socket`` of this lab (``env`` added to ours)."""
        r = subprocess.run([*dynscreen_command(), "--socket", str(self.socket), *args],
                           capture_output=True, text=True, check=False, timeout=timeout,
                           env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise LabError(f"dynscreen {' '.join(args)}: exit {r.returncode}: {r.stderr}")
        return r

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json", check=True).stdout)

    def status(self) -> dict[str, Any]:
        """`dynscreen status --json`."""
        return self.cli_json("status")

    def frozen(self) -> list[dict[str, Any]]:
        """`dynscreen accounts list --json`: the frozen accounts."""
        return self.cli_json("accounts", "list")["accounts"]

    def reconfigure(self, *, screening: dict[str, Any] | None = None,
                    limits: dict[str, int] | None = None,
                    accounts: dict[str, Any] | None = None) -> None:
        """Change dynscreen's config and `dynscreen reload`."""
        self.screening.update(screening or {})
        self.limits.update(limits or {})
        self.accounts.update(accounts or {})
        self.config.write_text(self.config_text())
        self.cli("reload", check=True)

    def wait_block(self, ip: str, timeout: float = 10) -> dict[str, Any] | None:
        return wait_for(lambda: self.blocks().get(ip), timeout=timeout, step=0.1)

    # ---- logs and mailboxes ---------------------------------------------------------------

    tail = staticmethod(labdaemon.tail)

    def log_lines(self, needle: str) -> list[str]:
        out = []
        for path in (self.postfix_log, self.dovecot_log):
            with contextlib.suppress(OSError):
                out += [ln for ln in path.read_text(errors="replace").splitlines() if needle in ln]
        return out

    def mailbox(self, user: str) -> list[str]:
        """The messages delivered to a user's Maildir."""
        assert self.mail is not None
        return self.mail.messages(user)

    # ---- clients --------------------------------------------------------------------------

    def ns_of(self, src: str) -> str:
        return self.net.client_of(src).ns

    def tcp(self, src: str, port: int, timeout: float = 1.5) -> socket.socket | None:
        """A raw TCP connection from ``src`` to the gateway; None if it timed out (dropped).
        A refused connection raises ConnectionRefusedError (NetLab.connect)."""
        return self.net.connect(self.gateway, port, src=src, timeout=timeout)

    def smtp(self, src: str, port: int = 25, timeout: float = 5) -> smtplib.SMTP:
        """An SMTP session from ``src`` (raises OSError when it cannot connect)."""
        s = smtplib.SMTP(local_hostname=f"host-{src.replace('.', '-')}.client.test",
                         timeout=timeout, source_address=(src, 0))
        with inside(self.ns_of(src)):
            s.connect(self.gateway, port)
        return s

    def imap(self, src: str, timeout: float = 5) -> imaplib.IMAP4:
        with inside(self.ns_of(src)):
            return _IMAP(self.gateway, 143, src, timeout)

    def pop(self, src: str, timeout: float = 5) -> poplib.POP3:
        with inside(self.ns_of(src)):
            return _POP(self.gateway, 110, src, timeout)

    def send_mail(self, src: str, to: str, *, subject: str = "hello", body: str = "hi",
                  login: tuple[str, str] | None = None, sender: str | None = None) -> None:
        """Send one message from ``src``: on 587 with AUTH PLAIN when ``login`` is given,
        else on 25 (inbound mail). Raises smtplib errors as the client sees them."""
        port = 587 if login else 25
        sender = sender or (address(login[0]) if login else "someone@elsewhere.test")
        msg = (f"From: <{sender}>\r\nTo: <{address(to)}>\r\nSubject: {subject}\r\n"
               f"Message-ID: <{time.time_ns()}@client.test>\r\n\r\n{body}\r\n")
        s = self.smtp(src, port)
        try:
            s.ehlo()
            if login:
                auth_plain(s, address(login[0]), login[1])
            s.sendmail(sender, [address(to)], msg)
        finally:
            with contextlib.suppress(Exception):
                s.quit()
            s.close()


def auth_plain(s: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt (smtplib's login() would try every mechanism in turn);
    raises SMTPAuthenticationError when refused."""
    import base64

    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    code, resp = s.docmd("AUTH", f"PLAIN {token}")
    if code != 235:
        raise smtplib.SMTPAuthenticationError(code, resp)
    return code, resp


class _IMAP(imaplib.IMAP4):
    """IMAP from a chosen source address (imaplib has no source_address)."""

    def __init__(self, host: str, port: int, src: str, timeout: float) -> None:
        self._src = src
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._src, 0))


class _POP(poplib.POP3):
    """POP3 from a chosen source address."""

    def __init__(self, host: str, port: int, src: str, timeout: float) -> None:
        self._src = src
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._src, 0))


@contextlib.contextmanager
def mail_lab(**kw: Any) -> Iterator[MailLab]:
    """``with mail_lab() as lab:`` -- the lab, removed on the way out whatever happens."""
    lab = MailLab(**kw)
    try:
        yield lab.open()
    finally:
        lab.close()


__all__ = ["USERS", "DOMAIN", "MailLab", "LabError", "auth_plain", "mail_lab", "sh", "address"]
