"""The limits of one machine's workers: an SQLite file in WAL mode in the folder that
``capserve serve --workers N`` makes for them (``CAPSERVE_LIMITS_DIR``).

Each operation is one SQLite statement or transaction, so it is atomic across processes:
a bucket is taken with one upsert that returns whether a token was there, a signature is
remembered with an upsert that changes nothing when it is already there and unexpired.
Expiry drops the two oldest expired signatures (an index on the expiry time) in the same
transaction as each new one. The file lives as long as the server (it is in a temporary
folder), so nothing is synced to disk (``synchronous=OFF``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from capserve.server.limits import EXPIRE_PER_CALL, StoreUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (id TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL,
                                    granted INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_expiry ON seen (expires);
"""

# SET expressions see the row as it was, so the refilled count is spelled out in each.
REFILLED = "min(:burst, tokens + max(0, :now - updated) * :rate)"
TAKE = f"""
INSERT INTO buckets (id, tokens, updated, granted) VALUES (:id, :burst - 1, :now, 1)
ON CONFLICT (id) DO UPDATE SET
    tokens = {REFILLED} - ({REFILLED} >= 1), granted = ({REFILLED} >= 1), updated = :now
RETURNING tokens, granted
"""
EXPIRE = f"""
DELETE FROM seen WHERE key IN (SELECT key FROM seen WHERE expires <= :now ORDER BY expires LIMIT {EXPIRE_PER_CALL})
"""
REMEMBER = """
INSERT INTO seen (key, expires) VALUES (:key, :expires)
ON CONFLICT (key) DO UPDATE SET expires = excluded.expires WHERE seen.expires <= :now
"""
BUSY_TIMEOUT_S = 5.0
log = logging.getLogger("capserve.limits")


class SQLiteStore:
    """Buckets and used keys in the SQLite file ``path``, shared by every process that opens it."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path, self.clock = path, clock
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:  # opened on first use: in the worker, never in the supervisor
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    def take(self, bucket: str, rate: float, burst: float) -> float:
        with self._lock:
            try:
                tokens, granted = self._connection().execute(
                    TAKE, {"id": bucket, "rate": rate, "burst": burst, "now": self.clock()}).fetchone()
            except sqlite3.Error as exc:
                raise _unavailable(self.path, exc) from None
        return 0.0 if granted else (1 - tokens) / rate

    def first_use(self, key: str, ttl: float) -> bool:
        now = self.clock()
        with self._lock:
            try:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")  # the write lock first: no other process between the two
                with db:  # commits, or rolls back on an error
                    db.execute(EXPIRE, {"now": now})
                    changed = db.execute(REMEMBER, {"key": key, "expires": now + ttl, "now": now}).rowcount
            except sqlite3.Error as exc:
                raise _unavailable(self.path, exc) from None
        return changed == 1

    def __len__(self) -> int:
        with self._lock:
            return self._connection().execute("SELECT count(*) FROM seen").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _unavailable(path: Path, exc: sqlite3.Error) -> StoreUnavailable:
    log.warning("the limits file %s failed: %s", path, exc)
    return StoreUnavailable(f"the limits file {path}: {exc}")
