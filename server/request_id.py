"""Request ids: every HTTP answer carries ``X-Request-ID``, the client's when it is a sane
token, else a new one; an exception no route answered is logged with it and answered 500
``internal_error`` with the id, never with its text."""

from __future__ import annotations

import logging
import os
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capserve.core.errors import CapserveError
from capserve.server.responses import error_response

HEADER = "x-request-id"
_RAW_HEADER = HEADER.encode()
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
log = logging.getLogger("capserve.server")


def request_id(headers) -> str:
    given = headers.get(HEADER, "")
    return given if _SANE.fullmatch(given) else os.urandom(16).hex()


def of(request) -> str:
    """The id of a request the middleware has seen."""
    return request.scope["state"]["request_id"]


def failure(logger: logging.Logger, rid: str, what: str, answer: str = "internal error") -> CapserveError:
    """Log the exception being handled, with the request id ``rid``; the error to answer with,
    whose message names the id and nothing of the exception."""
    logger.exception("request %s: %s failed", rid, what)
    return CapserveError(f"{answer} (request id {rid})")


class RequestId:
    """ASGI middleware: the id goes to ``scope["state"]["request_id"]`` (``of(request)``) and,
    with ``echo``, to the answer's headers (behind a proxy that echoes the id it passed on, as
    Ray Serve's does, without); an exception that reaches it is logged with the id."""

    def __init__(self, app: ASGIApp, echo: bool = True) -> None:
        self.app = app
        self.echo = echo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(Headers(scope=scope))
        scope.setdefault("state", {})["request_id"] = rid
        header = (_RAW_HEADER, rid.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.echo:
                    message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            error = failure(log, rid, scope.get("path", "request"))
            if started:  # too late for an answer: the server ends the connection
                raise
            await error_response(error)(scope, receive, send_with_id)
