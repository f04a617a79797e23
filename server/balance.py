"""Even connection counts across worker processes: a worker hands surplus connections over.

With a socket per worker (SO_REUSEPORT) the kernel spreads new connections by a hash of the
client's address, so 64 connections land as 32/32 only on average: in 12 bursts of 64 wrk
connections to 2 workers the busier one held 33 to 41 (BENCHMARKS.md). Every worker gets the
same CPU, so a worker holding 41 connections answers each about 41/32 times slower, and tail
latency follows it.

So each worker, when it accepts a connection while a sibling holds fewer, passes the socket to
that sibling (``SCM_RIGHTS`` over a Unix datagram socket) before reading a byte from it; the
sibling adopts it into its event loop with ``loop.connect_accepted_socket``. The hand-overs of
one turn of the event loop go out together, one datagram per sibling: a Unix datagram socket
queues only ``net.unix.max_dgram_qlen`` datagrams (10 by default), and with a datagram per
connection a burst of 40 handed over 11 and kept the rest where they landed. The counts of
open connections live in a small shared file, changed only under ``flock`` (a reservation is
made for the receiver by the sender, so a burst of connections cannot overshoot). A handed-off
connection is the same TCP connection: the client notices nothing.

A worker that is stopping (uvicorn asks its connections to shut down, or its listening socket
is closed) marks its count as full, so siblings stop choosing it, and passes on anything
already on its way; at exit it frees its slot and removes its hand-off socket.

``capserve serve --workers N`` (N > 1) creates the folder and sets ``CAPSERVE_BALANCE_DIR``;
``CAPSERVE_BALANCE=0`` turns balancing off. Each worker joins lazily, on its first accepted
connection, which is when it knows how to build uvicorn's protocol for an adopted socket.
"""

from __future__ import annotations

import array
import asyncio
import atexit
import contextlib
import fcntl
import mmap
import os
import socket
from pathlib import Path
from typing import Callable

from capserve.core import settings
from capserve.server import accept

BALANCE_DIR_ENV = "CAPSERVE_BALANCE_DIR"
MAX_WORKERS = 256
_SLOT = 2  # int64 fields per worker: pid, open connections (reserved ones included)
LEAVING = 1 << 40  # the count of a worker that is stopping: never the fewest
MAX_FDS = 253  # file descriptors in one SCM_RIGHTS message (Linux's SCM_MAX_FD)


class Balancer:
    """One worker's side: its slot in the shared counts and its hand-off socket."""

    def __init__(
        self, folder: Path, loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], asyncio.Protocol]
    ) -> None:
        self.folder = folder
        self.pid = os.getpid()
        self.leaving = False
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._outgoing: dict[tuple[int, int], list[socket.socket]] = {}  # (slot, pid) -> this turn's hand-overs
        with contextlib.ExitStack() as stack:
            self._file = stack.enter_context(open(folder / "counts", "r+b"))
            self._map = stack.enter_context(mmap.mmap(self._file.fileno(), MAX_WORKERS * _SLOT * 8))
            self._fields = memoryview(self._map).cast("q")
            stack.callback(self._fields.release)  # before the map closes
            with self._locked():
                self.slot = self._claim_slot()
            stack.callback(self._free_slot)
            self._inbox = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            path = self._address(self.slot)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self._inbox.bind(path)
            stack.callback(_unlink, path)
            self._inbox.setblocking(False)
            self._outbox = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            self._outbox.setblocking(False)
            self._resources = stack.pop_all()

    def close(self) -> None:
        """At exit: free the slot and remove the hand-off socket; a sibling that still picks
        this worker then fails to send and keeps the connection."""
        for socks in self._outgoing.values():
            for sock in socks:
                sock.close()
        self._outgoing.clear()
        self._resources.close()

    # -- shared counts ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        fcntl.flock(self._file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def _claim_slot(self) -> int:
        """The first slot whose process is gone (or never was); a dead worker's count goes with it."""
        for slot in range(MAX_WORKERS):
            pid = self._fields[slot * _SLOT]
            if pid == 0 or not _alive(pid):
                self._fields[slot * _SLOT] = self.pid
                self._fields[slot * _SLOT + 1] = 0
                return slot
        raise RuntimeError(f"more than {MAX_WORKERS} workers share {self.folder}")

    def _free_slot(self) -> None:
        with self._locked():
            self._fields[self.slot * _SLOT] = self._fields[self.slot * _SLOT + 1] = 0

    def _address(self, slot: int) -> str:
        return str(self.folder / f"w{slot}.sock")

    # -- connections --------------------------------------------------------------------------

    def accepted(self, sock: socket.socket) -> bool:
        """A connection this worker accepted: True if it is on its way to a sibling with fewer
        (the balancer holds a duplicate until it is sent, so the caller drops its own handle),
        False if it stays here (and is counted)."""
        fields, mine = self._fields, self.slot * _SLOT + 1
        with self._locked():
            target, fewest = None, fields[mine]
            for slot in range(MAX_WORKERS):
                if fields[slot * _SLOT] and slot != self.slot and fields[slot * _SLOT + 1] < fewest:
                    target, fewest = slot, fields[slot * _SLOT + 1]
            if target is None:
                fields[mine] += 1
                return False
            fields[target * _SLOT + 1] += 1  # reserved for the receiver until it closes the connection
            receiver = (target, fields[target * _SLOT])
        if not self._outgoing:
            self._loop.call_soon(self._send)
        self._outgoing.setdefault(receiver, []).append(sock.dup())
        return True

    def _send(self) -> None:
        """Send this turn's hand-overs; what cannot be sent stays here after all."""
        outgoing, self._outgoing = self._outgoing, {}
        for (target, pid), socks in outgoing.items():
            for first in range(0, len(socks), MAX_FDS):
                batch = socks[first : first + MAX_FDS]
                fds = array.array("i", [sock.fileno() for sock in batch])
                try:
                    # (socket.send_fds ignores its address argument, so sendmsg it is.)
                    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
                    self._outbox.sendmsg([b"c"], rights, 0, self._address(target))
                except OSError as exc:
                    gone = isinstance(exc, (ConnectionRefusedError, FileNotFoundError))
                    self._keep(target, pid, batch, gone=gone)
                else:
                    for sock in batch:
                        sock.close()

    def _keep(self, target: int, pid: int, socks: list[socket.socket], *, gone: bool) -> None:
        """Connections that could not be sent to worker ``pid`` in ``target`` (its inbox full,
        or the worker gone)."""
        fields = self._fields
        with self._locked():
            if fields[target * _SLOT] == pid:  # not freed, nor taken by a new worker, meanwhile
                fields[target * _SLOT + 1] -= len(socks)
                if gone:
                    fields[target * _SLOT] = 0  # that worker is gone; its slot is free again
            fields[self.slot * _SLOT + 1] += len(socks)
        for sock in socks:
            if self.leaving or accept.stopped():
                sock.close()  # every worker is stopping
            else:
                accept.start(self._loop, self._protocol_factory, sock, failed=self.closed)

    def closed(self) -> None:
        """A connection counted here (accepted and kept, or adopted) has closed."""
        with self._locked():
            self._fields[self.slot * _SLOT + 1] -= 1

    def leave(self) -> None:
        """This worker is stopping: its count reads as full, so siblings stop handing it connections."""
        if not self.leaving:
            self.leaving = True
            with self._locked():
                self._fields[self.slot * _SLOT + 1] = LEAVING

    def receive(self) -> None:
        """Adopt every socket siblings have sent (called when the inbox is readable); once this
        worker is stopping, pass them on to a sibling that still serves."""
        while True:
            try:
                _, fds, _, _ = socket.recv_fds(self._inbox, 16, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            for fd in fds:
                sock = socket.socket(fileno=fd)
                if self.leaving or accept.stopped():
                    self.leave()
                    self.accepted(sock)  # on to a sibling that still serves, if there is one
                    sock.close()
                else:
                    accept.start(self._loop, self._protocol_factory, sock, failed=self.closed)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_folder(folder: Path) -> None:
    """Prepare ``folder`` for workers to join: the zeroed counts file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "counts").write_bytes(bytes(MAX_WORKERS * _SLOT * 8))


_balancer: Balancer | None = None
_joined = False


def join(protocol_factory: Callable[[], asyncio.Protocol], loop: asyncio.AbstractEventLoop) -> Balancer | None:
    """This worker's balancer, joining on the first call when ``CAPSERVE_BALANCE_DIR`` is set.

    ``protocol_factory`` builds the protocol for an adopted socket (a connection a sibling sent).
    """
    global _balancer, _joined
    if _joined:
        return _balancer
    _joined = True
    folder = settings.current().balance_dir
    if not folder or not settings.current().balance:
        return None

    try:
        _balancer = Balancer(Path(folder), loop, protocol_factory)
    except (OSError, ValueError, RuntimeError):
        return None  # no usable shared folder: every connection simply stays where it lands
    loop.add_reader(_balancer._inbox.fileno(), _balancer.receive)
    atexit.register(_balancer.close)
    return _balancer
