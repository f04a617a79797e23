"""``capserve serve --workers N``: one SO_REUSEPORT listening socket per worker."""

from __future__ import annotations

import array
import contextlib
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from capserve.server.balance import BALANCE_DIR_ENV
from capserve.server.workers import WorkerSocket, bind, reuse_port_available
from tests.conftest import REPO, png_bytes, stop

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


def test_a_worker_socket_unpickles_as_a_new_socket_bound_to_the_same_port():
    reserved = bind("127.0.0.1", 0, reuse_port=True, listen=False)
    port = reserved.getsockname()[1]
    try:
        a = pickle.loads(pickle.dumps(WorkerSocket("127.0.0.1", port, 16)))
        b = pickle.loads(pickle.dumps(WorkerSocket("127.0.0.1", port, 16)))
        try:
            assert isinstance(a, socket.socket) and a.fileno() != b.fileno()
            assert a.getsockname() == b.getsockname() == ("127.0.0.1", port)
            assert a.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            assert a.proto == socket.IPPROTO_TCP  # so asyncio sets TCP_NODELAY on accepted sockets
            assert _listeners(port) == 0  # the event loop listens once the app has started
            a.listen()
            b.listen()
            assert _listeners(port) == 2  # the reserving socket never listens
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
            bind("127.0.0.1", taken.getsockname()[1], reuse_port=True, listen=False)
    finally:
        taken.close()


@contextlib.contextmanager
def _two_workers(registry_dir, *, listeners: int = 2, **env: str):
    """``capserve serve --workers 2`` on a free port, ready and with ``listeners`` listening
    sockets; yields (process, port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "capserve.server.cli", "serve", "--registry", str(registry_dir), "--port", str(port),
         "--workers", "2", "--log-level", "warning"],
        cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and not (ready and _listeners(port) >= listeners):
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                ready = ready or httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert ready and _listeners(port) == listeners
        yield proc, port
    finally:
        stop(proc)


def test_two_workers_listen_on_a_socket_each_and_serve(registry_dir):
    with _two_workers(registry_dir) as (_, port):
        base = f"http://127.0.0.1:{port}"
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


def test_the_shared_socket_is_still_there_when_turned_off(registry_dir):
    with _two_workers(registry_dir, listeners=1, CAPSERVE_REUSE_PORT="0"):
        pass  # _two_workers checks that the server is ready on exactly one listening socket


def _worker_pids(server_pid: int) -> list[int]:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    # multiprocessing's resource tracker is a child too, but not a worker
    return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _worker_connections(server_pid: int, port: int) -> dict[int, list[str]]:
    """Sockets on 127.0.0.1:port (not listening) that each worker process holds, by state."""
    states = {}
    wanted = f"0100007F:{port:04X}"
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] != "0A":
            states[fields[9]] = fields[3]
    held = {}
    for pid in _worker_pids(server_pid):
        inodes = []
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in states:
                inodes.append(states[target[8:-1]])
        held[pid] = inodes
    return held


def _balance_counts(server_pid: int) -> list[int]:
    """The open-connection counts of server/balance.py's shared file, one per joined worker."""
    worker = _worker_pids(server_pid)[0]
    environ = dict(
        item.split(b"=", 1) for item in Path(f"/proc/{worker}/environ").read_bytes().split(b"\0") if b"=" in item
    )
    fields = array.array("q", (Path(os.fsdecode(environ[BALANCE_DIR_ENV.encode()])) / "counts").read_bytes())
    return [fields[i + 1] for i in range(0, len(fields), 2) if fields[i]]  # (pid, count) pairs


def _http_request(sock: socket.socket, body: bytes) -> tuple[int, bytes]:
    """One keep-alive POST /recognize/tiny on a raw socket: status and body."""
    sock.sendall(b"POST /recognize/tiny HTTP/1.1\r\nhost: t\r\ncontent-type: image/png\r\n"
                 + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), rest


def test_connections_are_spread_evenly_and_handed_over_intact(registry_dir):
    with _two_workers(registry_dir) as (proc, port):
        # A worker joins the balancing on its first connection: 20 short ones reach both.
        for _ in range(20):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        expected = httpx.post(f"http://127.0.0.1:{port}/recognize/tiny", content=png_bytes(), timeout=10).json()["text"]
        # Those connections are closed by the client; a worker counts one off once it has seen the
        # close. Until then the counts are one high, and the split below would be even by them.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_balance_counts(proc.pid)):
            time.sleep(0.05)
        assert _balance_counts(proc.pid) == [0, 0]
        # 40 connections open at once: the kernel's hash alone splits them 20/20 one time in eight.
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
        try:
            for _ in range(2):  # keep-alive: a handed-over connection serves several requests
                for sock in clients:
                    status, body = _http_request(sock, png_bytes())
                    assert status == 200 and json.loads(body)["text"] == expected
            held = _worker_connections(proc.pid, port)
            counts = sorted(len(states) for states in held.values())
            assert len(counts) == 2 and sum(counts) == 40
            assert counts[1] - counts[0] <= 1, (held, _balance_counts(proc.pid))
        finally:
            for sock in clients:
                sock.close()
        # Closed by the clients: no worker keeps a handle on any of them.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_worker_connections(proc.pid, port).values()):
            time.sleep(0.1)
        assert not any(_worker_connections(proc.pid, port).values())


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_that_fails_to_start_stops_the_server_with_exit_3(workers):
    code = (
        "import uvicorn; from server import workers;"
        f"workers.run(uvicorn.Config('tests.failing_lifespan_app:app', port=0, workers={workers}, lifespan='on'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "start-up fails on purpose" in proc.stderr
