"""Errors of the recognition core, each with a machine-readable code and an HTTP status.

The HTTP app and the SCF adapter turn these into ``{"ok": false, "error": {...}}`` answers;
nothing outside this module decides which status an error gets.
"""

from __future__ import annotations


class CapserveError(Exception):
    """Base of every error a client can cause or see."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class UnknownSite(CapserveError):
    code, status = "unknown_site", 404


class ModelUnavailable(CapserveError):
    code, status = "model_unavailable", 503


class BadRequest(CapserveError):
    code, status = "bad_request", 400


class MissingImage(BadRequest):
    code = "missing_image"


class BadBase64(BadRequest):
    code = "bad_base64"


class BadJSON(BadRequest):
    code = "bad_json"


class PayloadTooLarge(CapserveError):
    code, status = "body_too_large", 413


class UnsupportedMediaType(CapserveError):
    code, status = "unsupported_media_type", 415


class ImageError(CapserveError):
    """The bytes are not an image this server can read (or one over its limits)."""

    code, status = "bad_image", 422


class RecognitionFailed(CapserveError):
    """The model or a plugin raised while handling one request."""

    code, status = "recognition_failed", 500
