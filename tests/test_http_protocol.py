"""capserve's uvicorn protocol class sets TCP_NODELAY where uvicorn's multi-worker socket does not."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from uvicorn.server import ServerState

from capserve.server.protocol import HTTP_PROTOCOL


async def _nodelay_after_connection(http: str) -> int:
    async def app(scope, receive, send):  # never called: no request is sent
        raise AssertionError

    config = uvicorn.Config(app, http=http, log_level="warning", lifespan="off")
    config.load()
    # uvicorn's bind_socket for --workers > 1: socket.socket(family), protocol number 0.
    listener = socket.socket(socket.AF_INET)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        loop = asyncio.get_running_loop()
        protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, accepted)
        value = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        transport.close()
        await asyncio.sleep(0)
        return value
    finally:
        client.close()
        listener.close()


def test_stock_protocol_leaves_nagle_on_for_a_protocol_zero_socket():
    # The premise: without the class, such a connection keeps Nagle's algorithm.
    assert asyncio.run(_nodelay_after_connection("h11")) == 0


def test_capserve_protocol_sets_tcp_nodelay():
    assert asyncio.run(_nodelay_after_connection(HTTP_PROTOCOL)) != 0
