"""A real ``capserve serve`` process on loopback: readiness, concurrency, hot reload."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from model_registry.registry import Registry
from tests import model_factory
from tests.conftest import REPO, png_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_server(registry: Path | None, *extra: str):
    """A ``capserve serve`` process on a free loopback port, ready; yields its base URL.

    ``registry`` None serves the default registry (the bundled entries)."""
    port = free_port()
    env = {**os.environ, "CAPSERVE_WATCH_INTERVAL": "0.1"}
    env.pop("CAPSERVE_REGISTRY", None)
    argv = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--log-level", "warning", *extra]
    if registry is not None:
        argv += ["--registry", str(registry)]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read().decode()}")
            time.sleep(0.1)
        else:
            pytest.fail("server did not become ready")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture()
def server(registry_dir: Path):
    with start_server(registry_dir) as base:
        yield base


def test_32_concurrent_requests_are_all_answered_correctly(server, registry_dir):
    images = [png_bytes(str(1000 + i * 37)) for i in range(32)]
    local = Registry([registry_dir])
    local.refresh()
    expected = [local.get("tiny").recognize(img).text for img in images]

    def ask(img: bytes) -> str:
        r = httpx.post(server + "/recognize/tiny", json={"image": base64.b64encode(img).decode()}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["text"]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, images))
    assert answers == expected


def test_hot_reload_in_a_running_server(server, registry_dir, tiny_model_bytes):
    img = base64.b64encode(png_bytes()).decode()
    assert httpx.get(server + "/recognize/later", params={"base64Image": img}).status_code == 404
    model_factory.write_entry(registry_dir / "later" / "1", tiny_model_bytes, site="later")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = httpx.get(server + "/recognize/later", params={"base64Image": img})
        if r.status_code == 200:
            break
        time.sleep(0.1)
    assert r.status_code == 200 and r.json()["site"] == "later"
    models = httpx.get(server + "/v1/models").json()["models"]
    assert {m["site"] for m in models} == {"tiny", "later"}
