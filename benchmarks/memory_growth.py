"""RSS and latency of one ``capserve serve`` worker across many requests (default 100,000).

A peer of this project slowed to 2 s per request after 20,000 requests because it built
tensors per request; this checks that capserve's memory stays flat and its latency does not
drift. wrk (16 connections) runs in chunks of ``--chunk`` seconds until ``--requests`` were
sent; after each chunk the worker's RSS is read. The mix: GET and POST of the sample
captchas, plus 1 in 11 bad requests (bad base64, not an image, unknown site) so error paths
run too. Growth is measured from the end of a warm-up of ``--warmup-requests``.

    python benchmarks/memory_growth.py [--requests 100000] [--chunk 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load_common import (  # noqa: E402
    WORK, Server, capserve_argv, entry_spec, free_port, make_registry, model_entry, rss_mb, sample_images,
)
from benchmarks.load_http import request_items, run_wrk, write_lua  # noqa: E402

BAD_ITEMS = [
    ("GET", "/recognize/demo?base64Image=%2A%2A%2Anot-base64%2A%2A%2A", None),  # 400 bad base64
    ("POST", "/recognize/demo", json.dumps({"image": "aGVsbG8gd29ybGQ="})),  # 422 not an image
    ("GET", "/recognize/nowhere?base64Image=AAAA", None),  # 404 unknown site
]


def run(total: int, chunk_s: float, connections: int = 16, warmup_requests: int = 5000) -> dict:
    entry, entry_label = model_entry()
    spec = entry_spec(entry)
    samples = sample_images(spec.width, spec.height, spec.charset, spec.max_length, 32, seed=3)
    good = request_items("GET", samples[:16]) + request_items("POST", samples[16:])
    bad_share = 1 / 11
    items = []
    for i, item in enumerate(good):  # 32 good, then 1 bad after every 10 good
        items.append(item)
        if i % 10 == 9:
            items.append(BAD_ITEMS[(i // 10) % len(BAD_ITEMS)])
    bad_share = sum(1 for it in items if it in BAD_ITEMS) / len(items)
    WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="growth-", dir=WORK))
    registry = work / "registry"
    make_registry(entry, registry, 1)
    script, out = work / "mix.lua", work / "mix.json"
    write_lua(script, items, out)
    points = []
    port = free_port()
    started = time.monotonic()
    try:
        with Server(capserve_argv(registry, port, 1), port, log=work / "server.log") as server:
            server.wait_ready()
            rss_start = rss_mb(server.proc.pid)
            sent = 0
            while sent < warmup_requests:
                sent += run_wrk(server.base, script, out, connections, 2)["requests"]
            rss_warm = rss_mb(server.proc.pid)
            points.append({"requests": 0, "rss_mb": rss_warm, "p50_ms": None, "p99_ms": None, "rps": None})
            print(f"  after warm-up ({sent} requests): RSS {rss_warm:.1f} MB (at start {rss_start:.1f} MB)", flush=True)
            counted = non2xx = socket_errors = 0
            while counted < total:
                r = run_wrk(server.base, script, out, connections, chunk_s)
                counted += r["requests"]
                non2xx += r["non2xx"]
                socket_errors += r["socket_errors"]
                point = {"requests": counted, "rss_mb": rss_mb(server.proc.pid), "p50_ms": r["p50_ms"],
                         "p99_ms": r["p99_ms"], "rps": r["rps"]}
                points.append(point)
                print(f"  {counted:7d} requests  RSS {point['rss_mb']:.1f} MB  {r['rps']:.0f} req/s  "
                      f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms", flush=True)
            alive = server.proc.poll() is None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    measured = points[1:]
    third = max(1, len(measured) // 3)
    return {
        "model": entry_label, "connections": connections, "requests": counted, "warmup_requests": sent,
        "bad_share": bad_share, "non2xx": non2xx, "expected_non2xx": round(counted * bad_share),
        "socket_errors": socket_errors, "alive": alive, "wall_s": time.monotonic() - started,
        "rss_start_mb": rss_start, "rss_warm_mb": rss_warm, "rss_end_mb": points[-1]["rss_mb"],
        "rss_max_mb": max(p["rss_mb"] for p in points),
        "growth_mb": points[-1]["rss_mb"] - rss_warm,
        "p50_first_third_ms": sum(p["p50_ms"] for p in measured[:third]) / third,
        "p50_last_third_ms": sum(p["p50_ms"] for p in measured[-third:]) / third,
        "rps_first_third": sum(p["rps"] for p in measured[:third]) / third,
        "rps_last_third": sum(p["rps"] for p in measured[-third:]) / third,
        "points": points,
    }


def markdown(r: dict) -> str:
    lines = [
        "| requests (after warm-up) | RSS at start MB | RSS after warm-up MB | RSS at end MB | max MB | growth MB | "
        "p50 first third / last third ms | req/s first third / last third | non-2xx (expected) | socket errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {r['requests']} | {r['rss_start_mb']:.1f} | {r['rss_warm_mb']:.1f} | {r['rss_end_mb']:.1f} | "
        f"{r['rss_max_mb']:.1f} | {r['growth_mb']:+.1f} | {r['p50_first_third_ms']:.2f} / {r['p50_last_third_ms']:.2f} | "
        f"{r['rps_first_third']:.0f} / {r['rps_last_third']:.0f} | {r['non2xx']} ({r['expected_non2xx']}) | "
        f"{r['socket_errors']} |",
    ]
    lines.append("")
    lines.append("RSS by requests served: " + ", ".join(
        f"{p['requests']:,}: {p['rss_mb']:.1f}" for p in r["points"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--chunk", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--warmup-requests", type=int, default=5000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = run(args.requests, args.chunk, args.connections, args.warmup_requests)
    print()
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
