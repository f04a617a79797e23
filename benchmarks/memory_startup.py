"""Memory and start-up of ``capserve serve``: RSS with 1 and 20 registered models, time to
``/readyz``, and what ``--lazy`` changes.

Each registry holds copies of the benchmark model under different site names. For each
(models, mode) the server is started ``--repeat`` times as a fresh process; reported are the
median time from launching the process to the first 200 of ``/readyz``, the RSS then, and
the RSS after every site answered one request (with ``--lazy`` that request loads the model;
its latency is reported too). One worker: the process is the worker, so its RSS is what each
worker of a ``--workers N`` server costs; the 2-worker line gives the total of all processes.

    python benchmarks/memory_startup.py [--models 1,20] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load_common import (  # noqa: E402
    WORK, Server, b64, capserve_argv, entry_spec, free_port, make_registry, model_entry, rss_mb,
    sample_images, worker_rss_mb,
)


def one_start(registry: Path, sites: list[str], image: bytes, *, lazy: bool, workers: int, log: Path) -> dict:
    port = free_port()
    with Server(capserve_argv(registry, port, workers, lazy=lazy), port, log=log) as server:
        ready = server.wait_ready()
        time.sleep(0.3)  # let the supervisor finish starting the other workers' imports
        rss_ready = rss_mb(server.proc.pid)
        first_ms = []
        with httpx.Client(timeout=60) as client:
            for site in sites:
                t = time.perf_counter()
                r = client.get(f"{server.base}/recognize/{site}", params={"base64Image": b64(image)})
                first_ms.append((time.perf_counter() - t) * 1e3)
                if r.status_code != 200:
                    raise RuntimeError(f"{site}: {r.status_code} {r.text}")
            if workers > 1:  # reach every worker: each loads its own copies
                for _ in range(20 * workers):
                    for site in sites:
                        client.get(f"{server.base}/recognize/{site}", params={"base64Image": b64(image)})
        rss_served = rss_mb(server.proc.pid)
        workers_rss = worker_rss_mb(server.proc.pid)
    return {"ready_s": ready, "rss_ready_mb": rss_ready, "rss_served_mb": rss_served,
            "worker_rss_served_mb": workers_rss, "first_request_ms_max": max(first_ms),
            "first_request_ms_median": statistics.median(first_ms)}


def run(models: list[int], repeat: int, workers_line: bool = True) -> dict:
    entry, entry_label = model_entry()
    spec = entry_spec(entry)
    image = sample_images(spec.width, spec.height, spec.charset, spec.max_length, 1)[0][1]
    WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mem-", dir=WORK))
    rows = []
    try:
        configs = [(n, lazy, 1) for n in models for lazy in (False, True)]
        if workers_line:
            configs.append((max(models), False, 2))
        for n, lazy, workers in configs:
            registry = work / f"registry-{n}"
            if not registry.exists():
                make_registry(entry, registry, n)
            sites = sorted(p.name for p in registry.iterdir())
            runs = [one_start(registry, sites, image, lazy=lazy, workers=workers, log=work / "server.log")
                    for _ in range(repeat)]
            row = {
                "models": n, "lazy": lazy, "workers": workers, "repeat": repeat,
                "ready_s": statistics.median(r["ready_s"] for r in runs),
                "ready_s_all": [round(r["ready_s"], 3) for r in runs],
                "rss_ready_mb": statistics.median(r["rss_ready_mb"] for r in runs),
                "rss_served_mb": statistics.median(r["rss_served_mb"] for r in runs),
                "worker_rss_served_mb": runs[-1]["worker_rss_served_mb"],
                "first_request_ms_median": statistics.median(r["first_request_ms_median"] for r in runs),
                "first_request_ms_max": statistics.median(r["first_request_ms_max"] for r in runs),
            }
            rows.append(row)
            print(f"  {n:2d} models  lazy={lazy!s:5s} workers={workers}  ready {row['ready_s']:.2f} s "
                  f"{row['ready_s_all']}  RSS ready {row['rss_ready_mb']:.0f} MB  after serving every site "
                  f"{row['rss_served_mb']:.0f} MB  first request median {row['first_request_ms_median']:.1f} ms "
                  f"max {row['first_request_ms_max']:.1f} ms", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"model": entry_label, "model_bytes": (entry / "model.tflite").stat().st_size, "rows": rows}


def markdown(results: dict) -> str:
    lines = ["| models | mode | workers | start to /readyz s (median) | each start s | RSS at ready MB | "
             "RSS after one request per site MB | first request per site ms (median / max) |",
             "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in results["rows"]:
        lines.append(
            f"| {r['models']} | {'lazy' if r['lazy'] else 'eager'} | {r['workers']} | {r['ready_s']:.2f} | "
            f"{', '.join(f'{x:.2f}' for x in r['ready_s_all'])} | {r['rss_ready_mb']:.0f} | {r['rss_served_mb']:.0f} | "
            f"{r['first_request_ms_median']:.1f} / {r['first_request_ms_max']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="1,20")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = run([int(m) for m in args.models.split(",")], args.repeat)
    print()
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
