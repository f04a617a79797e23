"""Images built to stall or bloat the decoder get a 4xx before the costly work, a good request
beside them is answered, and memory does not stay high (issue 13, items 2, 3 and 10)."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import struct
import threading

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import EpsImagePlugin, Image, PsdImagePlugin
from starlette.testclient import TestClient

from capserve.core.errors import ImageError
from capserve.core.images import decode_image
from capserve.model_registry.registry import Registry
from capserve.server import offload
from capserve.server.app import create_app
from capserve.server.settings import Settings
from tests import model_factory
from tests.conftest import png_bytes
from tests.test_serve_process import start_server

FRAMES_CHAIN = ["frames_median", "grayscale", "resize", "normalize"]


def scan_bomb(scans: int = 70_000, side: int = 2000) -> bytes:
    """A progressive JPEG with ``scans`` empty AC scans: each one costs libjpeg a pass over the
    whole image (~0.8 ms at 2000x2000), about a minute in all, in 0.7 MB."""
    noise = (np.random.default_rng(0).random((side, side)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(noise, "L").save(buffer, "JPEG", progressive=True, quality=5)
    data = buffer.getvalue()
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    empty_ac_scan = b"\xff\xda\x00\x08\x01\x01\x00\x01\x3f\x00"
    return data[:second_scan] + empty_ac_scan * scans + b"\xff\xd9"


def frame_bomb(frames: int = 80, side: int = 2000) -> bytes:
    """A ~1 KB GIF: a ``side`` x ``side`` canvas and ``frames`` frames of one pixel each; every
    frame decodes to the whole canvas (16 MB as RGBA)."""
    head = b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    one_pixel = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + one_pixel * frames + b"\x3b"


def jpeg_with_orientation(orientation: int, size=(100, 50)) -> bytes:
    image = Image.new("L", size, 255)
    image.paste(0, (0, 0, 10, 10))  # a black corner, to see where it goes
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


PSD = b"8BPS\x00\x01" + b"\x00" * 6 + struct.pack(">HIIHH", 3, 50, 100, 8, 3) + b"\x00" * 64
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 50\n" + b"0 0 moveto\n" * 10


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory, tiny_model_bytes):
    root = tmp_path_factory.mktemp("registry")
    model_factory.write_entry(root / "tiny" / "1", tiny_model_bytes)
    model_factory.write_entry(root / "anim" / "1", tiny_model_bytes, site="anim", preprocess=FRAMES_CHAIN)
    return root


@pytest.fixture(scope="module")
def client(registry_root):
    registry = Registry([registry_root])
    registry.refresh()
    with TestClient(create_app(registry, Settings(), watch=False), raise_server_exceptions=False) as c:
        yield c


def test_the_scan_bomb_is_refused_before_it_is_decoded(client):
    data = scan_bomb()
    assert len(data) < 1024 * 1024
    before = rss_bytes()
    r = client.post("/recognize/tiny", content=data, headers={"content-type": "image/jpeg"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_scans", r.text
    assert rss_bytes() - before < 100 << 20


def test_an_ordinary_progressive_jpeg_is_read(client):
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes())).convert("RGB").save(buffer, "JPEG", progressive=True)
    assert client.post("/recognize/tiny", content=buffer.getvalue()).status_code == 200


def test_the_frame_bomb_is_refused_before_any_frame_is_decoded(client):
    data = frame_bomb()
    assert len(data) < 5 * 1024
    before = rss_bytes()
    for _ in range(3):
        r = client.post("/recognize/anim", content=data, headers={"content-type": "image/gif"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large", r.text
    assert rss_bytes() - before < 100 << 20
    # the still-image site reads its first frame only, which is within the limits
    assert client.post("/recognize/tiny", content=data).status_code == 200


def test_frames_within_the_budget_are_decoded_into_one_array():
    frames = decode_image(frame_bomb(frames=5, side=100), frames=True)
    assert frames.shape == (5, 100, 100, 4) and frames.dtype == np.uint8


@pytest.mark.parametrize(
    "data, plugin", [(PSD, PsdImagePlugin.PsdImageFile), (EPS, EpsImagePlugin.EpsImageFile)], ids=["psd", "eps"]
)
def test_parsers_of_formats_not_accepted_never_see_the_bytes(client, monkeypatch, data, plugin):
    opened = []
    monkeypatch.setattr(plugin, "_open", lambda self: opened.append(self) or pytest.fail("parser ran"))
    r = client.post("/recognize/tiny", content=data)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_image_format", r.text
    assert opened == []


@pytest.mark.parametrize("orientation, shape, corner", [(1, (50, 100), (0, 0)), (6, (100, 50), (0, 49)),
                                                         (3, (50, 100), (49, 99)), (8, (100, 50), (99, 0))])
def test_the_exif_orientation_is_applied(orientation, shape, corner):
    for mode in (None, "L"):
        array = decode_image(jpeg_with_orientation(orientation), mode=mode)
        assert array.shape[:2] == shape
        assert array[corner][0] < 64 and array[shape[0] // 2, shape[1] // 2][0] > 192


def test_large_images_are_decoded_off_the_event_loop(client, monkeypatch, registry_root):
    registry = client.app.state.registry
    model = registry.get("tiny")
    threads = []
    recognize = type(model).recognize

    def spy(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return recognize(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "recognize", spy)
    small, large = png_bytes(size=(100, 50)), png_bytes(size=(1000, 500))
    assert [client.post("/recognize/tiny", content=d).status_code for d in (small, large)] == [200, 200]
    # the client protocols read their images the same way
    for data in (small, large):
        task = {"type": "ImageToTextTask", "body": base64.b64encode(data).decode(), "site": "tiny"}
        assert client.post("/createTask", json={"clientKey": "k", "task": task}).json()["errorId"] == 0
    assert [t.startswith("capserve-decode") for t in threads] == [False, True, False, True]
    assert model.decode_cost(model.open(large)) > offload.INLINE_PIXELS >= model.decode_cost(model.open(small))


HOSTILE = {
    "scan bomb": scan_bomb(),
    "frame bomb": frame_bomb(),
    "psd": PSD,
    "eps": EPS,
    "rotated jpeg": jpeg_with_orientation(6),
    "truncated frame bomb": frame_bomb()[:-20],
    "scan bomb without an end": scan_bomb(scans=200)[:-2],
    "gif header only": frame_bomb()[:13],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("site", ["tiny", "anim"])
def test_no_hostile_image_gets_a_5xx(client, name, site):
    data = HOSTILE[name]
    for r in (
        client.post(f"/recognize/{site}", content=data, headers={"content-type": "application/octet-stream"}),
        client.post(f"/recognize/{site}", json={"image": base64.b64encode(data).decode()}),
    ):
        assert r.status_code < 500, (name, r.text)


def test_a_good_request_is_answered_beside_the_bombs(registry_root):
    good = base64.b64encode(png_bytes()).decode()
    with start_server(registry_root) as base:
        expected = httpx.get(base + "/recognize/tiny", params={"base64Image": good}, timeout=30).json()["text"]

        def bomb(args):
            site, data = args
            return httpx.post(f"{base}/recognize/{site}", content=data, timeout=120).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            bombs = pool.map(bomb, [("tiny", scan_bomb()), ("anim", frame_bomb())] * 2)
            answer = httpx.get(base + "/recognize/tiny", params={"base64Image": good}, timeout=120)
            statuses = list(bombs)
        assert answer.status_code == 200 and answer.json()["text"] == expected
        assert statuses == [422, 413, 422, 413]
        # an image large enough for the decode pool is answered by the serving worker too
        large = httpx.post(f"{base}/recognize/tiny", content=png_bytes(size=(1000, 500)), timeout=60)
        assert large.status_code == 200 and large.json()["ok"] is True


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(13, len(frame_bomb(frames=6, side=300))), junk=st.binary(max_size=16))
def test_broken_animations_to_a_frames_site_never_5xx(client, cut, junk):
    data = frame_bomb(frames=6, side=300)[:cut] + junk  # 6 x 90,000 pixels: decoded in the pool
    r = client.post("/recognize/anim", content=data)
    assert r.status_code < 500, r.text
