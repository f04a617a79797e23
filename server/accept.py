"""Accept every queued connection at once, not one per turn of the event loop.

libuv, under uvloop, accepts a single connection each time the loop polls (libuv pull request
3696), and a turn of a busy worker first answers every request already read: 32 keep-alive
clients at 0.6 ms each make a turn of about 20 ms. A burst of 32 new connections then waits up
to 32 turns for ``accept()``. Measured with wrk on 2 workers (BENCHMARKS.md): the first request
of the last connection of a burst waited 600 ms, while no later request waited over 70 ms.
asyncio's own loop accepts up to the backlog in one turn.

So when the loop hands a worker a connection, the worker takes whatever else is queued on the
same listening socket right away (``pending``) and starts each one as the loop would have
(``start``). Only sockets capserve bound itself (``listening``) are drained.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable, Iterator

MAX_BATCH = 256  # connections taken per call; each of them drains again when it starts

_listeners: list[tuple[socket.socket, int]] = []  # (socket, port)


def listening(sock: socket.socket) -> socket.socket:
    """Register a listening socket this process serves (the very object given to the loop)."""
    sock.setblocking(False)
    _listeners.append((sock, sock.getsockname()[1]))
    return sock


def pending(conn: socket.socket) -> Iterator[socket.socket]:
    """Connections queued behind ``conn`` on the registered listening socket it came in on."""
    listener = _listener_of(conn)
    if listener is None:
        return
    for _ in range(MAX_BATCH):
        try:
            queued, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # closed at shutdown, or out of file descriptors: the loop's accept reports that
        queued.setblocking(False)
        yield queued


def start(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.Protocol],
    sock: socket.socket,
    *,
    failed: Callable[[], None] | None = None,
) -> None:
    """Serve a connection accepted outside the loop's own accept (drained, or handed over);
    if it cannot be set up, close it and call ``failed``."""

    def done(task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            sock.close()  # e.g. reset before it was set up, or the loop stopping: nothing else holds it
            if failed is not None:
                failed()

    loop.create_task(loop.connect_accepted_socket(protocol_factory, sock)).add_done_callback(done)


def stopped() -> bool:
    """True once every listening socket this process registered has been closed (shutdown)."""
    return bool(_listeners) and all(listener.fileno() == -1 for listener, _ in _listeners)


def _listener_of(conn: socket.socket) -> socket.socket | None:
    try:
        port = conn.getsockname()[1]
    except OSError:
        return None
    for listener, listener_port in _listeners:
        # The loop detaches the socket object when it closes the server (fileno -1).
        if listener_port == port and listener.family == conn.family and listener.fileno() != -1:
            return listener
    return None
