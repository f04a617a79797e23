"""The Ray Serve deployment on a real two-node Ray cluster (``ray.cluster_utils.Cluster``: a
head and a worker node on this machine, one CPU each, so each node holds one of the two
replicas), deployed by the real ``capserve ray serve --address`` and answering over Serve's
HTTP proxy: the same answers as ``capserve serve``, a new registry entry served by every
replica, the limits held across replicas through a real Redis, a killed replica replaced, and
replicas that serve no site unhealthy until the registry is back.

One cluster and one deployment serve every test of the module (they run in file order; the
ones that take replicas down come last). Signing and keys are on throughout, as the limits test needs them.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from capserve.server.access import signature  # noqa: E402
from tests.conftest import DEMO_EXAMPLE, REPO, png_bytes, stop  # noqa: E402
from tests.servers import free_port, start_redis, start_server  # noqa: E402

pytestmark = pytest.mark.slow

SECRET = "ray-test-secret"
RATE, BURST = 2, 4
BUNDLED = REPO / "model_registry" / "bundled"
IMAGES = [DEMO_EXAMPLE.read_bytes(), png_bytes("7kp3"), png_bytes("ab12", (160, 60)), png_bytes("x", (60, 30), "L")]
MB = 1024 * 1024


class Client:
    """Signed requests with an API key to one base URL; every request signed afresh."""

    def __init__(self, base: str) -> None:
        self.base, self.sent = base, 0

    def recognize(self, site: str, image: bytes, key: str = "free", *, signed: dict | None = None) -> httpx.Response:
        self.sent += 1
        query = f"base64Image={base64.urlsafe_b64encode(image).decode().rstrip('=')}&nonce={os.getpid()}-{self.sent}"
        headers = signed or self.sign(site, query)
        return httpx.get(f"{self.base}/recognize/{site}?{headers['query']}", timeout=30,
                         headers={"x-api-key": key, **{k: v for k, v in headers.items() if k != "query"}})

    @staticmethod
    def sign(site: str, query: str) -> dict[str, str]:
        timestamp = str(int(time.time()))
        return {"query": query, "x-capserve-timestamp": timestamp,
                "x-capserve-signature": signature(SECRET.encode(), timestamp, "GET", f"/recognize/{site}", query, b"")}

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, headers={"x-api-key": "free"}, timeout=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(Ray's base URL, capserve serve's base URL, the registry folder, the deployment's handle)."""
    folder = tmp_path_factory.mktemp("ray")
    registry = folder / "registry"
    shutil.copytree(BUNDLED, registry)
    keys = folder / "keys.yaml"
    keys.write_text(f"keys:\n  - {{name: limited, key: limited, rate: {RATE}}}\n  - {{name: free, key: free}}\n")
    (folder / "redis").mkdir()
    env = {"CAPSERVE_API_KEYS_FILE": str(keys), "CAPSERVE_HMAC_SECRET": SECRET, "CAPSERVE_WATCH_INTERVAL": "0.2"}
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(start_redis(folder / "redis"))
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "object_store_memory": 80 * MB, "include_dashboard": False})
        stack.callback(cluster.shutdown)
        cluster.add_node(num_cpus=1, object_store_memory=80 * MB)
        cluster.wait_for_nodes()
        port = free_port()
        log = folder / "ray-serve.log"
        cli = subprocess.Popen(
            [sys.executable, "-m", "capserve.server.cli", "ray", "serve", "--address", cluster.address,
             "--registry", str(registry), "--port", str(port), "--num-replicas", "2"],
            cwd=REPO, env={**os.environ, **env, "CAPSERVE_REDIS_URL": redis_url},
            stdout=log.open("w"), stderr=subprocess.STDOUT)
        stack.callback(stop, cli, 60)
        deadline = time.monotonic() + 240
        while "answers at" not in log.read_text():  # said once both replicas are up
            if cli.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"capserve ray serve did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        ray.init(address=cluster.address, log_to_driver=False)
        stack.callback(ray.shutdown)
        reference = stack.enter_context(start_server(registry, env=env))
        yield f"http://127.0.0.1:{port}", reference, registry, serve.get_deployment_handle("capserve", "capserve")


def replicas(handle) -> list[dict]:
    """What every live replica says of itself (a replica that died meanwhile says nothing)."""
    answers = handle.broadcast("replica").results(timeout_s=30, return_exceptions=True)
    return [a for a in answers if isinstance(a, dict)]


def without_timing(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "elapsed_ms"}


def test_every_bundled_site_answers_as_capserve_serve_does(setup):
    base, reference, _, handle = setup
    ray_client, ref_client = Client(base), Client(reference)
    models = ray_client.get("/v1/models").json()["models"]
    assert {m["site"] for m in models} == {p.name for p in BUNDLED.iterdir() if p.is_dir()}
    assert models == ref_client.get("/v1/models").json()["models"]
    for site in [m["site"] for m in models] + ["nowhere"]:
        for image in IMAGES:
            got, want = ray_client.recognize(site, image), ref_client.recognize(site, image)
            assert got.status_code == want.status_code, (site, got.text)
            assert without_timing(got.json()) == without_timing(want.json()), site
    assert ray_client.recognize("demo", IMAGES[0]).json()["text"] == "7kp3"
    broken = ray_client.recognize("demo", b"not an image")  # errors are the same JSON too
    assert broken.status_code == 422 and broken.json() == ref_client.recognize("demo", b"not an image").json()
    assert broken.headers.get_list("x-request-id") == [broken.headers["x-request-id"]]  # once, as from capserve serve
    assert len({r["node"] for r in replicas(handle)}) == 2  # one replica on each node


def test_a_new_registry_entry_is_served_by_every_replica(setup):
    base, _, registry, handle = setup
    entry = registry / "fresh" / "1"
    shutil.copytree(registry / "demo" / "1", entry)
    doc = yaml.safe_load((entry / "model.yaml").read_text())
    (entry / "model.yaml").write_text(yaml.safe_dump({**doc, "site": "fresh"}, sort_keys=False))
    deadline = time.monotonic() + 60
    while not all("fresh" in r["sites"] for r in replicas(handle)):
        assert time.monotonic() < deadline, replicas(handle)
        time.sleep(0.5)
    seen = replicas(handle)
    assert len({r["replica"] for r in seen}) == 2
    client = Client(base)
    answers = [client.recognize("fresh", IMAGES[0]) for _ in range(16)]
    assert all(a.status_code == 200 and a.json()["text"] == "7kp3" for a in answers), [a.text for a in answers]
    grew = {r["replica"]: r["answered"] for r in replicas(handle)}
    assert all(grew[r["replica"]] > r["answered"] for r in seen), (seen, grew)  # both replicas answered


def test_limits_hold_across_replicas_through_redis(setup):
    base, _, _, handle = setup
    client = Client(base)
    before = {r["replica"]: r["answered"] for r in replicas(handle)}
    started = time.monotonic()
    codes = [client.recognize("demo", IMAGES[0], "limited").status_code for _ in range(20)]
    elapsed = time.monotonic() - started
    assert set(codes) <= {200, 429}, codes
    assert BURST <= codes.count(200) <= BURST + math.ceil(RATE * elapsed), (codes, elapsed)
    for _ in range(4):  # a signature is accepted once, whichever replica sees it again
        query = f"base64Image={base64.urlsafe_b64encode(IMAGES[0]).decode().rstrip('=')}&nonce=r{time.monotonic_ns()}"
        signed = Client.sign("demo", query)
        assert client.recognize("demo", IMAGES[0], signed=signed).status_code == 200
        for _ in range(4):
            again = client.recognize("demo", IMAGES[0], signed=signed)
            assert again.status_code == 401 and again.json()["error"]["code"] == "replayed_signature"
    after = {r["replica"]: r["answered"] for r in replicas(handle)}
    assert all(after[r] > before[r] for r in before), (before, after)  # both replicas took requests


def test_a_killed_replica_is_replaced_and_requests_go_on(setup):
    base, _, _, handle = setup
    client = Client(base)
    (victim, survivor) = sorted(replicas(handle), key=lambda r: r["replica"])
    ray.kill(ray.get_actor(victim["actor"], namespace="serve"), no_restart=True)
    failed, deadline = 0, time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "the replica was not replaced"
        answer = client.recognize("demo", IMAGES[0])
        if answer.status_code != 200:  # only while the proxy still routes to the dead replica
            failed += 1
            time.sleep(0.2)
            continue
        assert answer.json()["text"] == "7kp3"
        now = replicas(handle)
        status = serve.status().applications["capserve"].deployments["capserve"]
        if len(now) == 2 and status.replica_states.get("RUNNING") == 2 and status.status == "HEALTHY":
            break
        time.sleep(0.5)
    assert failed <= 5, failed
    assert victim["replica"] not in {r["replica"] for r in now} and survivor["replica"] in {r["replica"] for r in now}
    assert all(client.recognize("demo", IMAGES[0]).status_code == 200 for _ in range(6))


def test_a_replica_that_serves_no_site_is_unhealthy_until_the_registry_is_back(setup):
    base, _, registry, handle = setup
    assert handle.broadcast("check_health").results(timeout_s=30) == [None, None]
    away = registry.parent / "away"
    registry.rename(away)  # every entry gone: the replicas' registries drop their sites
    try:
        deadline = time.monotonic() + 60
        while True:
            status = serve.status().applications["capserve"].deployments["capserve"]
            if status.status != "HEALTHY":
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
    finally:
        away.rename(registry)
    deadline = time.monotonic() + 180
    while True:
        status = serve.status().applications["capserve"].deployments["capserve"]
        if status.status == "HEALTHY" and status.replica_states.get("RUNNING") == 2:
            break
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert Client(base).recognize("demo", IMAGES[0]).json()["text"] == "7kp3"
