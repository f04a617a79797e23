"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``."""

from __future__ import annotations

import functools
from typing import Any

from capserve.core.spec import SITE_PATTERN

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
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "missing image, bad base64 or bad JSON",
        404: "unknown site",
        413: "body or image too large",
        415: "unsupported content type or image format",
        422: "not a decodable image",
        503: "the site's model is loading",
    }
    return {str(s): _json({"$ref": "#/components/schemas/Error"}, text[s]) for s in statuses}


_SITE = {"name": "site", "in": "path", "required": True, "schema": {"type": "string", "pattern": SITE_PATTERN.pattern}}
_DETAILS = {"name": "details", "in": "query", "required": False, "schema": {"type": "boolean"},
            "description": "also answer raw_text, characters (with their probabilities) and timings_ms"}
_RECOGNIZE_ERRORS = _errors(400, 404, 413, 415, 422, 503)


@functools.cache
def openapi_schema() -> dict[str, Any]:
    plain = {"200": _json({"type": "object"}, "OK")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "capserve", "version": "1", "description": "Text-captcha recognition for every registered site."},
        "paths": {
            "/recognize/{site}": {
                "get": {
                    "summary": "Recognize a captcha given as base64 in the query string",
                    "parameters": [
                        _SITE,
                        {"name": "base64Image", "in": "query", "required": True, "schema": {"type": "string"},
                         "description": "the image, base64 (standard or URL-safe, padding optional) or a data URI"},
                        _DETAILS,
                    ],
                    "responses": {"200": _json({"$ref": "#/components/schemas/Result"}, "recognized"), **_RECOGNIZE_ERRORS},
                },
                "post": {
                    "summary": "Recognize a captcha sent as JSON, a multipart file or raw bytes",
                    "parameters": [_SITE, _DETAILS],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"type": "object", "required": ["image"],
                                                            "properties": {"image": {"type": "string"}}}},
                            "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                                               "properties": {"image": {"type": "string", "format": "binary"}}}},
                            "image/*": {"schema": {"type": "string", "format": "binary"}},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "responses": {"200": _json({"$ref": "#/components/schemas/Result"}, "recognized"), **_RECOGNIZE_ERRORS},
                },
            },
            "/v1/models": {"get": {"summary": "Every registered site with its status", "responses": plain}},
            "/v1/models/{site}": {
                "get": {"summary": "Status and metadata of one site", "parameters": [_SITE],
                        "responses": {**plain, **_errors(404)}}
            },
            "/v1/plugins": {"get": {"summary": "Loaded plugins and their steps", "responses": plain}},
            "/healthz": {"get": {"summary": "The process is up", "responses": plain}},
            "/readyz": {"get": {"summary": "Models are loaded", "responses": {**plain, "503": _json({"type": "object"}, "not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": {"Error": _ERROR, "Result": _RESULT}},
    }
