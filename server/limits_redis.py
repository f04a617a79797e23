"""The limits of a whole deployment: a Redis server every machine, SCF container or replica
reaches (``CAPSERVE_REDIS_URL``).

A bucket is taken by a Lua script (atomic in Redis, on Redis's own clock, so the machines'
clocks need not agree); its hash expires once it would be full again. A signature is
remembered with ``SET NX PX``: the answer says whether it was new, and Redis drops it when
it can no longer pass the window. Keys are ``capserve:rate:<key digest>`` and
``capserve:sig:<signature>``; give capserve a database of its own (``redis://host:6379/1``)
when the server holds other data.

When Redis cannot be reached (or answers an error) the call raises ``StoreUnavailable`` and
the store does not try again for ``PAUSE_S`` seconds, raising at once meanwhile: a server
whose Redis is gone answers at once instead of waiting out a timeout on every request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from capserve.server.limits import StoreUnavailable

log = logging.getLogger("capserve.limits")

CONNECT_TIMEOUT_S = 0.25
COMMAND_TIMEOUT_S = 0.5
PAUSE_S = 2.0
PREFIX = "capserve:"

TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens, updated = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisStore:
    """Buckets and used keys in the Redis server at ``url``."""

    def __init__(self, url: str) -> None:
        # ValueError for a URL that is not redis://, rediss:// or unix://; nothing connects yet.
        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),  # once more on a fresh connection, after Redis restarted
        )
        kwargs = self.client.connection_pool.connection_kwargs
        self.where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"  # never the password
        self._take = self.client.register_script(TAKE)
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def take(self, bucket: str, rate: float, burst: float) -> float:
        return float(self._call(self._take, keys=[PREFIX + "rate:" + bucket], args=[repr(rate), repr(burst)]))

    def first_use(self, key: str, ttl: float) -> bool:
        return bool(self._call(self.client.set, PREFIX + "sig:" + key, b"1", nx=True, px=max(1, math.ceil(ttl * 1000))))

    def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() < self._paused_until:
            raise StoreUnavailable(f"Redis at {self.where} failed less than {PAUSE_S:g} s ago")
        try:
            return function(*args, **kwargs)
        except redis.RedisError as exc:
            with self._lock:
                first = time.monotonic() >= self._paused_until
                self._paused_until = time.monotonic() + PAUSE_S
            if first:
                log.warning("Redis at %s failed (%s: %s); next try in %g s", self.where, type(exc).__name__, exc,
                            PAUSE_S)
            raise StoreUnavailable(f"Redis at {self.where}: {type(exc).__name__}") from None

    def close(self) -> None:
        self.client.close()
