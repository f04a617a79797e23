"""HTTP under load: wrk against capserve and its peers on loopback, in one run.

Every server runs as its own process group, served as ``capserve serve`` serves capserve
(granian workers, server/workers.py) with the same worker count, log level warning and no
access log, unless its name says otherwise (``uvicorn``, ``bare-uvicorn``); wrk runs in a
separate process. For each server, method (GET ``?base64Image=``, POST JSON)
and connection count, wrk runs for ``--duration`` seconds after a short warm-up, cycling
through the same sample captchas. Reported: requests/s, p50/p99/p99.9 and max latency (wrk's
own histogram, which wrk corrects for coordinated omission: a request that took k times the
mean interval between requests of a connection adds k-1 made-up samples below it), and
errors (non-2xx answers plus socket errors and timeouts).

    python benchmarks/load_http.py [--servers capserve,bare,naive,ddddocr] [--connections 1,16,64]
        [--methods GET,POST] [--duration 10] [--workers 2] [--json out.json]

Servers:
  capserve   ``capserve serve`` with every feature on: validation, plugins, metrics, hot reload
  uvicorn    the same app behind plain ``uvicorn --workers`` (uvloop, httptools)
  granian    the same app behind the ``granian`` command with its defaults
  bare-uvicorn  the bare endpoint behind plain ``uvicorn --workers``: an anchor outside capserve's serving code
  bare       a bare LiteRT endpoint (benchmarks/peers/bare_app.py)
  naive      the per-pixel + tf.lite baseline (benchmarks/peers/naive_app.py)
  ddddocr    ddddocr's general model (benchmarks/peers/ddddocr_app.py)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load_common import (  # noqa: E402
    WORK, Server, b64, capserve_argv, cpu_seconds, entry_spec, free_port, granian_argv, make_registry, model_entry, peer_argv, rss_mb,
    sample_images, uvicorn_argv, wait_listening, worker_rss_mb,
)

SERVERS = {
    "capserve": "capserve serve, every feature on",
    "uvicorn": "the capserve app behind plain uvicorn --workers",
    "granian": "the capserve app behind the granian command (--interface asgi --workers, its defaults)",
    "bare-uvicorn": "bare LiteRT endpoint behind plain uvicorn --workers",
    "bare": "bare LiteRT endpoint",
    "naive": "naive baseline (getpixel + tf.lite)",
    "ddddocr": "ddddocr general model in a wrapper",
}
PEER_MODULES = {"bare": "bare_app", "naive": "naive_app", "ddddocr": "ddddocr_app"}
# Measured in every round when there are several: their ratio is the close comparison.
REPEATED = ("capserve", "bare")
SITE = "demo"

# wrk script: cycle through pre-formatted requests; at the end write the summary as JSON.
LUA = r"""
local requests = {}
local counter = 0
local items = {
__ITEMS__
}

init = function(args)
  for i, item in ipairs(items) do
    if item[3] == nil then
      requests[i] = wrk.format(item[1], item[2])
    else
      requests[i] = wrk.format(item[1], item[2], {["Content-Type"] = "application/json"}, item[3])
    end
  end
  counter = math.random(#requests)
end

request = function()
  counter = counter % #requests + 1
  return requests[counter]
end

done = function(summary, latency, requests_)
  local f = io.open("__OUT__", "w")
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, ' ..
    '"mean_us": %f, "max_us": %d}',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
  f:close()
end
"""


def lua_string(s: str) -> str:
    return "[==[" + s + "]==]"


def request_items(method: str, samples: list[tuple[str, bytes]], site: str = SITE) -> list[tuple[str, str, str | None]]:
    """(method, path, body) of a recognition request for each sample."""
    items = []
    for _, data in samples:
        encoded = b64(data)
        if method == "GET":
            items.append(("GET", f"/recognize/{site}?base64Image=" + urllib.parse.quote(encoded, safe=""), None))
        else:
            items.append(("POST", f"/recognize/{site}", json.dumps({"image": encoded})))
    return items


def write_lua(path: Path, items: list[tuple[str, str, str | None]], out: Path) -> None:
    """A wrk script that cycles through ``items`` and writes its summary to ``out`` as JSON."""
    rows = []
    for method, target, body in items:
        if body is None:
            rows.append(f'{{"GET", {lua_string(target)}}}')
        else:
            rows.append(f'{{"{method}", {lua_string(target)}, {lua_string(body)}}}')
    path.write_text(LUA.replace("__ITEMS__", ",\n".join(rows)).replace("__OUT__", str(out)))


def write_script(path: Path, method: str, samples: list[tuple[str, bytes]], out: Path) -> None:
    write_lua(path, request_items(method, samples), out)


def run_wrk(base: str, script: Path, out: Path, connections: int, duration: float, timeout: float = 10.0) -> dict:
    """One wrk run; returns its summary (latencies in ms, requests/s)."""
    threads = min(2, connections)
    out.unlink(missing_ok=True)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", f"--timeout={timeout:g}s",
            "-s", str(script), base]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if res.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stderr or res.stdout}")
    raw = json.loads(out.read_text())
    seconds = raw["duration_us"] / 1e6
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "connections": connections,
        "requests": raw["requests"],
        "seconds": round(seconds, 2),
        "rps": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1e3,
        "p90_ms": raw["p90_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "p999_ms": raw["p999_us"] / 1e3,
        "mean_ms": raw["mean_us"] / 1e3,
        "max_ms": raw["max_us"] / 1e3,
        "non2xx": raw["status"],
        "socket_errors": socket_errors,
        "errors": raw["status"] + socket_errors,
    }


def check_answers(base: str, samples: list[tuple[str, bytes]]) -> dict:
    """Ask every sample once by GET and by POST; count 200s and texts equal to the label."""
    ok = correct = 0
    texts = []
    with httpx.Client(timeout=30) as client:
        for text, data in samples:
            for method in ("GET", "POST"):
                if method == "GET":
                    r = client.get(f"{base}/recognize/{SITE}", params={"base64Image": b64(data)})
                else:
                    r = client.post(f"{base}/recognize/{SITE}", json={"image": b64(data)})
                if r.status_code == 200:
                    ok += 1
                    answer = r.json()["text"]
                    correct += answer.lower() == text.lower()
                    if method == "GET":
                        texts.append(answer)
                else:
                    texts.append(None)
    return {"answered_200": ok, "asked": 2 * len(samples), "label_match": correct, "texts": texts}


def display_name(name: str) -> str:
    """``capserve@/x/venv-fast/bin/python`` -> ``capserve (venv-fast)``."""
    if "@" not in name:
        return name
    base, python = name.split("@", 1)
    return f"{base} ({Path(python).parent.parent.name})"


def _server_argv(name: str, registry: Path, port: int, workers: int, env: dict) -> list[str]:
    if name == "capserve":
        return capserve_argv(registry, port, workers)
    if name in ("uvicorn", "granian"):  # the app alone, behind another server's own workers
        env["CAPSERVE_REGISTRY"] = str(registry)
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="metrics-", dir=_workdir())  # as capserve serve does
        argv = uvicorn_argv if name == "uvicorn" else granian_argv
        return argv("capserve.server.app:create_app", port, workers)
    if name == "bare-uvicorn":
        return peer_argv("bare_app", port, workers, plain_uvicorn=True)
    return peer_argv(PEER_MODULES[name], port, workers)


def bench_server(name: str, *, registry: Path, entry: Path, samples, connections: list[int], methods: list[str],
                 duration: float, warmup: float, workers: int, work: Path, log: Path, env: dict | None = None) -> dict:
    port = free_port()
    server_env = {"BENCH_ENTRY": str(entry), **(env or {})}
    label = SERVERS.get(name, name)
    if "@" in name:  # "capserve@/path/to/python": the same server run by another interpreter
        base_name, python = name.split("@", 1)
        argv = _server_argv(base_name, registry, port, workers, server_env)
        argv[0] = python
        label = f"{SERVERS.get(base_name, base_name)}, run by {python}"
    else:
        argv = _server_argv(name, registry, port, workers, server_env)
    result: dict = {"server": display_name(name), "label": label, "runs": []}
    with Server(argv, port, env=server_env, log=log) as server:
        result["ready_s"] = server.wait_ready()
        # plain uvicorn shares one socket between its workers; every other server has one per worker
        wait_listening(port, 1 if name.split("@")[0] in ("uvicorn", "bare-uvicorn") else workers)
        result["check"] = check_answers(server.base, samples)
        result["rss_ready_mb"] = rss_mb(server.proc.pid)
        for method in methods:
            tag = name.replace("@", "-").replace("/", "_")
            script, out = work / f"{tag}-{method}.lua", work / f"{tag}-{method}.json"
            write_script(script, method, samples, out)
            run_wrk(server.base, script, out, max(connections), warmup)  # warm every worker
            for c in connections:
                cpu = cpu_seconds(server.proc.pid)
                run = run_wrk(server.base, script, out, c, duration)
                run["server_cpu_ms_per_request"] = (cpu_seconds(server.proc.pid) - cpu) * 1e3 / max(1, run["requests"])
                run["method"] = method
                result["runs"].append(run)
                print(f"  {name[:40]:9s} {method:4s} c={c:<3d} {run['rps']:8.1f} req/s  p50 {run['p50_ms']:7.2f}  "
                      f"p99 {run['p99_ms']:7.2f}  p99.9 {run['p999_ms']:7.2f} ms  errors {run['errors']}  "
                      f"server CPU {run['server_cpu_ms_per_request']:.3f} ms/req",
                      flush=True)
        result["rss_end_mb"] = rss_mb(server.proc.pid)
        result["worker_rss_end_mb"] = worker_rss_mb(server.proc.pid)
    return result


def run(servers: list[str], connections: list[int], methods: list[str], duration: float, warmup: float,
        workers: int, n_samples: int = 64, rounds: int = 1,
        repeated: tuple[str, ...] = REPEATED) -> dict:
    """Every server once; with ``rounds`` above 1 the ``repeated`` ones (the close comparison)
    that many times, in alternating order, and each cell reported as the median of its rounds."""
    entry, entry_label = model_entry()
    spec = entry_spec(entry)
    samples = sample_images(spec.width, spec.height, spec.charset, spec.max_length, n_samples)
    work = Path(tempfile.mkdtemp(prefix="load-", dir=_workdir()))
    registry = work / "registry"
    make_registry(entry, registry, 1)
    results = {"model": entry_label, "workers": workers, "duration_s": duration, "samples": n_samples,
               "image_bytes_mean": sum(len(d) for _, d in samples) / len(samples), "rounds": rounds,
               "repeated": [n for n in servers if n in repeated or n.split("@")[0] in repeated] if rounds > 1 else [],
               "servers": []}
    measured: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        for round_ in range(rounds):
            # Alternate the order so that a drift of the machine does not favour one server.
            for name in servers if round_ % 2 == 0 else servers[::-1]:
                if round_ and name not in results["repeated"]:
                    continue
                print(f"{name}: {SERVERS.get(name, name)}" + (f" (round {round_ + 1} of {rounds})" if rounds > 1 else ""),
                      flush=True)
                measured[name].append(bench_server(
                    name, registry=registry, entry=entry, samples=samples, connections=connections, methods=methods,
                    duration=duration, warmup=warmup, workers=workers, work=work,
                    log=work / f"{name.replace('@', '-').replace('/', '_')}.log",
                ))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["servers"] = [combine_rounds(measured[name]) for name in servers]
    return results


def combine_rounds(rounds: list[dict]) -> dict:
    """One server's rounds as one result: per cell the median of req/s, latencies and CPU, the
    sums of requests and errors, the largest max latency, and every round's req/s and p99 under ``rounds``."""
    if len(rounds) == 1:
        return rounds[0]
    combined = {**rounds[0], "runs": []}
    for i, first in enumerate(rounds[0]["runs"]):
        cells = [r["runs"][i] for r in rounds]
        cell = {**first}
        for field in ("rps", "p50_ms", "p99_ms", "p999_ms", "server_cpu_ms_per_request"):
            cell[field] = statistics.median(c[field] for c in cells)
        for field in ("requests", "errors"):
            cell[field] = sum(c[field] for c in cells)
        cell["max_ms"] = max(c["max_ms"] for c in cells)
        cell["rounds"] = [{"rps": c["rps"], "p99_ms": c["p99_ms"]} for c in cells]
        combined["runs"].append(cell)
    return combined


def _workdir() -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    return WORK


def markdown(results: dict, reference: str = "ddddocr", bare: str = "bare") -> str:
    """The tables: absolute numbers per server, then ratios to ddddocr and to the bare endpoint."""
    lines = []
    by_name = {s["server"]: s for s in results["servers"]}
    lines.append("| server | method | conns | req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | requests | server CPU ms/request |")
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in results["servers"]:
        for r in s["runs"]:
            lines.append(f"| {s['server']} | {r['method']} | {r['connections']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r.get('max_ms', float('nan')):.1f} | {r['errors']} | {r['requests']} | "
                         f"{r.get('server_cpu_ms_per_request', float('nan')):.3f} |")
    if "capserve" in by_name:
        lines.append("")
        lines.append("| method | conns | capserve / ddddocr req/s | capserve / naive req/s | capserve / bare req/s | capserve p99 / bare p99 |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        cap = {(r["method"], r["connections"]): r for r in by_name["capserve"]["runs"]}
        other = {n: {(r["method"], r["connections"]): r for r in by_name[n]["runs"]} for n in by_name}

        def ratio(name: str, key, field: str = "rps") -> str:
            r = other.get(name, {}).get(key)
            return f"{cap[key][field] / r[field]:.2f}" if r and r[field] else "-"

        for key in cap:
            lines.append(f"| {key[0]} | {key[1]} | {ratio(reference, key)} | {ratio('naive', key)} | "
                         f"{ratio(bare, key)} | {ratio(bare, key, 'p99_ms')} |")
    variants = sorted({s["server"].split(" ", 1)[1] for s in results["servers"] if s["server"].startswith("capserve (")})
    for variant in variants:
        cap_v = {(r["method"], r["connections"]): r for r in by_name[f"capserve {variant}"]["runs"]}
        bare_v = {(r["method"], r["connections"]): r for r in by_name.get(f"bare {variant}", {}).get("runs", [])}
        if not bare_v:
            continue
        lines.append("")
        lines.append(f"| method | conns | capserve {variant} / bare {variant} req/s | p99 ratio | "
                     f"capserve {variant} / capserve req/s |")
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        plain = {(r["method"], r["connections"]): r for r in by_name.get("capserve", {}).get("runs", [])}
        for key, r in cap_v.items():
            b = bare_v.get(key)
            c = plain.get(key)
            lines.append(f"| {key[0]} | {key[1]} | {r['rps'] / b['rps']:.2f} | {r['p99_ms'] / b['p99_ms']:.2f} | "
                         + (f"{r['rps'] / c['rps']:.2f} |" if c else "- |"))
    spread = [s for s in results["servers"] if any("rounds" in r for r in s["runs"])]
    if spread:
        lines.append("")
        lines.append(f"Rows of {', '.join(s['server'] for s in spread)} are medians of {results['rounds']} rounds, "
                     "run in alternating order; each round's figures:")
        lines.append("")
        lines.append("| server | method | conns | req/s by round | p99 ms by round |")
        lines.append("| --- | --- | ---: | --- | --- |")
        for s in spread:
            for r in s["runs"]:
                lines.append(f"| {s['server']} | {r['method']} | {r['connections']} | "
                             + ", ".join(f"{x['rps']:.0f}" for x in r["rounds"]) + " | "
                             + ", ".join(f"{x['p99_ms']:.1f}" for x in r["rounds"]) + " |")
    lines.append("")
    lines.append("| server | ready after s | answered 200 (GET+POST) | text = label | same text as capserve (GET) | "
                 "RSS after load (all processes) MB |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    reference = by_name.get("capserve", {}).get("check", {}).get("texts")
    for s in results["servers"]:
        c = s["check"]
        same = "-"
        if reference:
            same = f"{sum(a == b for a, b in zip(c['texts'], reference) if a is not None)}/{len(reference)}"
        lines.append(f"| {s['server']} | {s['ready_s']:.2f} | {c['answered_200']}/{c['asked']} | "
                     f"{c['label_match']}/{c['asked']} | {same} | {s['rss_end_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="capserve,bare,naive,ddddocr")
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--methods", default="GET,POST")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every server this many times, in alternating order, and report medians")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    started = time.time()
    results = run(args.servers.split(","), [int(c) for c in args.connections.split(",")],
                  args.methods.split(","), args.duration, args.warmup, args.workers,
                  rounds=args.rounds, repeated=tuple(args.servers.split(",")))
    results["wall_s"] = time.time() - started
    print()
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
