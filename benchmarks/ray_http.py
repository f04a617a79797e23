"""HTTP under load: the Ray Serve deployment (1 and 2 replicas) next to ``capserve serve``
(1 and 2 workers), with wrk on loopback, in interleaved rounds; prints medians as markdown.

Ray runs on this machine (``ray.init`` with ``--ray-cpus``), started once; each round deploys
the app with 1, then 2 replicas through Serve's HTTP proxy, and starts ``capserve serve`` with
1, then 2 workers (the order alternates between rounds). Each cell: a warm-up, then wrk for
``--duration`` seconds with POST JSON of the demo model's captchas.

    python benchmarks/ray_http.py [--rounds 3] [--duration 10] [--connections 16] [--ray-cpus 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load_common import (  # noqa: E402
    WORK, Server, capserve_argv, entry_spec, free_port, machine_info, make_registry, model_entry, sample_images,
    wait_listening,
)
from benchmarks.load_http import run_wrk, write_script  # noqa: E402

CELLS = (("ray", 1), ("ray", 2), ("capserve", 1), ("capserve", 2))


def wait_answering(base: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(base + "/readyz", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base} not ready")
        time.sleep(0.2)


def measure(base: str, script: Path, out: Path, connections: int, duration: float, warmup: float) -> dict:
    run_wrk(base, script, out, connections, warmup)
    return run_wrk(base, script, out, connections, duration)


def run(rounds: int, duration: float, warmup: float, connections: int, ray_cpus: int) -> dict[tuple[str, int], list]:
    import ray
    from ray import serve

    from capserve.ray_serve.app import Options, application

    entry, _ = model_entry()
    spec = entry_spec(entry)
    samples = sample_images(spec.width, spec.height, spec.charset, spec.max_length, 64)
    WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ray-http-", dir=WORK))
    registry = work / "registry"
    make_registry(entry, registry, 1)
    script, out = work / "post.lua", work / "post.json"
    write_script(script, "POST", samples, out)
    results: dict[tuple[str, int], list] = {cell: [] for cell in CELLS}
    ray_port = free_port()
    ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": ray_port})
        for round_ in range(rounds):
            for kind, n in CELLS if round_ % 2 == 0 else CELLS[::-1]:
                if kind == "ray":
                    serve.run(application(Options(registry=(registry,), num_replicas=n)), name="capserve",
                              route_prefix="/")
                    base = f"http://127.0.0.1:{ray_port}"
                    wait_answering(base)
                    run_ = measure(base, script, out, connections, duration, warmup)
                    serve.delete("capserve")
                else:
                    port = free_port()
                    with Server(capserve_argv(registry, port, n), port, log=work / "capserve.log") as server:
                        server.wait_ready()
                        wait_listening(port, n)
                        run_ = measure(server.base, script, out, connections, duration, warmup)
                results[(kind, n)].append(run_)
                print(f"round {round_ + 1} {kind} x{n}: {run_['rps']:.0f} req/s, p99 {run_['p99_ms']:.1f} ms, "
                      f"errors {run_['errors']}", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return results


def markdown(results: dict[tuple[str, int], list], connections: int) -> str:
    names = {"ray": ("Ray Serve deployment", "replica"), "capserve": ("capserve serve", "worker")}
    lines = ["| server | processes | req/s (median) | p99 ms (median) | req/s by round | errors |",
             "| --- | --- | ---: | ---: | --- | ---: |"]
    for (kind, n), runs in results.items():
        name, unit = names[kind]
        by_round = ", ".join(f"{r['rps']:.0f}" for r in runs)
        lines.append(f"| {name} | {n} {unit}{'s' if n > 1 else ''} | {statistics.median(r['rps'] for r in runs):.0f} | "
                     f"{statistics.median(r['p99_ms'] for r in runs):.1f} | "
                     f"{by_round} | {sum(r['errors'] for r in runs)} |")
    return "\n".join(lines) + f"\n\nPOST JSON, {connections} connections, wrk on loopback."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, load average {info['load_average']}", flush=True)
    results = run(args.rounds, args.duration, args.warmup, args.connections, args.ray_cpus)
    print()
    print(markdown(results, args.connections))


if __name__ == "__main__":
    main()
