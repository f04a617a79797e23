"""A real ``capserve serve`` process on loopback: readiness, concurrency, hot reload."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from capserve.model_registry.registry import Registry
from tests import model_factory
from tests.conftest import REPO, png_bytes
from tests.servers import free_port, start_server


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


def test_a_burst_of_new_connections_is_answered_on_every_connection(server, registry_dir):
    """Connections opened together are all served, each one whole and in order, over keep-alive."""
    img = png_bytes("4242")
    local = Registry([registry_dir])
    local.refresh()
    expected = local.get("tiny").recognize(img).text
    query = base64.urlsafe_b64encode(img).decode()
    request = f"GET /recognize/tiny?base64Image={query} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    host, port = server.removeprefix("http://").split(":")
    clients = [socket.create_connection((host, int(port)), timeout=30) for _ in range(48)]
    try:
        for _ in range(2):  # the second request reuses every connection
            for client in clients:
                client.sendall(request)
            for client in clients:
                head, body = _read_response(client)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert b'"text":"' + expected.encode() + b'"' in body
    finally:
        for client in clients:
            client.close()


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or pytest.fail("connection closed")
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536) or pytest.fail("connection closed")
    return head, body


def test_a_port_in_use_fails_at_once_with_a_clear_message(registry_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "capserve.server.cli", "serve", "--registry", str(registry_dir), "--port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 3
    assert f"cannot bind 127.0.0.1:{port}" in proc.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    "env, words",
    [
        ({"CAPSERVE_API_KEYS_FILE": "/nonexistent/keys.yaml"}, "CAPSERVE_API_KEYS_FILE /nonexistent/keys.yaml"),
        ({"CAPSERVE_MAX_BODY_BYTES": "1MB"}, "CAPSERVE_MAX_BODY_BYTES must be an integer, not '1MB'"),
        ({"CAPSERVE_REDIS_URL": "http://127.0.0.1:6379"}, "CAPSERVE_REDIS_URL must start with redis://"),
        ({"CAPSERVE_REDIS_FAIL": "maybe"}, "CAPSERVE_REDIS_FAIL is not valid: Input should be 'closed' or 'open'"),
    ],
)
def test_a_bad_setting_stops_the_server_before_any_worker_starts(registry_dir, workers, env, words):
    proc = subprocess.run(
        [sys.executable, "-m", "capserve.server.cli", "serve", "--registry", str(registry_dir), "--port", str(free_port()),
         "--workers", workers],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 3
    assert f"capserve: cannot start: {words}" in proc.stderr and "Traceback" not in proc.stderr
