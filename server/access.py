"""Access control, off by default: API keys, optional per-site scopes, HMAC request signing,
per-key rate limits.

Keys come from ``CAPSERVE_API_KEYS`` (comma-separated keys, valid for every site) and/or
``CAPSERVE_API_KEYS_FILE``, a YAML file::

    keys:
      - name: ci-bot                  # shown in logs instead of the key
        sha256: 9f86d0...             # the key's SHA-256 (or `key: <the key>`)
        sites: [demo]                 # optional: only these sites
        rate: 20                      # optional: requests per second (burst: 2x)
        default_site: demo            # optional: the site the 2captcha / createTask routes use
                                      # when a request names none (docs/clients.md)

A client sends ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Keys are kept only
as SHA-256 digests and compared in constant time; they are never logged.

Signing (``CAPSERVE_HMAC_SECRET``): the client sends ``X-Capserve-Timestamp`` (unix seconds)
and ``X-Capserve-Signature``, the hex HMAC-SHA256 of
``"{timestamp}\\n{METHOD}\\n{path}\\n{query}\\n{sha256(body) hex}"`` under the secret.
A signature is accepted once, within ``CAPSERVE_HMAC_WINDOW`` seconds (default 300).

Buckets and used signatures live in a store (``server/limits.py``): this process's memory,
the file the workers of one ``capserve serve`` share, or Redis for a whole deployment.
When the store cannot answer, a signed request is refused (503 ``limits_unavailable``) and a
rate-limited key is refused or let through as ``CAPSERVE_REDIS_FAIL`` says.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from capserve.core import yamlfile
from capserve.core.settings import Settings
from capserve.server.errors import HTTPError
from capserve.server.limits import MemoryStore, Store, StoreUnavailable, open_store

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


class LimitsUnavailable(HTTPError):
    code, status = "limits_unavailable", 503
    retry_after = 1


MAX_KEYS_FILE_BYTES = 1024 * 1024


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclasses.dataclass
class ApiKey:
    name: str
    sha256: bytes
    sites: frozenset[str] | None = None
    rate: float | None = None
    default_site: str | None = None


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
        default_site = item.get("default_site")
        if default_site is not None and not isinstance(default_site, str):
            raise ValueError(f"{where}: default_site must be a site name")
        keys.append(ApiKey(str(item.get("name", f"key-{i + 1}")), value, frozenset(sites) if sites else None, rate,
                           default_site))
    return keys


def signature(secret: bytes, timestamp: str, method: str, path: str, query: str, body: bytes) -> str:
    message = f"{timestamp}\n{method.upper()}\n{path}\n{query}\n{hashlib.sha256(body).hexdigest()}"
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


class Access:
    """Decides whether a request may go on; raises 401, 403, 429 or 503 when not."""

    def __init__(
        self,
        keys: list[ApiKey] | None = None,
        *,
        hmac_secret: bytes | None = None,
        hmac_window: float = 300.0,
        protect_status: bool = True,
        store: Store | None = None,
        fail_open: bool = False,
    ) -> None:
        """``store`` keeps buckets and used signatures (this process's memory when None);
        ``fail_open`` lets rate-limited requests through while it cannot answer."""
        self.keys = keys or []
        self.hmac_secret = hmac_secret
        self.hmac_window = hmac_window
        self.protect_status = protect_status
        self.store = store if store is not None else MemoryStore()
        self.fail_open = fail_open

    @classmethod
    def from_settings(cls, settings: Settings) -> "Access":
        return cls(
            load_keys(settings),
            hmac_secret=settings.hmac_secret.encode() if settings.hmac_secret else None,
            hmac_window=settings.hmac_window,
            protect_status=not settings.public_status,
            store=open_store(settings),
            fail_open=settings.redis_fail == "open",
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
        return self.check_presented(presented, site)

    def check_presented(self, presented: str, site: str | None) -> ApiKey | None:
        """The key ``presented`` however it came (a header, a client protocol's field): the
        same checks as ``check_key``, for a non-empty key."""
        if not self.keys:
            return None
        wanted = digest(presented)
        found = None
        for key in self.keys:  # every key is compared, so timing does not tell which one matched
            if hmac.compare_digest(key.sha256, wanted):
                found = key
        if found is None:
            raise Unauthorized("the API key is not valid")
        if site is not None and found.sites is not None and site not in found.sites:
            raise Forbidden(f"this API key is not allowed to use site {site[:64]!r}")
        if found.rate:
            wait = self._take(found)
            if wait:
                raise RateLimited("too many requests for this API key", wait)
        return found

    def _take(self, key: ApiKey) -> float:
        """``rate`` requests per second with bursts of ``2 * rate``, for every process of the store."""
        try:
            return self.store.take(key.sha256.hex(), key.rate, max(1.0, 2 * key.rate))
        except StoreUnavailable:  # logged by the store
            if self.fail_open:
                return 0.0
            raise LimitsUnavailable("the rate limits cannot be checked right now; try again shortly") from None

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
        # Remembered for as long as the timestamp stays inside the window (up to twice the window).
        ttl = float(timestamp) + self.hmac_window - time.time() + 1
        try:
            first = self.store.first_use(expected, ttl)
        except StoreUnavailable:
            raise LimitsUnavailable("signed requests cannot be checked for replays right now; try again shortly") \
                from None
        if not first:
            raise Unauthorized("this signature was already used", code="replayed_signature")


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
