"""uvicorn's HTTP protocol with ``TCP_NODELAY`` on every connection, every queued connection
accepted at once (``server/accept.py``) and, with several workers, connection balancing
(``server/balance.py``).

A response goes out as two writes (headers, then body); without ``TCP_NODELAY`` the second
waits for the client's delayed ACK, about 40 ms per request on Linux whatever the model costs.
uvloop sets the option on every connection, and asyncio on connections of sockets created
with protocol ``IPPROTO_TCP`` (as ``server/workers.py`` binds them), but not on those of
uvicorn's own ``--workers`` socket (``socket.socket(family)``, protocol 0), which serves with
``CAPSERVE_REUSE_PORT=0``. Setting it here makes every loop and socket behave the same.
"""

from __future__ import annotations

import asyncio
import functools
import socket

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from capserve.server import accept, balance


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    def __init__(self, config, server_state, app_state, _loop=None, *, adopted: bool = False) -> None:
        super().__init__(config=config, server_state=server_state, app_state=app_state, _loop=_loop)
        self._adopted = adopted
        self._counted = False
        self._handed_off = False
        # Under TLS the loop accepts every connection itself: a connection accepted outside it would
        # start without TLS, and one is seen here only after its handshake, too late to hand over.
        self._tls = config.is_ssl
        self._balancer = None if self._tls else balance.join(self._factory(adopted=True), self.loop)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            if not self._adopted and not self._tls:
                for queued in accept.pending(sock):
                    accept.start(self.loop, self._factory(adopted=False), queued)
            if self._balancer is not None:
                # Nothing has been read from the socket yet: a sibling can take it over whole.
                if not self._adopted and self._balancer.accepted(sock):
                    self._handed_off = True
                    transport.abort()
                    return
                self._counted = True
        super().connection_made(transport)

    def _factory(self, *, adopted: bool):
        """Builds this protocol for a connection the loop did not accept itself."""
        return functools.partial(type(self), self.config, self.server_state, self.app_state, adopted=adopted)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handed_off:
            return  # handed over in connection_made: uvicorn never saw this connection
        try:
            if self._counted:
                self._counted = False
                self._balancer.closed()
        finally:
            super().connection_lost(exc)

    def shutdown(self) -> None:
        """uvicorn is stopping this worker: siblings stop handing it connections."""
        if self._balancer is not None:
            self._balancer.leave()
        super().shutdown()


HTTP_PROTOCOL = f"{__name__}:NoDelayHTTPProtocol"
