"""`make demo`: the lab, an attack mix next to an honest user, dynscreen's view of it live.

The demo builds the lab (:class:`MailLab`), then runs, each in a thread of its own
and from its own address:

- dave, an honest user: sends a mail through submission (SMTP AUTH) every two
  seconds and reads his mailbox over IMAP; more connections a minute than the
  limit, which his successful AUTH exempts;
- an IMAP password guesser trying common account names;
- a directory harvester guessing recipients of example.test;
- a connection flooder;
- a guesser trying bob's password over SMTP AUTH, which freezes bob's account
  (he still receives mail, cannot send) and mails the postmaster.

While they run, dynscreen's status (its blocks, frozen accounts and counters, as
`dynscreen status` shows them) refreshes on screen next to what each client
lives through, and dynscreen's own log lines scroll above. At the end: a summary
of what was blocked and why, then the lab is removed (on Ctrl-C too).
Exit status 0 when every attacker was stopped and dave never was.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import smtplib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .lab import LabError, MailLab, auth_plain
from .mail import USERS

ATTACK_SECONDS = 40.0  # the longest the attack phase lasts
MIN_SECONDS = 22.0  # the shortest: dave keeps going for a while after the attackers stop

REASONS = {
    "auth_failures": "failed logins ({auth_failures} within {window_minutes} min)",
    "failed_rcpts": "unknown recipients ({failed_rcpts} within {window_minutes} min)",
    "rsets": "RSET commands ({rsets} within {window_minutes} min)",
    "connections": "connection rate (more than {connections} in {connections_minutes} min)",
    "simultaneous": "simultaneous sessions (more than {simultaneous})",
    "manual": "blocked by hand",
}
CLOSED = (OSError, EOFError, smtplib.SMTPServerDisconnected, imaplib.IMAP4.abort,
          poplib.error_proto)


@dataclass
class Actor:
    """One client of the demo: who, from where, what it tried and what happened to it."""

    name: str
    role: str
    src: str
    honest: bool = False
    tries: int = 0
    refused: int = 0  # the server said no (wrong password, unknown user, ...)
    dropped: int = 0  # connections that got nowhere (dynscreen drops them)
    closed: int = 0  # sessions closed under it
    ok: int = 0
    state: str = "starting"
    started: bool = False
    done: bool = False
    notes: list[str] = field(default_factory=list)


class Demo:
    def __init__(self, console: Console, *, seconds: float = ATTACK_SECONDS) -> None:
        self.console = console
        self.seconds = seconds
        self.stop = threading.Event()
        self.lab = MailLab(signals=True)
        self.actors: list[Actor] = []
        self.threads: list[threading.Thread] = []
        self.log_pos = 0
        self.t0 = 0.0

    # ---- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        c = self.console
        c.print(Panel.fit(
            "[bold]dynscreen demo[/]: a mail gateway in network namespaces, Debian's Postfix "
            "and Dovecot,\nreal clients attacking it, dynscreen blocking them in the kernel "
            "(XDP).", border_style="cyan"))
        try:
            with c.status("building the lab: namespaces, Postfix, Dovecot, dynscreen ..."):
                self.lab.open()
            self._intro()
            self._play()
            return self._summary()
        finally:
            self.stop.set()
            for t in self.threads:
                t.join(3)
            with c.status("removing the lab ..."):
                self.lab.close()
            left = self.lab.leftovers()
            if left:
                c.print(Text(f"left behind: {', '.join(left)}", style="red"))
            else:
                c.print("lab removed: no namespace, link, pinned map, process or file left.")

    def _intro(self) -> None:
        lab, lim = self.lab, self.lab.limits
        t = Table(box=box.SIMPLE, show_header=False)
        t.add_row("gateway", f"{lab.gateway}: Postfix 25 + 587 (SASL via Dovecot), "
                             "Dovecot IMAP 143 + POP3 110")
        t.add_row("dynscreen", f"XDP on {', '.join(lab.net.gw_ifs)}; following "
                               "postfix.log and dovecot.log")
        t.add_row("limits", f"{lim['auth_failures']} failed logins, {lim['failed_rcpts']} "
                            f"unknown recipients, {lim['connections']} connections a minute, "
                            f"{lim['simultaneous']} at once; blocks last "
                            f"{lab.screening['block_minutes']} min")
        t.add_row("accounts", f"{lab.accounts['max_session_auth_failures']} failed logins in "
                              "one session freeze the account and mail the postmaster")
        self.console.print(t)

    def _play(self) -> None:
        lab = self.lab
        plan: list[tuple[float, Actor, Callable[[Actor], None]]] = [
            (0.0, Actor("dave", "honest: SMTP AUTH mail, IMAP", lab.honest[0],
                        honest=True), self._honest),
            (1.0, Actor("imap-guesser", "IMAP password guessing", lab.attacker()),
             self._imap_guesser),
            (4.0, Actor("harvester", "SMTP directory harvest", lab.attacker()), self._harvester),
            (7.0, Actor("flooder", "connection flood (25)", lab.attacker()),
             self._flooder),
            (10.0, Actor("bob-guesser", "bob's password (SMTP AUTH)", lab.attacker()),
             self._bob_guesser),
        ]
        self.actors = [a for _, a, _ in plan]
        self.t0 = time.monotonic()
        for delay, actor, fn in plan:
            t = threading.Thread(target=self._start, args=(delay, actor, fn), daemon=True,
                                 name=actor.name)
            t.start()
            self.threads.append(t)
        live = self.console.is_terminal
        last_snapshot = 0.0
        with Live(self._view(), console=self.console, refresh_per_second=4,
                  transient=False, auto_refresh=False) if live else contextlib.nullcontext() as lv:
            while True:
                time.sleep(0.25)
                self._daemon_lines()
                elapsed = time.monotonic() - self.t0
                if lv is not None:
                    lv.update(self._view(), refresh=True)
                elif elapsed - last_snapshot >= 10:
                    last_snapshot = elapsed
                    self.console.print(self._view())
                attackers = [a for a in self.actors if not a.honest]
                if elapsed >= self.seconds or (
                        elapsed >= MIN_SECONDS and all(a.done for a in attackers)):
                    break
            self.stop.set()
            for t in self.threads:
                t.join(5)
            self._daemon_lines()
            if lv is not None:
                lv.update(self._view(), refresh=True)
            else:
                self.console.print(self._view())

    def _start(self, delay: float, actor: Actor, fn: Callable[[Actor], None]) -> None:
        if self.stop.wait(delay):
            return
        actor.started = True
        try:
            fn(actor)
        except Exception as e:  # a client thread must not kill the demo
            actor.state = f"error: {type(e).__name__}: {e}"
        actor.done = True

    # ---- the clients -----------------------------------------------------------------------

    def _honest(self, a: Actor) -> None:
        lab, n = self.lab, 0
        while not self.stop.is_set():
            n += 1
            a.tries += 1
            try:
                lab.send_mail(a.src, "alice", subject=f"report {n}",
                              login=("dave", USERS["dave"]))
                a.ok += 1
                if n % 2 == 0:
                    m = lab.imap(a.src)
                    m.login("dave@example.test", USERS["dave"])
                    m.select("INBOX")
                    m.logout()
                    a.ok += 1
                    a.tries += 1
                a.state = f"mail {n} sent" + (", mailbox read" if n % 2 == 0 else "")
            except smtplib.SMTPException as e:
                a.refused += 1
                a.state = f"refused: {e}"
            except OSError as e:
                a.dropped += 1
                a.state = f"no connection: {e}"
            self.stop.wait(2.0)

    def _imap_guesser(self, a: Actor) -> None:
        names = ["admin", "info", "test", "office", "sales", "support", "webmaster", "backup"]
        i = 0
        while not self.stop.is_set():
            try:
                m = self.lab.imap(a.src, timeout=2)
            except OSError:
                a.dropped += 1
                a.state = "connection dropped: blocked"
                a.done = a.done or a.dropped >= 2
                self.stop.wait(1.0)
                continue
            a.state = "connected, guessing passwords"
            try:
                while not self.stop.is_set():
                    user = names[i % len(names)]
                    i += 1
                    a.tries += 1
                    try:
                        m.login(f"{user}@example.test", "123456")
                    except imaplib.IMAP4.abort:
                        raise
                    except imaplib.IMAP4.error:
                        a.refused += 1
                        a.state = f"{a.refused} wrong passwords"
                    self.stop.wait(0.6)
            except CLOSED:
                a.closed += 1
                a.state = "session closed by dynscreen"
            with contextlib.suppress(Exception):
                m.shutdown()

    def _harvester(self, a: Actor) -> None:
        names = ["john", "mary", "jobs", "hr", "billing", "ceo", "it", "press", "legal"]
        i = 0
        while not self.stop.is_set():
            try:
                s = self.lab.smtp(a.src, 25, timeout=2)
            except OSError:
                a.dropped += 1
                a.state = "connection dropped: blocked"
                a.done = a.done or a.dropped >= 2
                self.stop.wait(1.0)
                continue
            try:
                s.ehlo()
                s.mail("newsletter@spam.test")
                while not self.stop.is_set():
                    rcpt = names[i % len(names)]
                    i += 1
                    a.tries += 1
                    code, _ = s.rcpt(f"{rcpt}@example.test")
                    if code >= 500:
                        a.refused += 1
                        a.state = f"{a.refused} unknown recipients"
                    else:
                        a.ok += 1
                    self.stop.wait(0.5)
            except CLOSED:
                a.closed += 1
                a.state = "session closed by dynscreen"
            with contextlib.suppress(Exception):
                s.close()

    def _flooder(self, a: Actor) -> None:
        while not self.stop.is_set():
            a.tries += 1
            sock = self.lab.tcp(a.src, 25, timeout=1.0)
            if sock is None:
                a.dropped += 1
                a.state = f"{a.dropped} connections dropped: blocked"
                a.done = a.done or a.dropped >= 2
                self.stop.wait(0.5)
                continue
            a.ok += 1
            a.state = f"{a.ok} connections made"
            sock.close()
            self.stop.wait(0.1)

    def _bob_guesser(self, a: Actor) -> None:
        s = self.lab.smtp(a.src, 587)
        s.ehlo()
        for guess in ("bob", "123456", "password"):
            a.tries += 1
            try:
                auth_plain(s, "bob@example.test", guess)
            except smtplib.SMTPAuthenticationError:
                a.refused += 1
                a.state = f"{a.refused} wrong passwords for bob"
            self.stop.wait(0.5)
        with contextlib.suppress(Exception):
            s.quit()
        a.state = "gave up; waiting for dynscreen"
        end = time.monotonic() + 10
        while time.monotonic() < end and not self.stop.is_set():
            if any(x["user"] == "bob@example.test" for x in self._frozen()):
                break
            self.stop.wait(0.3)
        # The real bob, from the honest network: he can log in, but not send.
        try:
            self.lab.send_mail(self.lab.honest[1], "alice", subject="from bob",
                               login=("bob", USERS["bob"]))
            a.notes.append("bob could still send (not frozen)")
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            a.notes.append(f"bob's own mail refused: {code} {text.decode(errors='replace')}")
        # Mail to bob still arrives.
        self.lab.send_mail(self.lab.honest[2], "bob", subject="for bob")
        a.notes.append("mail to bob still delivered")
        a.state = "bob's account frozen"

    # ---- what dynscreen says -----------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        try:
            return self.lab.result("status")
        except (OSError, ValueError, LabError):
            return {"blocks": [], "counters": {}}

    def _frozen(self) -> list[dict[str, Any]]:
        try:
            return self.lab.result("accounts_list")["accounts"]
        except (OSError, ValueError, LabError):
            return []

    def _who(self, ip: str) -> str:
        for a in self.actors:
            if a.src == ip:
                return a.name
        return ""

    def _view(self) -> Group:
        st = self._status()
        blocks = Table(title="dynscreen status: blocks", box=box.ROUNDED, title_justify="left")
        for col in ("address", "client", "reason", "min left", "drops", "from"):
            blocks.add_column(col, justify="right" if col in ("min left", "drops") else "left")
        for b in st.get("blocks", []):
            blocks.add_row(*_plain(b["ip"], self._who(b["ip"]), b["reason"],
                                   f"{b['minutes_left']:.1f}", b["drops"], b["source"]))
        if not st.get("blocks"):
            blocks.add_row("-", "", "no blocks yet", "", "", "")
        clients = Table(title="clients", box=box.ROUNDED, title_justify="left")
        for col in ("client", "address", "what it does", "tries", "refused", "dropped",
                    "closed", "state"):
            clients.add_column(col)
        for a in self.actors:
            style = "green" if a.honest else ""
            clients.add_row(a.name, a.src, a.role, str(a.tries), str(a.refused),
                            str(a.dropped), str(a.closed),
                            a.state if a.started else "waiting", style=style)
        frozen = self._frozen()
        parts: list[Any] = [blocks, clients]
        if frozen:
            ft = Table(title="frozen accounts", box=box.ROUNDED, title_justify="left")
            for col in ("account", "protocol", "from", "failures"):
                ft.add_column(col)
            for f in frozen:
                ft.add_row(*_plain(f["user"], f.get("service"), f.get("ip"), f.get("failures")))
            parts.append(ft)
        k = st.get("counters", {})
        drops = sum(v for n, v in k.items() if n.startswith("drop_") and isinstance(v, int))
        elapsed = time.monotonic() - self.t0 if self.t0 else 0.0
        parts.append(Text(
            f"t+{elapsed:4.1f}s  packets passed {k.get('passed', 0)}, dropped {drops}; "
            f"log events {k.get('log_events', 0)}; blocks made in the kernel "
            f"{k.get('blocks_made', 0)}; exempt passes {k.get('exempt_pass', 0)}",
            style="dim"))
        return Group(*parts)

    def _daemon_lines(self) -> None:
        """dynscreen's own log: what it decided, as it happens."""
        try:
            with self.lab.daemon_log.open("rb") as f:
                f.seek(self.log_pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self.log_pos += end
        keys = ("blocked ", "closed ", "froze account", "notified", "exempt ", "REJECT")
        for raw in data[:end].decode(errors="replace").splitlines():
            if not any(k in raw for k in keys):
                continue
            _, _, msg = raw.partition(" ")  # drop the date
            clock, _, msg = msg.partition(" ")
            msg = msg.split(" ", 1)[1] if " " in msg else msg  # drop the level
            style = "yellow" if "exempt" in msg else "bold red" if "blocked" in msg else "cyan"
            self.console.print(Text(f"dynscreen {clock[:8]}  {msg}", style=style))

    # ---- the end -------------------------------------------------------------------------------

    def _summary(self) -> int:
        lab, c = self.lab, self.console
        st = self._status()
        lim = {**lab.limits}
        t = Table(title="what dynscreen blocked, and why", box=box.ROUNDED, title_justify="left")
        for col in ("address", "client", "reason", "because of", "drops", "decided by"):
            t.add_column(col)
        for b in st.get("blocks", []):
            why = REASONS.get(b["reason"], b["reason"]).format(**lim)
            by = {"kernel": "the kernel (XDP)", "logs": "the mail logs",
                  "manual": "an administrator", "file": "the block file"}.get(b["source"],
                                                                             b["source"])
            t.add_row(*_plain(b["ip"], self._who(b["ip"]), b["reason"], why, b["drops"], by))
        c.print(t)
        for f in self._frozen():
            c.print(Text.assemble(
                "account ", (str(f["user"]), "bold"),
                f" frozen: {f.get('failures')} failed logins in one {f.get('service')} "
                f"session from {f.get('ip')}"))
        for a in self.actors:
            for note in a.notes:
                c.print(Text(f"  {note}"))
        notices = [m for m in lab.mailbox("postmaster") if "dynscreen:" in m]
        c.print(f"postmaster's mailbox: {len(notices)} notice(s) from dynscreen")
        dave = self.actors[0]
        blocked = {b["ip"] for b in st.get("blocks", [])}
        c.print(f"dave (honest): {dave.ok} of {dave.tries} mails and mailbox reads went "
                f"through, {dave.dropped} connections dropped, "
                f"{'BLOCKED' if dave.src in blocked else 'never blocked'} "
                f"(his SMTP AUTH exempts his address).")
        attackers = [a for a in self.actors if not a.honest and a.name != "bob-guesser"]
        stopped = all(a.src in blocked for a in attackers)
        frozen = any(f["user"] == "bob@example.test" for f in self._frozen())
        good = stopped and frozen and dave.src not in blocked and dave.dropped == 0
        if good:
            c.print("[bold green]every attacker was stopped; the honest user never was.[/]")
            return 0
        c.print("[bold red]the demo did not go as expected (see above).[/]")
        return 1


def _plain(*values: object) -> list[Text]:
    """Table cells from the daemon's answers (addresses, account names), shown as they
    are: a name like ``[/x]`` is no markup."""
    return [Text(str(v)) for v in values]


def main(argv: list[str] | None = None) -> int:
    console = Console(emoji=False)  # names from the daemon: no ":code:" becomes an emoji
    if not console.is_terminal:  # make demo > file, CI: wide enough for the tables
        console = Console(emoji=False, width=max(console.width, 132))
    try:
        return Demo(console).run()
    except KeyboardInterrupt:
        console.print("interrupted: the lab was removed.")
        return 130
    except LabError as e:
        console.print(Text(f"dynscreen demo: {e}", style="red"))
        return 1


if __name__ == "__main__":
    sys.exit(main())
