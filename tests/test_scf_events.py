"""The adapter on the platforms' own sample events (tests/events/, sources in its README).

Each test loads one sample, changes only the fields it names (method, path, query, headers,
body) and checks the answer the trigger would send back.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from capserve.model_registry.registry import Registry
from capserve.scf_adapter import adapter
from capserve.server.app import create_app
from capserve.server.settings import Settings

EVENTS = Path(__file__).parent / "events"


def sample(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_bytes):
    from tests import model_factory

    root = tmp_path_factory.mktemp("registry")
    model_factory.write_entry(root / "tiny" / "1", tiny_model_bytes)
    app = create_app(Registry([root]), Settings(max_body_bytes=64 * 1024), watch=False)
    with TestClient(app):  # runs the lifespan: the registry loads
        yield app


@pytest.fixture(scope="module")
def image() -> str:
    from tests.conftest import png_bytes

    return base64.b64encode(png_bytes("1234", (64, 32))).decode()


@pytest.fixture(scope="module")
def expected(app, image) -> dict:
    """What the HTTP app answers for the image, less the timing."""
    doc = TestClient(app).get("/recognize/tiny", params={"base64Image": image}).json()
    doc.pop("elapsed_ms")
    return doc


def call(app, event: dict) -> tuple[int, dict, bytes]:
    answer = adapter.handle(app, event)
    body = base64.b64decode(answer["body"]) if answer["isBase64Encoded"] else answer["body"].encode()
    return answer["statusCode"], answer, body


def recognized(app, event: dict) -> dict:
    status, _, body = call(app, event)
    doc = json.loads(body)
    assert status == 200, doc
    doc.pop("elapsed_ms")
    return doc


def error_code(app, event: dict) -> tuple[int, str]:
    status, _, body = call(app, event)
    return status, json.loads(body)["error"]["code"]


# -- how each sample is pointed at a request ----------------------------------------------------


def tencent_apigw(method: str, path: str, query: dict | None = None, **fields) -> dict:
    event = sample("tencent-apigw.json")
    event.update(httpMethod=method, path=path, queryString=query or {}, queryStringParameters={}, body=None)
    event.update(fields)
    return event


def aws_v1(method: str, path: str, query: dict | None = None, **fields) -> dict:
    event = sample("aws-apigw-v1-rest.json")  # stage "testStage"
    query = query or {}
    event.update(httpMethod=method, path=path, queryStringParameters=query or None, body=None,
                 multiValueQueryStringParameters={k: [v] for k, v in query.items()} or None)
    event["headers"].pop("Content-Type")
    event["multiValueHeaders"].pop("Content-Type")
    event.update(fields)
    return event


def aws_v2(method: str, path: str, query: dict | None = None, **fields) -> dict:
    import urllib.parse

    event = sample("aws-apigw-v2-http.json")  # stage "$default" on the execute-api domain
    event["requestContext"]["http"].update(method=method, path=path)
    event.update(rawPath=path, rawQueryString=urllib.parse.urlencode(query or {}))
    event.update(fields)
    return event


SAMPLES = {"tencent-apigw": tencent_apigw, "aws-v1": aws_v1, "aws-v2": aws_v2}


# -- the fixes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SAMPLES)
def test_a_trailing_slash_is_answered_not_redirected(app, image, expected, kind):
    # A redirect would drop the gateway's stage (/release, /testStage) from its Location and
    # copy the whole image into it; Tencent's integrated response cannot send one at all.
    event = SAMPLES[kind]("GET", "/recognize/tiny/", {"base64Image": image})
    status, answer, _ = call(app, event)
    assert status == 200 and "location" not in answer["headers"]
    assert recognized(app, event) == expected


def test_aws_v2_stage_is_stripped_on_the_execute_api_domain_only(app, image, expected):
    named = aws_v2("GET", "/prod/recognize/tiny", {"base64Image": image})
    named["requestContext"]["stage"] = "prod"
    assert recognized(app, named) == expected
    for stage in ("recognize", "v1"):  # a custom domain mapping a stage named like a real segment
        custom = aws_v2("GET", "/recognize/tiny", {"base64Image": image})
        custom["requestContext"].update(stage=stage, domainName="ocr.example.com", domainPrefix="ocr")
        custom["headers"]["host"] = "ocr.example.com"
        assert recognized(app, custom) == expected, stage


def test_aws_v1_header_only_in_headers_is_read(app, image, expected):
    event = sample("aws-apigw-v1-powertools.json")
    assert "Origin" in event["headers"] and "Origin" not in event["multiValueHeaders"]  # the sample's own gap
    event.update(httpMethod="POST", path="/recognize/tiny", body=json.dumps({"image": image}))
    event["headers"]["content-type"] = "application/json"
    assert recognized(app, event) == expected


def test_tencent_function_url_json_body_without_content_type(app, image, expected):
    event = sample("tencent-function-url.json")
    assert not any(k.lower() == "content-type" for k in event["headers"])  # as documented
    event["path"] = "/recognize/tiny"
    assert error_code(app, event) == (400, "missing_image")  # its own body, {"test": ...}: JSON, no image
    event["body"] = json.dumps({"image": image})
    assert recognized(app, event) == expected


@pytest.mark.parametrize("flag", ["false", "False", False, None])
def test_is_base64_encoded_false_as_a_string_is_false(app, image, expected, flag):
    event = tencent_apigw("POST", "/recognize/tiny", body=json.dumps({"image": image}), isBase64Encoded=flag)
    event["headers"]["Content-Type"] = "application/json"
    assert recognized(app, event) == expected


@pytest.mark.parametrize("flag", ["true", True])
def test_is_base64_encoded_true_decodes_the_body(app, image, expected, flag):
    event = tencent_apigw("POST", "/recognize/tiny", body=image, isBase64Encoded=flag)
    event["headers"]["Content-Type"] = "image/png"
    assert recognized(app, event) == expected


@pytest.mark.parametrize("kind", SAMPLES)
@pytest.mark.parametrize("body", ["this is not base64!", "aGk=\x00", "iVBORw0KGgo=trailing"])
def test_a_body_flagged_base64_that_is_not_base64_is_400(app, kind, body):
    event = SAMPLES[kind]("POST", "/recognize/tiny", body=body, isBase64Encoded=True)
    event["headers"]["content-type"] = "image/png"
    status, answer, raw = call(app, event)
    assert status == 400 and json.loads(raw)["error"]["code"] == "bad_event"
    if kind == "aws-v1":
        assert answer["multiValueHeaders"]["content-type"] == ["application/json"]  # the trigger's own format


@pytest.mark.parametrize("kind", SAMPLES)
def test_head_answers_with_headers_and_no_body(app, image, kind):
    status, answer, body = call(app, SAMPLES[kind]("HEAD", "/recognize/tiny", {"base64Image": image}))
    assert (status, body) == (200, b"") and answer["headers"]["content-type"] == "application/json"
    status, answer, body = call(app, SAMPLES[kind]("HEAD", "/healthz"))
    assert (status, body) == (200, b"")
    status, answer, body = call(app, SAMPLES[kind]("HEAD", "/recognize/nope", {"base64Image": image}))
    assert (status, body) == (404, b"")


def test_head_over_http_reads_the_query_image(app, image):
    # The same request straight to the app: the image in the query string, as for GET.
    r = TestClient(app).head("/recognize/tiny", params={"base64Image": image})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
