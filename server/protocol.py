"""uvicorn's HTTP protocol with ``TCP_NODELAY`` set on every connection.

With ``--workers`` above 1, uvicorn binds the listening socket itself as
``socket.socket(family)`` (protocol number 0); asyncio only sets ``TCP_NODELAY`` on accepted
sockets whose protocol is ``IPPROTO_TCP``, so worker connections keep Nagle's algorithm. A
response goes out as two writes (headers, then body), and the second waits for the client's
delayed ACK: about 40 ms per request on Linux, whatever the model costs. Setting the option
here makes one and several workers behave the same.
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        super().connection_made(transport)


HTTP_PROTOCOL = f"{__name__}:NoDelayHTTPProtocol"
