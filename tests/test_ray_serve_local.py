"""docs/ray.md's one-machine commands as written: ``capserve ray serve`` starts a Ray of its own,
answers the doc's curl request, and takes all of it down on SIGTERM. A module of its own, so
that no other test's Ray cluster is running beside it."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("ray")

from capserve.model_registry.registry import BUNDLED  # noqa: E402
from tests.conftest import DEMO_EXAMPLE, REPO  # noqa: E402
from tests.servers import free_port  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_one_machine_commands_of_the_doc_serve_and_stop(tmp_path):
    doc = (REPO / "docs" / "ray.md").read_text()
    assert "capserve ray serve --registry ./my-registry --num-replicas 2" in doc
    shutil.copytree(BUNDLED, tmp_path / "my-registry", ignore=shutil.ignore_patterns("report"))
    port = free_port()  # the doc's default is 8000; a test takes a free one
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CAPSERVE_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "capserve.server.cli", "ray", "serve", "--registry", "./my-registry",
         "--num-replicas", "2", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        query = base64.b64encode(DEMO_EXAMPLE.read_bytes()).decode().translate(str.maketrans("+/", "-_"))
        deadline, answer = time.monotonic() + 240, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/recognize/demo?base64Image={query}", timeout=10)
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        assert answer is not None and answer.status_code == 200, proc.stdout.read() if proc.poll() is not None else ""
        assert answer.json()["text"] == "7kp3"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
        assert f"answers at http://127.0.0.1:{port}" in output
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
