"""The SCF adapter answers every event kind exactly as the HTTP app answers the same request.

Events are built from the documented formats: Tencent API Gateway (integrated request),
Tencent function URL (event function), AWS API Gateway REST (payload 1.0) and HTTP API
(payload 2.0). Each request goes once through Starlette's TestClient and once through
``capserve.scf_adapter.adapter.handle`` as an event, into the same app; status, content type and JSON
(less ``elapsed_ms``) must be equal.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import sys
import urllib.parse

import pytest
from starlette.testclient import TestClient

from capserve.model_registry.registry import Registry
from capserve.scf_adapter import adapter, events
from capserve.server.app import create_app
from capserve.server.settings import Settings
from tests.conftest import png_bytes

KINDS = (events.TENCENT_APIGW, events.TENCENT_URL, events.AWS_V1, events.AWS_V2)
BINARY_KINDS = (events.TENCENT_APIGW, events.AWS_V1, events.AWS_V2)  # those with isBase64Encoded


@pytest.fixture()
def app(registry_dir):
    app = create_app(Registry([registry_dir]), Settings(max_body_bytes=64 * 1024), watch=False)
    with TestClient(app):  # runs the lifespan: the registry loads
        yield app


@pytest.fixture()
def client(app):
    return TestClient(app)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- documented event shapes --------------------------------------------------------------------


def _query_dict(query: list[tuple[str, str]]) -> dict:
    out: dict = {}
    for key, value in query:
        if key in out:
            out[key] = out[key] if isinstance(out[key], list) else [out[key]]
            out[key].append(value)
        else:
            out[key] = value
    return out


def _body_field(body: bytes, encode: bool) -> tuple[str | None, bool]:
    if not body:
        return None, False
    if encode:
        return b64(body), True
    return body.decode("utf-8"), False


def make_event(kind: str, method: str, path: str, *, query=(), headers=None, body=b"", encode=False,
               stage="release", raw_query: str | None = None) -> dict:
    """An event of ``kind`` for one request. ``query`` holds decoded (name, value) pairs."""
    query = list(query)
    headers = dict(headers or {})
    text, is_b64 = _body_field(body, encode)
    if kind == events.TENCENT_APIGW:
        return {
            "requestContext": {"serviceId": "service-f94sy04v", "path": "/", "httpMethod": "ANY",
                               "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "identity": {},
                               "sourceIp": "10.0.2.14", "stage": stage},
            "headers": {"Host": "service-f94sy04v-1250000000.gz.apigw.tencentcs.com", "User-Agent": "curl/8",
                        **{k.title(): v for k, v in headers.items()}},
            "body": text, "isBase64Encoded": is_b64,
            "pathParameters": {}, "queryStringParameters": {}, "headerParameters": {},
            "stageVariables": {"stage": stage},
            "path": path, "queryString": _query_dict(query), "httpMethod": method,
        }
    if kind == events.TENCENT_URL:
        assert not is_b64, "function URL events carry no isBase64Encoded"
        return {"body": text or "", "headers": {"accept": "*/*", "x-scf-remote-addr": "111.206.96.145",
                                                **{k.lower(): v for k, v in headers.items()}},
                "httpMethod": method, "path": path, "queryString": _query_dict(query)}
    if kind == events.AWS_V1:
        multi: dict = {}
        for key, value in query:
            multi.setdefault(key, []).append(value)
        return {
            "resource": "/{proxy+}", "path": path, "httpMethod": method,
            "headers": headers or None, "multiValueHeaders": {k: [v] for k, v in headers.items()} or None,
            "queryStringParameters": {k: v[-1] for k, v in multi.items()} or None,
            "multiValueQueryStringParameters": multi or None,
            "pathParameters": {"proxy": path.lstrip("/")}, "stageVariables": None,
            "requestContext": {"resourcePath": "/{proxy+}", "httpMethod": method, "path": f"/{stage}{path}",
                               "stage": stage, "apiId": "1234567890", "identity": {"sourceIp": "10.0.0.1"}},
            "body": text, "isBase64Encoded": is_b64,
        }
    if kind == events.AWS_V2:
        raw = raw_query if raw_query is not None else urllib.parse.urlencode(query)
        return {
            "version": "2.0", "routeKey": "$default", "rawPath": f"/{stage}{path}", "rawQueryString": raw,
            "headers": {k.lower(): v for k, v in headers.items()},
            "queryStringParameters": dict(query) or None,
            "requestContext": {"apiId": "api-id", "domainName": "id.execute-api.us-east-1.amazonaws.com",
                               "http": {"method": method, "path": f"/{stage}{path}", "protocol": "HTTP/1.1",
                                        "sourceIp": "192.0.2.1", "userAgent": "agent"},
                               "requestId": "id", "routeKey": "$default", "stage": stage},
            "body": text, "isBase64Encoded": is_b64,
        }
    raise AssertionError(kind)


# -- comparison ---------------------------------------------------------------------------------


def _comparable(status: int, content_type: str, body: bytes):
    try:
        doc = json.loads(body)
    except ValueError:
        return status, content_type, body
    if isinstance(doc, dict):
        doc.pop("elapsed_ms", None)
    return status, content_type, doc


def http_answer(client, method, path, *, query=(), headers=None, body=b"", raw_query=None):
    url = path + ("?" + raw_query if raw_query is not None else "")
    r = client.request(method, url, params=None if raw_query is not None else list(query),
                       headers=headers or {}, content=body or None)
    return _comparable(r.status_code, r.headers.get("content-type", ""), r.content)


def event_answer(app, kind, method, path, **kwargs):
    answer = adapter.handle(app, make_event(kind, method, path, **kwargs))
    assert set(answer) >= {"isBase64Encoded", "statusCode", "headers", "body"}
    body = base64.b64decode(answer["body"]) if answer["isBase64Encoded"] else answer["body"].encode()
    return _comparable(answer["statusCode"], answer["headers"].get("content-type", ""), body)


def assert_same(client, app, kind, method, path, encode=False, **kwargs):
    expected = http_answer(client, method, path, **kwargs)
    got = event_answer(app, kind, method, path, encode=encode, **kwargs)
    assert got == expected
    return got


# -- recognition requests -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_get_base64_image(client, app, kind, png):
    status, _, doc = assert_same(client, app, kind, "GET", "/recognize/tiny", query=[("base64Image", b64(png))])
    assert status == 200 and doc["ok"] is True and doc["site"] == "tiny"


@pytest.mark.parametrize("kind", KINDS)
def test_get_data_uri_and_urlsafe(client, app, kind, png):
    assert_same(client, app, kind, "GET", "/recognize/tiny", query=[("image", "data:image/png;base64," + b64(png))])
    urlsafe = base64.urlsafe_b64encode(png).decode().rstrip("=")
    assert_same(client, app, kind, "GET", "/recognize/tiny", query=[("base64Image", urlsafe)])


@pytest.mark.parametrize("kind", KINDS)
def test_get_unescaped_base64(client, app, kind):
    png = next(png_bytes(str(i)) for i in range(100) if "+" in b64(png_bytes(str(i))))
    raw = "base64Image=" + b64(png)  # every "+" arrives as a space
    expected = http_answer(client, "GET", "/recognize/tiny", raw_query=raw)
    decoded = urllib.parse.parse_qsl(raw)  # what a gateway hands over, decoded
    got = event_answer(app, kind, "GET", "/recognize/tiny", query=decoded, raw_query=raw)
    assert got == expected and got[0] == 200


@pytest.mark.parametrize("kind, encode", [(k, False) for k in KINDS] + [(k, True) for k in BINARY_KINDS])
def test_post_json(client, app, kind, encode, png):
    body = json.dumps({"image": b64(png)}).encode()
    status, _, doc = assert_same(client, app, kind, "POST", "/recognize/tiny", encode=encode,
                                 headers={"content-type": "application/json"}, body=body)
    assert status == 200 and doc["ok"] is True


@pytest.mark.parametrize("kind", BINARY_KINDS)
@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream", None])
def test_post_raw_image_base64_encoded_event(client, app, kind, content_type, png):
    headers = {"content-type": content_type} if content_type else {}
    status, _, _ = assert_same(client, app, kind, "POST", "/recognize/tiny", encode=True, headers=headers, body=png)
    assert status == 200


@pytest.mark.parametrize("kind", KINDS)
def test_post_raw_base64_text(client, app, kind, png):
    status, _, _ = assert_same(client, app, kind, "POST", "/recognize/tiny",
                               headers={"content-type": "text/plain"}, body=b64(png).encode())
    assert status == 200


@pytest.mark.parametrize("kind", BINARY_KINDS)
def test_post_multipart(client, app, kind, png):
    boundary = "capserveboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"c.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    status, _, _ = assert_same(client, app, kind, "POST", "/recognize/tiny", encode=True, headers=headers, body=body)
    assert status == 200


# -- errors -------------------------------------------------------------------------------------

ERRORS = [
    ("GET", "/recognize/nope", {"query": [("base64Image", "aGk=")]}, 404, "unknown_site"),
    ("GET", "/recognize/tiny", {}, 400, "missing_image"),
    ("GET", "/recognize/tiny", {"query": [("base64Image", "!!!not base64!!!")]}, 400, "bad_base64"),
    ("POST", "/recognize/tiny", {"headers": {"content-type": "application/json"}, "body": b'{"picture": "x"}'},
     400, "missing_image"),
    ("POST", "/recognize/tiny", {"headers": {"content-type": "application/json"}, "body": b"{not json"}, 400, "bad_json"),
    ("POST", "/recognize/tiny", {"headers": {"content-type": "application/json"}, "body": b"[1, 2]"}, 400, "bad_json"),
    ("POST", "/recognize/tiny", {}, 400, "missing_image"),
    ("POST", "/recognize/tiny", {"body": b"this is not an image"}, 422, "bad_image"),
    ("GET", "/recognize/tiny", {"query": [("base64Image", b64(b"GIF89a-truncated"))]}, 422, "bad_image"),
    ("POST", "/recognize/tiny", {"body": b"x" * (65 * 1024)}, 413, "body_too_large"),
    ("POST", "/recognize/tiny", {"headers": {"content-type": "application/xml"}, "body": b"<xml/>"},
     415, "unsupported_media_type"),
    ("GET", "/no/such/route", {}, 404, "not_found"),
    ("PUT", "/recognize/tiny", {"body": b"x"}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method, path, request_kwargs, status, code", ERRORS,
                         ids=[f"{e[3]}-{e[4]}-{i}" for i, e in enumerate(ERRORS)])
def test_errors_are_the_http_errors(client, app, kind, method, path, request_kwargs, status, code):
    got_status, content_type, doc = assert_same(client, app, kind, method, path, **request_kwargs)
    assert got_status == status and content_type == "application/json"
    assert doc["ok"] is False and doc["error"]["code"] == code and doc["error"]["message"]


@pytest.mark.parametrize("kind", BINARY_KINDS)
def test_unsupported_image_format_is_415(client, app, kind):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), "white").save(buffer, "TIFF")
    status, _, doc = assert_same(client, app, kind, "POST", "/recognize/tiny", encode=True,
                                 headers={"content-type": "image/tiff"}, body=buffer.getvalue())
    assert status == 415, doc


# -- other routes -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models", "/v1/models/tiny", "/v1/models/nope",
                                  "/v1/plugins", "/openapi.json"])
def test_status_routes(client, app, kind, path):
    assert_same(client, app, kind, "GET", path)


@pytest.mark.parametrize("kind", KINDS)
def test_metrics_is_text(app, kind):
    answer = adapter.handle(app, make_event(kind, "GET", "/metrics"))
    assert answer["statusCode"] == 200 and answer["isBase64Encoded"] is False
    assert answer["headers"]["content-type"].startswith("text/plain") and "capserve" in answer["body"]


# -- event details ------------------------------------------------------------------------------


def test_answer_shapes(app, png):
    query = [("base64Image", b64(png))]
    tencent = adapter.handle(app, make_event(events.TENCENT_APIGW, "GET", "/recognize/tiny", query=query))
    assert set(tencent) == {"isBase64Encoded", "statusCode", "headers", "body"}
    assert tencent["isBase64Encoded"] is False and isinstance(tencent["body"], str)
    assert "content-length" not in tencent["headers"]
    v1 = adapter.handle(app, make_event(events.AWS_V1, "GET", "/recognize/tiny", query=query))
    assert v1["multiValueHeaders"]["content-type"] == ["application/json"]
    v2 = adapter.handle(app, make_event(events.AWS_V2, "GET", "/recognize/tiny", query=query))
    assert set(v2) == {"isBase64Encoded", "statusCode", "headers", "body"}


def test_binary_response_is_base64():
    png = png_bytes()
    response = events.HttpResponse(200, [(b"content-type", b"image/png"), (b"set-cookie", b"a=1")], png)
    answer = events.to_answer(response, events.TENCENT_APIGW)
    assert answer["isBase64Encoded"] is True and base64.b64decode(answer["body"]) == png
    v2 = events.to_answer(response, events.AWS_V2)
    assert v2["cookies"] == ["a=1"] and "set-cookie" not in v2["headers"]


def test_aws_v2_stage_is_stripped_and_default_stage_kept(client, app, png):
    query = [("base64Image", b64(png))]
    event = make_event(events.AWS_V2, "GET", "/recognize/tiny", query=query, stage="prod")
    assert event["rawPath"] == "/prod/recognize/tiny"
    assert adapter.handle(app, event)["statusCode"] == 200
    default = make_event(events.AWS_V2, "GET", "/recognize/tiny", query=query)
    default["rawPath"], default["requestContext"]["stage"] = "/recognize/tiny", "$default"
    assert adapter.handle(app, default)["statusCode"] == 200


def test_base_path_is_stripped(app, png, monkeypatch):
    monkeypatch.setenv("CAPSERVE_BASE_PATH", "/capserve")
    for kind in KINDS:
        event = make_event(kind, "GET", "/capserve/recognize/tiny", query=[("base64Image", b64(png))])
        assert adapter.handle(app, event)["statusCode"] == 200, kind
        root = adapter.handle(app, make_event(kind, "GET", "/capserve"))  # the prefix alone is the root: the console
        assert root["statusCode"] == 200 and root["headers"]["content-type"].startswith("text/html"), kind
        assert adapter.handle(app, make_event(kind, "GET", "/capserve/nothing"))["statusCode"] == 404


def test_repeated_query_keys_keep_the_first_image(client, app, png):
    query = [("base64Image", b64(png)), ("base64Image", "!!!")]
    for kind in KINDS:
        assert_same(client, app, kind, "GET", "/recognize/tiny", query=query)


def test_timer_and_direct_and_bad_events(app, png):
    timer = {"Type": "Timer", "TriggerName": "keep-warm", "Time": "2026-01-01T00:00:00Z", "Message": ""}
    answer = adapter.handle(app, timer)
    assert answer["statusCode"] == 200 and json.loads(answer["body"]) == {"ok": True, "sites": ["tiny"]}
    direct = adapter.handle(app, {"site": "tiny", "image": b64(png)})
    assert direct["statusCode"] == 200 and json.loads(direct["body"])["site"] == "tiny"
    for bad in ([1, 2], "text", {"hello": "world"}, None):
        answer = adapter.handle(app, bad)
        assert answer["statusCode"] == 400 and json.loads(answer["body"])["error"]["code"] == "bad_event"


def test_event_kinds_are_told_apart(png):
    for kind in KINDS:
        assert events.kind_of(make_event(kind, "GET", "/healthz")) == kind


def test_main_handler_loads_models_once_at_import(registry_dir, monkeypatch, png):
    monkeypatch.setenv("CAPSERVE_REGISTRY", str(registry_dir))
    monkeypatch.delenv("CAPSERVE_SCF_REFRESH_INTERVAL", raising=False)
    sys.modules.pop("capserve.scf_adapter.handler", None)
    handler = importlib.import_module("capserve.scf_adapter.handler")
    try:
        assert handler.registry.sites() == ["tiny"]  # loaded by the import, before any event
        model = handler.registry.serving("tiny")
        event = make_event(events.TENCENT_URL, "GET", "/recognize/tiny", query=[("base64Image", b64(png))])
        first, second = handler.main_handler(event, None), handler.main_handler(event, None)
        assert first["statusCode"] == second["statusCode"] == 200
        assert handler.registry.serving("tiny") is model  # nothing reloaded per invocation
    finally:
        sys.modules.pop("capserve.scf_adapter.handler", None)
