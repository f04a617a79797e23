"""Per-request cost of the client-protocol routes against ``/recognize``, in process.

Each route gets the demo example (docs/examples/demo-7kp3.png) as its clients send it:
``/recognize/demo`` a JSON body ``{"image": <base64>}``, ``/in.php`` a URL-encoded form with
``method=base64`` (2captcha-python's way for a base64 string) or a multipart file (its way for a
file path), each also set against ``/recognize`` with the same encoding, ``/createTask`` a JSON task, and the polls
``/res.php`` and ``/getTaskResult`` with an id from a submit. API keys are on (one key). Each
request is one ASGI call of the app (no sockets, no HTTP parsing: what remains is the route's
own work). A round times ``-n`` calls of every route, the routes in a new random order each
round; the table shows each route's median over ``--rounds`` rounds of the mean per call, and
its ratio to ``/recognize``'s median. Times are CPU time of the benchmarking thread
(``time.thread_time``), so that other processes on a shared machine do not inflate them.

    python benchmarks/protocol_overhead.py [-n 200] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from capserve.model_registry.registry import Registry  # noqa: E402
from capserve.server.access import Access, ApiKey, digest  # noqa: E402
from capserve.server.app import create_app  # noqa: E402
from capserve.server.settings import Settings  # noqa: E402

KEY = "bench-key"
IMAGE = (Path(__file__).resolve().parent.parent / "docs" / "examples" / "demo-7kp3.png").read_bytes()
B64 = base64.b64encode(IMAGE).decode()


def scope(method: str, path: str, query: str, content_type: str, body: bytes, headers=()) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                    *headers],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }


async def call(app, request: tuple[dict, bytes]) -> bytes:
    the_scope, body = request
    sent = False
    chunks = []

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(the_scope, receive, send)
    return b"".join(chunks)


def requests(app) -> dict[str, tuple[dict, bytes]]:
    def post(path, content_type, body, headers=()):
        return scope("POST", path, "", content_type, body, headers), body

    form = urlencode({"key": KEY, "method": "base64", "body": B64, "site": "demo"}).encode()
    task = orjson.dumps({"clientKey": KEY, "task": {"type": "ImageToTextTask", "body": B64, "site": "demo"}})
    boundary = "bench0boundary"

    def multipart(parts: dict[str, str], file_field: str) -> bytes:
        out = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                       for k, v in parts.items())
        return out + (f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="c.png"\r\n'
                      f"Content-Type: image/png\r\n\r\n").encode() + IMAGE + f"\r\n--{boundary}--\r\n".encode()

    with_key = [(b"x-api-key", KEY.encode())]
    made = {
        "/recognize/demo (JSON)": post("/recognize/demo", "application/json", orjson.dumps({"image": B64}), with_key),
        "/recognize/demo (form, base64)": post(
            "/recognize/demo", "application/x-www-form-urlencoded", urlencode({"image": B64}).encode(), with_key),
        "/recognize/demo (multipart file)": post(
            "/recognize/demo", f"multipart/form-data; boundary={boundary}", multipart({}, "image"), with_key),
        "/recognize/demo (multipart, in.php's parts)": post(  # the text parts are ignored there
            "/recognize/demo", f"multipart/form-data; boundary={boundary}",
            multipart({"key": KEY, "method": "post", "site": "demo"}, "image"), with_key),
        "/in.php (form, base64)": post("/in.php", "application/x-www-form-urlencoded", form),
        "/in.php (multipart file)": post("/in.php", f"multipart/form-data; boundary={boundary}",
                                         multipart({"key": KEY, "method": "post", "site": "demo"}, "file")),
        "/createTask (JSON)": post("/createTask", "application/json", task),
    }
    captcha_id = asyncio.run(call(app, made["/in.php (form, base64)"])).decode()[3:]
    made["/res.php?action=get (poll)"] = (
        scope("GET", "/res.php", urlencode({"key": KEY, "action": "get", "id": captcha_id}), "text/plain", b""), b"")
    made["/getTaskResult (poll)"] = post(
        "/getTaskResult", "application/json", orjson.dumps({"clientKey": KEY, "taskId": captcha_id}))
    for name, request in made.items():
        answer = asyncio.run(call(app, request))
        assert b"7kp3" in answer or (answer.startswith(b"OK|") and answer[3:].isdigit()), (name, answer)
    return made


async def rounds(app, made: dict, n: int, count: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in made}
    order = list(made)
    for _ in range(count):
        random.shuffle(order)
        for name in order:
            started = time.thread_time()
            for _ in range(n):
                await call(app, made[name])
            times[name].append((time.thread_time() - started) / n)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=200, help="calls per route per round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    registry = Registry()
    registry.refresh()
    app = create_app(registry, Settings(protocol_secret="bench"), access=Access([ApiKey("bench", digest(KEY))]),
                     watch=False)
    made = requests(app)
    times = asyncio.run(rounds(app, made, args.n, args.rounds))
    base = statistics.median(times["/recognize/demo (JSON)"])
    print(f"median of {args.rounds} interleaved rounds of {args.n} calls (CPU time), demo example ({len(IMAGE)} bytes), keys on\n")
    print("| route | median per request | vs /recognize |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median * 1e6:.0f} us | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
