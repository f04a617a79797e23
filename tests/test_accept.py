"""Every queued connection is accepted at once (server/accept.py), not one per loop turn."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading

import pytest
import uvicorn
import uvloop
from uvicorn.server import ServerState

from capserve.server import accept
from capserve.server.protocol import HTTP_PROTOCOL
from capserve.server.workers import bind


@pytest.fixture
def listener():
    sock = bind("127.0.0.1", 0, reuse_port=False, backlog=128)
    yield sock
    sock.close()


def _connect(sock: socket.socket, n: int) -> list[socket.socket]:
    return [socket.create_connection(sock.getsockname(), timeout=10) for _ in range(n)]


def test_pending_takes_every_connection_queued_behind_the_first(listener):
    accept.listening(listener)
    clients = _connect(listener, 5)
    first, _ = listener.accept()  # what the event loop does once per turn
    try:
        queued = list(accept.pending(first))
        assert len(queued) == 4
        assert {q.getpeername() for q in queued} | {first.getpeername()} == {c.getsockname() for c in clients}
        assert all(not q.getblocking() for q in queued)
        assert list(accept.pending(first)) == []  # nothing left, and no blocking wait for more
    finally:
        for s in [first, *clients, *queued]:
            s.close()


def test_a_socket_capserve_did_not_bind_is_left_to_the_loop(listener):
    clients = _connect(listener, 3)
    first, _ = listener.accept()
    try:
        assert list(accept.pending(first)) == []
        listener.setblocking(False)
        assert len([listener.accept(), listener.accept()]) == 2  # still queued for the loop
    finally:
        for s in [first, *clients]:
            s.close()


def test_a_closed_listener_drains_nothing_and_raises_nothing(listener):
    accept.listening(listener)
    clients = _connect(listener, 2)
    first, _ = listener.accept()
    listener.close()  # as at shutdown
    try:
        assert list(accept.pending(first)) == []
    finally:
        for s in [first, *clients]:
            s.close()


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_connection_that_fails_to_start_is_closed_and_reported(listener, new_loop):
    client = _connect(listener, 1)[0]
    conn, _ = listener.accept()
    reported = []

    def broken_protocol():
        raise RuntimeError("cannot build the protocol")

    async def main():
        accept.start(asyncio.get_running_loop(), broken_protocol, conn, failed=lambda: reported.append(True))
        for _ in range(5):
            await asyncio.sleep(0)

    try:
        loop = new_loop()  # asyncio.Runner(loop_factory=...) is 3.11+
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
        assert conn.fileno() == -1 and reported == [True]
    finally:
        client.close()


def _turns_of_a_burst(listener: socket.socket, burst: int) -> list[int]:
    """Serve ``listener`` with capserve's protocol on uvloop, hold the loop while ``burst``
    connections each send a request, then release it; return the loop turn in which each
    request was answered."""
    turn = 0
    entered, release = threading.Event(), threading.Event()

    async def app(scope, receive, send):
        if scope["path"] == "/hold":
            entered.set()
            release.wait(30)  # blocks the whole loop, as a long request would
        body = str(turn).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(app, http=HTTP_PROTOCOL, lifespan="off", log_level="warning")
    config.load()
    loop = uvloop.new_event_loop()

    def tick():  # runs once per turn of the loop
        nonlocal turn
        turn += 1
        loop.call_soon(tick)

    async def start():
        factory = functools.partial(config.http_protocol_class, config=config, server_state=ServerState(), app_state={})
        return await loop.create_server(factory, sock=listener)

    server = loop.run_until_complete(start())
    loop.call_soon(tick)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    holder = _connect(listener, 1)[0]
    clients: list[socket.socket] = []
    try:
        holder.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        assert entered.wait(10)
        clients = _connect(listener, burst)  # queued by the kernel while the loop is held
        for client in clients:
            client.sendall(b"GET /burst HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        release.set()
        turns = []
        for client in clients:
            response = b""
            while chunk := client.recv(4096):
                response += chunk
            assert response.startswith(b"HTTP/1.1 200")
            turns.append(int(response.partition(b"\r\n\r\n")[2]))
        return turns
    finally:
        release.set()
        for s in [holder, *clients]:
            s.close()
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


BURST = 24


def test_a_burst_of_connections_is_answered_within_a_few_loop_turns(listener):
    accept.listening(listener)
    turns = _turns_of_a_burst(listener, BURST)
    assert len(turns) == BURST
    assert max(turns) - min(turns) <= 4


def test_without_draining_the_loop_accepts_one_connection_per_turn(listener):
    # The premise of server/accept.py: uvloop alone spreads the same burst over a turn each.
    turns = _turns_of_a_burst(listener, BURST)
    assert max(turns) - min(turns) >= BURST - 1
