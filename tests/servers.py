"""Start a real ``capserve serve`` process for a test: the one helper every such test uses."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest

from tests.conftest import REPO, stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_server(
    registry: Path | None, *extra: str, env: dict[str, str] | None = None, ready: Callable[[int], bool] | None = None,
    verify: str | None = None,
):
    """A ``capserve serve`` process on a free loopback port, ready; yields its base URL.

    ``registry`` None serves the default registry (the bundled entries); ``env`` adds variables;
    ``ready(port)``, if given, must also hold before the server counts as ready; ``verify``, a CA
    file, means the server speaks HTTPS (``--ssl-certfile``) as ``https://localhost:PORT``."""
    port = free_port()
    env = {**os.environ, "CAPSERVE_WATCH_INTERVAL": "0.1", **(env or {})}
    env.pop("CAPSERVE_REGISTRY", None)
    argv = [sys.executable, "-m", "capserve.server.cli", "serve", "--port", str(port), "--log-level", "warning", *extra]
    if registry is not None:
        argv += ["--registry", str(registry)]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"https://localhost:{port}" if verify else f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=1, verify=verify or True).status_code == 200 and (ready is None or ready(port)):
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
        stop(proc, timeout=10)


@contextlib.contextmanager
def start_redis(folder: Path, port: int | None = None):
    """A ``redis-server`` on a free loopback port (or ``port``), its files in ``folder``, nothing
    saved; yields its URL. Skips the test when redis-server is not installed."""
    import shutil

    import redis

    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (apt-get install redis-server)")
    port = port or free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--save", "",
            "--appendonly", "no", "--daemonize", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    pytest.fail(f"redis-server exited: {proc.stdout.read().decode()}")
                if time.monotonic() > deadline:
                    pytest.fail("redis-server did not answer")
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        stop(proc, timeout=10)
