"""Where rate-limit buckets and used signatures are kept, so that the limits hold wherever the
requests land.

A store offers two atomic operations (``Store``) and nothing else; ``server/access.py`` decides
what they mean for a request:

- ``take(bucket, rate, burst)``: take one token from a token bucket that holds up to ``burst``
  and refills at ``rate`` per second; 0 if a token was taken, else the seconds until one is there.
- ``first_use(key, ttl)``: remember ``key`` for ``ttl`` seconds; True unless it was already
  remembered and has not expired.

Three stores, chosen by ``open_store`` from the settings:

- ``MemoryStore``: one process (one worker, the SCF event handler, tests);
- ``SharedStore`` (``limits_shared.py``): every worker of one ``capserve serve --workers N``
  (``CAPSERVE_LIMITS_DIR``);
- ``RedisStore`` (``limits_redis.py``): every process that uses the same Redis
  (``CAPSERVE_REDIS_URL``).

Expiry costs O(1) per request in each: the memory store drops at most two expired entries per
remembered one, oldest first (so it never holds more than what the window can still use plus
a shrinking remainder); the workers' table reuses expired slots; Redis expires its keys
itself. A store that cannot do its work (Redis unreachable, the workers' table not writable or
full) raises ``StoreUnavailable``.

A store is built from settings alone and holds no per-server state, so any process that serves
the app (a ``capserve serve`` worker, an SCF container, a Ray Serve replica) gets the same
limits from ``Access.from_settings`` with ``CAPSERVE_REDIS_URL`` set.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Protocol

from capserve.core.settings import Settings

EXPIRE_PER_CALL = 2
"""Expired entries dropped per remembered key: more than one, so a backlog shrinks."""


class StoreUnavailable(Exception):
    """The store could not answer; the message is for the log, never for the client."""


class Store(Protocol):
    def take(self, bucket: str, rate: float, burst: float) -> float: ...

    def first_use(self, key: str, ttl: float) -> bool: ...

    def close(self) -> None: ...


def refill(tokens: float, updated: float, now: float, rate: float, burst: float) -> float:
    """The tokens of a bucket last seen at ``updated`` with ``tokens``."""
    return min(burst, tokens + max(0.0, now - updated) * rate)


class MemoryStore:
    """Buckets and used keys in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._seen: dict[str, float] = {}  # key -> when it expires
        self._order: collections.deque[tuple[float, str]] = collections.deque()  # (expires, key), oldest first
        self._lock = threading.Lock()

    def take(self, bucket: str, rate: float, burst: float) -> float:
        with self._lock:
            now = self.clock()
            tokens, updated = self._buckets.get(bucket, (burst, now))
            tokens = refill(tokens, updated, now, rate, burst)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            self._buckets[bucket] = (tokens - 1 if wait == 0 else tokens, now)
            return wait

    def first_use(self, key: str, ttl: float) -> bool:
        with self._lock:
            now = self.clock()
            for _ in range(EXPIRE_PER_CALL):
                if not self._order or self._order[0][0] > now:
                    break
                expires, old = self._order.popleft()
                if self._seen.get(old) == expires:  # not remembered again since
                    del self._seen[old]
            if self._seen.get(key, now) > now:
                return False
            self._seen[key] = now + ttl
            self._order.append((now + ttl, key))
            return True

    def __len__(self) -> int:
        """Keys held, expired ones not yet dropped included."""
        return len(self._seen)

    def close(self) -> None:
        pass


def open_store(settings: Settings) -> Store:
    """The store the settings ask for: Redis, else the workers' shared file, else memory."""
    if settings.redis_url:
        from capserve.server.limits_redis import RedisStore

        try:
            return RedisStore(settings.redis_url)
        except ValueError:  # nothing connects yet: only the URL's form is wrong
            raise ValueError("CAPSERVE_REDIS_URL must start with redis://, rediss:// or unix://") from None
    if settings.limits_dir is not None:
        from capserve.server.limits_shared import SharedStore

        return SharedStore(settings.limits_dir / "table")
    return MemoryStore()
