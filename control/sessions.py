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

At flood rate (a botnet earning a block per source, tens of thousands a minute)
one ``ss -K`` per address would be a subprocess storm, and one filter naming
thousands of addresses costs the kernel (and ss) one comparison per socket per
address. :class:`SessionCloser` therefore works in batches: the blocked sources
waiting (at most ``MAX_PENDING``, so memory stays bounded) are taken up to
``BATCH_SOURCES`` at a time; one ``ss`` run lists the open sessions on the
screened ports, the peers inside the batch (and outside its spared addresses) are
picked out by hash lookup, and only those are destroyed, ``KILL_ADDRESSES`` to one
``ss -K`` filter. At most ``MAX_RUNS`` batches are under way at once. A quiet
gateway sees a batch of one at once; under a flood the batches fill up while the
previous ones run. Each ``ss`` runs from a worker thread of the closer's own (one
per batch under way): the event loop only hands the command over.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network, IPv6Network, ip_network
from itertools import islice

from dynscreen.control.addr import Address, Network, network_key, parse_address, parse_network

log = logging.getLogger("dynscreen")

OPEN_STATES = (
    "established", "syn-recv", "fin-wait-1", "fin-wait-2", "close-wait", "last-ack", "closing",
)
TIMEOUT_SECONDS = 10.0
BATCH_SOURCES = 4096  # blocked sources matched against one listing of the open sessions
# Peer addresses in one `ss -K` filter: ~20 bytes of inet_diag bytecode each (a netlink
# attribute holds 64 KiB; ss and the kernel compare every socket with every address).
KILL_ADDRESSES = 256
MAX_RUNS = 4  # batches under way at once (each one ss run at a time)
MAX_PENDING = 100_000  # blocked sources waiting; beyond that, their sessions are left open
WARN_EVERY = 60.0  # seconds between two warnings that sources were left waiting


class SessionCloseError(Exception):
    """The sessions could not be closed; the message says why, for the administrator."""


def ss_argv(net: Network | str | Sequence[Network], ports: Iterable[int], *,
            kill: bool = True, netns: str | None = None,
            spare: Iterable[Network] = ()) -> list[str]:
    """The ss command that lists (or, with kill, destroys) the sessions of a source (or of
    several, in one filter), except those of the `spare` ranges."""
    if isinstance(net, str):
        net = parse_network(net)
    nets = [net] if isinstance(net, (IPv4Network, IPv6Network)) else list(net)
    if not nets:
        raise ValueError("no sources to close sessions of")
    argv = open_sessions_argv(ports, kill=kill)
    # Always with its prefix length: ss reads a bare IPv6 address's last group as a port.
    if len(nets) == 1:
        argv += ["and", "dst", str(nets[0])]
    else:
        dsts: list[str] = []
        for n in nets:
            dsts += (["or"] if dsts else []) + ["dst", str(n)]
        argv += ["and", "(", *dsts, ")"]
    versions = {n.version for n in nets}
    for w in sorted({w for w in spare if w.version in versions}, key=str):
        argv += ["and", "not", "dst", str(w)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    return argv


def open_sessions_argv(ports: Iterable[int], *, kill: bool = False,
                       netns: str | None = None) -> list[str]:
    """The ss command that lists (with kill: destroys) every open TCP session on the
    given local ports."""
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
    argv += ["(", *sports, ")"]
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


Runner = Callable[[list[str], float], Awaitable[tuple[int, str, str]]]


def open_peers(out: str) -> list[Address]:
    """The peer addresses in ss's listing (mapped IPv6 as IPv4); lines it cannot read are
    left out (they name no peer to close)."""
    peers: list[Address] = []
    for line in out.splitlines():
        parts = line.split()  # [State] Recv-Q Send-Q Local Peer [Process]: the peer is 4th
        if len(parts) < 4:    # from the start without a state column, 5th with one
            continue
        peer = parts[4] if len(parts) >= 5 and not parts[0][0].isdigit() else parts[3]
        host = peer.rpartition(":")[0].split("%", 1)[0].strip("[]")  # [v6%zone]:port
        try:
            peers.append(parse_address(host))
        except ValueError:
            continue
    return peers


def strictly_inside(w: Network, net: Network) -> bool:
    """Whether the range w lies inside net and is not net itself (a spared range)."""
    return w.version == net.version and w.prefixlen > net.prefixlen \
        and w.subnet_of(net)  # type: ignore[arg-type]


class Targets:
    """The sources of one batch and the addresses they spare, matched against a peer with
    one set lookup per prefix length in the batch (not one comparison per source)."""

    def __init__(self, nets: Iterable[Network], spare: Iterable[Network] = ()) -> None:
        self.keys: dict[tuple[int, int], set[int]] = {}
        for n in nets:
            self.keys.setdefault((n.version, n.prefixlen), set()).add(int(n.network_address))
        self.spare = tuple(set(spare))

    def __contains__(self, addr: Address) -> bool:
        bits = addr.max_prefixlen
        a = int(addr)
        for (version, plen), keys in self.keys.items():
            if version == addr.version and (a >> (bits - plen)) << (bits - plen) in keys:
                return not any(addr in w for w in self.spare)
        return False


class SessionCloser:
    """Closes the open sessions of blocked sources in batches, off the event loop.

    ``submit`` queues a source (and what it spares) and returns at once; workers, at
    most ``runs`` of them, take the waiting sources ``batch`` at a time. Counters:
    ``submitted`` (sources taken in), ``dropped`` (refused: ``max_pending`` were
    waiting), ``ss_runs``, ``closed`` (sockets destroyed), ``failures`` (batches that
    failed, logged).
    """

    def __init__(self, ports: Callable[[], Iterable[int]], *, netns: str | None = None,
                 runs: int = MAX_RUNS, batch: int = BATCH_SOURCES,
                 kill_batch: int = KILL_ADDRESSES, max_pending: int = MAX_PENDING,
                 timeout: float = TIMEOUT_SECONDS, run: Runner | None = None) -> None:
        if min(runs, batch, kill_batch, max_pending) < 1:
            raise ValueError("runs, batch, kill_batch and max_pending must be 1 or more")
        self.ports = ports
        self.netns = netns
        self.runs, self.batch, self.kill_batch = runs, batch, kill_batch
        self.max_pending = max_pending
        self.timeout = timeout
        self._run = run or self._in_thread
        self._pool: ThreadPoolExecutor | None = None  # the ss runs' threads (made on first use)
        self._pending: dict[Network, tuple[Network, ...]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._warned = 0.0
        self.submitted = self.dropped = self.ss_runs = self.closed = self.failures = 0

    def pending(self) -> int:
        """Sources waiting for a worker (not counting the batches under way)."""
        return len(self._pending)

    def busy(self) -> bool:
        return bool(self._pending or self._workers)

    def submit(self, net: Network, spare: Iterable[Network] = ()) -> bool:
        """Queue a blocked source; False when too many wait already (it is counted)."""
        spare = tuple(spare)
        if net in self._pending:
            if spare:
                self._pending[net] = tuple(set(self._pending[net]) | set(spare))
            return True
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            now = time.monotonic()
            if now - self._warned >= WARN_EVERY:
                self._warned = now
                log.warning("closing sessions: %d blocked sources already wait; the open "
                            "sessions of %s and others are left to time out (their packets "
                            "are still dropped)", len(self._pending), network_key(net))
            return False
        self._pending[net] = spare
        self.submitted += 1
        if len(self._workers) < self.runs:
            task = asyncio.get_running_loop().create_task(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        return True

    def submit_many(self, nets: Iterable[Network], whitelist: Sequence[Network] = ()) -> int:
        """Queue a batch of blocked sources (a flood's poll of kernel blocks), each sparing
        the whitelisted ranges strictly inside it; how many were taken (the rest counted
        as dropped). The whitelist is looked at once per batch: a range can only lie
        strictly inside a source wider than itself, so a batch of single addresses
        costs no comparison at all."""
        narrowest: dict[int, int] = {}
        for w in whitelist:
            narrowest[w.version] = max(narrowest.get(w.version, -1), w.prefixlen)
        taken = 0
        for net in nets:
            spare: tuple[Network, ...] = ()
            if net.prefixlen < narrowest.get(net.version, -1):
                spare = tuple(w for w in whitelist if strictly_inside(w, net))
            if self.submit(net, spare):
                taken += 1
        return taken

    def _take(self) -> dict[Network, tuple[Network, ...]]:
        # One pass over the front of the queue (next(iter()) per source would walk the
        # slots freed by earlier takes again each time: quadratic in a flood).
        nets = list(islice(self._pending, self.batch))
        return {net: self._pending.pop(net) for net in nets}

    async def _work(self) -> None:
        while self._pending:
            taken = self._take()
            await asyncio.sleep(0)  # (a flood: taking 4,096 and starting ss, two turns)
            try:
                n = await self.close_batch(list(taken), {w for s in taken.values() for w in s})
            except SessionCloseError as e:
                self.failures += 1
                log.error("closing sessions of %d blocked source(s) (%s...): %s", len(taken),
                          network_key(next(iter(taken))), e)
                continue
            except Exception as e:  # a worker must not die silently with sources waiting
                self.failures += 1
                log.exception("closing sessions of %d blocked source(s): %s", len(taken), e)
                continue
            if n:
                log.info("closed %d open session(s) of %d blocked source(s)%s", n, len(taken),
                         f" ({network_key(next(iter(taken)))})" if len(taken) == 1 else "")

    async def _in_thread(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        """ss run by a worker thread (``subprocess.run``, killed at its timeout): in a flood
        the loop neither forks nor waits for a child watcher's thread to start, which
        beside the other threads took it tens of ms a run."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.runs,
                                            thread_name_prefix="dynscreen-ss")
        return await asyncio.get_running_loop().run_in_executor(self._pool, _run, argv, timeout)

    async def _ss(self, argv: list[str]) -> tuple[int, str, str]:
        self.ss_runs += 1
        return await self._run(argv, self.timeout)

    async def close_batch(self, nets: Sequence[Network], spare: Iterable[Network] = ()) -> int:
        """Destroy the open sessions of these sources on the screened ports (not those of
        `spare`); how many were closed."""
        ports = list(self.ports())
        listing = open_sessions_argv(ports, netns=self.netns)
        rc, out, err = await self._ss(listing)
        _count(listing, rc, "", err)
        await asyncio.sleep(0)  # (the listing of a flood's sessions: its own turn)
        targets = Targets(nets, spare)
        peers = sorted({p for p in open_peers(out) if p in targets},
                       key=lambda a: (a.version, int(a)))
        if peers:
            await asyncio.sleep(0)
        closed = 0
        for i in range(0, len(peers), self.kill_batch):
            chunk = [ip_network(p) for p in peers[i:i + self.kill_batch]]
            argv = ss_argv(chunk, ports, netns=self.netns)
            n = _count(argv, *await self._ss(argv))
            if n == 0:
                check = ss_argv(chunk, ports, kill=False, netns=self.netns)
                left = _count(check, *await self._ss(check))
                if left:
                    raise _unsupported(chunk[0], left)
            closed += n
        self.closed += closed
        return closed

    async def drain(self, timeout: float) -> bool:
        """Wait for the work under way and queued (at stop); True when all of it finished.
        What is still going at the timeout is cancelled (its ss killed)."""
        end = time.monotonic() + timeout
        while self._workers:
            left = end - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait(set(self._workers), timeout=left)
        if not self._workers:
            return not self._pending
        for task in list(self._workers):
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        return False
