"""``capserve serve --workers N``: worker processes that all serve, add up in /metrics, are
replaced when one dies, and stop the server with exit code 3 when they cannot start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from capserve.server.workers import address_problem
from tests.conftest import REPO, png_bytes
from tests.servers import start_server


def _workers(base: str) -> list[int]:
    """The worker processes of the server listening at ``base``: each listens on a socket of
    its own (SO_REUSEPORT), the supervisor on none."""
    port = int(base.rsplit(":", 1)[1])
    listening = {f"socket:[{line.split()[9]}]" for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[1] == f"0100007F:{port:04X}" and line.split()[3] == "0A"}
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if any(os.readlink(fd) in listening for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
        except OSError:
            continue
    return sorted(found)


def _all_workers(base: str, n: int) -> list[int]:
    """The ``n`` workers, once all have started (/readyz answers as soon as one has)."""
    deadline = time.monotonic() + 30
    while len(found := _workers(base)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


@pytest.mark.parametrize("own_folder", [False, True], ids=["temporary folder", "operator's folder"])
def test_two_workers_serve_and_a_scrape_counts_all_of_them(registry_dir, tmp_path, monkeypatch, own_folder):
    metrics_dir = tmp_path / "metrics"
    if own_folder:
        metrics_dir.mkdir()
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    else:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with start_server(registry_dir, "--workers", "2") as base:
        assert len(_all_workers(base, 2)) == 2
        for _ in range(40):  # a new connection each: the kernel spreads them over both workers
            assert httpx.post(base + "/recognize/tiny", content=png_bytes(), timeout=10).status_code == 200
        metrics = httpx.get(base + "/metrics", timeout=10).text
        assert 'capserve_requests_total{site="tiny",status="200"} 40.0' in metrics
        assert 'capserve_request_seconds_count{site="tiny"} 40.0' in metrics
        assert 'capserve_models{state="AVAILABLE"} 1.0' in metrics
        if own_folder:  # each worker that counted a request keeps a file there
            assert len(list(metrics_dir.glob("counter_*.db"))) == 2


def test_a_worker_that_dies_is_replaced(registry_dir):
    with start_server(registry_dir, "--workers", "2") as base:
        first, second = _all_workers(base, 2)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(_workers(base)) < 2 or first in _workers(base)):
            time.sleep(0.1)
        replaced = _all_workers(base, 2)
        assert second in replaced and first not in replaced and len(replaced) == 2
        for _ in range(10):
            assert httpx.post(base + "/recognize/tiny", content=png_bytes(), timeout=10).status_code == 200


def test_a_supervisor_killed_outright_leaves_no_worker_holding_the_port(registry_dir):
    with start_server(registry_dir, "--workers", "2") as base:
        workers = _all_workers(base, 2)
        (supervisor,) = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in workers}
        os.kill(supervisor, signal.SIGKILL)  # no signal reaches the workers from it
        deadline = time.monotonic() + 20
        while _workers(base) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _workers(base) == []
        assert address_problem("127.0.0.1", int(base.rsplit(":", 1)[1])) is None  # free for the next server


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_that_fails_to_start_stops_the_server_with_exit_3(workers):
    code = (
        "import sys; from capserve.server import workers;"
        f"sys.exit(workers.run('tests.failing_lifespan_app:create_app', host='127.0.0.1', port=0, workers={workers}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "start-up fails on purpose" in proc.stdout + proc.stderr  # granian logs to stdout
