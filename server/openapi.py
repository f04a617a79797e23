"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

Every route of ``server/app.py``, every status it can answer and the API-key schemes are
described here; tests/test_openapi.py sends generated requests to the app and checks each
real answer (status, content type, headers, body) against this document, so it cannot
silently drift from the code.
"""

from __future__ import annotations

import functools
from typing import Any

from capserve.core.spec import SITE_PATTERN
from capserve.server.restriction import MAX_CHARSET, MAX_LENGTH

_STRINGS = {"type": "array", "items": {"type": "string"}}
_ERROR = {
    "type": "object",
    "required": ["ok", "error"],
    "properties": {
        "ok": {"const": False},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_RESULT = {
    "type": "object",
    "required": ["ok", "site", "version", "text", "confidence", "elapsed_ms"],
    "properties": {
        "ok": {"const": True},
        "site": {"type": "string"},
        "version": {"type": "integer"},
        "text": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "elapsed_ms": {"type": "number"},
        "raw_text": {"type": "string", "description": "with ?details=true: the decoder's text before post-processing"},
        "characters": {
            "type": "array",
            "description": "with ?details=true: each character of raw_text with its probability",
            "items": {
                "type": "object",
                "required": ["char", "confidence"],
                "properties": {"char": {"type": "string"}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
            },
        },
        "timings_ms": {
            "type": "object",
            "description": "with ?details=true: milliseconds spent decoding, preprocessing, in the model and post-processing",
            "additionalProperties": {"type": "number"},
        },
        "preview": {"type": "string", "description": "with ?details=preview: the preprocessed image, a PNG data URI"},
        "sample": {"type": ["string", "null"],
                   "description": "with ?keep=true: the name the image was kept under (null when it could not be)"},
    },
}
_VERSION = {
    "type": "object",
    "required": ["path", "state", "site", "version"],
    "properties": {
        "path": {"type": "string"},
        "state": {"enum": ["AVAILABLE", "LOADING", "UNLOADED", "FAILED"]},
        "site": {"type": ["string", "null"]},
        "version": {"type": ["integer", "null"]},
        "error": {"type": "string"},
        "serving_version": {"type": "integer"},
        "report": {**_STRINGS, "description": "the files of the entry's report/ folder (GET .../report/{name})"},
    },
}
_MODEL = {
    "type": "object",
    "required": ["site", "state", "versions"],
    "description": "With state AVAILABLE, the serving version's metadata as well",
    "properties": {
        "site": {"type": "string"},
        "state": {"enum": ["AVAILABLE", "LOADING", "UNLOADED", "FAILED"]},
        "versions": {"type": "array", "items": {"$ref": "#/components/schemas/Version"}},
        "version": {"type": "integer"},
        "description": {"type": "string"},
        "input": {
            "type": "object",
            "required": ["width", "height", "channels"],
            "properties": {k: {"type": "integer"} for k in ("width", "height", "channels")},
        },
        "charset": {"type": "string"},
        "decoder": {"enum": ["ctc", "fixed"]},
        "length": {"type": "object", "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}}},
        "preprocess": _STRINGS,
        "postprocess": _STRINGS,
        "model_bytes": {"type": "integer"},
        "quantization": {"type": ["string", "null"]},
        "training": {"type": "object"},
    },
}
_PLUGIN = {
    "type": "object",
    "required": ["name", "origin", "version"],
    "properties": {
        "name": {"type": "string"},
        "origin": {"type": "string", "description": "builtin, or the distribution that installed it"},
        "version": {"type": ["string", "null"]},
        "preprocess": _STRINGS,
        "postprocess": _STRINGS,
        "generators": _STRINGS,
    },
}
_READY = {
    "type": "object",
    "required": ["ok", "sites"],
    "properties": {"ok": {"type": "boolean"}, "sites": _STRINGS},
}

_STATUS_TEXT = {
    400: "missing image, bad base64, bad JSON or form, bad parameter",
    401: "an API key or a request signature is required, or the one sent is not valid",
    403: "the API key may not use this site",
    404: "unknown site (or sample, or report file; or collecting samples is off)",
    413: "body or image too large",
    415: "unsupported content type or image format",
    422: "not a decodable image, or no reading of it meets charset and length (restriction_unmet)",
    429: "too many requests for this API key (see Retry-After)",
    500: "an unexpected error; the message says nothing of the server's internals",
    503: "the site's model is loading, or the store of rate limits and used signatures cannot answer "
         "(limits_unavailable, see Retry-After)",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    out = {}
    for status in statuses:
        answer = _json(_ref("Error"), _STATUS_TEXT[status])
        if status in (429, 503):
            answer["headers"] = _RETRY_AFTER
        out[str(status)] = answer
    return out


_SECURITY = [{}, {"apiKey": []}, {"bearer": []}]  # keys are off unless the server is given some
_SITE = {"name": "site", "in": "path", "required": True, "schema": {"type": "string", "pattern": SITE_PATTERN.pattern}}
_DETAILS = {"name": "details", "in": "query", "required": False,
            "schema": {"anyOf": [{"type": "boolean"}, {"const": "preview"}]},
            "description": "also answer raw_text, characters (with their probabilities) and timings_ms; "
                           "preview: and the preprocessed image"}
_KEEP = {"name": "keep", "in": "query", "required": False, "schema": {"type": "boolean"},
         "description": "store the image and the answer as a sample when CAPSERVE_SAMPLES_DIR is set"}
_CHARSET = {"name": "charset", "in": "query", "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_CHARSET},
            "description": "the answer (the decoder's text, before post-processing) uses only these characters, "
                           "each one the site's model reads; the best reading that does"}
_LENGTH = {"name": "length", "in": "query", "required": False,
           "schema": {"type": "string", "pattern": "^[0-9]+(-[0-9]+)?$"},
           "description": f"N or A-B (1 <= A <= B <= {MAX_LENGTH}): the answer has that many characters, within "
                          "what the site's model reads; the best reading that does"}
_RESTRICT = [_CHARSET, _LENGTH]
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}}
_SAMPLES = {
    "type": "object",
    "required": ["ok", "site", "labelled", "samples", "command"],
    "properties": {
        "ok": {"const": True},
        "site": {"type": "string"},
        "labelled": {"type": "integer", "description": "samples of the folder that have a label"},
        "samples": {"type": "array", "description": "the unlabelled samples, oldest first", "items": {
            "type": "object", "required": ["name", "answer"],
            "properties": {"name": {"type": "string"}, "answer": {"type": ["string", "null"]}}}},
        "command": {"type": "string", "description": "the capserve train command that fine-tunes on the labels"},
    },
}
_CONSOLE = {
    "type": "object",
    "required": ["keys", "samples", "label_site"],
    "properties": {"keys": {"type": "boolean"}, "samples": {"type": "boolean"}, "label_site": {"type": ["string", "null"]}},
}
_SIGNATURE = [
    {"name": "X-Capserve-Timestamp", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "unix seconds; with request signing on (docs/security.md)"},
    {"name": "X-Capserve-Signature", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "hex HMAC-SHA256 of the request; with request signing on"},
]
_RECOGNIZED = {"200": _json(_ref("Result"), "recognized"), **_errors(400, 401, 403, 404, 413, 415, 422, 429, 500, 503)}
_STATUS_ERRORS = _errors(401, 403, 429, 500, 503)


def _status_endpoint(summary: str, schema: dict[str, Any], *extra: int, parameters: list | None = None) -> dict:
    operation: dict[str, Any] = {
        "summary": summary,
        "security": _SECURITY,
        "responses": {"200": _json(schema, "OK"), **_STATUS_ERRORS, **_errors(*extra)},
    }
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


@functools.cache
def openapi_schema() -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "capserve", "version": "1", "description": "Text-captcha recognition for every registered site."},
        "paths": {
            "/recognize/{site}": {
                "get": {
                    "summary": "Recognize a captcha given as base64 in the query string",
                    "security": _SECURITY,
                    "parameters": [
                        _SITE,
                        {"name": "base64Image", "in": "query", "required": True, "schema": {"type": "string"},
                         "description": "the image, base64 (standard or URL-safe, padding optional) or a data URI"},
                        _DETAILS,
                        _KEEP,
                        *_RESTRICT,
                        *_SIGNATURE,
                    ],
                    "responses": _RECOGNIZED,
                },
                "post": {
                    "summary": "Recognize a captcha sent as JSON, a multipart file or raw bytes",
                    "security": _SECURITY,
                    "parameters": [_SITE, _DETAILS, _KEEP, *_RESTRICT, *_SIGNATURE],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"type": "object", "required": ["image"],
                                                            "properties": {"image": {"type": "string"}}}},
                            "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                                               "properties": {"image": {"type": "string", "format": "binary"}}}},
                            "image/*": binary,
                            "application/octet-stream": binary,
                        },
                    },
                    "responses": _RECOGNIZED,
                },
            },
            "/v1/models": _status_endpoint(
                "Every registered site with its state",
                {"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": _ref("Model")}}},
            ),
            "/v1/models/{site}": _status_endpoint("State and metadata of one site", _ref("Model"), 404, parameters=[_SITE]),
            "/v1/plugins": _status_endpoint(
                "Loaded plugins and their steps",
                {"type": "object", "required": ["plugins"], "properties": {"plugins": {"type": "array", "items": _ref("Plugin")}}},
            ),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": _SECURITY,
                    "responses": {
                        "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                        **_STATUS_ERRORS,
                    },
                }
            },
            "/v1/models/{site}/{version}/report/{name}": {"get": {
                "summary": "A file of an entry's training report (only the files its report/ folder holds)",
                "security": _SECURITY,
                "parameters": [_SITE, {"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}}, _NAME],
                "responses": {"200": {"description": "the file", "content": {
                    t: {"schema": {"type": "string"}} for t in ("image/png", "application/json", "text/markdown", "text/plain", "text/csv")}},
                    **_STATUS_ERRORS, **_errors(404)},
            }},
            "/v1/samples/{site}": {
                "get": {
                    "summary": "The site's unlabelled samples and the train command for its labels",
                    "security": _SECURITY,
                    "parameters": [_SITE],
                    "responses": {"200": _json(_SAMPLES, "OK"), **_errors(401, 403, 404, 429)},
                },
                "post": {
                    "summary": "Report a wrong answer: keep the image as a sample with what the model answered",
                    "security": _SECURITY,
                    "parameters": [_SITE, {"name": "answer", "in": "query", "required": False, "schema": {"type": "string"},
                                           "description": "what the model answered"}],
                    "requestBody": {"required": True, "content": {"image/*": binary, "application/octet-stream": binary,
                        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                                           "properties": {"image": {"type": "string", "format": "binary"}}}}}},
                    "responses": {
                        "201": _json({"type": "object", "required": ["ok", "site", "sample"],
                                      "properties": {"ok": {"const": True}, "site": {"type": "string"}, "sample": {"type": "string"}}},
                                     "kept"),
                        **_errors(400, 401, 403, 404, 413, 415, 422, 429, 500),
                    },
                },
            },
            "/v1/samples/{site}/{name}": {
                "get": {
                    "summary": "One sample's image",
                    "security": _SECURITY,
                    "parameters": [_SITE, _NAME],
                    "responses": {"200": {"description": "the image", "content": {"image/*": binary}}, **_errors(401, 403, 404, 429)},
                },
                "put": {
                    "summary": "Label a sample (written to the folder's labels.csv)",
                    "security": _SECURITY,
                    "parameters": [_SITE, _NAME],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}}}},
                    "responses": {
                        "200": _json({"type": "object", "required": ["ok", "name", "label"], "properties": {
                            "ok": {"const": True}, "name": {"type": "string"}, "label": {"type": "string"}}}, "labelled"),
                        **_errors(400, 401, 403, 404, 413, 429),
                    },
                },
            },
            "/v1/console": {"get": {"summary": "What the web console needs first: keys on, collection on, a labelling server's site",
                                     "responses": {"200": _json(_CONSOLE, "OK")}}},
            "/healthz": {"get": {"summary": "The process is up", "responses": {
                "200": _json({"type": "object", "required": ["ok"], "properties": {"ok": {"const": True}}}, "up")}}},
            "/readyz": {"get": {"summary": "Models are loaded", "responses": {
                "200": _json(_READY, "ready"), "503": _json(_READY, "not ready: no site serves yet")}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OK")}}},
        },
        "components": {
            "schemas": {"Error": _ERROR, "Result": _RESULT, "Model": _MODEL, "Version": _VERSION, "Plugin": _PLUGIN},
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "the same API key as a bearer token"},
            },
        },
    }
