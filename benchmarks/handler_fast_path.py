"""The recognize handler's time for the 100x50 demo PNG (the fast path that stays on the event
loop), in two source trees: median of interleaved rounds, each round a fresh process that
answers ``--requests`` POSTs through the app without a network (scf_adapter.asgi_call).

    python benchmarks/handler_fast_path.py --tree /path/to/other/capserve-namespace

``--tree`` is a folder holding ``capserve/<package>`` of another checkout (links to its
folders); it is put first on PYTHONPATH. Without it, this tree is measured against itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CODE = """
import asyncio, statistics, time
from pathlib import Path
from capserve.model_registry.registry import Registry
from capserve.scf_adapter.asgi_call import call_async
from capserve.scf_adapter.events import HttpRequest
from capserve.server.app import create_app
registry = Registry(); registry.refresh()
app = create_app(registry, watch=False)
body = Path("docs/examples/demo-7kp3.png").read_bytes()
request = HttpRequest(method="POST", path="/recognize/demo", query_string=b"", scheme="http", client=("127.0.0.1", 1),
                      headers=[(b"content-type", b"image/png")], body=body)
async def main():
    for _ in range(200):
        await call_async(app, request)
    times = []
    for _ in range({n}):
        t = time.perf_counter()
        response = await call_async(app, request)
        times.append(time.perf_counter() - t)
    assert response.status == 200, response.body
    print(statistics.median(times) * 1e6)
asyncio.run(main())
"""


def once(tree: str | None, n: int) -> float:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    out = subprocess.run([sys.executable, "-c", CODE.format(n=n)], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"other": [], "this": []}
    for _ in range(args.rounds):
        results["other"].append(once(args.tree, args.requests))
        results["this"].append(once(None, args.requests))
    other, this = statistics.median(results["other"]), statistics.median(results["this"])
    print(f"| handler, 100x50 PNG (median of {args.rounds} interleaved rounds) | µs |")
    print("| --- | --- |")
    print(f"| {args.tree or 'this tree'} | {other:.1f} |")
    print(f"| this tree | {this:.1f} |")
    ratios = sorted(t / o for t, o in zip(results["this"], results["other"]))
    print(f"| ratio this / other | {this / other:.3f} (paired rounds: median {statistics.median(ratios):.3f}, "
          f"range {ratios[0]:.3f}-{ratios[-1]:.3f}) |")


if __name__ == "__main__":
    main()
