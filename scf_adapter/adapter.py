"""One event in, one integrated-response dict out, through any ASGI app (no module state)."""

from __future__ import annotations

from typing import Any

import orjson

from capserve.scf_adapter import asgi_call, events


def bad_event_answer(exc: Exception, kind: str = events.TENCENT_APIGW) -> dict:
    body = orjson.dumps({"ok": False, "error": {"code": "bad_event", "message": str(exc)}})
    return events.to_answer(events.HttpResponse(400, [(b"content-type", b"application/json")], body), kind)


def handle(app: Any, event: Any) -> dict:
    """Translate ``event``, call ``app`` once, and answer in the trigger's response format."""
    kind = events.TENCENT_APIGW
    try:
        kind = events.kind_of(event)
        request = events.to_request(event, kind)
    except events.BadEvent as exc:
        return bad_event_answer(exc, kind if kind in events.HTTP_KINDS else events.TENCENT_APIGW)
    response = asgi_call.call(app, request)
    return events.to_answer(response, kind if kind in events.HTTP_KINDS else events.TENCENT_APIGW)
