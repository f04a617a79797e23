"""Hostile and malformed input: every answer is a clear 4xx, never a 5xx, a crash or a hang."""

from __future__ import annotations

import base64
import io
import struct
import sys
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from starlette.testclient import TestClient

from capserve.core.errors import CapserveError
from capserve.server.errors import BadBase64, status_of
from capserve.model_registry.registry import Registry
from capserve.core.images import ImageLimits, decode_image
from capserve.server.app import create_app
from capserve.server.parsing import decode_base64
from capserve.server.settings import Settings
from tests.conftest import png_bytes

MAX_BODY = 512 * 1024


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_bytes):
    from tests import model_factory

    root = tmp_path_factory.mktemp("registry")
    model_factory.write_entry(root / "tiny" / "1", tiny_model_bytes)
    registry = Registry([root])
    registry.refresh()
    app = create_app(registry, Settings(max_body_bytes=MAX_BODY, max_pixels=1_000_000, max_frames=50), watch=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def many_frames_gif(frames: int) -> bytes:
    images = [Image.new("L", (2, 2), 255 * (i % 2)) for i in range(frames)]
    return encoded(images[0], "GIF", save_all=True, append_images=images[1:], duration=10)


GOOD = png_bytes()
JPEG = encoded(Image.new("RGB", (100, 50), "white"), "JPEG")
GIF = encoded(Image.new("P", (100, 50)), "GIF")

CORPUS = {
    "truncated png": (GOOD[: len(GOOD) // 2], 422),
    "truncated gif": (GIF[:20], 422),
    "truncated jpeg": (JPEG[: len(JPEG) // 3], 422),
    "wrong magic": (b"\x00" + GOOD[1:], 422),
    "png header only": (GOOD[:33], 422),
    "huge dimensions": (png_claiming(100_000, 100_000), 413),
    "zero width": (png_claiming(0, 50), 422),
    "zero bytes": (b"", 400),
    "text": (b"hello, I am not an image", 422),
    "tiff": (encoded(Image.new("RGB", (10, 10)), "TIFF"), 415),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_files(client, name):
    data, status = CORPUS[name]
    for r in (
        client.post("/recognize/tiny", content=data, headers={"content-type": "application/octet-stream"}),
        client.post("/recognize/tiny", json={"image": base64.b64encode(data).decode()}),
    ):
        assert r.status_code == status, (name, r.text)
        assert r.json()["ok"] is False and r.json()["error"]["code"]


def test_ten_thousand_frame_gif(client):
    data = many_frames_gif(10_000)
    r = client.post("/recognize/tiny", content=data)
    assert r.status_code == 200, r.text  # a still-image model reads the first frame only
    with pytest.raises(CapserveError) as info:
        decode_image(data, frames=True, limits=ImageLimits(max_frames=50))
    assert status_of(info.value) == 422 and info.value.code == "too_many_frames"


@pytest.mark.parametrize(
    "body, code",
    [
        (b'{"image": "\xff\xfe\xfa"}', "bad_json"),
        (b"\xff\xfe{}", "bad_json"),
        (b"[" * 5000 + b"]" * 5000, "bad_json"),
        (b'{"image": {"nested": "x"}}', "bad_json"),
        (b'["image"]', "bad_json"),
        (b'{"image": "iVBORw0KGgo=====junk***"}', "bad_base64"),
        (b'{"image": "\xc3\xa9t\xc3\xa9"}', "bad_base64"),
    ],
)
def test_bad_json_bodies(client, body, code):
    r = client.post("/recognize/tiny", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


def test_oversized_bodies_are_refused(client):
    big = b"\x89PNG" + b"0" * MAX_BODY
    assert client.post("/recognize/tiny", content=big).status_code == 413
    assert client.post("/recognize/tiny", files={"image": ("x.png", big, "image/png")}).status_code == 413


def test_oversized_query_is_refused(tiny_model_bytes, tmp_path):
    from tests import model_factory

    model_factory.write_entry(tmp_path / "tiny" / "1", tiny_model_bytes)
    registry = Registry([tmp_path])
    registry.refresh()
    with TestClient(create_app(registry, Settings(max_body_bytes=4096), watch=False)) as small:
        r = small.get("/recognize/tiny", params={"base64Image": "A" * 8000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_site_names_cannot_reach_paths(client):
    for site in ("..", "%2e%2e", "..%2fetc%2fpasswd", "a" * 300, "DEMO", "tiny%00"):
        r = client.get(f"/recognize/{site}", params={"base64Image": base64.b64encode(GOOD).decode()})
        if r.url.path == "/":  # the client collapses /recognize/.. to /: the console's page, no recognition
            assert r.headers["content-type"].startswith("text/html"), site
            continue
        assert r.status_code == 404, site


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048), content_type=st.sampled_from(
    ["application/octet-stream", "image/png", "application/json", "text/plain", "multipart/form-data; boundary=x", ""]))
def test_fuzz_post_bodies_never_5xx(client, data, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/recognize/tiny", content=data, headers=headers)
    assert r.status_code < 500, r.text
    assert r.json()["ok"] is (r.status_code == 200)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=300))
def test_fuzz_query_never_5xx(client, value):
    r = client.get("/recognize/tiny", params={"base64Image": value})
    assert r.status_code in (200, 400, 413, 415, 422), r.text


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([GOOD, JPEG, GIF, b""]), cut=st.integers(0, 4000), junk=st.binary(max_size=64))
def test_fuzz_image_decoding_raises_only_capserve_errors(prefix, cut, junk):
    data = prefix[:cut] + junk
    for frames, mode in ((False, None), (False, "L"), (True, None)):
        try:
            decode_image(data, frames=frames, mode=mode)
        except CapserveError as exc:
            assert 400 <= status_of(exc) < 500


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_base64_round_trip_in_every_dialect(data):
    standard = base64.b64encode(data).decode()
    urlsafe = base64.urlsafe_b64encode(data).decode()
    for text in (standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("="), "data:image/png;base64," + standard,
                 standard.replace("+", " ")):
        if data:
            assert decode_base64(text, 10_000) == data


@pytest.mark.parametrize("text", ["aGk=aGk=", "aGk", "aG k=", "aGk=\n", "=aGk"])
def test_base64_outside_the_strict_form_takes_the_lenient_path_and_answers_the_same(text):
    # The fast path accepts only canonical padded base64; everything else is normalized first.
    import binascii

    lenient = "".join(text.replace(" ", "+").split())
    lenient += "=" * (-len(lenient) % 4)
    try:
        expected = base64.b64decode(lenient, validate=True)
    except binascii.Error:
        with pytest.raises(BadBase64):
            decode_base64(text, 10_000)
    else:
        assert decode_base64(text, 10_000) == expected


def _answer(text: str):
    try:
        return decode_base64(text, 10_000)
    except CapserveError as exc:
        return exc.code


def _never(value: str) -> bytes:
    raise ValueError("no fast path")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
                 st.text(alphabet="AQgw09+/-_= \n", max_size=24)))
def test_every_base64_fast_path_answers_as_the_normalizing_path(monkeypatch, text):
    # Python 3.10 has no strict_mode: its fast path decodes leniently and keeps only input that
    # encodes back to itself. Each fast path must give the answers of no fast path at all.
    from capserve.server import parsing

    fast_paths = [parsing._canonical_b64] + ([parsing._strict_mode_b64] if sys.version_info >= (3, 11) else [])
    with monkeypatch.context() as patch:
        patch.setattr(parsing, "_strict_b64", _never)
        expected = _answer(text)
    for fast in fast_paths:
        with monkeypatch.context() as patch:
            patch.setattr(parsing, "_strict_b64", fast)
            assert _answer(text) == expected, fast.__name__


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CAPSERVE_MAX_BODY_BYTES", "1234")
    monkeypatch.setenv("CAPSERVE_MAX_PIXELS", "5000")
    monkeypatch.setenv("CAPSERVE_MAX_FRAMES", "3")
    monkeypatch.setenv("CAPSERVE_FORMATS", "png, gif")
    settings = Settings()
    assert settings.max_body_bytes == 1234
    assert settings.image_limits == ImageLimits(max_pixels=5000, max_frames=3, formats=("PNG", "GIF"))


def test_every_image_limit_answers_its_own_error(tiny_model_bytes, tmp_path):
    from tests import model_factory

    model_factory.write_entry(tmp_path / "tiny" / "1", tiny_model_bytes)
    model_factory.write_entry(tmp_path / "gif" / "1", tiny_model_bytes, site="gif",
                              preprocess=["frames_median", "grayscale", "resize", "normalize"])
    registry = Registry([tmp_path], limits=ImageLimits(max_pixels=100 * 50, max_frames=3, formats=("PNG", "GIF")))
    registry.refresh()
    gif4 = many_frames_gif(4)
    gif3 = many_frames_gif(3)
    cases = [
        ("tiny", png_bytes(size=(100, 50)), 200, None),
        ("tiny", png_bytes(size=(101, 50)), 413, "image_too_large"),
        ("tiny", JPEG, 415, "unsupported_image_format"),
        ("gif", gif3, 200, None),
        ("gif", gif4, 422, "too_many_frames"),
    ]
    with TestClient(create_app(registry, Settings(), watch=False)) as c:
        for site, data, status, code in cases:
            r = c.post(f"/recognize/{site}", content=data)
            assert r.status_code == status, (site, status, r.text)
            if code:
                assert r.json()["error"]["code"] == code
