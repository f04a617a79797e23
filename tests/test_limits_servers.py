"""Rate limits and replay protection hold for a whole server and a whole deployment: real
``capserve serve`` processes, with ``--workers 2`` (the file the workers share) and two
servers sharing a real ``redis-server`` (standing in for two machines or replicas)."""

from __future__ import annotations

import base64
import contextlib
import math
import os
import socket
import time
from pathlib import Path

import pytest

from capserve.server.access import signature
from tests.conftest import png_bytes
from tests.servers import start_redis, start_server

SECRET = "limits-test-secret"
QUERY = "base64Image=" + base64.urlsafe_b64encode(png_bytes()).decode().rstrip("=")
RATE, BURST = 2, 4


@pytest.fixture()
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - {{name: limited, key: limited, rate: {RATE}}}\n  - {{name: free, key: free}}\n")
    return path


def _env(keys_file: Path, **more: str) -> dict[str, str]:
    return {"CAPSERVE_API_KEYS_FILE": str(keys_file), "CAPSERVE_HMAC_SECRET": SECRET, **more}


class Connection:
    """One keep-alive connection to a server, on a raw socket (so its port is known)."""

    def __init__(self, base: str) -> None:
        self.port = int(base.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sent = 0

    def get(self, key: str, *, signed: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET /recognize/tiny with ``key``, signed afresh (a nonce in the query) or with ``signed``."""
        self.sent += 1
        query = f"{QUERY}&nonce={os.getpid()}-{id(self)}-{self.sent}"
        headers = signed or sign(query)
        query = headers.get("query", query)
        lines = [f"GET /recognize/tiny?{query} HTTP/1.1", "host: t", f"x-api-key: {key}"]
        lines += [f"{name}: {value}" for name, value in headers.items() if name != "query"]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(65536)
        head, rest = data.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        while len(rest) < length:
            rest += self.sock.recv(65536)
        return int(head.split()[1]), rest

    def owner(self) -> int:
        """The pid of the worker that holds the server's side of this connection."""
        local = self.sock.getsockname()[1]
        wanted = (f"0100007F:{self.port:04X}", f"0100007F:{local:04X}")
        inode = next(f[9] for f in (line.split() for line in open("/proc/net/tcp").read().splitlines()[1:])
                     if (f[1], f[2]) == wanted)
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if any(os.readlink(fd) == f"socket:[{inode}]" for fd in Path(f"/proc/{pid}/fd").iterdir()):
                    return int(pid)
            except OSError:
                continue
        raise AssertionError("no process holds the connection")

    def close(self) -> None:
        self.sock.close()


def sign(query: str) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {"query": query, "x-capserve-timestamp": timestamp,
            "x-capserve-signature": signature(SECRET.encode(), timestamp, "GET", "/recognize/tiny", query, b"")}


def one_per_worker(base: str) -> list[Connection]:
    """Two connections held by different workers of the server at ``base``."""
    opened, by_worker = [], {}
    for _ in range(40):
        conn = Connection(base)
        opened.append(conn)
        status, body = conn.get("free")
        assert status == 200, body  # settles any hand-over to a sibling
        by_worker.setdefault(conn.owner(), conn)
        if len(by_worker) == 2:
            break
    assert len(by_worker) == 2, "every connection landed on one worker"
    for conn in opened:
        if conn not in by_worker.values():
            conn.close()
    return list(by_worker.values())


def assert_rate_holds_across(connections: list[Connection]) -> None:
    """20 requests of the rate-limited key, taking turns over ``connections``: at most the burst
    plus what the rate refills while they run (a store per process would let BURST through each)."""
    started = time.monotonic()
    codes = [connections[i % len(connections)].get("limited")[0] for i in range(20)]
    elapsed = time.monotonic() - started
    assert set(codes) <= {200, 429}, codes
    assert BURST <= codes.count(200) <= BURST + math.ceil(RATE * elapsed), (codes, elapsed)


def assert_replays_refused_across(a: Connection, b: Connection) -> None:
    for first, second in [(a, b), (b, a)] * 5:
        signed = sign(f"{QUERY}&nonce=replay-{time.monotonic_ns()}")
        assert first.get("free", signed=signed)[0] == 200
        status, body = second.get("free", signed=signed)
        assert status == 401 and b"replayed_signature" in body


def test_limits_hold_for_every_worker_of_one_server(registry_dir, keys_file):
    with start_server(registry_dir, "--workers", "2", env=_env(keys_file)) as base:
        a, b = one_per_worker(base)
        try:
            assert_rate_holds_across([a, b])
            assert_replays_refused_across(a, b)
            for conn in (a, b):  # the table is memory the supervisor made, never a disk file
                assert "/memfd:capserve-limits" in Path(f"/proc/{conn.owner()}/maps").read_text()
        finally:
            a.close()
            b.close()


def test_limits_hold_across_servers_sharing_redis_and_redis_down_is_handled(registry_dir, keys_file, tmp_path):
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    with contextlib.ExitStack() as stack:
        redis = start_redis(redis_dir)
        url = redis.__enter__()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        try:
            one = stack.enter_context(start_server(registry_dir, env=_env(keys_file, CAPSERVE_REDIS_URL=url)))
            two = stack.enter_context(start_server(
                registry_dir, env=_env(keys_file, CAPSERVE_REDIS_URL=url, CAPSERVE_REDIS_FAIL="open")))
            a, b = Connection(one), Connection(two)
            stack.callback(a.close)
            stack.callback(b.close)
            assert_rate_holds_across([a, b])
            assert_replays_refused_across(a, b)
        finally:
            redis.__exit__(None, None, None)
        # Redis is gone: signed requests are refused by both servers; the rate limit is refused
        # by the one that fails closed, let through to the signature check by the open one.
        for conn in (a, b):
            status, body = conn.get("free")
            assert status == 503 and b"limits_unavailable" in body and b"replays" in body
        status, body = a.get("limited")
        assert status == 503 and b"rate limits cannot be checked" in body
        status, body = b.get("limited")
        assert status == 503 and b"replays" in body
        # Back on the same port (empty): both servers use it again once their pause is over.
        with start_redis(redis_dir, port):
            deadline = time.monotonic() + 20
            while a.get("free")[0] != 200 or b.get("free")[0] != 200:
                assert time.monotonic() < deadline, "Redis was not used again"
                time.sleep(0.2)
            assert_replays_refused_across(a, b)
