"""What the client-protocol routes (``server/twocaptcha.py``, ``server/createtask.py``) share:
the caller's key, the site that answers, recognition with the protocols' hints, and captcha ids.

A captcha id is the answer itself, sealed: ``expiry | text`` encrypted and authenticated under
the server's protocol secret and bound to the caller's key (SIV-style: the tag is the HMAC of
the plaintext and seeds the keystream). Any worker, or any machine with the same secret,
resolves it; nothing is stored. Ids are decimal digits, since some clients check for a number.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import re
import secrets
import time

from capserve.core.decoders import Restriction
from capserve.core.errors import CapserveError, ModelUnavailable, RecognitionFailed, RestrictionUnmet, UnknownSite
from capserve.core.model import Model
from capserve.model_registry.registry import Registry
from capserve.plugins.builtin.text import arithmetic
from capserve.server import offload
from capserve.server.access import Access, ApiKey, Forbidden, Unauthorized
from capserve.server.errors import BadRequest
from capserve.server.settings import Settings

log = logging.getLogger("capserve.protocols")

LAZY_WAIT_SECONDS = 30.0
"""How long a request waits for its site's model to load in lazy mode before answering 503."""


async def serving_model(registry: Registry, site: str) -> Model:
    """The model for ``site``; in lazy mode a first request waits for the load, which runs in
    a thread, so the event loop goes on answering every other request meanwhile."""
    try:
        return registry.get(site)
    except ModelUnavailable:
        future = registry.loading(site)
        if future is None:
            raise
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), LAZY_WAIT_SECONDS)
    except asyncio.TimeoutError:
        raise ModelUnavailable(f"the model for site {site!r} is still loading; try again shortly") from None
    return registry.get(site)


RESULT_TTL = 600
"""Seconds an id resolves after its captcha was solved."""
BALANCE = 1_000_000
"""What the balance calls answer: capserve charges nothing, and some clients check funds first."""
TAG_BYTES = 10
MAX_ID_DIGITS = 400
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


class Unsolvable(CapserveError):
    code = "unsolvable"


class WrongId(CapserveError):
    code = "wrong_id"


class KeyRequired(Unauthorized):
    code = "key_required"


def secret_of(settings: Settings) -> bytes:
    """The protocol secret: the setting, else a random one (``capserve serve`` sets one for all
    its workers, so a process-local one only serves an app built by hand)."""
    return settings.protocol_secret.encode() if settings.protocol_secret else secrets.token_bytes(32)


def caller(access: Access, presented: str | None) -> ApiKey | None:
    """The key of a protocol request: 401-coded errors the protocols map to their own."""
    if access.hmac_secret is not None:
        raise Unauthorized("this server wants signed requests, which these protocols cannot send",
                           code="signature_required")
    if not access.keys:
        return None
    if not presented:
        raise KeyRequired("an API key is required")
    return access.check_presented(presented, None)


def choose_site(given: object, key: ApiKey | None, settings: Settings) -> str:
    """The explicit field, else the key's default site, else the server's."""
    site = given if isinstance(given, str) and given else (key.default_site if key else None) or settings.default_site
    if not site:
        raise UnknownSite("name a site (the 'site' field), or give the key or the server a default site")
    if key is not None and key.sites is not None and site not in key.sites:
        raise Forbidden(f"this API key is not allowed to use site {site[:64]!r}")
    return site


@dataclasses.dataclass(frozen=True)
class Hints:
    """The protocols' hints: ``numeric`` 1 digits, 2 letters, 3 either, 4 both; lengths (0: any);
    ``calc``: the answer is an arithmetic expression's value."""

    numeric: int = 0
    min_len: int = 0
    max_len: int = 0
    calc: bool = False


def hint_number(value: object, name: str) -> int:
    """A hint field as an integer (``true``/``false`` as 1/0); a bad one is a ``bad_parameter``."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        return int(value)
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return int(text == "true")
    if isinstance(value, int) or text.isdigit():
        number = int(text)
        if 0 <= number <= 1000:
            return number
    raise BadRequest(f"{name} must be a small whole number, not {str(value)[:32]!r}", code="bad_parameter")


def fits(text: str, hints: Hints) -> bool:
    if not text or len(text) < hints.min_len or (hints.max_len and len(text) > hints.max_len):
        return False
    digits, letters = any(c.isdigit() for c in text), any(c.isalpha() for c in text)
    return {1: not letters, 2: not digits, 3: not (digits and letters), 4: digits and letters}.get(hints.numeric, True)


def hint_restriction(model: Model, hints: Hints) -> Restriction | None:
    """The restriction of the decoder's text that ``hints`` ask for: ``numeric`` 1 the model's
    digits, 2 its letters, and the lengths within what the model reads; None for a calc hint
    (the text read is an expression, not the answer)."""
    if hints.calc:
        return None
    kind = {1: str.isdigit, 2: str.isalpha}.get(hints.numeric)
    allowed = None if kind is None else "".join(filter(kind, model.spec.charset))
    if allowed == "":
        raise Unsolvable(f"the model reads no {'digits' if hints.numeric == 1 else 'letters'}")
    shortest, longest = model.lengths
    low, high = max(1, shortest, hints.min_len), min(longest, hints.max_len or longest)
    if low > high:
        raise Unsolvable(f"the hints ask for {hints.min_len} to {hints.max_len or 'any number of'} characters, "
                         f"the model reads {shortest} to {longest}")
    return Restriction(allowed, low, high)


async def _read(model: Model, site: str, image: bytes, restrict: Restriction | None = None) -> str:
    try:
        return (await offload.recognize(model, image, restrict)).text
    except RestrictionUnmet as exc:
        raise Unsolvable(exc.message) from None
    except CapserveError:
        raise
    except Exception as exc:
        log.exception("recognition failed for site %r", site)
        raise RecognitionFailed(type(exc).__name__) from None


async def solve(registry, site: str, image: bytes, hints: Hints) -> str:
    """The model's answer for ``image``, shaped by ``hints``; ``Unsolvable`` when it cannot meet them.

    When the best reading misses the hints, the image is read again under their restriction
    (``hint_restriction``): the best reading that meets them."""
    model = await serving_model(registry, site)
    text = await _read(model, site, image)
    if hints.calc:
        text = arithmetic(text, ())
        if not _NUMBER.fullmatch(text):
            raise Unsolvable(f"the model read {text[:64]!r}, not an arithmetic expression")
    if not fits(text, hints):
        restrict = hint_restriction(model, hints)
        if restrict is None or not fits(text := await _read(model, site, image, restrict), hints):
            raise Unsolvable(f"the model's answer {text[:64]!r} does not meet the hints")
    return text


def _tag(secret: bytes, key: ApiKey | None, plain: bytes) -> bytes:
    owner = key.sha256 if key is not None else b""
    return hmac.digest(secret, b"capserve-id\0" + owner + plain, "sha256")[:TAG_BYTES]


def _stream(secret: bytes, tag: bytes, size: int) -> bytes:
    blocks = (hmac.digest(secret, b"capserve-stream\0" + tag + bytes([i]), "sha256") for i in range(-(-size // 32)))
    return b"".join(blocks)[:size]


def _xor(data: bytes, stream: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, stream))


def issue_id(secret: bytes, key: ApiKey | None, text: str, now: float | None = None) -> str:
    """A sealed id holding ``text`` for ``RESULT_TTL`` seconds, for ``key`` only."""
    plain = int((now or time.time()) + RESULT_TTL).to_bytes(5, "big") + text.encode()
    tag = _tag(secret, key, plain)
    blob = b"\x01" + tag + _xor(plain, _stream(secret, tag, len(plain)))
    return str(int.from_bytes(blob, "big"))


def resolve_id(secret: bytes, key: ApiKey | None, captcha_id: object, now: float | None = None) -> str:
    """The text sealed in ``captcha_id``; ``WrongId`` if it is not one of this server's ids for
    this key, or has expired."""
    digits = str(captcha_id).strip()
    if not digits.isdigit() or len(digits) > MAX_ID_DIGITS:
        raise WrongId("the id is not one this server gave out", code="wrong_id_format")
    number = int(digits)
    blob = number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big")
    if blob[0] != 1 or len(blob) < 1 + TAG_BYTES + 5:
        raise WrongId("the id is not one this server gave out")
    tag, sealed = blob[1:1 + TAG_BYTES], blob[1 + TAG_BYTES:]
    plain = _xor(sealed, _stream(secret, tag, len(sealed)))
    if not hmac.compare_digest(tag, _tag(secret, key, plain)):
        raise WrongId("the id is not one this server gave out for this key")
    if int.from_bytes(plain[:5], "big") < (now or time.time()):
        raise WrongId("the id has expired")
    return plain[5:].decode()
