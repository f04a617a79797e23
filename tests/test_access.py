"""Access control: API keys, per-site scopes, status protection, rate limits, HMAC signing."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest
from starlette.testclient import TestClient

from capserve.model_registry.registry import Registry
from capserve.server.access import Access, ApiKey, digest, load_keys, signature
from capserve.server.app import create_app
from capserve.server.settings import Settings
from tests import model_factory
from tests.conftest import png_bytes

IMAGE = base64.b64encode(png_bytes()).decode()


@pytest.fixture()
def two_sites(registry_dir, tiny_model_bytes):
    model_factory.write_entry(registry_dir / "other" / "1", tiny_model_bytes, site="other")
    registry = Registry([registry_dir])
    registry.refresh()
    return registry


def make_client(registry, access: Access) -> TestClient:
    return TestClient(create_app(registry, Settings(), access=access, watch=False))


def test_keys_off_by_default(two_sites):
    with make_client(two_sites, Access.from_settings(Settings(api_keys=None, api_keys_file=None, hmac_secret=None))) as c:
        assert c.get("/recognize/tiny", params={"base64Image": IMAGE}).status_code == 200
        assert c.get("/v1/models").status_code == 200


def test_api_keys_and_site_scopes(two_sites):
    keys = [ApiKey("all", digest("k-all")), ApiKey("tiny-only", digest("k-tiny"), sites=frozenset({"tiny"}))]
    with make_client(two_sites, Access(keys)) as c:
        r = c.get("/recognize/tiny", params={"base64Image": IMAGE})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        r = c.get("/recognize/tiny", params={"base64Image": IMAGE}, headers={"Authorization": "Bearer wrong-key"})
        assert r.status_code == 401 and "wrong-key" not in r.text
        ok = {"Authorization": "Bearer k-all"}
        assert c.get("/recognize/other", params={"base64Image": IMAGE}, headers=ok).status_code == 200
        scoped = {"X-API-Key": "k-tiny"}
        assert c.get("/recognize/tiny", params={"base64Image": IMAGE}, headers=scoped).status_code == 200
        r = c.get("/recognize/other", params={"base64Image": IMAGE}, headers=scoped)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_status_endpoints_are_protected_but_health_stays_open(two_sites):
    with make_client(two_sites, Access([ApiKey("k", digest("secret-key"))])) as c:
        for path in ("/v1/models", "/v1/models/tiny", "/v1/plugins", "/metrics"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"X-API-Key": "secret-key"}).status_code == 200, path
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert c.get(path).status_code == 200, path
    with make_client(two_sites, Access([ApiKey("k", digest("secret-key"))], protect_status=False)) as c:
        assert c.get("/v1/models").status_code == 200


def test_rate_limit_answers_429_with_retry_after(two_sites):
    with make_client(two_sites, Access([ApiKey("slow", digest("k"), rate=1)])) as c:
        codes = [c.get("/recognize/tiny", params={"base64Image": IMAGE}, headers={"X-API-Key": "k"}).status_code
                 for _ in range(5)]
        assert codes[:2] == [200, 200] and 429 in codes
        r = c.get("/recognize/tiny", params={"base64Image": IMAGE}, headers={"X-API-Key": "k"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "rate_limited"


def test_keys_from_env_and_file(tmp_path):
    file = tmp_path / "keys.yaml"
    file.write_text(
        "keys:\n"
        f"  - {{name: hashed, sha256: {hashlib.sha256(b'abc').hexdigest()}, sites: [demo], rate: 5}}\n"
        "  - {name: plain, key: xyz}\n"
    )
    keys = load_keys(Settings(api_keys="one, two", api_keys_file=file))
    assert [k.name for k in keys] == ["env-key-1", "env-key-2", "hashed", "plain"]
    assert keys[1].sha256 == digest("two") and keys[2].sha256 == digest("abc")
    assert keys[2].sites == frozenset({"demo"}) and keys[2].rate == 5
    file.write_text("keys:\n  - {name: bad, sha256: nothex}\n")
    with pytest.raises(ValueError, match="keys\\[0\\]: sha256 must be hex"):
        load_keys(Settings(api_keys=None, api_keys_file=file))


def signed_headers(secret: bytes, method: str, path: str, query: str, body: bytes, ts: float | None = None) -> dict:
    timestamp = str(int(ts if ts is not None else time.time()))
    return {"X-Capserve-Timestamp": timestamp,
            "X-Capserve-Signature": signature(secret, timestamp, method, path, query, body)}


def test_hmac_signing(two_sites):
    secret = b"s3cret"
    body = ('{"image": "%s"}' % IMAGE).encode()
    json_headers = {"content-type": "application/json"}
    with make_client(two_sites, Access(hmac_secret=secret, hmac_window=60)) as c:
        r = c.post("/recognize/tiny", content=body, headers=json_headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "signature_required"

        good = signed_headers(secret, "POST", "/recognize/tiny", "", body)
        assert c.post("/recognize/tiny", content=body, headers={**json_headers, **good}).status_code == 200
        r = c.post("/recognize/tiny", content=body, headers={**json_headers, **good})
        assert r.status_code == 401 and r.json()["error"]["code"] == "replayed_signature"

        old = signed_headers(secret, "POST", "/recognize/tiny", "", body, ts=time.time() - 120)
        r = c.post("/recognize/tiny", content=body, headers={**json_headers, **old})
        assert r.json()["error"]["code"] == "expired_signature"

        other_body = signed_headers(secret, "POST", "/recognize/tiny", "", b"{}")
        r = c.post("/recognize/tiny", content=body, headers={**json_headers, **other_body})
        assert r.json()["error"]["code"] == "bad_signature"

        query = "base64Image=" + IMAGE.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
        get = signed_headers(secret, "GET", "/recognize/tiny", query, b"")
        assert c.get("/recognize/tiny?" + query, headers=get).status_code == 200


def test_keys_rate_limits_and_signing_hold_in_the_scf_adapter(two_sites):
    from capserve.scf_adapter import adapter
    from tests.test_scf_adapter import KINDS, make_event

    secret = b"s3cret"
    app = create_app(two_sites, Settings(), access=Access([ApiKey("k", digest("key-1"))], hmac_secret=secret),
                     watch=False)
    query = [("base64Image", IMAGE)]
    from urllib.parse import urlencode

    raw_query = urlencode(query)
    for kind in KINDS:
        answer = adapter.handle(app, make_event(kind, "GET", "/recognize/tiny", query=query))
        assert answer["statusCode"] == 401 and '"unauthorized"' in answer["body"], kind
        signed = signed_headers(secret, "GET", "/recognize/tiny", raw_query, b"")
        ok = adapter.handle(app, make_event(kind, "GET", "/recognize/tiny", query=query, raw_query=raw_query,
                                             headers={"X-API-Key": "key-1", **signed}))
        assert ok["statusCode"] == 200, (kind, ok["body"])
        replay = adapter.handle(app, make_event(kind, "GET", "/recognize/tiny", query=query, raw_query=raw_query,
                                                 headers={"X-API-Key": "key-1", **signed}))
        assert replay["statusCode"] == 401 and "replayed_signature" in replay["body"], kind
        time.sleep(1.01)  # the next kind signs with a new timestamp, so a new signature
