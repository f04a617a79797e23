"""Request ids: the client's ``X-Request-ID`` when it is a sane token, else a new one."""

from __future__ import annotations

import os
import re

HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(headers) -> str:
    given = headers.get(HEADER, "")
    return given if _SANE.fullmatch(given) else os.urandom(16).hex()
