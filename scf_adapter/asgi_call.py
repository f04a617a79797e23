"""Drive an ASGI app through one HTTP request and collect its response, without a server.

The app sees exactly what uvicorn would give it for the same request (an ``http`` scope,
the body in one ``http.request`` message, ``http.disconnect`` once the response is sent),
so routing, parsing and error answers are the HTTP server's own; like a server, it drops the
body of an answer to ``HEAD``. Lifespan is not run:
whoever builds the app loads what it needs first (``capserve.scf_adapter.handler`` does, at import).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import urllib.parse
from typing import Any, Awaitable, Callable

from capserve.scf_adapter.events import HttpRequest, HttpResponse

log = logging.getLogger("capserve.scf")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

_INTERNAL_ERROR = (
    b'{"ok":false,"error":{"code":"internal_error","message":"the function failed before it answered"}}'
)
_local = threading.local()


def scope_for(request: HttpRequest, server: tuple[str, int] = ("scf", 443)) -> dict[str, Any]:
    raw_path = request.path.encode("utf-8", "surrogateescape")
    headers = list(request.headers)
    if request.method not in ("GET", "HEAD") or request.body:
        headers.append((b"content-length", str(len(request.body)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": request.scheme,
        "path": urllib.parse.unquote(request.path),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": request.query_string,
        "headers": headers,
        "client": request.client,
        "server": server,
        "state": {},
        "extensions": {},
    }


async def call_async(app: ASGIApp, request: HttpRequest) -> HttpResponse:
    scope = scope_for(request)
    pending = [{"type": "http.request", "body": request.body, "more_body": False}]
    finished = asyncio.Event()
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                finished.set()

    try:
        await app(scope, receive, send)
    except Exception:
        # Starlette has already sent its 500 answer when it re-raises; log and keep that answer.
        log.exception("the app raised while answering %s %s", request.method, request.path)
    finally:
        finished.set()
    if status is None:
        return HttpResponse(500, [(b"content-type", b"application/json")], _INTERNAL_ERROR)
    # A server sends no body in answer to HEAD (RFC 9110 9.3.2), whatever the app wrote.
    return HttpResponse(status, headers, b"" if request.method == "HEAD" else b"".join(chunks))


def call(app: ASGIApp, request: HttpRequest) -> HttpResponse:
    """``call_async`` on this thread's event loop (kept for the life of the container)."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop.run_until_complete(call_async(app, request))
