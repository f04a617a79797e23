"""``capserve serve --workers N``: one SO_REUSEPORT listening socket per worker."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import time

import httpx
import pytest

from server.workers import WorkerSocket, bind_reuse_port, reuse_port_available
from tests.conftest import REPO, png_bytes

pytestmark = pytest.mark.skipif(not reuse_port_available(), reason="needs SO_REUSEPORT")


def _listeners(port: int) -> int:
    """LISTEN sockets on 127.0.0.1:port, from /proc/net/tcp."""
    wanted = f"0100007F:{port:04X}"
    count = 0
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":
            count += 1
    return count


def test_a_worker_socket_unpickles_as_a_new_listening_socket_on_the_same_port():
    reserved = bind_reuse_port("127.0.0.1", 0, listen=False)
    port = reserved.getsockname()[1]
    try:
        a = pickle.loads(pickle.dumps(WorkerSocket("127.0.0.1", port, 16)))
        b = pickle.loads(pickle.dumps(WorkerSocket("127.0.0.1", port, 16)))
        try:
            assert isinstance(a, socket.socket) and a.fileno() != b.fileno()
            assert a.getsockname() == b.getsockname() == ("127.0.0.1", port)
            assert a.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            assert a.proto == socket.IPPROTO_TCP  # so asyncio sets TCP_NODELAY on accepted sockets
            assert _listeners(port) == 2  # the reserving socket does not listen
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        finally:
            a.close()
            b.close()
    finally:
        reserved.close()


def test_a_port_in_use_is_refused():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OSError):
            bind_reuse_port("127.0.0.1", taken.getsockname()[1], listen=False)
    finally:
        taken.close()


def test_two_workers_listen_on_a_socket_each_and_serve(registry_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--registry", str(registry_dir), "--port", str(port),
         "--workers", "2", "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _listeners(port) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.1)
        assert _listeners(port) == 2
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        # 40 fresh connections (the kernel spreads them over both sockets): all answer.
        answers = [httpx.get(base + "/readyz", timeout=10).status_code for _ in range(40)]
        assert answers == [200] * 40
        # Recognitions spread over both workers; a scrape, answered by one, counts all of them.
        for _ in range(30):
            answer = httpx.post(base + "/recognize/tiny", content=png_bytes(), timeout=10)
            assert answer.status_code == 200
        metrics = httpx.get(base + "/metrics", timeout=10).text
        assert 'capserve_requests_total{site="tiny",status="200"} 30.0' in metrics
        assert 'capserve_request_seconds_count{site="tiny"} 30.0' in metrics
        assert 'capserve_models{state="AVAILABLE"} 1.0' in metrics
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_shared_socket_is_still_there_when_turned_off(registry_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--registry", str(registry_dir), "--port", str(port),
         "--workers", "2", "--log-level", "warning"],
        cwd=REPO, env={**__import__("os").environ, "CAPSERVE_REUSE_PORT": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        ok = False
        while time.monotonic() < deadline and not ok:
            try:
                ok = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                time.sleep(0.1)
        assert ok
        assert _listeners(port) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)
