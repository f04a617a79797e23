"""Twenty models in one process: all load, every site answers with its own model, and
concurrent requests (event loop, threads, worker processes, lazy first loads) get the same
answers as one-at-a-time recognition. No timing assertions: speed lives in benchmarks/.

The 20 entries are copies of one tiny model under different site names, each with its own
10-character charset, so a request answered by the wrong site's model gives a different text.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import threading
from pathlib import Path

import httpx
import pytest

from capserve.core.model import Model
from capserve.model_registry.registry import AVAILABLE, UNLOADED, Registry
from capserve.server.app import create_app
from capserve.server.settings import Settings
from tests import model_factory
from tests.servers import start_server
from tests.conftest import png_bytes

N_SITES = 20
POOL = "abcdefghijklmnopqrstuvwxyz0123456789"
SITES = [f"site{i:02d}" for i in range(N_SITES)]
IMAGES = [png_bytes(str(1000 + 97 * i), size=(100 + 7 * i, 50)) for i in range(6)]


def charset(i: int) -> str:
    return POOL[i : i + 10]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def many_registry(tmp_path_factory, tiny_model_bytes) -> Path:
    root = tmp_path_factory.mktemp("many") / "registry"
    for i, site in enumerate(SITES):
        model_factory.write_entry(root / site / "1", tiny_model_bytes, site=site, charset=charset(i))
    return root


@pytest.fixture(scope="module")
def expected(many_registry) -> dict[tuple[str, int], str]:
    """Each (site, image) recognised one at a time by a registry of its own."""
    reference = Registry([many_registry])
    reference.refresh()
    return {(site, k): reference.get(site).recognize(img).text for site in SITES for k, img in enumerate(IMAGES)}


def test_the_sites_can_be_told_apart(expected):
    # The premise of every test here: a mix-up between sites would change the text.
    for k in range(len(IMAGES)):
        texts = [expected[(site, k)] for site in SITES]
        assert all(texts), "the tiny model read nothing; pick other images"
        assert len(set(texts)) == N_SITES


def test_twenty_entries_load_and_are_listed(many_registry):
    registry = Registry([many_registry])
    registry.refresh()
    assert registry.sites() == SITES
    assert [e.state for e in registry.entries()] == [AVAILABLE] * N_SITES
    app = create_app(registry, Settings(), watch=False)

    async def status():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/readyz")).json(), (await client.get("/v1/models")).json()

    ready, models = asyncio.run(status())
    assert ready == {"ok": True, "sites": SITES}
    assert [m["site"] for m in models["models"]] == SITES
    assert {m["state"] for m in models["models"]} == {AVAILABLE}
    assert [m["charset"] for m in models["models"]] == [charset(i) for i in range(N_SITES)]


def test_concurrent_requests_through_the_app_get_their_own_sites_answer(many_registry, expected):
    registry = Registry([many_registry])
    registry.refresh()
    app = create_app(registry, Settings(), watch=False)
    jobs = [(site, k, method) for site in SITES for k in range(len(IMAGES)) for method in ("GET", "POST")]

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            async def ask(site: str, k: int, method: str):
                if method == "GET":
                    r = await client.get(f"/recognize/{site}", params={"base64Image": b64(IMAGES[k])})
                else:
                    r = await client.post(f"/recognize/{site}", json={"image": b64(IMAGES[k])})
                return r.status_code, r.json()

            # Interleave the sites so consecutive requests go to different models.
            return await asyncio.gather(*(ask(*job) for job in sorted(jobs, key=lambda j: (j[1], j[2], j[0]))))

    answers = asyncio.run(main())
    for (site, k, method), (status, body) in zip(sorted(jobs, key=lambda j: (j[1], j[2], j[0])), answers):
        assert status == 200, body
        assert (body["site"], body["version"], body["text"]) == (site, 1, expected[(site, k)]), (site, k, method)


def test_threads_calling_twenty_models_at_once_get_the_serial_answers(many_registry, expected):
    registry = Registry([many_registry], max_interpreters=4)
    registry.refresh()
    jobs = [(site, k) for _ in range(4) for k in range(len(IMAGES)) for site in SITES]
    start = threading.Barrier(16)

    def ask(job):
        site, k = job
        return registry.get(site).recognize(IMAGES[k]).text

    def first(job):
        start.wait()  # all 16 threads begin together
        return ask(job)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        head = list(pool.map(first, jobs[:16]))
        rest = list(pool.map(ask, jobs[16:]))
    assert head + rest == [expected[job] for job in jobs]


def test_lazy_registry_loads_each_site_once_under_concurrent_first_requests(many_registry, expected):
    registry = Registry([many_registry], lazy=True)
    registry.refresh()
    assert registry.sites() == SITES
    assert {e.state for e in registry.entries()} == {UNLOADED}
    barrier = threading.Barrier(24)

    def first_request(i: int):
        site = SITES[i % 6]  # 4 threads race for each of 6 sites
        barrier.wait()
        model = registry.get(site, wait=60)
        return site, model, model.recognize(IMAGES[0]).text

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        results = list(pool.map(first_request, range(24)))
    for site in SITES[:6]:
        models = {id(model) for s, model, _ in results if s == site}
        assert len(models) == 1, f"{site} was loaded more than once"
    assert all(text == expected[(site, 0)] for site, _, text in results)
    states = {e.site: e.state for e in registry.entries()}
    assert all(states[s] == AVAILABLE for s in SITES[:6])
    assert all(states[s] == UNLOADED for s in SITES[6:])


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_a_two_worker_server_answers_every_site_correctly(many_registry, expected, lazy):
    with start_server(many_registry, "--workers", "2", *(["--lazy"] if lazy else [])) as base:
        jobs = [(site, k) for k in range(len(IMAGES)) for site in SITES]

        # 32 connections at once: the kernel spreads them over both workers.
        with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
            def ask(job):
                site, k = job
                r = client.post(f"{base}/recognize/{site}", json={"image": b64(IMAGES[k])})
                assert r.status_code == 200, r.text
                return r.json()["site"], r.json()["text"]

            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                answers = list(pool.map(ask, jobs))
        assert answers == [(site, expected[(site, k)]) for site, k in jobs]


def test_a_lazy_load_runs_off_the_event_loop(many_registry, expected, monkeypatch):
    """While a site's first request waits for its model, the loop answers other requests."""
    registry = Registry([many_registry], lazy=True)
    registry.refresh()
    loaded = threading.Event()
    real_warm_up = Model.warm_up

    def slow_warm_up(model):
        real_warm_up(model)
        assert loaded.wait(30), "the other requests were not answered while the model loaded"

    monkeypatch.setattr(Model, "warm_up", slow_warm_up)
    app = create_app(registry, Settings(), watch=False)
    finished: list[str] = []

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            async def first():
                r = await client.post(f"/recognize/{SITES[0]}", json={"image": b64(IMAGES[0])})
                finished.append("first")
                return r

            async def others():
                await asyncio.sleep(0.05)  # the first request has started its load
                answers = [await client.get("/healthz") for _ in range(3)]
                status = (await client.get(f"/v1/models/{SITES[0]}")).json()
                finished.append("others")
                loaded.set()
                return answers, status

            return await asyncio.gather(first(), others())

    slow, (answers, status) = asyncio.run(main())
    assert finished == ["others", "first"]
    assert [r.status_code for r in answers] == [200] * 3
    assert status["state"] == "LOADING"
    assert slow.status_code == 200 and slow.json()["text"] == expected[(SITES[0], 0)]
