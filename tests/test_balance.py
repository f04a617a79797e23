"""Connection balancing between workers (server/balance.py), two balancers in one process."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from server import balance
from server.balance import LEAVING, Balancer, create_folder


def _never_called():
    raise AssertionError("no connection should be adopted here")


@pytest.fixture()
def pair(tmp_path):
    """Two workers' balancers sharing one folder, and a listening socket to make connections."""
    folder = tmp_path / "balance"
    create_folder(folder)
    loop = asyncio.new_event_loop()
    first, second = Balancer(folder, loop, _never_called), Balancer(folder, loop, _never_called)
    listener = socket.create_server(("127.0.0.1", 0))
    yield first, second, listener
    for b in (first, second):
        b.close()
    listener.close()
    loop.close()


def _connection(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(client end, accepted end) of a fresh loopback connection."""
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    return client, accepted


def _count(b: Balancer) -> int:
    return b._fields[b.slot * balance._SLOT + 1]


def test_a_surplus_connection_goes_to_the_sibling_with_fewer(pair):
    first, second, listener = pair
    conns = [_connection(listener) for _ in range(2)]
    assert second.accepted(conns[0][1]) is False  # 0 against 0: it stays
    assert second.accepted(conns[1][1]) is True  # 0 against 1: the sibling takes it
    assert (_count(first), _count(second)) == (1, 1)
    _, fds, _, _ = socket.recv_fds(first._inbox, 16, 16)
    with socket.socket(fileno=fds[0]) as handed:
        assert handed.getpeername() == conns[1][0].getsockname()  # the very same connection
    for client, accepted in conns:
        client.close()
        accepted.close()


def test_a_stopping_worker_is_not_chosen(pair):
    first, second, listener = pair
    conns = [_connection(listener) for _ in range(2)]
    first.leave()
    assert _count(first) == LEAVING
    assert second.accepted(conns[0][1]) is False
    assert second.accepted(conns[1][1]) is False  # 0 connections, but stopping
    assert _count(second) == 2
    for client, accepted in conns:
        client.close()
        accepted.close()


def test_a_stopping_worker_passes_on_what_reaches_it(pair):
    first, second, listener = pair
    conns = [_connection(listener) for _ in range(2)]
    second.accepted(conns[0][1])
    assert second.accepted(conns[1][1]) is True  # on its way to the first worker...
    first.leave()  # ...which stops before reading it
    first.receive()
    _, fds, _, _ = socket.recv_fds(second._inbox, 16, 16)  # so it comes back to the second
    with socket.socket(fileno=fds[0]) as handed:
        assert handed.getpeername() == conns[1][0].getsockname()
    for client, accepted in conns:
        client.close()
        accepted.close()


def test_a_worker_whose_listening_socket_closed_passes_on_what_reaches_it(pair):
    from server import accept

    first, second, listener = pair
    own = accept.listening(socket.create_server(("127.0.0.1", 0)))
    own.close()  # uvicorn closes the worker's listening socket when it starts to stop
    conns = [_connection(listener) for _ in range(2)]
    second.accepted(conns[0][1])
    assert second.accepted(conns[1][1]) is True
    first.receive()
    assert first.leaving and _count(first) == LEAVING
    _, fds, _, _ = socket.recv_fds(second._inbox, 16, 16)
    socket.socket(fileno=fds[0]).close()
    for client, accepted in conns:
        client.close()
        accepted.close()


def test_a_worker_that_exited_keeps_no_slot_and_no_socket(pair):
    first, second, listener = pair
    path = first._address(first.slot)
    first.close()
    assert not os.path.exists(path)
    conns = [_connection(listener) for _ in range(2)]
    second.accepted(conns[0][1])
    assert second.accepted(conns[1][1]) is False  # the first worker is no candidate any more
    for client, accepted in conns:
        client.close()
        accepted.close()


def test_a_handed_connection_that_fails_to_start_gives_its_place_back(tmp_path):
    folder = tmp_path / "balance"
    create_folder(folder)
    listener = socket.create_server(("127.0.0.1", 0))

    def broken_protocol():
        raise RuntimeError("cannot build the protocol")

    async def main():
        loop = asyncio.get_running_loop()
        receiver = Balancer(folder, loop, broken_protocol)
        sender = Balancer(folder, loop, _never_called)
        conns = [_connection(listener) for _ in range(2)]
        sender.accepted(conns[0][1])
        assert sender.accepted(conns[1][1]) is True
        assert _count(receiver) == 1  # reserved by the sender
        receiver.receive()
        for _ in range(5):
            await asyncio.sleep(0)
        count = _count(receiver)
        for b in (receiver, sender):
            b.close()
        for client, accepted in conns:
            client.close()
            accepted.close()
        return count

    try:
        assert asyncio.run(main()) == 0
    finally:
        listener.close()
