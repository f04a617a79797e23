"""The HTTP API through the ASGI app: every route and every error status."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from starlette.testclient import TestClient

from capserve.model_registry.registry import BUNDLED, Registry
from capserve.server.app import create_app
from capserve.server.settings import Settings
from tests.conftest import DEMO_EXAMPLE


@pytest.fixture()
def client(registry_dir):
    registry = Registry([registry_dir])
    app = create_app(registry, Settings(max_body_bytes=64 * 1024), watch=False)
    with TestClient(app) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def demo():
    """The bundled entries, which read real captchas."""
    with TestClient(create_app(Registry([BUNDLED]), watch=False)) as c:
        yield c


def test_get_base64_answers_text(demo):
    r = demo.get("/recognize/demo", params={"base64Image": b64(DEMO_EXAMPLE.read_bytes())})
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True and body["site"] == "demo" and body["version"] == 1
    assert body["text"] == "7kp3"
    assert 0.9 <= body["confidence"] <= 1.0 and body["elapsed_ms"] > 0


def test_every_input_form_gives_the_same_answer(client, png):
    expected = client.get("/recognize/tiny", params={"base64Image": b64(png)}).json()["text"]
    urlsafe = base64.urlsafe_b64encode(png).decode().rstrip("=")
    answers = [
        client.get("/recognize/tiny", params={"base64Image": "data:image/png;base64," + b64(png)}),
        client.get("/recognize/tiny", params={"base64Image": urlsafe}),
        # unescaped: every "+" of the base64 arrives as a space
        client.get("/recognize/tiny?base64Image=" + b64(png)),
        client.post("/recognize/tiny", json={"image": b64(png)}),
        client.post("/recognize/tiny", files={"image": ("c.png", png, "image/png")}),
        client.post("/recognize/tiny", content=png, headers={"content-type": "image/png"}),
        client.post("/recognize/tiny", content=png),
    ]
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["text"] == expected


DETAIL_FIELDS = {"raw_text", "characters", "timings_ms"}


def test_details_add_each_characters_confidence_and_the_timings(client, png):
    plain = client.get("/recognize/tiny", params={"base64Image": b64(png)}).json()
    assert not DETAIL_FIELDS & set(plain)
    for r in (
        client.get("/recognize/tiny", params={"base64Image": b64(png), "details": "true"}),
        client.post("/recognize/tiny?details=1", json={"image": b64(png)}),
    ):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["text"] == plain["text"] == body["raw_text"]  # the tiny entry has no post-processing
        assert "".join(c["char"] for c in body["characters"]) == body["raw_text"]
        assert all(0 < c["confidence"] <= 1 for c in body["characters"])
        product = 1.0
        for c in body["characters"]:
            product *= c["confidence"]
        assert product == pytest.approx(body["confidence"], abs=1e-3)
        assert set(body["timings_ms"]) == {"decode", "preprocess", "invoke", "postprocess"}
        assert all(ms >= 0 for ms in body["timings_ms"].values())
        assert sum(body["timings_ms"].values()) <= body["elapsed_ms"] + 0.01


def test_details_false_answers_as_without(client, png):
    body = client.get("/recognize/tiny", params={"base64Image": b64(png), "details": "false"}).json()
    assert body["ok"] is True and not DETAIL_FIELDS & set(body)


@pytest.mark.parametrize(
    "request_kwargs, status, code",
    [
        ({"method": "GET", "url": "/recognize/nope", "params": {"base64Image": "aGk="}}, 404, "unknown_site"),
        ({"method": "GET", "url": "/recognize/tiny"}, 400, "missing_image"),
        ({"method": "GET", "url": "/recognize/tiny", "params": {"base64Image": "!!!not base64!!!"}}, 400, "bad_base64"),
        ({"method": "POST", "url": "/recognize/tiny", "json": {"picture": "x"}}, 400, "missing_image"),
        ({"method": "POST", "url": "/recognize/tiny", "content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "bad_json"),
        ({"method": "POST", "url": "/recognize/tiny", "content": b""}, 400, "missing_image"),
        ({"method": "POST", "url": "/recognize/tiny", "content": b"this is not an image"}, 422, "bad_image"),
        ({"method": "GET", "url": "/recognize/tiny", "params": {"base64Image": b64(b"GIF89a-truncated")}}, 422, "bad_image"),
        ({"method": "POST", "url": "/recognize/tiny", "content": b"x" * (65 * 1024)}, 413, "body_too_large"),
        ({"method": "POST", "url": "/recognize/tiny", "content": b"<xml/>", "headers": {"content-type": "application/xml"}}, 415, "unsupported_media_type"),
        ({"method": "GET", "url": "/recognize/tiny", "params": {"base64Image": "aGk=", "details": "maybe"}}, 400, "bad_parameter"),
    ],
)
def test_error_statuses(client, request_kwargs, status, code):
    r = client.request(**request_kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["ok"] is False and body["error"]["code"] == code and body["error"]["message"]


def test_unsupported_image_format_is_415(client):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (20, 10)).save(buffer, "TIFF")
    r = client.post("/recognize/tiny", content=buffer.getvalue(), headers={"content-type": "image/tiff"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_image_format"


def test_transparent_and_gif_images_are_read(demo):
    """The example as RGBA PNG (opaque), as a palette GIF and as a GIF with a transparent
    background colour: each reads as the PNG does."""
    image = Image.open(DEMO_EXAMPLE).convert("RGB")
    rgba, gif, transparent_gif = io.BytesIO(), io.BytesIO(), io.BytesIO()
    image.convert("RGBA").save(rgba, "PNG")
    palette = image.quantize(64)
    palette.save(gif, "GIF")
    background = palette.getpixel((0, 0))  # the background colour's palette index
    palette.save(transparent_gif, "GIF", transparency=background)
    for data in (rgba, gif, transparent_gif):
        r = demo.post("/recognize/demo", content=data.getvalue())
        assert r.status_code == 200 and r.json()["text"] == "7kp3", r.text


def test_models_status_and_metadata(client):
    listing = client.get("/v1/models").json()["models"]
    assert [m["site"] for m in listing] == ["tiny"]
    one = client.get("/v1/models/tiny").json()
    assert one["state"] == "AVAILABLE" and one["version"] == 1
    assert one["input"] == {"width": 64, "height": 32, "channels": 1}
    assert one["charset"] == "0123456789" and one["decoder"] == "ctc"
    assert one["quantization"] == "dynamic" and one["training"]["accuracy"] == 0.5
    r = client.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_site"


def test_health_ready_metrics_openapi_plugins(client, png):
    assert client.get("/healthz").json() == {"ok": True}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["sites"] == ["tiny"]
    client.get("/recognize/tiny", params={"base64Image": b64(png)})
    client.get("/recognize/nope", params={"base64Image": b64(png)})
    metrics = client.get("/metrics").text
    assert 'capserve_requests_total{site="tiny",status="200"} 1.0' in metrics
    assert 'capserve_requests_total{site="_unknown",status="404"} 1.0' in metrics
    assert 'capserve_models{state="AVAILABLE"} 1.0' in metrics
    assert "capserve_request_seconds_bucket" in metrics
    schema = client.get("/openapi.json").json()
    assert "/recognize/{site}" in schema["paths"] and schema["openapi"].startswith("3.")
    names = {p["name"] for p in client.get("/v1/plugins").json()["plugins"]}
    assert "capserve.plugins.builtin.geometry" in names


def test_unknown_route_and_method_are_json_errors(client):
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.delete("/recognize/tiny")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_readyz_is_503_with_no_model(tmp_path):
    app = create_app(Registry([tmp_path]), watch=False)
    with TestClient(app) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["ok"] is False


# -- ?charset= and ?length= -------------------------------------------------------------------

def _restricted(demo, method: str = "GET", **query):
    image = DEMO_EXAMPLE.read_bytes()
    if method == "GET":
        r = demo.get("/recognize/demo", params={"base64Image": b64(image), "details": "true", **query})
    else:
        r = demo.post("/recognize/demo", params={"details": "true", **query}, content=image)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["raw_text"] == body["text"] and "".join(c["char"] for c in body["characters"]) == body["text"]
    return body


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_length_gives_the_best_reading_of_that_length(demo, method):
    """demo reads the example as 7kp3 (4 characters); asked for 5, it answers the best reading of
    5 that the image allows, and asked for 4-6 the unrestricted one."""
    longer = _restricted(demo, method, length="5")
    assert len(longer["text"]) == 5 and len(longer["characters"]) == 5
    assert _restricted(demo, method, length="3")["text"] in {"7kp", "7k3", "7p3", "kp3"}
    assert _restricted(demo, method, length="4-6")["text"] == "7kp3"
    assert longer["confidence"] < _restricted(demo, method)["confidence"]


def test_a_charset_without_an_answered_character_changes_the_answer(demo):
    charset = "23456789abcdefghjmpqrstuvwxy"  # demo's charset without k
    body = _restricted(demo, charset=charset, length="4")
    assert body["text"] != "7kp3" and len(body["text"]) == 4 and set(body["text"]) <= set(charset)
    digits = _restricted(demo, charset="23456789")["text"]
    assert digits and digits.isdigit()
    assert _restricted(demo, charset="7kp3")["text"] == "7kp3"


@pytest.mark.parametrize("query, words", [
    ({"charset": ""}, "charset"),
    ({"charset": "2" * 1025}, "1024"),
    ({"charset": "7kABCDEFG"}, "'A', 'B', 'C', 'D', 'E' and 2 more"),
    ({"length": "0"}, "length"),
    ({"length": "5-3"}, "length"),
    ({"length": "a-b"}, "length"),
    ({"length": "65"}, "length"),
    ({"length": "4-"}, "length"),
    ({"length": "26"}, "at most 25"),  # demo's model has 25 timesteps
    ({"charset": "7", "length": "30"}, "at most 25"),
])
def test_bad_restrictions_are_bad_parameters(demo, query, words):
    r = demo.get("/recognize/demo", params={"base64Image": b64(DEMO_EXAMPLE.read_bytes()), **query})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_parameter" and words in error["message"] and "\n" not in error["message"]


def test_a_restriction_no_reading_can_meet_is_422(demo):
    """Thirteen 7s fill 25 timesteps (each pair needs a blank between); fourteen cannot fit."""
    assert _restricted(demo, charset="7", length="13")["text"] == "7" * 13
    r = demo.get("/recognize/demo", params={"base64Image": b64(DEMO_EXAMPLE.read_bytes()), "charset": "7", "length": "14"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "restriction_unmet"


def test_a_fixed_length_model_masks_characters_and_needs_its_length(tmp_path, tiny_model_bytes, png):
    """The tiny model as a fixed-length one: 32 positions of 11 characters."""
    from tests import model_factory

    model_factory.write_entry(tmp_path / "fixed" / "1", tiny_model_bytes, site="fixed", decoder="fixed",
                              charset="0123456789x", length={"min": 32, "max": 32})
    with TestClient(create_app(Registry([tmp_path]), watch=False)) as c:
        def get(**query):
            return c.get("/recognize/fixed", params={"base64Image": b64(png), **query})

        plain = get().json()["text"]
        assert len(plain) == 32 and get(length="30-32").json()["text"] == plain
        masked = get(charset="x").json()["text"]
        assert masked == "x" * 32
        for length in ("31", "33-40"):
            r = get(length=length)
            assert r.status_code == 400 and "exactly 32" in r.json()["error"]["message"]
