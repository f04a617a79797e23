"""Does the console cost ``/recognize`` anything? The same ASGI call of the app with the
console's routes and without them, in process (no sockets), in interleaved rounds. With
``--before FILE`` the comparison is with the app of another ``server/app.py`` (the one from
before the console: ``git show <commit>:server/app.py > /tmp/app_before.py``), its
``/recognize`` handler included, over this tree's other modules.

    python benchmarks/console_overhead.py [--rounds 15] [-n 500] [--before /tmp/app_before.py]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import base64
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.routing import Router  # noqa: E402

from capserve.model_registry.registry import Registry  # noqa: E402
from capserve.server import console  # noqa: E402
from capserve.server.access import Access  # noqa: E402
from capserve.server.app import ROUTES, create_app  # noqa: E402
from capserve.server.settings import Settings  # noqa: E402

IMAGE = (Path(__file__).resolve().parent.parent / "docs" / "examples" / "demo-7kp3.png").read_bytes()


def apps(registry: Registry, before: Path | None):
    with_console = create_app(registry, Settings(), access=Access(), watch=False)
    if before is not None:
        spec = importlib.util.spec_from_file_location("app_before", before)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return {"with console": with_console, "without console": module.create_app(
            registry, Settings(), access=Access(), watch=False)}
    without = create_app(registry, Settings(), access=Access(), watch=False)
    extra = {id(r) for r in (*console.ROUTES, *console.STATIC_ROUTES)}
    without.router.routes = [r for r in ROUTES if id(r) not in extra]
    assert isinstance(without.router, Router)
    return {"with console": with_console, "without console": without}


def scope(method: str, query: bytes, body_type: bytes | None) -> dict:
    headers = [(b"host", b"bench")] + ([(b"content-type", body_type)] if body_type else [])
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": "/recognize/demo", "raw_path": b"/recognize/demo", "root_path": "", "query_string": query,
            "headers": headers, "client": ("127.0.0.1", 1), "server": ("bench", 80)}


async def call(app, request_scope: dict, body: bytes) -> int:
    status = 0

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(request_scope, receive, send)
    return status


async def timed(app, request_scope: dict, body: bytes, n: int) -> float:
    """Microseconds per request, the median of ``n`` calls."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        status = await call(app, request_scope, body)
        samples.append((time.perf_counter() - start) * 1e6)
        assert status == 200, status
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("-n", type=int, default=500, help="requests per round and case")
    parser.add_argument("--before", type=Path, metavar="APP_PY", help="compare with this app.py's app")
    args = parser.parse_args()
    registry = Registry()
    registry.refresh()
    cases = {
        "POST raw PNG": (scope("POST", b"", b"image/png"), IMAGE),
        "GET ?base64Image=": (scope("GET", b"base64Image=" + base64.urlsafe_b64encode(IMAGE), None), b""),
    }
    results = {(case, name): [] for case in cases for name in ("with console", "without console")}
    for _ in range(args.rounds):
        for name, app in apps(registry, args.before).items():  # the two alternate inside every round
            for case, (request_scope, body) in cases.items():
                results[(case, name)].append(await timed(app, request_scope, body, args.n))
    baseline = f"{args.before.name}" if args.before else "without console routes"
    print(f"| request | {baseline} (µs) | with console (µs) | difference |")
    print("| --- | --- | --- | --- |")
    for case in cases:
        before = statistics.median(results[(case, "without console")])
        after = statistics.median(results[(case, "with console")])
        print(f"| {case} | {before:.1f} | {after:.1f} | {100 * (after - before) / before:+.1f} % |")
    print(f"\nmedian over {args.rounds} interleaved rounds of the per-round median of {args.n} requests")


if __name__ == "__main__":
    asyncio.run(main())
