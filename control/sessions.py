"""Close the open sessions of a blocked source (the `close_session` option).

An XDP drop stops new packets, but a blocked client's established sessions
would otherwise linger in the mail server until they time out. The kernel can
abort them through sock_diag's SOCK_DESTROY; pyroute2 has no call for it, so
this runs iproute2's ``ss -K`` with a filter precise enough to touch nothing
else: TCP, a screened local port, the blocked address or prefix as the remote,
and every open state (all but listening, time-wait and closed, plus syn-sent,
which only an outgoing connection has). An IPv4 filter in ss also matches the
IPv4-mapped form (``::ffff:a.b.c.d``) of dual-stack listeners, so one command
covers both.

Whitelisted addresses inside a blocked range (``spare``) are left out of the
filter (``and not dst W``): blocking 2001:db8:1:2::/64 must not cut the
sessions of a whitelisted 2001:db8:1:2::25 in it, which the kernel still lets
through.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterable

from dynscreen.control.addr import Network, network_key, parse_network

OPEN_STATES = (
    "established", "syn-recv", "fin-wait-1", "fin-wait-2", "close-wait", "last-ack", "closing",
)
TIMEOUT_SECONDS = 10.0


class SessionCloseError(Exception):
    """The sessions could not be closed; the message says why, for the administrator."""


def ss_argv(net: Network | str, ports: Iterable[int], *, kill: bool = True,
            netns: str | None = None, spare: Iterable[Network] = ()) -> list[str]:
    """The ss command that lists (or, with kill, destroys) the source's sessions, except
    those of the `spare` ranges."""
    if isinstance(net, str):
        net = parse_network(net)
    wanted = sorted(set(ports))
    if not wanted:
        raise ValueError("no ports to close sessions on")
    ss = shutil.which("ss")
    if ss is None:
        raise SessionCloseError("cannot close sessions: `ss` not found (install iproute2)")
    argv = [ss, "-H", "-t", "-n"] + (["-K"] if kill else [])
    for state in OPEN_STATES:
        argv += ["state", state]
    sports: list[str] = []
    for port in wanted:
        sports += (["or"] if sports else []) + ["sport", "=", f":{port}"]
    # Always with its prefix length: ss reads a bare IPv6 address's last group as a port.
    argv += ["(", *sports, ")", "and", "dst", str(net)]
    for w in sorted({w for w in spare if w.version == net.version}, key=str):
        argv += ["and", "not", "dst", str(w)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    return argv


def _count(argv: list[str], rc: int, out: str, err: str) -> int:
    """Sockets ss printed (with -K: the ones it destroyed), or the reason it failed.

    A refused SOCK_DESTROY (EPERM) ends the dump with a message but exit status 0.
    """
    if rc != 0 or "SOCK_DESTROY" in err:
        detail = err.strip() or out.strip() or f"exit status {rc}"
        if "Operation not permitted" in detail:
            detail += " (closing sockets needs CAP_NET_ADMIN)"
        raise SessionCloseError(f"`{' '.join(argv)}` failed: {detail}")
    return sum(1 for line in out.splitlines() if line.strip())


def _unsupported(net: Network, left: int) -> SessionCloseError:
    return SessionCloseError(
        f"{left} session(s) of {network_key(net)} could not be closed: the kernel refuses "
        "SOCK_DESTROY (it needs CONFIG_INET_DIAG_DESTROY=y)"
    )


def _run(argv: list[str], timeout: float) -> tuple[int, str, str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise SessionCloseError(f"cannot close sessions: {e.filename} not found") from None
    except subprocess.TimeoutExpired:
        raise SessionCloseError(f"`{' '.join(argv)}` took over {timeout:g} s") from None
    return r.returncode, r.stdout, r.stderr


def close_sessions(net: Network | str, ports: Iterable[int], *, netns: str | None = None,
                   timeout: float = TIMEOUT_SECONDS, spare: Iterable[Network] = ()) -> int:
    """Destroy the source's open TCP sessions on the given local ports; how many were closed.

    ss says nothing when the kernel refuses to destroy a socket, so when none was
    closed the sessions are listed again: any still there mean the kernel cannot.
    """
    net = parse_network(net) if isinstance(net, str) else net
    ports, spare = list(ports), list(spare)
    argv = ss_argv(net, ports, netns=netns, spare=spare)
    closed = _count(argv, *_run(argv, timeout))
    if closed == 0:
        check = ss_argv(net, ports, kill=False, netns=netns, spare=spare)
        left = _count(check, *_run(check, timeout))
        if left:
            raise _unsupported(net, left)
    return closed


async def _arun(argv: list[str], timeout: float) -> tuple[int, str, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as e:
        raise SessionCloseError(f"cannot close sessions: {e.filename} not found") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise SessionCloseError(f"`{' '.join(argv)}` took over {timeout:g} s") from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
        raise
    rc = proc.returncode if proc.returncode is not None else -1
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


async def aclose_sessions(net: Network | str, ports: Iterable[int], *,
                          netns: str | None = None, timeout: float = TIMEOUT_SECONDS,
                          spare: Iterable[Network] = ()) -> int:
    """close_sessions() for the daemon's event loop: ss runs as a child, the loop runs on."""
    net = parse_network(net) if isinstance(net, str) else net
    ports, spare = list(ports), list(spare)
    argv = ss_argv(net, ports, netns=netns, spare=spare)
    closed = _count(argv, *await _arun(argv, timeout))
    if closed == 0:
        check = ss_argv(net, ports, kill=False, netns=netns, spare=spare)
        left = _count(check, *await _arun(check, timeout))
        if left:
            raise _unsupported(net, left)
    return closed
