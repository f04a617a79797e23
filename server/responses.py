"""JSON responses (orjson) and the one shape of every error answer."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

from capserve.core.errors import CapserveError
from capserve.server.errors import PayloadTooLarge, status_of


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(error: CapserveError) -> dict[str, Any]:
    return {"ok": False, "error": error.to_dict()}


def error_response(error: CapserveError) -> FastJSONResponse:
    headers = {}
    status = status_of(error)
    if status == 401:
        headers["www-authenticate"] = "Bearer"
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    if isinstance(error, PayloadTooLarge):  # the body may be left unread: no request may follow it
        headers["connection"] = "close"
    return FastJSONResponse(error_body(error), status_code=status, headers=headers)
