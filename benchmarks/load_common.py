"""Shared pieces of the load, memory and start-up benchmarks: the benchmark registry, sample
captchas, starting and stopping servers, RSS of a process tree, and the machine description.

Servers are started as separate processes in their own process group on 127.0.0.1 and are
always stopped (the whole group) when a benchmark ends.
"""

from __future__ import annotations

import base64
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BUNDLED_DEMO = REPO / "model_registry" / "bundled" / "demo" / "1"
WORK = Path(os.environ.get("CAPSERVE_BENCH_WORK", "/tmp/capserve-bench"))
PYTHON = sys.executable
# The charset of the demo entry; the development stand-in uses the same one.
DEV_CHARSET = "23456789abcdefghjkmpqrstuvwxy"


# -- the model under test -----------------------------------------------------------------------


def model_entry() -> tuple[Path, str]:
    """The entry folder every benchmark serves, and what it is.

    The bundled ``demo`` entry when it exists; otherwise a 100x50 stand-in built once with
    tests/model_factory.py (a tiny untrained CNN-CTC: same input, far smaller network).
    """
    if (BUNDLED_DEMO / "model.yaml").exists() and (BUNDLED_DEMO / "model.tflite").exists():
        return BUNDLED_DEMO, "bundled demo v1 (model_registry/bundled/demo/1)"
    folder = WORK / "dev-entry" / "demo" / "1"
    if not (folder / "model.yaml").exists():
        build_dev_entry(folder)
    return folder, "development stand-in: tiny untrained 100x50 CNN-CTC from tests/model_factory.py (demo not trained yet)"


def build_dev_entry(folder: Path) -> None:
    """Build the stand-in in a subprocess (TensorFlow stays out of the benchmark process)."""
    code = (
        "import sys; from pathlib import Path; from tests import model_factory as f;"
        f"c=f.tiny_tflite(width=100, height=50, classes={len(DEV_CHARSET) + 1});"
        f"f.write_entry(Path(sys.argv[1]), c, site='demo', width=100, height=50, charset={DEV_CHARSET!r})"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([PYTHON, "-c", code, str(folder)], cwd=REPO, env=env, check=True)


def copy_entry(entry: Path, root: Path, site: str, version: int = 1) -> Path:
    """Copy an entry (YAML and model file, no report) to ``root/site/version`` under another site name."""
    import yaml

    dest = root / site / str(version)
    dest.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load((entry / "model.yaml").read_text())
    doc["site"] = site
    doc["version"] = version
    shutil.copy2(entry / doc["model"]["file"], dest / doc["model"]["file"])
    (dest / "model.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def make_registry(entry: Path, root: Path, n_sites: int) -> list[str]:
    """A fresh registry with ``n_sites`` copies of ``entry``: ``demo`` then ``demo01``... ."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    sites = ["demo"] + [f"demo{i:02d}" for i in range(1, n_sites)]
    for site in sites:
        copy_entry(entry, root, site)
    return sites


def entry_spec(entry: Path):
    from capserve.core.spec import load_spec

    return load_spec(entry / "model.yaml")


def sample_images(width: int, height: int, charset: str, length: int, n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` ImageCaptcha PNGs with their texts (the style the demo model is trained on)."""
    from captcha.image import ImageCaptcha

    gen = ImageCaptcha(width=width, height=height)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = "".join(rng.choice(charset) for _ in range(length))
        buffer = io.BytesIO()
        gen.generate_image(text).save(buffer, "PNG")
        out.append((text, buffer.getvalue()))
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, sockets: int, timeout: float = 30.0) -> int:
    """Wait until ``sockets`` sockets listen on 127.0.0.1:``port`` (a worker each, SO_REUSEPORT):
    /readyz answers as soon as one worker is up, and connections opened before the others
    listen all stay on it (BENCHMARKS.md). Returns how many listen."""
    wanted = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while True:
        rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        count = sum(1 for f in rows if f[1] == wanted and f[3] == "0A")
        if count >= sockets or time.monotonic() > deadline:
            return count
        time.sleep(0.01)


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def rss_mb(pid: int, *, tree: bool = True) -> float:
    """Resident memory (VmRSS) of a process, with its descendants when ``tree``, in MB (2**20)."""
    total = 0
    for p in process_tree(pid) if tree else [pid]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by a process and its descendants (all threads)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / hz


def worker_rss_mb(pid: int) -> list[float]:
    """RSS of each worker (the children of the supervisor), or of the process itself."""
    children = [p for p in process_tree(pid) if p != pid]
    return [rss_mb(p, tree=False) for p in children] or [rss_mb(pid, tree=False)]


class Server:
    """A server process on 127.0.0.1 in its own process group; a context manager."""

    def __init__(self, argv: list[str], port: int, env: dict | None = None, log: Path | None = None) -> None:
        self.argv, self.port, self.base = argv, port, f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> "Server":
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait_ready(self, path: str = "/readyz", timeout: float = 180.0, poll: float = 0.01) -> float:
        """Seconds from start to the first 200 of ``path``."""
        deadline = time.perf_counter() + timeout
        with httpx.Client(timeout=2) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server {self.argv} exited with {self.proc.returncode}; see {self.log}")
                try:
                    if client.get(self.base + path).status_code == 200:
                        return time.perf_counter() - self.started_at
                except httpx.TransportError:
                    pass
                time.sleep(poll)
        raise RuntimeError(f"server {self.argv} not ready after {timeout} s; see {self.log}")

    def stop(self) -> None:
        """Stop the whole process group: also the workers of a supervisor that has already
        exited (py-spy takes granian's supervisor down with it, not its workers)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def capserve_argv(registry: Path, port: int, workers: int, *, lazy: bool = False) -> list[str]:
    argv = [PYTHON, "-m", "capserve.server.cli", "serve", "--registry", str(registry), "--port", str(port),
            "--workers", str(workers), "--log-level", "warning"]
    return argv + (["--lazy"] if lazy else [])


def uvicorn_argv(factory: str, port: int, workers: int) -> list[str]:
    """An app factory behind plain ``uvicorn --workers`` (its shared socket, its own HTTP
    protocol), with the same worker count, log level warning and no access log."""
    return [PYTHON, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--log-level", "warning", "--no-access-log"]


def granian_argv(factory: str, port: int, workers: int) -> list[str]:
    """An app factory behind granian's ASGI interface with the same worker count and logging."""
    return [PYTHON, "-m", "granian", factory, "--factory", "--interface", "asgi", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]


def peer_argv(module: str, port: int, workers: int, *, plain_uvicorn: bool = False) -> list[str]:
    """A peer app from benchmarks/peers served as ``capserve serve`` serves capserve
    (benchmarks/peers/serve.py), or with ``plain_uvicorn`` behind ``uvicorn --workers``."""
    if plain_uvicorn:
        return uvicorn_argv(f"benchmarks.peers.{module}:create_app", port, workers)
    return [PYTHON, "-m", "benchmarks.peers.serve", module, "--port", str(port), "--workers", str(workers)]


# -- the machine --------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 2**20
    except OSError:
        pass
    versions = {}
    for name in ("ai_edge_litert", "numpy", "PIL", "starlette", "granian", "uvicorn", "orjson", "ddddocr", "onnxruntime",
                 "tensorflow", "uvloop", "httptools"):
        versions[name] = _version(name)
    wrk = shutil.which("wrk")
    wrk_version = "missing"
    if wrk:
        res = subprocess.run([wrk, "--version"], capture_output=True, text=True)
        wrk_version = (res.stdout or res.stderr).splitlines()[0].strip() if (res.stdout or res.stderr) else "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "wrk": wrk_version,
        "packages": versions,
    }


def _version(module: str) -> str:
    from importlib import metadata

    dist = {"PIL": "pillow", "ai_edge_litert": "ai-edge-litert", "tensorflow": "tensorflow-cpu"}.get(module, module)
    for name in (dist, module):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def busy_processes(threshold: float = 20.0, window: float = 1.0) -> list[str]:
    """Other processes that used more than ``threshold`` % of one core over the last ``window`` s."""

    def cpu_ticks() -> dict[int, int]:
        out = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                out[int(stat.parent.name)] = int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return out

    before = cpu_ticks()
    time.sleep(window)
    after = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    rows = []
    for pid, ticks in after.items():
        share = 100 * (ticks - before.get(pid, ticks)) / hz / window
        if share >= threshold and pid != os.getpid():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "?"
            rows.append(f"pid {pid} {share:.0f}% {cmd[:120]}")
    return rows


def save_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
