"""Serverless events -> one HTTP request, and one HTTP response -> the trigger's answer.

Four event kinds are understood (``kind_of``):

``tencent-apigw``
    Tencent API Gateway trigger (integrated request): ``path``, ``httpMethod``, ``headers``,
    ``queryString`` (the whole query, a value is a string or a list when a key repeats),
    ``queryStringParameters``, ``pathParameters``, ``body``, ``isBase64Encoded`` and
    ``requestContext`` (``serviceId``, ``stage``, ``path`` of the API rule, ``sourceIp``...).
    ``path`` is the request path without the stage (``/release``), so nothing is stripped.
``tencent-url``
    Tencent function URL (event function): ``body``, ``headers``, ``httpMethod``, ``path``,
    ``queryString``; the API Gateway shape without ``requestContext``, ``isBase64Encoded``
    and the ``*Parameters`` fields.
``aws-v1``
    AWS API Gateway REST (payload 1.0): ``resource``, ``path``, ``httpMethod``,
    ``(multiValue)headers``, ``(multiValue)queryStringParameters``, ``requestContext``.
    ``path`` has no stage. A header is read from ``multiValueHeaders``, else from ``headers``.
``aws-v2``
    AWS API Gateway HTTP API (payload 2.0, also Lambda function URLs): ``version: "2.0"``,
    ``rawPath``, ``rawQueryString``, ``cookies``, ``requestContext.http``. On the API's own
    ``*.execute-api.*`` domain ``rawPath`` starts with ``/<stage>`` unless the stage is
    ``$default``: that prefix is stripped. On a custom domain nothing is (a path there is
    the client's own, and ``/v1`` or ``/recognize`` may be a real segment).

Query values of the Tencent and AWS v1 events arrive decoded; they are encoded again
(``urlencode``), so the app reads the same values. A body is base64-decoded when the event
says ``isBase64Encoded`` (``true`` or ``"true"``); one that is not valid base64 is a
``BadEvent``. A trailing slash is dropped from the path (``/recognize/demo/`` is
``/recognize/demo``): the app's answer to it would be a redirect, and a redirect's
``Location`` would lose the stage of the gateway URL (Tencent's integrated response cannot
send one at all).

``CAPSERVE_BASE_PATH`` (e.g. ``/capserve``): a path prefix to strip when the trigger mounts
the function below one (an API Gateway API path other than ``/``, a custom domain mapping).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import urllib.parse
from typing import Any, Iterable

from capserve.core import settings

TENCENT_APIGW, TENCENT_URL, AWS_V1, AWS_V2 = "tencent-apigw", "tencent-url", "aws-v1", "aws-v2"
HTTP_KINDS = (TENCENT_APIGW, TENCENT_URL, AWS_V1, AWS_V2)
TIMER = "timer"
DIRECT = "direct"

# Hop-by-hop or recomputed headers: the driver sets content-length from the decoded body.
_DROP_REQUEST_HEADERS = {"content-length", "transfer-encoding", "connection"}
_TEXT_TYPES = ("application/json", "application/problem+json", "application/openmetrics-text")


class BadEvent(ValueError):
    """An event this adapter cannot turn into a request."""


@dataclasses.dataclass
class HttpRequest:
    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int] | None = None
    scheme: str = "https"


@dataclasses.dataclass
class HttpResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def kind_of(event: Any) -> str:
    """Which trigger sent ``event``; ``BadEvent`` when it is none this adapter knows."""
    if not isinstance(event, dict):
        raise BadEvent(f"the event is a {type(event).__name__}, not a JSON object")
    context = event.get("requestContext")
    if event.get("version") == "2.0" and isinstance(context, dict) and isinstance(context.get("http"), dict):
        return AWS_V2
    if "httpMethod" in event:
        if isinstance(context, dict) and ("serviceId" in context or "queryString" in event):
            return TENCENT_APIGW
        if isinstance(context, dict) or "multiValueHeaders" in event or "resource" in event:
            return AWS_V1
        return TENCENT_URL
    if event.get("Type") == "Timer" or ("TriggerName" in event and "Time" in event):
        return TIMER
    if "site" in event and ("image" in event or "base64Image" in event):
        return DIRECT
    raise BadEvent("the event is not an API Gateway, function URL, timer or {\"site\", \"image\"} event")


def to_request(event: dict, kind: str | None = None) -> HttpRequest:
    """The HTTP request an HTTP event stands for."""
    kind = kind or kind_of(event)
    if kind == AWS_V2:
        return _aws_v2(event)
    if kind in (TENCENT_APIGW, TENCENT_URL, AWS_V1):
        return _v1_like(event, kind)
    if kind == TIMER:  # keep-warm pings: answer readiness without touching a model
        return HttpRequest("GET", "/readyz", b"", [], b"")
    if kind == DIRECT:  # a console test or SDK Invoke with {"site": ..., "image": ...}
        field = "image" if "image" in event else "base64Image"
        body = _json_bytes({"image": event[field]})
        site = urllib.parse.quote(str(event["site"]), safe="")
        return HttpRequest("POST", f"/recognize/{site}", b"", [(b"content-type", b"application/json")], body)
    raise BadEvent(f"no request for event kind {kind!r}")


def _v1_like(event: dict, kind: str) -> HttpRequest:
    context = event.get("requestContext") or {}
    headers = _header_pairs(_v1_headers(event))
    if kind == AWS_V1 and event.get("multiValueQueryStringParameters"):
        query = _encode_query(event["multiValueQueryStringParameters"])
    elif kind == AWS_V1:
        query = _encode_query(event.get("queryStringParameters") or {})
    else:  # Tencent: queryString is the whole query; queryStringParameters only the declared ones
        query = _encode_query(event.get("queryString") or event.get("queryStringParameters") or {})
    client = _client(context.get("sourceIp") or (context.get("identity") or {}).get("sourceIp")
                     or _header(headers, b"x-scf-remote-addr"))
    return HttpRequest(
        method=str(event.get("httpMethod") or "GET").upper(),
        path=_strip_base(str(event.get("path") or "/")),
        query_string=query,
        headers=headers,
        body=_body(event),
        client=client,
        scheme=_header(headers, b"x-forwarded-proto") or "https",
    )


def _aws_v2(event: dict) -> HttpRequest:
    context = event["requestContext"]
    http = context["http"]
    path = str(event.get("rawPath") or http.get("path") or "/")
    stage = context.get("stage")
    if stage and stage != "$default" and ".execute-api." in str(context.get("domainName") or ""):
        path = _strip_prefix(path, "/" + stage)
    headers = _header_pairs(event.get("headers") or {})
    if event.get("cookies"):
        headers.append((b"cookie", "; ".join(event["cookies"]).encode("latin-1")))
    return HttpRequest(
        method=str(http.get("method") or "GET").upper(),
        path=_strip_base(path),
        query_string=str(event.get("rawQueryString") or "").encode("latin-1"),
        headers=headers,
        body=_body(event),
        client=_client(http.get("sourceIp")),
        scheme=_header(headers, b"x-forwarded-proto") or "https",
    )


# -- pieces -------------------------------------------------------------------------------------


def _flag(value: Any) -> bool:
    """A boolean event field, which some consoles and hand-written events send as a string."""
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


def _body(event: dict) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if isinstance(body, (dict, list)):  # some test consoles hand the JSON body over parsed
        return _json_bytes(body)
    if not isinstance(body, str):
        body = str(body)
    if _flag(event.get("isBase64Encoded")):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise BadEvent("the event says isBase64Encoded but its body is not base64") from None
    return body.encode("utf-8", "surrogateescape")


def _v1_headers(event: dict) -> dict:
    """``multiValueHeaders``, plus each header of ``headers`` that it lacks (AWS fills both,
    not always with the same names)."""
    multi = event.get("multiValueHeaders") or {}
    if not multi:
        return event.get("headers") or {}
    names = {str(name).lower() for name in multi}
    extra = {k: v for k, v in (event.get("headers") or {}).items() if str(k).lower() not in names}
    return {**multi, **extra}


def _header_pairs(headers: dict) -> list[tuple[bytes, bytes]]:
    pairs = []
    for name, value in headers.items():
        key = str(name).lower()
        if key in _DROP_REQUEST_HEADERS:
            continue
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            pairs.append((key.encode("latin-1"), str(item).encode("latin-1", "replace")))
    return pairs


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1").split(",")[0].strip()
    return None


def _encode_query(params: dict) -> bytes:
    items = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            items.append((str(key), "" if item is None else str(item)))
    return urllib.parse.urlencode(items).encode("ascii")


def _client(ip: str | None) -> tuple[str, int] | None:
    return (str(ip), 0) if ip else None


def _strip_prefix(path: str, prefix: str) -> str:
    prefix = prefix.rstrip("/")
    if prefix and (path == prefix or path.startswith(prefix + "/")):
        return path[len(prefix):] or "/"
    return path


def _strip_base(path: str) -> str:
    if not path.startswith("/"):
        path = "/" + path
    return _strip_prefix(path, settings.current().base_path).rstrip("/") or "/"


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# -- the answer ---------------------------------------------------------------------------------


def _is_text(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind.startswith("text/") or kind in _TEXT_TYPES or kind.endswith("+json")


def to_answer(response: HttpResponse, kind: str) -> dict:
    """The integrated-response dict a trigger turns into the HTTP response.

    Tencent and AWS v1 get ``{isBase64Encoded, statusCode, headers, body}`` (AWS v1 also
    ``multiValueHeaders``); AWS v2 gets the same keys plus ``cookies``. A text body (JSON,
    ``text/*``) is returned as a string, anything else base64-encoded.
    """
    headers: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    cookies: list[str] = []
    for raw_key, raw_value in response.headers:
        key, value = raw_key.decode("latin-1").lower(), raw_value.decode("latin-1")
        if key == "content-length":  # the gateway sets it for the body it sends
            continue
        if key == "set-cookie" and kind == AWS_V2:
            cookies.append(value)
            continue
        multi.setdefault(key, []).append(value)
        headers[key] = value if key not in headers else f"{headers[key]}, {value}"
    content_type = headers.get("content-type", "")
    text = None
    if _is_text(content_type) or not response.body:
        try:
            text = response.body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    answer: dict[str, Any] = {
        "isBase64Encoded": text is None,
        "statusCode": response.status,
        "headers": headers,
        "body": text if text is not None else base64.b64encode(response.body).decode("ascii"),
    }
    if kind == AWS_V1:
        answer["multiValueHeaders"] = multi
    if kind == AWS_V2 and cookies:
        answer["cookies"] = cookies
    return answer
