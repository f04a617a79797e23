"""Errors of the recognition core, each with a machine-readable code.

The core says what went wrong, never which status it is: each transport maps these codes to
its own answers (``server/errors.py`` for HTTP, and so for the SCF adapter that calls the same
app; the client-protocol routes to their protocols' error strings).
"""

from __future__ import annotations


class CapserveError(Exception):
    """Base of every error a client can cause or see."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class UnknownSite(CapserveError):
    code = "unknown_site"


class ModelUnavailable(CapserveError):
    code = "model_unavailable"


class ImageError(CapserveError):
    """The bytes are not an image this server can read, or one over its limits. Codes:
    ``bad_image``, ``empty_image``, ``too_many_frames``, ``image_too_large``,
    ``unsupported_image_format``."""

    code = "bad_image"


class RecognitionFailed(CapserveError):
    """The model or a plugin raised while handling one request."""

    code = "recognition_failed"


class RestrictionUnmet(CapserveError):
    """No reading of the image meets the request's restriction (charset and length)."""

    code = "restriction_unmet"
