"""A signed request's time over HTTP while the server remembers 100 or 100,000 used signatures.

    python benchmarks/signed_http.py [--workers 1] [--large 100000] [--rounds 9] [-n 300]

Two ``capserve serve`` processes with signing on (``CAPSERVE_HMAC_SECRET``) and the bundled
registry: one is sent 100 signed requests, the other ``--large``, each with a query of its
own (a nonce; the image is not a valid one, so they are cheap, but each one's signature is
checked and remembered before the image is read). Then each round sends ``-n`` signed
recognitions of the demo PNG, one after another on one kept-alive connection, to each server
in turn (the order alternating); a server's figures are the medians over rounds of the round's
median time per request and of its CPU time per request (the server's processes, from /proc). ``--workers 2`` measures the workers' shared table, 1 the memory of
one process (``benchmarks/limits_cost.py`` has each store's own cost in microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.load_common import REPO, Server, b64, capserve_argv, cpu_seconds, free_port  # noqa: E402
from capserve.model_registry.registry import BUNDLED  # noqa: E402
from capserve.server.access import signature  # noqa: E402

SECRET = "benchmark-secret"
DEMO = (REPO / "docs" / "examples" / "demo-7kp3.png").read_bytes()


def signed(query: str) -> tuple[str, dict[str, str]]:
    timestamp = str(int(time.time()))
    sig = signature(SECRET.encode(), timestamp, "GET", "/recognize/demo", query, b"")
    return f"/recognize/demo?{query}", {"X-Capserve-Timestamp": timestamp, "X-Capserve-Signature": sig}


async def fill(base: str, count: int, tag: str, connections: int = 16) -> None:
    """``count`` signed requests, each remembered by the server."""
    numbers = iter(range(count))

    async def sender(client: httpx.AsyncClient) -> None:
        for i in numbers:
            url, headers = signed(f"base64Image=AAAA&nonce={tag}-{i}")
            r = await client.get(url, headers=headers)
            if r.status_code != 422:  # the signature passed; the image is not one
                raise RuntimeError(f"fill request answered {r.status_code}: {r.text[:200]}")

    async with httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=connections)) as c:
        await asyncio.gather(*(sender(c) for _ in range(connections)))


def round_ms(client: httpx.Client, pid: int, n: int, tag: str) -> tuple[float, float]:
    """The median time of a request, and the server's CPU per request, in ms."""
    times = []
    image = b64(DEMO)
    cpu = cpu_seconds(pid)
    for i in range(n):
        url, headers = signed(f"base64Image={image}&nonce={tag}-{i}")
        t0 = time.perf_counter()
        r = client.get(url, headers=headers)
        times.append((time.perf_counter() - t0) * 1e3)
        if r.status_code != 200:
            raise RuntimeError(f"answered {r.status_code}: {r.text[:200]}")
    return statistics.median(times), (cpu_seconds(pid) - cpu) * 1e3 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("-n", type=int, default=300)
    args = parser.parse_args()
    env = {"CAPSERVE_HMAC_SECRET": SECRET}
    sizes = (100, args.large)
    servers = {}
    for size in sizes:
        port = free_port()
        servers[size] = Server(capserve_argv(BUNDLED, port, args.workers), port, env=env).start()
    try:
        for size, server in servers.items():
            server.wait_ready()
            t0 = time.perf_counter()
            asyncio.run(fill(server.base, size, f"fill{size}"))
            print(f"{size:,} signatures remembered in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        medians: dict[int, list[tuple[float, float]]] = {size: [] for size in sizes}
        clients = {size: httpx.Client(base_url=server.base, timeout=30) for size, server in servers.items()}
        for r in range(args.rounds):
            for size in (sizes if r % 2 == 0 else sizes[::-1]):
                medians[size].append(round_ms(clients[size], servers[size].proc.pid, args.n, f"r{r}-{size}"))
    finally:
        for server in servers.values():
            server.stop()
    print(f"{os.cpu_count()} cores, {args.workers} worker(s), {args.rounds} interleaved rounds of {args.n} signed "
          "recognitions of the demo PNG, one connection; medians over rounds\n")
    print("| signatures remembered | ms per request (client) | server CPU ms per request | CPU by round |")
    print("| ---: | ---: | ---: | --- |")
    figures = {}
    for size in sizes:
        wall, cpu = (statistics.median(m[i] for m in medians[size]) for i in (0, 1))
        figures[size] = wall, cpu
        print(f"| {size:,} | {wall:.3f} | {cpu:.3f} | {', '.join(f'{m[1]:.3f}' for m in medians[size])} |")
    (wall_s, cpu_s), (wall_l, cpu_l) = figures[sizes[0]], figures[sizes[1]]
    print(f"\nratio {args.large:,} / 100: {wall_l / wall_s:.3f} (client), {cpu_l / cpu_s:.3f} (server CPU)")


if __name__ == "__main__":
    main()
