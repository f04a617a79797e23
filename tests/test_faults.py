"""Faults: a broken or half-written model fails alone, the last good copy keeps serving,
and a failing request does not disturb the next ones."""

from __future__ import annotations

import base64
import re
import threading

import pytest

from starlette.testclient import TestClient

from capserve.model_registry.registry import AVAILABLE, FAILED, Registry
from capserve.server.app import create_app
from capserve.server.settings import Settings
from tests import model_factory
from tests.conftest import png_bytes
from tests.test_registry import touch_later

IMAGE = base64.b64encode(png_bytes()).decode()


def test_model_file_replaced_while_requests_run(registry_dir, tiny_model_bytes):
    registry = Registry([registry_dir])
    registry.refresh()
    app = create_app(registry, Settings(), watch=False)
    model_file = registry_dir / "tiny" / "1" / "model.tflite"
    errors: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with TestClient(app) as c:
            while not stop.is_set():
                r = c.get("/recognize/tiny", params={"base64Image": IMAGE})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        good = registry.get("tiny")
        # garbage in place of the model: the entry fails, the loaded copy keeps answering
        model_file.write_bytes(b"\x00garbage" * 100)
        touch_later(model_file)
        registry.refresh()
        (entry,) = registry.entries()
        assert entry.state == FAILED and "sha256" in entry.error
        assert registry.get("tiny") is good
        # a slow copy in place, scanned at every stage: never crashes, never serves a half file
        for cut in (1, len(tiny_model_bytes) // 3, 2 * len(tiny_model_bytes) // 3):
            model_file.write_bytes(tiny_model_bytes[:cut])
            touch_later(model_file)
            registry.refresh()
            assert registry.get("tiny") is good
        model_file.write_bytes(tiny_model_bytes)
        touch_later(model_file)
        registry.refresh()
        assert registry.entries()[0].state == AVAILABLE and registry.get("tiny") is not good
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []


def test_half_written_model_without_a_hash_fails_cleanly(registry_dir, tiny_model_bytes):
    folder = registry_dir / "nohash" / "1"
    model_factory.write_entry(folder, tiny_model_bytes, site="nohash", with_hash=False)
    registry = Registry([registry_dir])
    registry.refresh()
    good = registry.get("nohash")
    expected = registry.get("tiny").recognize(png_bytes()).text
    for cut in (0, 16, 200, len(tiny_model_bytes) // 2, len(tiny_model_bytes) - 1):
        (folder / "model.tflite").write_bytes(tiny_model_bytes[:cut])
        touch_later(folder / "model.tflite")
        registry.refresh()
        entry = registry.site_entries("nohash")[0]
        assert entry.state == FAILED, cut
        assert registry.get("nohash") is good
        assert registry.get("tiny").recognize(png_bytes()).text == expected  # the other entry is untouched


def test_an_interpreter_that_raises_fails_one_request_only(registry_dir, monkeypatch):
    registry = Registry([registry_dir])
    registry.refresh()
    model = registry.get("tiny")
    calls = {"n": 0}
    real_run = model.runtime.run

    def flaky(tensor):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("tensor arena exhausted")
        return real_run(tensor)

    monkeypatch.setattr(model.runtime, "run", flaky)
    with TestClient(create_app(registry, Settings(), watch=False)) as c:
        statuses = [c.get("/recognize/tiny", params={"base64Image": IMAGE}) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 500, 200, 200]
    error = statuses[1].json()["error"]
    assert error["code"] == "recognition_failed" and "tensor arena exhausted" not in error["message"]
    assert len({r.json()["text"] for r in statuses if r.status_code == 200}) == 1


def test_a_plugin_that_raises_fails_one_request_only_and_is_logged_with_its_request_id(
    registry_dir, monkeypatch, caplog
):
    registry = Registry([registry_dir])
    registry.refresh()
    model = registry.get("tiny")
    monkeypatch.setattr(model, "postprocess", lambda text, confidences: 1 / 0)
    with TestClient(create_app(registry, Settings(), watch=False)) as c:
        r = c.get("/recognize/tiny", params={"base64Image": IMAGE})
        assert c.get("/healthz").status_code == 200
    rid = r.headers["x-request-id"]
    error = r.json()["error"]
    assert r.status_code == 500 and error["code"] == "recognition_failed"
    assert f"(request id {rid})" in error["message"] and "ZeroDivision" not in r.text
    (record,) = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert record.exc_info[0] is ZeroDivisionError


def test_an_unexpected_error_answers_a_generic_message_with_the_request_id(registry_dir, monkeypatch, caplog):
    registry = Registry([registry_dir])
    registry.refresh()

    def broken(site):
        raise KeyError("/srv/secret/path")

    monkeypatch.setattr(registry, "get", broken)
    with TestClient(create_app(registry, Settings(), watch=False), raise_server_exceptions=False) as c:
        r = c.get("/recognize/tiny", params={"base64Image": IMAGE}, headers={"X-Request-ID": "client-42.a:b"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "client-42.a:b"
    assert r.json() == {"ok": False, "error": {"code": "internal_error", "message": "internal error (request id client-42.a:b)"}}
    (record,) = [rec for rec in caplog.records if "client-42.a:b" in rec.getMessage()]
    assert record.exc_info[0] is KeyError and "/srv/secret/path" in str(record.exc_info[1])


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/tiny"])
def test_an_unexpected_error_on_any_route_is_logged_once_and_answered_with_the_request_id(
    registry_dir, monkeypatch, caplog, path
):
    registry = Registry([registry_dir])
    registry.refresh()

    def broken():
        raise OSError("/srv/secret/registry unreadable")

    monkeypatch.setattr(registry, "site_entries", lambda site: broken())
    monkeypatch.setattr(registry, "entries", broken)
    with TestClient(create_app(registry, Settings(), watch=False), raise_server_exceptions=False) as c:
        r = c.get(path, headers={"X-Request-ID": "ops-7"})
        assert c.get("/healthz").status_code == 200
    assert r.status_code == 500 and r.headers["x-request-id"] == "ops-7"
    assert r.json() == {"ok": False, "error": {"code": "internal_error", "message": "internal error (request id ops-7)"}}
    (record,) = [rec for rec in caplog.records if rec.exc_info]
    assert "ops-7" in record.getMessage() and "/srv/secret/registry" in str(record.exc_info[1])


def test_a_protocol_route_logs_an_unexpected_error_with_the_id_it_answers(registry_dir, monkeypatch, caplog):
    registry = Registry([registry_dir])
    registry.refresh()
    monkeypatch.setattr(registry, "get", lambda site: (_ for _ in ()).throw(KeyError("/srv/secret")))
    with TestClient(create_app(registry, Settings(), watch=False)) as c:
        r = c.post("/createTask", json={"clientKey": "k", "task": {"type": "ImageToTextTask", "body": IMAGE, "site": "tiny"}},
                   headers={"X-Request-ID": "proto-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "proto-1"
    assert r.json()["errorId"] != 0 and "proto-1" in r.text and "/srv/secret" not in r.text
    (record,) = [rec for rec in caplog.records if rec.exc_info]
    assert "proto-1" in record.getMessage() and record.exc_info[0] is KeyError


@pytest.mark.parametrize("given", [None, "", "a" * 129, "two words", "x\"y", "a/b", "<script>"])
def test_every_answer_carries_a_request_id_of_its_own_unless_the_client_sent_a_sane_one(registry_dir, given):
    registry = Registry([registry_dir])
    registry.refresh()
    headers = {} if given is None else {"X-Request-ID": given}
    with TestClient(create_app(registry, Settings(), watch=False)) as c:
        answers = [
            c.get("/recognize/tiny", params={"base64Image": IMAGE}, headers=headers),
            c.get("/recognize/nowhere", params={"base64Image": IMAGE}, headers=headers),
            c.post("/recognize/tiny", content=b"junk", headers=headers),
            c.get("/v1/models", headers=headers),
            c.get("/healthz", headers=headers),
            c.get("/nowhere", headers=headers),
        ]
    ids = [r.headers["x-request-id"] for r in answers]
    assert [r.status_code for r in answers] == [200, 404, 422, 200, 200, 404]
    assert len(set(ids)) == 6 and given not in ids and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)

