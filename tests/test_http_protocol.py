"""The HTTP limits of ``capserve serve``: slow or oversized headers, idle connections and the
number of connections a worker holds (docs/operating.md, "How connections are handled")."""

from __future__ import annotations

import base64
import socket

import pytest

from tests.conftest import png_bytes
from tests.servers import start_server
from tests.test_serve_process import _read_response

TIMEOUT = 1.0  # --header-timeout of these servers, seconds


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _until_closed(sock: socket.socket, within: float) -> bytes | None:
    """What the server sends until it closes (or resets) the connection; None if the
    connection is still open after ``within`` seconds."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        return None
    return data


@pytest.fixture(scope="module")
def limited(tmp_path_factory, tiny_model_bytes):
    from tests import model_factory

    root = tmp_path_factory.mktemp("limits") / "registry"
    model_factory.write_entry(root / "tiny" / "1", tiny_model_bytes)
    with start_server(root, "--header-timeout", str(TIMEOUT), "--max-header-bytes", "16384") as base:
        yield base


GET = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


def test_a_client_that_sends_partial_headers_is_disconnected(limited):
    sock = _connect(limited)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # and never the rest
        answer = _until_closed(sock, within=TIMEOUT + 9)
        assert answer is not None and not answer.startswith(b"HTTP/1.1 2")
    finally:
        sock.close()


def test_an_idle_kept_alive_connection_is_closed(limited):
    sock = _connect(limited)
    try:
        sock.sendall(GET)
        head, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200")
        assert _until_closed(sock, within=TIMEOUT + 9) == b""
    finally:
        sock.close()


def test_a_connection_in_use_is_kept(limited):
    sock = _connect(limited)
    try:
        for _ in range(3):  # each request arrives well within the timeout: the connection stays
            sock.sendall(GET)
            head, _ = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200")
    finally:
        sock.close()


def test_an_oversized_header_gets_431_and_is_not_served(limited):
    sock = _connect(limited)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        answer = _until_closed(sock, within=10)
        assert answer is not None  # closed, never served
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:80]
    finally:
        sock.close()


def test_headers_under_the_limit_and_a_large_body_are_served(limited):
    image = png_bytes("5678")
    query = base64.urlsafe_b64encode(image).decode()
    sock = _connect(limited)
    try:
        sock.sendall(f"GET /recognize/tiny?base64Image={query} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        head, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200")
        # The header limit is not a body limit: a 900 kB body reaches capserve's own checks.
        body = b"x" * 900_000
        sock.sendall(b"POST /recognize/tiny HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head, answer = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 422") and b"\"bad_image\"" in answer  # read whole, then judged
    finally:
        sock.close()


def test_oversized_bodies_among_good_requests_all_get_413_and_lose_no_good_request(limited):
    """A refused body is read (up to a bound) before the 413 goes out, so a client still sending
    it reads the answer rather than a reset; ``Connection: close`` keeps a client's pool from
    sending its next request on the connection the server is closing."""
    import asyncio

    import httpx

    good = png_bytes("5678")
    large = b"\x89PNG" + b"0" * (2 * 1024 * 1024)  # over the default 1 MiB body limit
    answers: list[object] = []

    async def client_task(client: httpx.AsyncClient, n: int) -> None:
        for i in range(n):
            oversized = i % 2 == 0
            try:
                r = await client.post("/recognize/tiny", content=large if oversized else good,
                                      headers={"content-type": "image/png"})
                answers.append((oversized, r.status_code, r.headers.get("connection")))
            except httpx.TransportError as exc:
                answers.append((oversized, repr(exc), None))

    async def main() -> None:
        async with httpx.AsyncClient(base_url=limited, limits=httpx.Limits(max_connections=4), timeout=10) as client:
            await asyncio.gather(*(client_task(client, 30) for _ in range(4)))

    asyncio.run(main())
    assert [a for a in answers if a[0] and a[1:] != (413, "close")] == []
    assert [a for a in answers if not a[0] and a[1] != 200] == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_sending_an_oversized_body_reads_the_413(limited, chunked):
    body = b"x" * (3 * 1024 * 1024)
    sock = _connect(limited)
    try:
        if chunked:
            head = b"Transfer-Encoding: chunked\r\n\r\n"
            payload = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[i:i + 65536] for i in range(0, len(body), 65536))) + b"0\r\n\r\n"
        else:
            head, payload = f"Content-Length: {len(body)}\r\n\r\n".encode(), body
        sock.sendall(b"POST /recognize/tiny HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n" + head + payload)
        head, answer = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer
        assert _until_closed(sock, within=5) == b""  # and then the connection closes
    finally:
        sock.close()


def test_connections_over_the_limit_wait_while_the_others_are_served(registry_dir):
    with start_server(registry_dir, "--max-connections", "2") as base:
        held = [_connect(base) for _ in range(2)]
        extra = None
        try:
            for sock in held:
                sock.sendall(GET)
                assert _read_response(sock)[0].startswith(b"HTTP/1.1 200")
            extra = _connect(base)  # queued by the kernel, not taken by the worker
            extra.sendall(GET)
            extra.settimeout(1.5)
            with pytest.raises(socket.timeout):
                extra.recv(65536)
            for sock in held:  # the connections the worker holds are still answered
                sock.sendall(GET)
                assert _read_response(sock)[0].startswith(b"HTTP/1.1 200")
            held.pop().close()  # a slot frees: the waiting connection is taken and answered
            extra.settimeout(10)
            assert _read_response(extra)[0].startswith(b"HTTP/1.1 200")
        finally:
            for sock in [*held, *([extra] if extra else [])]:
                sock.close()


@pytest.mark.parametrize("flag, value, words", [
    ("--max-header-bytes", "100", "--max-header-bytes must be at least 8192"),
    ("--header-timeout", "0", "--header-timeout must be between"),
    ("--max-connections", "0", "--max-connections must be at least 1"),
])
def test_an_unusable_limit_stops_the_server_at_once(registry_dir, flag, value, words):
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-m", "capserve.server.cli", "serve", "--registry", str(registry_dir), "--port", "0", flag, value],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 3
    assert f"capserve: cannot start: {words}" in proc.stderr
