"""Connection balancing between workers (server/balance.py), two balancers in one process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import pytest

from capserve.server import balance
from capserve.server.balance import LEAVING, Balancer, create_folder


def _never_called():
    raise AssertionError("no connection should be adopted here")


@pytest.fixture()
def folder(tmp_path):
    path = tmp_path / "balance"
    create_folder(path)
    return path


@pytest.fixture()
def pair(folder):
    """Two workers' balancers sharing one folder."""
    loop = asyncio.new_event_loop()
    first, second = Balancer(folder, loop, _never_called), Balancer(folder, loop, _never_called)
    yield first, second
    for b in (first, second):
        b.close()
    loop.close()


@pytest.fixture()
def conns():
    """Two fresh loopback connections, as (client end, accepted end) pairs."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        made = []
        for _ in range(2):
            client = socket.create_connection(listener.getsockname())
            made.append((client, listener.accept()[0]))
        yield made
    for client, accepted in made:
        client.close()
        accepted.close()


def _turn(loop: asyncio.AbstractEventLoop) -> None:
    """One turn of the (not running) loop: the hand-overs decided so far are sent."""
    loop.run_until_complete(asyncio.sleep(0))


def _received_all(b: Balancer) -> list[socket.socket]:
    """Every connection siblings handed to ``b`` so far, read from its inbox."""
    _turn(b._loop)
    socks = []
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(b._inbox, 16, balance.MAX_FDS)
        except BlockingIOError:
            return socks
        socks += [socket.socket(fileno=fd) for fd in fds]


def _received(b: Balancer) -> socket.socket:
    """The one connection a sibling handed to ``b``."""
    (sock,) = _received_all(b)
    return sock


def _count(b: Balancer) -> int:
    return b._fields[b.slot * balance._SLOT + 1]


def test_a_surplus_connection_goes_to_the_sibling_with_fewer(pair, conns):
    first, second = pair
    assert second.accepted(conns[0][1]) is False  # 0 against 0: it stays
    assert second.accepted(conns[1][1]) is True  # 0 against 1: the sibling takes it
    assert (_count(first), _count(second)) == (1, 1)
    with _received(first) as handed:
        assert handed.getpeername() == conns[1][0].getsockname()  # the very same connection


def test_a_burst_is_split_evenly_however_many_are_handed_over_in_one_turn(pair):
    # A Unix datagram socket queues 10 datagrams (net.unix.max_dgram_qlen): one per connection,
    # a burst of 40 handed over 11 and kept 29.
    first, second = pair
    with contextlib.ExitStack() as stack, socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        clients = [stack.enter_context(socket.create_connection(listener.getsockname())) for _ in range(40)]
        handed = []
        for _ in clients:
            with listener.accept()[0] as sock:  # closed as the worker's transport is: the hand-over has its own
                handed.append(second.accepted(sock))
        assert handed.count(True) == 20 and (_count(first), _count(second)) == (20, 20)
        received = [stack.enter_context(sock) for sock in _received_all(first)]
        went = [client for client, sent in zip(clients, handed) if sent]
        assert {sock.getpeername() for sock in received} == {client.getsockname() for client in went}
        for sock in received:  # each is the live connection
            sock.sendall(b"x")
        assert [client.recv(1) for client in went] == [b"x"] * 20


def test_what_cannot_be_sent_stays_with_the_sender_and_is_counted_there(folder, conns):
    adopted = []

    async def main():
        loop = asyncio.get_running_loop()
        receiver = Balancer(folder, loop, _never_called)
        sender = Balancer(folder, loop, lambda: adopted.append(True) or asyncio.Protocol())
        try:
            sender.accepted(conns[0][1])
            assert sender.accepted(conns[1][1]) is True
            receiver.close()  # the receiver exits before the hand-over goes out
            for _ in range(5):
                await asyncio.sleep(0)
            freed = receiver.slot * balance._SLOT
            return _count(sender), sender._fields[freed : freed + balance._SLOT].tolist()
        finally:
            sender.close()

    assert asyncio.run(main()) == (2, [0, 0])  # the freed slot keeps no count of it
    assert adopted == [True]  # served by the sender after all


def test_a_stopping_worker_is_not_chosen(pair, conns):
    first, second = pair
    first.leave()
    assert _count(first) == LEAVING
    assert second.accepted(conns[0][1]) is False
    assert second.accepted(conns[1][1]) is False  # 0 connections, but stopping
    assert _count(second) == 2


def test_a_stopping_worker_passes_on_what_reaches_it(pair, conns):
    first, second = pair
    second.accepted(conns[0][1])
    assert second.accepted(conns[1][1]) is True  # on its way to the first worker...
    _turn(second._loop)
    first.leave()  # ...which stops before reading it
    first.receive()
    with _received(second) as handed:  # so it comes back to the second
        assert handed.getpeername() == conns[1][0].getsockname()


def test_a_worker_whose_listening_socket_closed_passes_on_what_reaches_it(pair, conns):
    from capserve.server import accept

    first, second = pair
    own = accept.listening(socket.create_server(("127.0.0.1", 0)))
    own.close()  # uvicorn closes the worker's listening socket when it starts to stop
    second.accepted(conns[0][1])
    assert second.accepted(conns[1][1]) is True
    _turn(second._loop)
    first.receive()
    assert first.leaving and _count(first) == LEAVING
    with _received(second) as handed:
        assert handed.getpeername() == conns[1][0].getsockname()


def test_a_worker_that_exited_keeps_no_slot_and_no_socket(pair, conns):
    first, second = pair
    path = first._address(first.slot)
    first.close()
    assert not os.path.exists(path)
    second.accepted(conns[0][1])
    assert second.accepted(conns[1][1]) is False  # the first worker is no candidate any more


def test_a_handed_connection_that_fails_to_start_gives_its_place_back(folder, conns):
    def broken_protocol():
        raise RuntimeError("cannot build the protocol")

    async def main():
        loop = asyncio.get_running_loop()
        receiver = Balancer(folder, loop, broken_protocol)
        sender = Balancer(folder, loop, _never_called)
        try:
            sender.accepted(conns[0][1])
            assert sender.accepted(conns[1][1]) is True
            assert _count(receiver) == 1  # reserved by the sender
            await asyncio.sleep(0)  # sent at the end of this turn
            receiver.receive()
            for _ in range(5):
                await asyncio.sleep(0)
            return _count(receiver)
        finally:
            receiver.close()
            sender.close()

    assert asyncio.run(main()) == 0
