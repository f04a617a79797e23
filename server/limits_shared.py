"""The limits of one machine's workers: two hash tables that every worker maps into its memory,
linked in the folder ``capserve serve --workers N`` makes for them (``CAPSERVE_LIMITS_DIR``).

Each table is open addressing over fixed slots: a key's 64-bit fingerprint (BLAKE2b) picks its
first slot, and it lives in one of the ``PROBES`` slots from there, read with one ``struct``
call. A signature's slot whose time has passed counts as free, so nothing is ever swept:
expiry costs nothing, and an operation reads ``PROBES`` slots whatever the table holds. Every
operation runs under ``flock`` on the file (and a thread lock: ``flock`` does not tell one
process's threads apart).

The table is memory of the process that starts the workers (``create``), so that it is never
written back to a disk: on a disk file every write that follows a write-back faults, which made
a check 3 times slower (BENCHMARKS.md). Without ``memfd_create`` it is a plain file.

- signatures: 4,194,304 slots of (fingerprint, expires), 64 MiB, allocated as they are written
  (a plain file reserves its blocks when it is made, so that a full disk is an error at once,
  never a SIGBUS later). At 3,000 signed requests per second and a 300 s window a fifth of
  them are in use. When every slot a new signature may use is taken, the store raises
  ``StoreUnavailable`` (that request is refused) rather than forget a signature that could
  still be replayed.
- buckets: 16,384 slots of (fingerprint, tokens, updated), one per rate-limited key.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
import threading
import time
from pathlib import Path
from typing import Callable

from capserve.server.limits import StoreUnavailable, refill

SIGNATURES, BUCKETS, PROBES = 1 << 22, 1 << 14, 16
SIGNATURE_RUN = struct.Struct("<" + "Qd" * PROBES)  # PROBES x (fingerprint, expires)
BUCKET_RUN = struct.Struct("<" + "Qdd" * PROBES)  # PROBES x (fingerprint, tokens, updated)
SIGNATURE = struct.Struct("<Qd")
BUCKET = struct.Struct("<Qdd")
log = logging.getLogger("capserve.limits")


def fingerprint(key: str) -> int:
    """64 bits of the key's hash, never 0 (0 marks a slot never used)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") or 1


class SharedStore:
    """Buckets and used keys in the file ``path``, shared by every process that maps it."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time, *, signatures: int = SIGNATURES) -> None:
        self.path, self.clock, self.signatures = path, clock, signatures
        # PROBES spare slots after each table, so that a run of slots never wraps around
        self._buckets_at = (signatures + PROBES) * SIGNATURE.size
        self._size = self._buckets_at + (BUCKETS + PROBES) * BUCKET.size
        self._map: mmap.mmap | None = None
        self._fd = -1
        self._lock = threading.Lock()

    def take(self, bucket: str, rate: float, burst: float) -> float:
        mark = fingerprint(bucket)
        first = self._buckets_at + mark % BUCKETS * BUCKET.size
        with self._lock:
            table = self._locked()
            try:
                now = self.clock()
                run = BUCKET_RUN.unpack_from(table, first)
                for i in range(0, 3 * PROBES, 3):  # a bucket keeps its slot while the server runs
                    if run[i] in (mark, 0):
                        break
                else:
                    raise _full(self.path, "buckets")
                tokens = refill(run[i + 1], run[i + 2], now, rate, burst) if run[i] else burst
                wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
                BUCKET.pack_into(table, first + i // 3 * BUCKET.size, mark, tokens - 1 if wait == 0 else tokens, now)
                return wait
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def first_use(self, key: str, ttl: float) -> bool:
        mark = fingerprint(key)
        first = mark % self.signatures * SIGNATURE.size
        with self._lock:
            table = self._locked()
            try:
                now = self.clock()
                run = SIGNATURE_RUN.unpack_from(table, first)
                free = None
                for i in range(0, 2 * PROBES, 2):
                    if run[i + 1] > now:
                        if run[i] == mark:
                            return False
                    elif free is None:
                        free = i
                    if run[i] == 0:  # never used: the key is in no later slot
                        break
                if free is None:
                    raise _full(self.path, "signatures")
                SIGNATURE.pack_into(table, first + free // 2 * SIGNATURE.size, mark, now + ttl)
                return True
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _locked(self) -> mmap.mmap:
        """The mapped file (opened on first use: in the worker, never in the supervisor), locked."""
        try:
            if self._map is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    if os.fstat(fd).st_size < self._size:  # a plain file: reserve its blocks
                        os.posix_fallocate(fd, 0, self._size)  # zeros: every slot never used
                    self._map = mmap.mmap(fd, self._size)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as exc:
            log.warning("the limits file %s failed: %s", self.path, exc)
            raise StoreUnavailable(f"the limits file {self.path}: {exc}") from None
        return self._map

    def __len__(self) -> int:
        """Signatures held and not expired."""
        with self._lock:
            table = self._locked()
            try:
                now = self.clock()
                return sum(1 for _, expires in SIGNATURE.iter_unpack(table[: self._buckets_at]) if expires > now)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._map is not None:
                self._map.close()
                os.close(self._fd)
                self._map, self._fd = None, -1


def create(folder: Path) -> int | None:
    """Called once by the process that starts the workers: the table as memory of its own
    (``memfd_create``: never written back to a disk, freed with the last process that maps it),
    linked as ``folder / "table"`` for the workers to open (the link leads to this process's
    ``/proc/PID/fd``). Returns the descriptor to close when the workers are gone; None where
    there is no ``memfd_create`` (or it is refused), and the first worker makes a plain file
    there instead."""
    if not hasattr(os, "memfd_create") or not Path(f"/proc/{os.getpid()}/fd").is_dir():
        return None
    try:
        fd = os.memfd_create("capserve-limits")
    except OSError:  # refused by a sandbox
        return None
    os.ftruncate(fd, SharedStore(folder / "table")._size)  # sparse: pages exist once written
    (folder / "table").symlink_to(f"/proc/{os.getpid()}/fd/{fd}")
    return fd


def _full(path: Path, what: str) -> StoreUnavailable:
    log.warning("the limits file %s has no free slot for %s", path, what)
    return StoreUnavailable(f"the limits file {path}: no free slot for {what}")
