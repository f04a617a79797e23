"""Per-request cost of the rate-limit and replay stores (server/limits*.py), and of the whole
signature check with 100 and with 100,000 signatures remembered.

Stores: ``memory`` (one process), ``shared`` (the table the workers of ``capserve serve
--workers N`` map, made as the server makes it), ``redis`` (a ``redis-server`` this script starts
on a free loopback port, nothing saved; the time includes the loopback round trip).

Columns, in microseconds per call: ``take`` (one token from a bucket with room), ``first_use``
(remember a new signature), and ``Access.check_signature`` (HMAC, window, replay store) of a
fresh signed request against a store that holds 100 signatures (reset to 100 before each
round, so 100 to 100 + n during it) or 100,000 (filled once; it grows by n per round). The shared
tables are worn first (every slot used once and expired, as in a server that has run a while),
so that every check reads all 16 slots of its run, the most it ever reads. Each
round times ``-n`` calls of every cell, the cells in turn (interleaved, so a busy moment of a
shared machine touches all of them alike); a cell's figure is the median over ``--rounds``
rounds, in wall-clock time (Redis works in another process).

    python benchmarks/limits_cost.py [--rounds 25] [-n 300] [--large 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from capserve.server.access import Access, signature  # noqa: E402
from capserve.server.limits import MemoryStore  # noqa: E402
from capserve.server.limits_redis import PREFIX, RedisStore  # noqa: E402
from capserve.server import limits_shared  # noqa: E402
from capserve.server.limits_shared import SIGNATURE, SharedStore  # noqa: E402

SECRET, WINDOW, SMALL = b"benchmark-secret", 300.0, 100


@contextlib.contextmanager
def redis_server(folder: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait()


def shared_table(folder: Path) -> SharedStore:
    """The table as ``capserve serve --workers N`` makes it (memory of this process)."""
    folder.mkdir()
    limits_shared.create(folder)  # held until the script ends
    return SharedStore(folder / "table")


def wear(store: SharedStore) -> None:
    """Every slot used once and expired, as in a server that has run for a while: each check then
    reads the whole run of slots from its place (a fresh table stops at the first unused one)."""
    store.first_use("open", 1)  # maps the table
    slots = store._buckets_at // SIGNATURE.size
    store._map[: store._buckets_at] = SIGNATURE.pack(1, 1.0) * slots


def fill(store, count: int) -> None:
    """``count`` remembered signatures, as the store would hold them."""
    keys = [secrets.token_hex(32) for _ in range(count)]
    if isinstance(store, RedisStore):
        pipe = store.client.pipeline(transaction=False)
        for key in keys:
            pipe.set(PREFIX + "sig:" + key, b"1", nx=True, px=int(WINDOW * 2000))
        pipe.execute()
    else:
        for key in keys:
            store.first_use(key, 2 * WINDOW)


def reset(store, count: int) -> None:
    if isinstance(store, RedisStore):
        store.client.flushdb()
    elif isinstance(store, SharedStore):
        wear(store)
    else:
        store._seen.clear()
        store._order.clear()
    fill(store, count)


def signed_requests(n: int) -> list[dict[str, str]]:
    timestamp = str(int(time.time()))
    out = []
    for i in range(n):
        query = f"base64Image=x&n={secrets.token_hex(8)}"
        out.append({"query": query, "x-capserve-timestamp": timestamp,
                    "x-capserve-signature": signature(SECRET, timestamp, "GET", "/recognize/demo", query, b"")})
    return out


def per_call(function: Callable[[int], None], n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        function(i)
    return (time.perf_counter() - started) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("-n", type=int, default=300, help="calls per cell and round")
    parser.add_argument("--large", type=int, default=100_000, help="signatures remembered in the large store")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("needs redis-server (apt-get install redis-server)")

    with tempfile.TemporaryDirectory(prefix="capserve-limits-bench-") as tmp, redis_server(Path(tmp)) as url:
        stores = {
            "memory": (MemoryStore(), MemoryStore(), MemoryStore()),
            "shared": tuple(shared_table(Path(tmp) / f"limits-{i}") for i in range(3)),
            "redis": tuple(RedisStore(f"{url}/{i}") for i in range(3)),
        }
        for name, (plain, small, large) in stores.items():
            reset(plain, 0)
            reset(large, args.large)
        cells: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for _, small, _ in stores.values():  # first, so that the cells that follow see a settled machine
                reset(small, SMALL)
            for name, (plain, small, large) in stores.items():
                keys = [secrets.token_hex(32) for _ in range(args.n)]
                # a bucket that always has room: the cost of a request let through
                cells.setdefault((name, "take"), []).append(
                    per_call(lambda i: plain.take("bench", 1e9, 1e9), args.n))
                cells.setdefault((name, "first_use"), []).append(
                    per_call(lambda i: plain.first_use(keys[i], WINDOW), args.n))
                for label, store in (("check_small", small), ("check_large", large)):
                    access = Access(hmac_secret=SECRET, hmac_window=WINDOW, store=store)
                    requests = signed_requests(args.n)
                    cells.setdefault((name, label), []).append(per_call(
                        lambda i: access.check_signature(requests[i], "GET", "/recognize/demo", requests[i]["query"],
                                                         b""), args.n))
        held = {name: len(large) if not isinstance(large, RedisStore) else large.client.dbsize()
                for name, (_, _, large) in stores.items()}
        for trio in stores.values():
            for store in trio:
                store.close()

    median = {cell: statistics.median(values) for cell, values in cells.items()}
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"{args.rounds} rounds of {args.n} calls per cell, medians in us per call (wall clock)\n")
    print(f"| store | take | first_use | check_signature, {SMALL} held | check_signature, {args.large:,} held "
          "| ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in stores:
        small, large = median[(name, "check_small")], median[(name, "check_large")]
        print(f"| {name} | {median[(name, 'take')]:.1f} | {median[(name, 'first_use')]:.1f} | {small:.1f} | "
              f"{large:.1f} (held at the end: {held[name]:,}) | {large / small:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
