"""The 2captcha protocol: ``/in.php`` submits a captcha, ``/res.php`` answers for its id.

``in.php`` (GET or POST, fields in the query string or a form): ``key``, ``method=base64`` with
``body=<base64>`` or ``method=post`` with a ``file``, ``json=1`` for JSON answers, ``site`` (else
the key's or the server's default site) and the hints ``numeric``, ``min_len``, ``max_len``,
``calc``. The captcha is solved before the answer goes out, so the first ``res.php`` poll has
it. ``res.php``: ``action=get`` with ``id`` (or ``ids``, comma-separated), ``getbalance``,
``reportbad``, ``reportgood``. Every answer is HTTP 200 with ``OK|...``, a protocol error string,
or with ``json=1`` ``{"status": 1|0, "request": ...}``; clients treat any other status as a
network failure and retry.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from capserve.core.errors import CapserveError
from capserve.server.errors import BadRequest, MissingImage, status_of
from capserve.server import request_id
from capserve.server.parsing import decode_base64, parse_urlencoded, read_body, read_form
from capserve.server import samples
from capserve.server.responses import FastJSONResponse
from capserve.server.solving import (
    BALANCE, Hints, WrongId, caller, choose_site, hint_number, issue_id, log, resolve_id, solve,
)

NO_SUCH_TYPE = "ERROR_BAD_PARAMETERS"
ERRORS = {
    "key_required": "ERROR_WRONG_USER_KEY",
    "unauthorized": "ERROR_KEY_DOES_NOT_EXIST",
    "signature_required": "ERROR_KEY_DOES_NOT_EXIST",
    "forbidden": NO_SUCH_TYPE,  # a site the key may not use reads as one that does not exist
    "unknown_site": NO_SUCH_TYPE,
    "bad_parameter": NO_SUCH_TYPE,
    "rate_limited": "ERROR_NO_SLOT_AVAILABLE",
    "model_unavailable": "ERROR_NO_SLOT_AVAILABLE",
    "missing_image": "ERROR_ZERO_CAPTCHA_FILESIZE",
    "empty_image": "ERROR_ZERO_CAPTCHA_FILESIZE",
    "body_too_large": "ERROR_TOO_BIG_CAPTCHA_FILESIZE",
    "image_too_large": "ERROR_TOO_BIG_CAPTCHA_FILESIZE",
    "too_many_frames": "ERROR_TOO_BIG_CAPTCHA_FILESIZE",
    "unsupported_image_format": "ERROR_WRONG_FILE_EXTENSION",
    "bad_image": "ERROR_IMAGE_TYPE_NOT_SUPPORTED",
    "bad_base64": "ERROR_UPLOAD",
    "bad_form": "ERROR_UPLOAD",
    "unsupported_media_type": "ERROR_UPLOAD",
    "unsolvable": "ERROR_CAPTCHA_UNSOLVABLE",
    "recognition_failed": "ERROR_CAPTCHA_UNSOLVABLE",
    "wrong_id": "ERROR_WRONG_CAPTCHA_ID",
    "wrong_id_format": "ERROR_WRONG_ID_FORMAT",
    "no_action": "ERROR_EMPTY_ACTION",
}
"""capserve's error codes -> the protocol's error strings."""


def answer(json_form: bool, value: str, *, ok: bool = True, prefix: str = "OK|") -> Response:
    if json_form:
        return FastJSONResponse({"status": 1 if ok else 0, "request": value})
    return PlainTextResponse(prefix + value if ok else value)


def error_answer(json_form: bool, error: CapserveError) -> Response:
    code = ERRORS.get(error.code, "ERROR_CAPTCHA_UNSOLVABLE")
    if json_form:
        return FastJSONResponse({"status": 0, "request": code, "error_text": error.message})
    return PlainTextResponse(code)


async def fields_of(request: Request, max_bytes: int) -> tuple[dict[str, str], bytes | None]:
    """The request's fields (query string and form) and the uploaded ``file``, if any."""
    fields = dict(request.query_params)
    body = await read_body(request, max_bytes) if request.method == "POST" else b""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        fields.update(parse_urlencoded(body))  # far faster than the streaming form parser (BENCHMARKS.md)
        return fields, None
    if not body or content_type != "multipart/form-data":
        return fields, None
    upload = None
    form = await read_form(request, body, max_fields=64)
    try:
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields[name] = value
            elif name == "file":
                upload = await value.read()
    finally:
        await form.close()
    return fields, upload


def image_of(fields: dict[str, str], upload: bytes | None, max_bytes: int) -> bytes:
    method = fields.get("method", "post")
    if method == "base64":
        return decode_base64(fields.get("body", ""), max_bytes)
    if method != "post":
        raise BadRequest(f"method {method[:32]!r} is not served here: use base64 or post", code="bad_parameter")
    if not upload:
        raise MissingImage("method=post needs the image as a 'file' field")
    return upload


def hints_of(fields: dict[str, str]) -> Hints:
    return Hints(
        numeric=hint_number(fields.get("numeric"), "numeric"),
        min_len=hint_number(fields.get("min_len"), "min_len"),
        max_len=hint_number(fields.get("max_len"), "max_len"),
        calc=bool(hint_number(fields.get("calc"), "calc")),
    )


async def in_php(request: Request) -> Response:
    started = time.perf_counter()
    state = request.app.state
    json_form = request.query_params.get("json") == "1"
    served, status = None, 200
    try:
        fields, upload = await fields_of(request, state.settings.max_body_bytes)
        json_form = fields.get("json") == "1"
        key = caller(state.access, fields.get("key"))
        site = choose_site(fields.get("site"), key, state.settings)
        hints = hints_of(fields)
        image = image_of(fields, upload, state.settings.max_body_bytes)
        text = await solve(state.registry, site, image, hints)
        served = site
        captcha_id = issue_id(state.protocol_secret, key, text)
        if state.settings.samples_dir is not None:
            await asyncio.to_thread(samples.hold, state.settings, captcha_id, site, image, text)
        response = answer(json_form, captcha_id)
    except CapserveError as exc:
        status = status_of(exc)
        response = error_answer(json_form, exc)
    except Exception:  # never let one request take the worker down; the client sees no internals
        status = 500
        error = request_id.failure(log, request_id.of(request), "in.php", "unexpected error")
        response = error_answer(json_form, error)
    state.metrics.observe(served, status, time.perf_counter() - started)
    return response


async def res_php(request: Request) -> Response:
    state = request.app.state
    json_form = request.query_params.get("json") == "1"
    try:
        fields, _ = await fields_of(request, state.settings.max_body_bytes)
        json_form = fields.get("json") == "1"
        key = caller(state.access, fields.get("key"))
        action = fields.get("action", "")
        if action == "getbalance":
            return answer(json_form, str(BALANCE), prefix="")
        if action == "get" and "ids" in fields:
            return answer(json_form, "|".join(_text_or_error(state.protocol_secret, key, i)
                                              for i in fields["ids"].split(",")), prefix="")
        if action in ("get", "reportbad", "reportgood"):
            text = resolve_id(state.protocol_secret, key, fields.get("id", ""))
            if action == "get":
                return answer(json_form, text)
            if action == "reportbad" and state.settings.samples_dir is not None:
                await asyncio.to_thread(samples.report_wrong, state.settings, fields.get("id", ""))
            return answer(json_form, "OK_REPORT_RECORDED", prefix="")
        raise BadRequest(f"action {action[:32]!r} is not one of get, getbalance, reportbad, reportgood",
                         code="no_action")
    except CapserveError as exc:
        return error_answer(json_form, exc)
    except Exception:
        return error_answer(json_form, request_id.failure(log, request_id.of(request), "res.php", "unexpected error"))


def _text_or_error(secret: bytes, key, captcha_id: str) -> str:
    try:
        return resolve_id(secret, key, captcha_id)
    except WrongId as exc:
        return ERRORS[exc.code]


ROUTES = [
    Route("/in.php", in_php, methods=["GET", "POST"]),
    Route("/res.php", res_php, methods=["GET", "POST"]),
]
