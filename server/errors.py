"""HTTP's side of errors: the transport's own errors, and the status of every core error.

Core errors (``core/errors.py``) carry only a code; ``status_of`` gives the HTTP status. The
errors only the transport raises (request parsing, access control) carry their status.
"""

from __future__ import annotations

from capserve.core.errors import (
    CapserveError, ImageError, ModelUnavailable, RecognitionFailed, RestrictionUnmet, UnknownSite,
)


class HTTPError(CapserveError):
    """An error of the HTTP transport, with its status."""

    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code=code)
        if status is not None:
            self.status = status


class BadRequest(HTTPError):
    code, status = "bad_request", 400


class MissingImage(BadRequest):
    code = "missing_image"


class BadBase64(BadRequest):
    code = "bad_base64"


class BadJSON(BadRequest):
    code = "bad_json"


class PayloadTooLarge(HTTPError):
    code, status = "body_too_large", 413


class UnsupportedMediaType(HTTPError):
    code, status = "unsupported_media_type", 415


IMAGE_STATUS = {"image_too_large": 413, "unsupported_image_format": 415}
CORE_STATUS: tuple[tuple[type[CapserveError], int], ...] = (
    (UnknownSite, 404),
    (ModelUnavailable, 503),
    (ImageError, 422),
    (RestrictionUnmet, 422),
    (RecognitionFailed, 500),
)


def status_of(error: CapserveError) -> int:
    """The HTTP status of any capserve error."""
    if isinstance(error, HTTPError):
        return error.status
    if isinstance(error, ImageError):
        return IMAGE_STATUS.get(error.code, 422)
    for kind, status in CORE_STATUS:
        if isinstance(error, kind):
            return status
    return 500
