"""Access control, off by default: API keys, optional per-site scopes, HMAC request signing,
per-key rate limits.

Keys come from ``CAPSERVE_API_KEYS`` (comma-separated keys, valid for every site) and/or
``CAPSERVE_API_KEYS_FILE``, a YAML file::

    keys:
      - name: ci-bot                  # shown in logs instead of the key
        sha256: 9f86d0...             # the key's SHA-256 (or `key: <the key>`)
        sites: [demo]                 # optional: only these sites
        rate: 20                      # optional: requests per second (burst: 2x)

A client sends ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Keys are kept only
as SHA-256 digests and compared in constant time; they are never logged.

Signing (``CAPSERVE_HMAC_SECRET``): the client sends ``X-Capserve-Timestamp`` (unix seconds)
and ``X-Capserve-Signature``, the hex HMAC-SHA256 of
``"{timestamp}\\n{METHOD}\\n{path}\\n{query}\\n{sha256(body) hex}"`` under the secret.
A signature is accepted once, within ``CAPSERVE_HMAC_WINDOW`` seconds (default 300).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from capserve.core import yamlfile
from capserve.core.settings import Settings
from capserve.server.errors import HTTPError

if TYPE_CHECKING:
    from starlette.responses import Response


class Unauthorized(HTTPError):
    code, status = "unauthorized", 401


class Forbidden(HTTPError):
    code, status = "forbidden", 403


class RateLimited(HTTPError):
    code, status = "rate_limited", 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


MAX_KEYS_FILE_BYTES = 1024 * 1024


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclasses.dataclass
class ApiKey:
    name: str
    sha256: bytes
    sites: frozenset[str] | None = None
    rate: float | None = None


class TokenBucket:
    """``rate`` requests per second with bursts of ``2 * rate``."""

    def __init__(self, rate: float) -> None:
        self.rate, self.capacity = rate, max(1.0, 2 * rate)
        self.tokens, self.updated = self.capacity, time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0 if a request may go now, else the seconds until one may."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


def load_keys(settings: Settings) -> list[ApiKey]:
    """The keys of ``CAPSERVE_API_KEYS`` and ``CAPSERVE_API_KEYS_FILE``."""
    keys = [
        ApiKey(name=f"env-key-{i + 1}", sha256=digest(k.strip()))
        for i, k in enumerate((settings.api_keys or "").split(","))
        if k.strip()
    ]
    if settings.api_keys_file:
        keys.extend(_keys_from_file(settings.api_keys_file))
    return keys


def _keys_from_file(path: Path) -> list[ApiKey]:
    try:
        doc = yamlfile.read(path, MAX_KEYS_FILE_BYTES) or {}
    except OSError as exc:
        raise ValueError(f"CAPSERVE_API_KEYS_FILE {path}: {exc.strerror or exc}") from None
    except (yamlfile.FileTooLarge, yamlfile.YAMLLimitError, UnicodeDecodeError) as exc:
        raise ValueError(f"CAPSERVE_API_KEYS_FILE {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"CAPSERVE_API_KEYS_FILE {path}: not valid YAML: {exc}") from None
    items = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{path}: must hold a list under 'keys'")
    keys = []
    for i, item in enumerate(items):
        where = f"{path}: keys[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a mapping")
        if "sha256" in item:
            try:
                value = bytes.fromhex(str(item["sha256"]))
            except ValueError:
                raise ValueError(f"{where}: sha256 must be hex") from None
            if len(value) != 32:
                raise ValueError(f"{where}: sha256 must be 64 hex digits")
        elif "key" in item:
            value = digest(str(item["key"]))
        else:
            raise ValueError(f"{where}: needs 'key' or 'sha256'")
        sites = item.get("sites")
        if sites is not None and not (isinstance(sites, list) and all(isinstance(s, str) for s in sites)):
            raise ValueError(f"{where}: sites must be a list of site names")
        rate = item.get("rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0):
            raise ValueError(f"{where}: rate must be a positive number of requests per second")
        keys.append(ApiKey(str(item.get("name", f"key-{i + 1}")), value, frozenset(sites) if sites else None, rate))
    return keys


def signature(secret: bytes, timestamp: str, method: str, path: str, query: str, body: bytes) -> str:
    message = f"{timestamp}\n{method.upper()}\n{path}\n{query}\n{hashlib.sha256(body).hexdigest()}"
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


class Access:
    """Decides whether a request may go on; raises 401, 403 or 429 when not."""

    def __init__(
        self,
        keys: list[ApiKey] | None = None,
        *,
        hmac_secret: bytes | None = None,
        hmac_window: float = 300.0,
        protect_status: bool = True,
    ) -> None:
        self.keys = keys or []
        self.hmac_secret = hmac_secret
        self.hmac_window = hmac_window
        self.protect_status = protect_status
        self._buckets = {k.sha256: TokenBucket(k.rate) for k in self.keys if k.rate}
        self._seen: dict[str, float] = {}
        self._seen_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Access":
        return cls(
            load_keys(settings),
            hmac_secret=settings.hmac_secret.encode() if settings.hmac_secret else None,
            hmac_window=settings.hmac_window,
            protect_status=not settings.public_status,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self.hmac_secret is not None

    def check_key(self, headers, site: str | None) -> ApiKey | None:
        """The caller's key (None when keys are off); ``site`` None means a status endpoint."""
        if not self.keys:
            return None
        presented = headers.get("x-api-key")
        authorization = headers.get("authorization", "")
        if presented is None and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        if not presented:
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'")
        wanted = digest(presented)
        found = None
        for key in self.keys:  # every key is compared, so timing does not tell which one matched
            if hmac.compare_digest(key.sha256, wanted):
                found = key
        if found is None:
            raise Unauthorized("the API key is not valid")
        if site is not None and found.sites is not None and site not in found.sites:
            raise Forbidden(f"this API key is not allowed to use site {site[:64]!r}")
        bucket = self._buckets.get(found.sha256)
        if bucket is not None:
            wait = bucket.take()
            if wait:
                raise RateLimited("too many requests for this API key", wait)
        return found

    def check_signature(self, headers, method: str, path: str, query: str, body: bytes) -> None:
        if self.hmac_secret is None:
            return
        timestamp = headers.get("x-capserve-timestamp", "")
        given = headers.get("x-capserve-signature", "")
        if not timestamp or not given:
            raise Unauthorized("this server wants signed requests (X-Capserve-Timestamp, X-Capserve-Signature)",
                               code="signature_required")
        try:
            age = time.time() - float(timestamp)
        except ValueError:
            raise Unauthorized("X-Capserve-Timestamp must be unix seconds", code="bad_signature") from None
        if not math.isfinite(age) or abs(age) > self.hmac_window:
            raise Unauthorized("the signature has expired (timestamp outside the window)", code="expired_signature")
        expected = signature(self.hmac_secret, timestamp, method, path, query, body)
        if not hmac.compare_digest(expected, given.strip().lower()):
            raise Unauthorized("the signature does not match the request", code="bad_signature")
        now = time.time()
        with self._seen_lock:
            if expected in self._seen:
                raise Unauthorized("this signature was already used", code="replayed_signature")
            self._seen[expected] = now
            if len(self._seen) > 4096:  # forget signatures that can no longer pass the window
                self._seen = {s: t for s, t in self._seen.items() if now - t <= self.hmac_window}


def refuse_status(request) -> "Response | None":
    """The refusal of a status endpoint's request: they need a key when keys are on (unless
    CAPSERVE_PUBLIC_STATUS=1); None when it may go on."""
    from capserve.server.responses import error_response

    access: Access = request.app.state.access
    if access.keys and access.protect_status:
        try:
            access.check_key(request.headers, None)
        except HTTPError as exc:
            return error_response(exc)
    return None
