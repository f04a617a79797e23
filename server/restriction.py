"""``?charset=`` and ``?length=``: the request's restriction of the answer, checked against
the site's model (``400 bad_parameter`` for anything it cannot mean); ``capserve predict``
checks its ``--charset`` and ``--length`` the same way, and the protocols' hints become the
same ``Restriction`` (``solving.hint_restriction``).

The decoder then finds the best reading that meets it (``core/decoders.py``); a request
without either parameter pays two substring tests of its query string.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from capserve.core.decoders import Restriction
from capserve.core.model import Model
from capserve.server.errors import BadRequest

MAX_CHARSET = 1024
"""The longest ``charset`` accepted (characters)."""
MAX_LENGTH = 64
"""The largest ``length`` accepted."""
_LENGTH = re.compile(r"\s*(\d{1,3})\s*(?:-\s*(\d{1,3})\s*)?")


def bad(message: str) -> BadRequest:
    return BadRequest(message, code="bad_parameter")


def parse_length(value: str) -> tuple[int, int]:
    """``N`` or ``A-B`` (1 <= A <= B <= ``MAX_LENGTH``) as (A, B)."""
    match = _LENGTH.fullmatch(value)
    low, high = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
    if not 1 <= low <= high <= MAX_LENGTH:
        raise bad(f"length must be N or A-B with 1 <= A <= B <= {MAX_LENGTH}, not {value[:32]!r}")
    return low, high


def restriction(model: Model, charset: str | None, length: str | None) -> Restriction | None:
    """The restriction ``charset`` and ``length`` (either may be None) ask of ``model``'s
    answer, None when both are; ``bad_parameter`` for one it cannot meet whatever the image."""
    if charset is None and length is None:
        return None
    spec = model.spec
    if charset is not None:
        if not charset or len(charset) > MAX_CHARSET:
            raise bad(f"charset must hold 1 to {MAX_CHARSET} characters, not {len(charset)}")
        unread = [c for c in dict.fromkeys(charset) if c not in spec.charset]
        if unread:
            more = f" and {len(unread) - 5} more" if len(unread) > 5 else ""
            raise bad(f"the model of site {spec.site!r} cannot read {', '.join(map(repr, unread[:5]))}{more}")
    shortest, longest = model.lengths
    if length is None:
        return Restriction(charset, shortest, longest)
    low, high = parse_length(length)
    fixed = spec.decoder == "fixed"
    if not low <= longest <= high if fixed else high > longest:
        reads = f"exactly {longest}" if fixed else f"at most {longest}"
        raise bad(f"length {length.strip()} cannot be met: the model of site {spec.site!r} reads {reads} characters")
    return Restriction(charset, low, high)


def requested(request: Request, model: Model) -> Restriction | None:
    """The request's restriction, or None without ``charset`` and ``length`` (the query string
    is parsed only if one of the names occurs in it)."""
    query = request.scope["query_string"]
    if b"charset" not in query and b"length" not in query:
        return None
    params = request.query_params
    return restriction(model, params.get("charset"), params.get("length"))
