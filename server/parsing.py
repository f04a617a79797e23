"""Read the image bytes out of a recognition request.

Accepted: ``GET ?base64Image=`` (also ``image=``; ``HEAD`` the same), and POST with a JSON
body ``{"image": "<base64>"}`` (also ``base64Image``; a body without a content type that starts
with ``{`` is JSON), a multipart form with a file (or base64 text) field ``image``, or the raw
image bytes as the body. Base64 may be standard or
URL-safe, padded or not, and may be a ``data:image/...;base64,`` URI.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
from urllib.parse import unquote_to_bytes

import orjson
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.datastructures import FormData
from starlette.requests import Request

from capserve.server.errors import BadBase64, BadJSON, BadRequest, MissingImage, PayloadTooLarge, UnsupportedMediaType

IMAGE_FIELDS = ("base64Image", "image")
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}
_DATA_URI = re.compile(r"data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


def _canonical_b64(value: str) -> bytes:
    """Padded standard base64 and nothing else, or ``binascii.Error``: a lenient decode, then
    only input that encodes back to itself (two C calls; Python 3.10 has no ``strict_mode``)."""
    data = binascii.a2b_base64(value)
    if binascii.b2a_base64(data, newline=False) != value.encode("ascii"):
        raise binascii.Error("not canonical padded base64")
    return data


def _strict_mode_b64(value: str) -> bytes:
    """The same in one C call (Python 3.11+)."""
    return binascii.a2b_base64(value, strict_mode=True)


_strict_b64 = _strict_mode_b64 if sys.version_info >= (3, 11) else _canonical_b64


def decode_base64(value: str | bytes, max_bytes: int) -> bytes:
    """Decode standard or URL-safe base64, padded or not, optionally a data URI."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise BadBase64("the image is not valid base64 (non-ASCII characters)") from None
    if value and len(value) * 3 // 4 <= max_bytes:
        # The common case, padded standard base64 and nothing else, without normalizing;
        # anything else fails strict decoding and is normalized below (14 of 30 us for a 6 kB image).
        try:
            return _strict_b64(value)
        except (binascii.Error, ValueError):
            pass
    # An unescaped "+" in a query string arrives as a space: base64 has no spaces of its own.
    # str.split() and re's \s agree on what whitespace is (str.isspace); splitting is a single
    # C pass, where a regex substitution over a 10 kB image costs ~0.2 ms even with nothing
    # to replace. The data URI prefix is matched at the start only, never searched for.
    value = "".join(value.replace(" ", "+").split())
    if value[:5].lower() == "data:":
        prefix = _DATA_URI.match(value)
        if prefix is not None:
            value = value[prefix.end():]
    if not value:
        raise MissingImage("the image field is empty")
    if len(value) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"the image is larger than the limit of {max_bytes} bytes")
    value = value.replace("-", "+").replace("_", "/")
    value += "=" * (-len(value) % 4)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadBase64("the image is not valid base64") from None


_BASE64_ESCAPES = ((b"%2B", b"+"), (b"%2F", b"/"), (b"%3D", b"="))


def _unquote_form(raw: bytes) -> str:
    """One URL-encoded form value. The escapes of base64's ``+``, ``/`` and ``=``, as clients
    write them, are replaced in C first: ``unquote`` takes 3-4 times as long over a base64 image."""
    value = raw.replace(b"+", b" ")
    if b"%" in value:
        for escaped, plain in _BASE64_ESCAPES:
            value = value.replace(escaped, plain)
        if b"%" in value:
            value = unquote_to_bytes(value)
    return value.decode("utf-8", "replace")


def parse_urlencoded(body: bytes, max_fields: int = 64) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (the last of repeated names wins)."""
    parts = [part for part in body.split(b"&") if part]
    if len(parts) > max_fields:
        raise BadRequest(f"the form has more than {max_fields} fields", code="bad_form")
    fields = {}
    for part in parts:
        name, _, value = part.partition(b"=")
        fields[_unquote_form(name)] = _unquote_form(value)
    return fields


DRAIN_BYTES = 16 * 1024 * 1024
"""How much of a refused body is read and dropped before the 413 goes out: a client still
sending its body then reads the answer, where it would meet a reset if the connection closed
under it. The 413 closes the connection (``Connection: close``), so a longer body is cut off."""


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        if int(declared) <= DRAIN_BYTES:
            await _drain(request, DRAIN_BYTES)
        raise PayloadTooLarge(f"the request body is {declared} bytes, over the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            await _drain(request, DRAIN_BYTES - size)
            raise PayloadTooLarge(f"the request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: Request, most: int) -> None:
    """Read and drop the rest of the body, up to ``most`` bytes."""
    async for chunk in request.stream():
        most -= len(chunk)
        if most < 0:
            return


def json_object(body: bytes, example: str) -> dict:
    """The JSON object a body holds; ``BadJSON`` naming ``example`` for anything else."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadJSON(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadJSON(f"the JSON body must be an object like {example}")
    return doc


def _from_json(body: bytes, max_bytes: int) -> bytes:
    doc = json_object(body, '{"image": "<base64>"}')
    for field in IMAGE_FIELDS:
        value = doc.get(field)
        if value is not None:
            if not isinstance(value, str):
                raise BadJSON(f"the {field!r} field must be a base64 string")
            return decode_base64(value, max_bytes)
    raise MissingImage('the JSON body has no "image" field')


async def read_form(request: Request, body: bytes, max_fields: int = 16) -> FormData:
    """The multipart or URL-encoded form in ``body`` (already read); close it when done."""
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=4, max_fields=max_fields)
    except (MultiPartException, HTTPException) as exc:
        raise BadRequest(f"the form cannot be parsed: {getattr(exc, 'message', None) or exc.detail}", code="bad_form") from None


async def _from_form(request: Request, body: bytes, max_bytes: int) -> bytes:
    form = await read_form(request, body)
    try:
        for field in IMAGE_FIELDS:
            value = form.get(field)
            if value is None:
                continue
            if isinstance(value, str):
                return decode_base64(value, max_bytes)
            return await value.read()
    finally:
        await form.close()
    raise MissingImage('the form has no "image" field')


def query_flag(request: Request, name: str, extra: tuple[str, ...] = ()) -> bool | str:
    """A true/false query parameter (or one of the ``extra`` words, returned as given); False
    when absent. The query is parsed only if the name occurs in it: a POST has none, and a
    GET's holds the image."""
    if name.encode() not in request.scope["query_string"]:
        return False
    value = request.query_params.get(name)
    if value is None:
        return False
    word = value.strip().lower()
    if word in extra:
        return word
    flag = _FLAGS.get(word)
    if flag is None:
        allowed = ", ".join(("true", "false", *extra))
        raise BadRequest(f"{name} must be one of {allowed}, not {value[:32]!r}", code="bad_parameter")
    return flag


def wants_details(request: Request) -> bool | str:
    """``?details=true``: answer with the per-character confidences and timings as well;
    ``?details=preview``: and the preprocessed image the model received."""
    return query_flag(request, "details", ("preview",))


def wants_keep(request: Request) -> bool:
    """``?keep=true``: store the image and the answer as a sample (when collection is on)."""
    return bool(query_flag(request, "keep"))


async def image_bytes(request: Request, body: bytes, max_bytes: int) -> bytes:
    """The image of a recognition request whose ``body`` was read, or a ``CapserveError``."""
    if request.method in ("GET", "HEAD"):
        for field in IMAGE_FIELDS:
            value = request.query_params.get(field)
            if value is not None:
                return decode_base64(value, max_bytes)
        raise MissingImage("give the image as ?base64Image=<base64>")

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _from_form(request, body, max_bytes)
    if content_type == "application/json" or content_type.endswith("+json"):
        return _from_json(body, max_bytes)
    if not content_type and body.lstrip()[:1] == b"{":  # no image format starts with "{"
        return _from_json(body, max_bytes)  # e.g. a Tencent function URL, which drops the type
    if content_type.startswith("text/"):
        return decode_base64(body, max_bytes)
    if content_type and not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise UnsupportedMediaType(
            f"content type {content_type!r} is not accepted; send JSON, a multipart form, or image bytes"
        )
    if not body:
        raise MissingImage("the request body is empty; send the image")
    return body
