"""Where a capserve worker spends its time under load: py-spy samples one worker while wrk
drives it, and the samples are grouped by the part of the request path they fall in.

One worker (``--workers 1``) so that one process sees all the load; wrk uses 16 connections
so the worker is never idle for lack of requests. The same is done for the bare LiteRT
endpoint, which shows the floor every Python HTTP server on this stack pays.

    python benchmarks/load_profile.py [--duration 15] [--method POST] [--servers capserve,bare]

Each sample is put in the innermost group its stack passes through (a numpy call made by a
preprocess step counts as preprocess; PIL's decoder called from plugins/images.py counts as
image decoding). ``idle`` is the worker waiting in the event loop's poll for more input.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load_common import (  # noqa: E402
    PYTHON, WORK, Server, capserve_argv, entry_spec, free_port, make_registry, model_entry, peer_argv,
    sample_images,
)
from benchmarks.load_http import request_items, run_wrk, write_lua  # noqa: E402

# (group, substring of "function (file:line)"), tried innermost frame first; first hit wins.
GROUPS = [
    ("idle: waiting for input (epoll)", "select (selectors.py"),
    ("LiteRT: set_tensor, invoke, get_tensor", "ai_edge_litert/interpreter.py"),
    ("bare endpoint: PIL decode, numpy, CTC", "peers/bare_app.py"),
    ("interpreter pool (runtime.py)", "core/runtime.py"),
    ("CTC decoding", "core/decoders.py"),
    ("image decoding (PIL, checks)", "core/images.py"),
    ("preprocess chain (plugins)", "plugins/"),
    ("preprocess chain (plugins)", "core/chain.py"),
    ("preprocess chain (plugins)", "core/steps.py"),
    ("Model.recognize (rest)", "core/model.py"),
    ("request parsing (base64, JSON, body)", "server/parsing.py"),
    ("metrics (prometheus_client)", "server/metrics.py"),
    ("JSON response (orjson)", "server/responses.py"),
    ("JSON response (orjson)", "starlette/responses.py"),
    ("endpoint (rest)", "server/app.py"),
    ("endpoint (rest)", "peers/endpoint.py"),
    ("registry watcher thread", "model_registry/registry.py"),
    ("Starlette routing and middleware", "starlette/"),
    ("granian's ASGI glue (HTTP itself is in Rust, off these samples)", "granian/"),
    ("asyncio event loop (transports, scheduling)", "asyncio/"),
]


# Samples that are not the serving of requests: start-up (imports, app and model loading) and
# other threads (the registry watcher sleeping between scans).
SKIP = ("importlib._bootstrap", "(threading.py", "LifespanProtocol")


def classify(stack: list[str]) -> str:
    if all(frame.startswith("process ") for frame in stack):  # py-spy --subprocesses names the processes first
        return "no Python frame: granian's Rust threads (HTTP, accepting, waiting)"
    for frame in reversed(stack):
        for group, needle in GROUPS:
            if needle in frame:
                return group
    return "other"


def profile_server(name: str, registry: Path, entry: Path, items, duration: float, rate: int, work: Path) -> dict:
    port = free_port()
    if name == "capserve":
        target = capserve_argv(registry, port, 1)
    else:
        target = peer_argv(f"{name}_app", port, 1)
    raw = work / f"{name}.txt"
    pyspy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    argv = [pyspy, "record", "-r", str(rate), "-f", "raw", "-o", str(raw), "--idle", "--nonblocking", "--subprocesses", "--"] + target
    server = Server(argv, port, env={"BENCH_ENTRY": str(entry)}, log=work / f"{name}.log").start()
    try:
        server.wait_ready()
        script, out = work / f"{name}.lua", work / f"{name}.json"
        write_lua(script, items, out)
        run_wrk(server.base, script, out, 16, 2)  # warm-up
        started = time.monotonic()
        load = run_wrk(server.base, script, out, 16, duration)
        elapsed = time.monotonic() - started
    finally:
        # py-spy writes its samples on SIGINT and takes the server down with it.
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGINT)
            try:
                server.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        server.stop()
    counts: collections.Counter = collections.Counter()
    skipped = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not stack or any(s in frame for frame in frames for s in SKIP):
            skipped += int(n or 0)
            continue
        counts[classify(frames)] += int(n)
    total = sum(counts.values())
    return {"server": name, "samples": total, "rps": load["rps"], "load_seconds": elapsed,
            "groups": {k: v / total for k, v in counts.most_common()}}


def run(servers: list[str], duration: float, method: str, rate: int = 250) -> dict:
    entry, entry_label = model_entry()
    spec = entry_spec(entry)
    samples = sample_images(spec.width, spec.height, spec.charset, spec.max_length, 32)
    methods = ["GET", "POST"] if method == "both" else [method]
    items = [it for m in methods for it in request_items(m, samples)]
    WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="profile-", dir=WORK))
    registry = work / "registry"
    make_registry(entry, registry, 1)
    try:
        results = [profile_server(s, registry, entry, items, duration, rate, work) for s in servers]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"model": entry_label, "method": method, "duration_s": duration, "rate_hz": rate, "servers": results}


def markdown(results: dict) -> str:
    servers = results["servers"]
    groups = []
    for s in servers:
        for g in s["groups"]:
            if g not in groups:
                groups.append(g)
    head = "| part of the request path | " + " | ".join(f"{s['server']} % of samples" for s in servers) + " |"
    lines = [head, "| --- |" + " ---: |" * len(servers)]
    for g in groups:
        lines.append(f"| {g} | " + " | ".join(f"{100 * s['groups'].get(g, 0):.1f}" for s in servers) + " |")
    lines.append("| (requests/s of the one profiled worker, py-spy attached) | "
                 + " | ".join(f"{s['rps']:.0f}" for s in servers) + " |")
    lines.append("| (samples) | " + " | ".join(str(s["samples"]) for s in servers) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="capserve,bare")
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--method", default="both", choices=["GET", "POST", "both"])
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = run(args.servers.split(","), args.duration, args.method, args.rate)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
