"""The createTask protocol of anti-captcha and capsolver: JSON in, JSON out, always HTTP 200.

``POST /createTask`` ``{"clientKey", "task": {"type": "ImageToTextTask", "body": <base64>,
"site"?, "numeric"?, "minLength"?, "maxLength"?, "math"?, "case"?}}`` answers at once with
``{"errorId": 0, "taskId", "status": "ready", "solution": {"text"}}``; ``/getTaskResult``
``{"clientKey", "taskId"}`` answers the same for the id; ``/getBalance``;
``/reportIncorrectImageCaptcha``. Errors: ``{"errorId", "errorCode", "errorDescription"}``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from capserve.core.errors import CapserveError
from capserve.server.errors import BadRequest, status_of
from capserve.server import request_id
from capserve.server.parsing import decode_base64, json_object, read_body
from capserve.server import samples
from capserve.server.responses import FastJSONResponse
from capserve.server.solving import BALANCE, Hints, caller, choose_site, hint_number, issue_id, log, resolve_id, solve

KEY_ERROR = (1, "ERROR_KEY_DOES_NOT_EXIST")
NO_SUCH_TYPE = (23, "ERROR_TASK_NOT_SUPPORTED")
TOO_BIG = (4, "ERROR_TOO_BIG_CAPTCHA_FILESIZE")
UNSOLVABLE = (12, "ERROR_CAPTCHA_UNSOLVABLE")
ERRORS = {
    "key_required": KEY_ERROR,
    "unauthorized": KEY_ERROR,
    "signature_required": KEY_ERROR,
    "forbidden": NO_SUCH_TYPE,  # a site the key may not use reads as one that does not exist
    "unknown_site": NO_SUCH_TYPE,
    "bad_parameter": NO_SUCH_TYPE,
    "no_task": (22, "ERROR_TASK_ABSENT"),
    "bad_json": (22, "ERROR_TASK_ABSENT"),
    "rate_limited": (2, "ERROR_NO_SLOT_AVAILABLE"),
    "model_unavailable": (2, "ERROR_NO_SLOT_AVAILABLE"),
    "missing_image": (3, "ERROR_ZERO_CAPTCHA_FILESIZE"),
    "empty_image": (3, "ERROR_ZERO_CAPTCHA_FILESIZE"),
    "body_too_large": TOO_BIG,
    "image_too_large": TOO_BIG,
    "too_many_frames": TOO_BIG,
    "unsupported_image_format": (15, "ERROR_IMAGE_TYPE_NOT_SUPPORTED"),
    "bad_image": (15, "ERROR_IMAGE_TYPE_NOT_SUPPORTED"),
    "bad_base64": (15, "ERROR_IMAGE_TYPE_NOT_SUPPORTED"),
    "unsolvable": UNSOLVABLE,
    "recognition_failed": UNSOLVABLE,
    "wrong_id": (16, "ERROR_NO_SUCH_CAPCHA_ID"),
    "wrong_id_format": (16, "ERROR_NO_SUCH_CAPCHA_ID"),
}
"""capserve's error codes -> the protocol's (errorId, errorCode). Never errorId 11, on which
python-anticaptcha asks a public service for the caller's address."""


def error_answer(error: CapserveError) -> Response:
    error_id, code = ERRORS.get(error.code, UNSOLVABLE)
    return FastJSONResponse({"errorId": error_id, "errorCode": code, "errorDescription": error.message})


async def request_doc(request: Request) -> dict[str, Any]:
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    doc = json_object(body, '{"clientKey": ..., "task": {...}}')
    key = doc.get("clientKey")
    doc["key"] = caller(request.app.state.access, key if isinstance(key, str) else None)
    return doc


def hints_of(task: dict[str, Any]) -> Hints:
    return Hints(
        numeric=hint_number(task.get("numeric"), "numeric"),
        min_len=hint_number(task.get("minLength"), "minLength"),
        max_len=hint_number(task.get("maxLength"), "maxLength"),
        calc=bool(hint_number(task.get("math"), "math")),
    )


def solved(task_id: str, text: str) -> Response:
    return FastJSONResponse({"errorId": 0, "taskId": task_id, "status": "ready", "solution": {"text": text}})


async def create_task(request: Request) -> Response:
    started = time.perf_counter()
    state = request.app.state
    served, status = None, 200
    try:
        doc = await request_doc(request)
        task = doc.get("task")
        if not isinstance(task, dict):
            raise BadRequest("the request has no task object", code="no_task")
        if task.get("type") != "ImageToTextTask":
            raise BadRequest(f"task type {str(task.get('type'))[:40]!r} is not served here: use ImageToTextTask",
                             code="bad_parameter")
        site = choose_site(task.get("site"), doc["key"], state.settings)
        body = task.get("body")
        image = decode_base64(body if isinstance(body, str) else "", state.settings.max_body_bytes)
        text = await solve(state.registry, site, image, hints_of(task))
        served = site
        captcha_id = issue_id(state.protocol_secret, doc["key"], text)
        if state.settings.samples_dir is not None:
            await asyncio.to_thread(samples.hold, state.settings, captcha_id, site, image, text)
        response = solved(captcha_id, text)
    except CapserveError as exc:
        status = status_of(exc)
        response = error_answer(exc)
    except Exception:  # never let one request take the worker down; the client sees no internals
        status = 500
        response = error_answer(request_id.failure(log, request_id.of(request), "createTask", "unexpected error"))
    state.metrics.observe(served, status, time.perf_counter() - started)
    return response


async def get_task_result(request: Request) -> Response:
    try:
        doc = await request_doc(request)
        task_id = str(doc.get("taskId", ""))
        return solved(task_id, resolve_id(request.app.state.protocol_secret, doc["key"], task_id))
    except CapserveError as exc:
        return error_answer(exc)
    except Exception:
        return error_answer(request_id.failure(log, request_id.of(request), "getTaskResult", "unexpected error"))


async def get_balance(request: Request) -> Response:
    try:
        await request_doc(request)
        return FastJSONResponse({"errorId": 0, "balance": BALANCE})
    except CapserveError as exc:
        return error_answer(exc)


async def report_incorrect(request: Request) -> Response:
    try:
        doc = await request_doc(request)
        settings = request.app.state.settings
        resolve_id(request.app.state.protocol_secret, doc["key"], doc.get("taskId", ""))
        if settings.samples_dir is not None:
            await asyncio.to_thread(samples.report_wrong, settings, str(doc.get("taskId", "")))
        return FastJSONResponse({"errorId": 0, "status": "success"})
    except CapserveError as exc:
        return error_answer(exc)


ROUTES = [
    Route("/createTask", create_task, methods=["POST"]),
    Route("/getTaskResult", get_task_result, methods=["POST"]),
    Route("/getBalance", get_balance, methods=["POST"]),
    Route("/reportIncorrectImageCaptcha", report_incorrect, methods=["POST"]),
]
