"""The stores of rate limits and used signatures (server/limits*.py), and what Access does
when its store cannot answer. Across real processes: tests/test_limits_servers.py."""

from __future__ import annotations

import base64
import logging
import os
import time

import pytest
from starlette.testclient import TestClient

from capserve.core.settings import Settings, SettingsError
from capserve.model_registry.registry import Registry
from capserve.server import limits_redis
from capserve.server.access import Access, ApiKey, digest, signature
from capserve.server.app import create_app
from capserve.server.limits import MemoryStore, StoreUnavailable, open_store
from capserve.server.limits_redis import RedisStore
from capserve.server import limits_shared
from capserve.server.limits_shared import PROBES, SharedStore
from tests.conftest import png_bytes
from tests.servers import free_port, start_redis

IMAGE = base64.b64encode(png_bytes()).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with start_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["memory", "shared", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "shared":
        made = SharedStore(tmp_path / "limits")
    else:
        made = RedisStore(request.getfixturevalue("redis_url"))
        made.client.flushdb()
    yield made
    made.close()


@pytest.fixture(params=["memory", "shared"])
def clocked(request, tmp_path):
    """A store on a clock the test moves."""
    clock = Clock()
    made = MemoryStore(clock) if request.param == "memory" else SharedStore(tmp_path / "limits", clock)
    yield made, clock
    made.close()


def test_a_bucket_gives_its_burst_then_says_how_long_to_wait(store):
    answers = [store.take("k", 2, 4) for _ in range(6)]
    assert answers[:4] == [0, 0, 0, 0]
    assert all(0.4 < wait <= 0.5 for wait in answers[4:])  # half a token short at 2 per second
    assert store.take("other", 2, 4) == 0  # buckets are separate


def test_a_key_is_new_once_within_its_ttl(store):
    assert store.first_use("sig-a", 60) is True
    assert store.first_use("sig-a", 60) is False
    assert store.first_use("sig-b", 60) is True


def test_buckets_refill_at_their_rate_up_to_the_burst(clocked):
    store, clock = clocked
    assert [store.take("k", 2, 4) for _ in range(4)] == [0, 0, 0, 0]
    assert store.take("k", 2, 4) == pytest.approx(0.5)
    clock.now += 0.5
    assert store.take("k", 2, 4) == 0 and store.take("k", 2, 4) > 0
    clock.now += 3600  # an hour idle fills the bucket to its burst, no more
    assert [store.take("k", 2, 4) for _ in range(5)][4] > 0


def test_a_key_is_new_again_once_expired(clocked):
    store, clock = clocked
    assert store.first_use("sig", 10)
    clock.now += 9.9
    assert not store.first_use("sig", 10)
    clock.now += 0.2
    assert store.first_use("sig", 10)
    assert not store.first_use("sig", 10)


def test_the_memory_store_drops_expired_keys_a_few_per_call():
    clock = Clock()
    store = MemoryStore(clock)
    for i in range(1000):
        store.first_use(f"old-{i}", 10)
    clock.now += 11
    store.first_use("new-0", 10)
    assert len(store) == 1000 - 2 + 1  # two dropped per call: no call pays for the whole backlog
    for i in range(1, 600):
        store.first_use(f"new-{i}", 10)
    assert len(store) == 600  # the backlog is gone; only what the window can still use is held


def test_the_shared_table_reuses_expired_slots_and_never_forgets_a_live_one(tmp_path):
    clock = Clock()
    store = SharedStore(tmp_path / "limits", clock, signatures=4)  # 4 + PROBES slots in all
    remembered = 0
    with pytest.raises(StoreUnavailable, match="no free slot"):
        for i in range(1000):
            assert store.first_use(f"sig-{i}", 10)
            remembered += 1
    assert PROBES <= remembered < PROBES + 4 and len(store) == remembered
    assert not any(store.first_use(f"sig-{i}", 10) for i in range(remembered))  # all still refused
    clock.now += 11  # all expired: their slots are free again, with nothing swept
    assert all(store.first_use(f"new-{i}", 10) for i in range(PROBES))


def test_a_key_remembered_again_is_not_dropped_by_its_old_expiry(clocked):
    store, clock = clocked
    store.first_use("sig", 1)
    clock.now += 2
    assert store.first_use("sig", 100)  # expired, so new; remembered for 100 s
    clock.now += 2
    store.first_use("other", 100)  # drops the expired entries of the queue
    assert not store.first_use("sig", 100)


def test_two_mappings_of_one_file_share_buckets_and_keys(tmp_path):
    a, b = SharedStore(tmp_path / "limits"), SharedStore(tmp_path / "limits")
    assert [a.take("k", 1, 2), b.take("k", 1, 2)] == [0, 0] and b.take("k", 1, 2) > 0 and a.take("k", 1, 2) > 0
    assert a.first_use("sig", 60) and not b.first_use("sig", 60)
    a.close()
    b.close()


def test_the_table_the_workers_share_is_memory_of_the_starting_process(tmp_path):
    fd = limits_shared.create(tmp_path)
    if fd is None:
        pytest.skip("no memfd_create here: the workers make a plain file")
    try:
        assert os.readlink(tmp_path / "table") == f"/proc/{os.getpid()}/fd/{fd}"
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:capserve-limits")  # not on a disk
        a, b = SharedStore(tmp_path / "table"), SharedStore(tmp_path / "table")
        assert a.first_use("sig", 60) and not b.first_use("sig", 60)
        assert a.take("k", 1, 1) == 0 and b.take("k", 1, 1) > 0
        a.close()
        b.close()
    finally:
        os.close(fd)


def test_without_memfd_the_workers_share_a_plain_file(tmp_path, monkeypatch):
    def refused(name):
        raise PermissionError("not here")

    monkeypatch.setattr(os, "memfd_create", refused)
    assert limits_shared.create(tmp_path) is None and not (tmp_path / "table").exists()
    a, b = SharedStore(tmp_path / "table"), SharedStore(tmp_path / "table")
    assert a.first_use("sig", 60) and not b.first_use("sig", 60)
    assert (tmp_path / "table").stat().st_blocks * 512 >= (tmp_path / "table").stat().st_size  # reserved
    a.close()
    b.close()


def test_a_shared_file_that_cannot_be_made_raises(tmp_path):
    store = SharedStore(tmp_path / "missing-folder" / "limits")
    with pytest.raises(StoreUnavailable):
        store.first_use("sig", 60)
    with pytest.raises(StoreUnavailable):
        store.take("k", 1, 2)


def test_redis_keys_expire_by_themselves(redis_url):
    store = RedisStore(redis_url)
    store.client.flushdb()
    store.first_use("abc", 42.5)
    assert 42_000 < store.client.pttl("capserve:sig:abc") <= 42_500
    store.take("k", 2, 4)  # a token short of full: the hash goes once it would be full again
    assert 0 < store.client.pttl("capserve:rate:k") <= 1_500
    store.close()


def test_an_unreachable_redis_raises_then_is_not_tried_for_a_pause(monkeypatch):
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable):
        store.first_use("sig", 60)
    tried = []
    monkeypatch.setattr(store.client, "set", lambda *a, **k: tried.append(a))
    with pytest.raises(StoreUnavailable, match="failed less than"):
        store.first_use("sig", 60)
    with pytest.raises(StoreUnavailable):
        store.take("k", 1, 2)
    assert tried == []


def test_redis_is_used_again_once_back(tmp_path, monkeypatch):
    monkeypatch.setattr(limits_redis, "PAUSE_S", 0.0)
    port = free_port()
    store = RedisStore(f"redis://127.0.0.1:{port}/0")
    with start_redis(tmp_path, port):
        assert store.first_use("sig", 60)
    with pytest.raises(StoreUnavailable):  # stopped: the pooled connection is dead
        store.first_use("sig-2", 60)
    with start_redis(tmp_path, port):  # restarted empty, on the same port
        assert store.first_use("sig-2", 60)
    store.close()


def test_the_settings_choose_the_store(tmp_path, redis_url, monkeypatch):
    monkeypatch.delenv("CAPSERVE_REDIS_FAIL", raising=False)
    assert type(open_store(Settings(redis_url=None, limits_dir=None))) is MemoryStore
    assert type(open_store(Settings(redis_url=None, limits_dir=tmp_path))) is SharedStore
    assert type(open_store(Settings(redis_url=redis_url, limits_dir=tmp_path))) is RedisStore
    with pytest.raises(ValueError, match="CAPSERVE_REDIS_URL must start with redis://"):
        Access.from_settings(Settings(redis_url="http://127.0.0.1:6379"))
    with pytest.raises(SettingsError, match="CAPSERVE_REDIS_FAIL"):
        Settings(redis_fail="sometimes")
    assert Access.from_settings(Settings(redis_fail="open")).fail_open
    assert not Access.from_settings(Settings()).fail_open  # closed by default


class DownStore:
    def take(self, bucket, rate, burst):
        raise StoreUnavailable("down")

    def first_use(self, key, ttl):
        raise StoreUnavailable("down")

    def close(self):
        pass


@pytest.fixture()
def registry(registry_dir):
    made = Registry([registry_dir])
    made.refresh()
    return made


def _get(client: TestClient, key: str, secret: bytes | None = None):
    headers = {"X-API-Key": key}
    query = "base64Image=" + IMAGE.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    if secret is not None:
        timestamp = str(int(time.time()))
        headers |= {"X-Capserve-Timestamp": timestamp,
                    "X-Capserve-Signature": signature(secret, timestamp, "GET", "/recognize/tiny", query, b"")}
    return client.get("/recognize/tiny?" + query, headers=headers)


@pytest.mark.parametrize("fail_open", [False, True])
def test_a_store_that_cannot_answer_refuses_signed_requests_and_rate_limits_as_configured(registry, fail_open):
    keys = [ApiKey("limited", digest("limited"), rate=2), ApiKey("free", digest("free"))]
    plain = Access(keys, store=DownStore(), fail_open=fail_open)
    with TestClient(create_app(registry, Settings(), access=plain, watch=False)) as c:
        assert _get(c, "free").status_code == 200  # no rate limit: the store is not asked
        r = _get(c, "limited")
        if fail_open:
            assert r.status_code == 200
        else:
            assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
            assert r.headers["retry-after"] == "1"
    signed = Access(keys, hmac_secret=b"s", store=DownStore(), fail_open=fail_open)
    with TestClient(create_app(registry, Settings(), access=signed, watch=False)) as c:
        r = _get(c, "free", b"s")  # replays cannot be ruled out: refused whatever fail_open says
        assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
        assert "down" not in r.text


def test_redis_down_is_logged_once_per_pause_without_the_password(caplog):
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING, "capserve.limits"):
        for _ in range(3):
            with pytest.raises(StoreUnavailable):
                store.first_use("sig", 60)
    assert len(caplog.records) == 1 and "127.0.0.1" in caplog.text and "hunter2" not in caplog.text


def test_a_signature_is_remembered_while_its_timestamp_can_pass(registry):
    """A timestamp ahead of the server's clock stays valid for up to twice the window."""
    seen = []

    class Recording(MemoryStore):
        def first_use(self, key, ttl):
            seen.append(ttl)
            return super().first_use(key, ttl)

    access = Access(hmac_secret=b"s", hmac_window=60, store=Recording())
    query, ahead = "base64Image=x", str(int(time.time()) + 50)
    headers = {"x-capserve-timestamp": ahead,
               "x-capserve-signature": signature(b"s", ahead, "GET", "/recognize/tiny", query, b"")}
    access.check_signature(headers, "GET", "/recognize/tiny", query, b"")
    assert 109 < seen[0] <= 111
