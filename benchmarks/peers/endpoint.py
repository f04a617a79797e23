"""The minimal Starlette endpoint every peer sits behind.

``GET /recognize/{site}?base64Image=<base64>`` and ``POST /recognize/{site}`` with
``{"image": "<base64>"}``; answers ``{"text": ...}`` (orjson) or a 400 with the reason.
``/readyz`` answers 200. No validation beyond what base64 and JSON parsing do, no limits, no
metrics, no plugins, no hot reload: the least an HTTP wrapper around a model can be.
"""

from __future__ import annotations

import base64
from typing import Callable

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def _json(content: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def make_app(recognize: Callable[[bytes], str]) -> Starlette:
    async def endpoint(request: Request) -> Response:
        try:
            if request.method == "GET":
                value = request.query_params["base64Image"]
            else:
                value = orjson.loads(await request.body())["image"]
            data = base64.b64decode(value)
            text = recognize(data)
        except Exception as exc:  # noqa: BLE001 - a peer answers 400 for anything it cannot read
            return _json({"ok": False, "error": f"{type(exc).__name__}: {exc}"}, 400)
        return _json({"ok": True, "text": text})

    async def readyz(request: Request) -> Response:
        return _json({"ok": True})

    return Starlette(routes=[
        Route("/recognize/{site}", endpoint, methods=["GET", "POST"]),
        Route("/readyz", readyz),
    ])


def entry_folder():
    import os
    from pathlib import Path

    return Path(os.environ["BENCH_ENTRY"])
