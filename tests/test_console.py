"""The console's server side, in process: static files under a CSP, details=preview, collecting
samples within bounds, labels, report files, and access to all of it."""

from __future__ import annotations

import io
import re
import shutil

import pytest
from PIL import Image
from starlette.testclient import TestClient

from capserve.core.model import Model
from capserve.model_registry.registry import Registry
from capserve.server.access import Access, ApiKey, digest
from capserve.server.app import create_app
from capserve.server.samples import Folder, keep_sample, read_labels
from capserve.server.settings import Settings
from tests import model_factory
from tests.conftest import DEMO_EXAMPLE, REPO

DEMO = REPO / "model_registry" / "bundled" / "demo" / "1"
IMAGE = DEMO_EXAMPLE.read_bytes()
GENERATED = re.compile(r"\d{20}-[0-9a-f]{8}\.png")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("console-registry")
    shutil.copytree(DEMO, root / "demo" / "1")
    model_factory.write_entry(root / "broken" / "1", b"not a model", site="broken")
    registry = Registry([root])
    registry.refresh()
    return registry


def client(registry, access=None, **settings) -> TestClient:
    return TestClient(create_app(registry, Settings(**settings), access=access or Access(), watch=False))


def png(size: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (20 + size, 10), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_console_page_and_its_files_come_with_a_strict_csp(registry):
    with client(registry) as c:
        page = c.get("/")
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert 'src="console/console.js"' in page.text and "http" not in page.text.split("<body>")[0]
        assert c.get("/console/console.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/console/..%2Fconsole.py").status_code == 404


def test_details_preview_returns_the_image_the_model_received(registry):
    with client(registry) as c:
        answer = c.post("/recognize/demo?details=preview", content=IMAGE).json()
        assert answer["text"] == "7kp3" and answer["characters"]
        import base64
        preview = Image.open(io.BytesIO(base64.b64decode(answer["preview"].split(",", 1)[1])))
        assert preview.size == (100, 50) and preview.mode == "L"
        assert "preview" not in c.post("/recognize/demo?details=true", content=IMAGE).json()
        bad = c.post("/recognize/demo?details=maybe", content=IMAGE)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_parameter"


def test_the_preview_is_never_made_without_being_asked_for(registry, monkeypatch):
    def refuse(self, data):
        raise AssertionError("preview made")

    monkeypatch.setattr(Model, "preview", refuse)
    with client(registry) as c:
        assert c.post("/recognize/demo?details=true", content=IMAGE).json()["text"] == "7kp3"
        assert c.post("/recognize/demo", content=IMAGE).json()["text"] == "7kp3"


def test_keep_stores_a_sample_only_when_collection_is_on(registry, tmp_path):
    with client(registry) as c:
        assert c.post("/recognize/demo?keep=true", content=IMAGE).json()["sample"] is None
        assert c.get("/v1/samples/demo").json()["error"]["code"] == "samples_off"
    with client(registry, samples_dir=tmp_path) as c:
        name = c.post("/recognize/demo?keep=true", content=IMAGE).json()["sample"]
        assert GENERATED.fullmatch(name)
        assert (tmp_path / "demo" / name).read_bytes() == IMAGE
        assert "sample" not in c.post("/recognize/demo", content=IMAGE).json()
        listing = c.get("/v1/samples/demo").json()
        assert listing["samples"] == [{"name": name, "answer": "7kp3"}]
        assert "--warm-start /tmp/runs/ckpt-demo" in listing["command"]
        assert "--data " + str(tmp_path / "demo") in listing["command"]


def test_a_reported_wrong_answer_is_kept_under_a_generated_name(registry, tmp_path):
    with client(registry, samples_dir=tmp_path) as c:
        answer = c.post("/v1/samples/demo?answer=7kpe", files={"image": ("../../evil.png", IMAGE, "image/png")})
        assert answer.status_code == 201
        name = answer.json()["sample"]
        assert GENERATED.fullmatch(name)
        assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
            [name, name + ".json", ".lock", ".usage.json"])
        assert Folder(tmp_path / "demo").answer(name) == "7kpe"
        not_image = c.post("/v1/samples/demo", content=b"plain text", headers={"content-type": "image/png"})
        assert not_image.status_code == 422 and not_image.json()["error"]["code"] == "bad_sample"


def test_a_site_name_never_leads_out_of_the_samples_folder(registry, tmp_path):
    samples = tmp_path / "samples"
    (tmp_path / "outside.png").write_bytes(png())
    with client(registry, samples_dir=samples) as c:
        for site in ("%2e%2e", "%2E%2E", "DEMO"):
            assert c.get(f"/v1/samples/{site}").status_code == 404, site
            assert c.get(f"/v1/samples/{site}/outside.png").status_code == 404, site
            assert c.put(f"/v1/samples/{site}/outside.png", json={"label": "ab"}).status_code == 404, site
            assert c.post(f"/v1/samples/{site}", content=IMAGE).status_code == 404, site
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.png"]  # nothing written, samples not even made
    with pytest.raises(Exception, match="not a site name"):
        keep_sample(Settings(samples_dir=samples), "..", IMAGE, "ab")


def test_samples_are_bounded_by_count_and_bytes_oldest_first(tmp_path):
    settings = Settings(samples_dir=tmp_path, samples_max_count=10)
    names = [keep_sample(settings, "s", png(), "ab") for _ in range(10)]
    folder = Folder(tmp_path / "s")
    folder.label(names[1], "zz")
    folder.label(names[5], "yy")
    assert folder.images() == names
    names.append(keep_sample(settings, "s", png(), "ab"))  # one over: down to a tenth below the bound
    assert folder.images() == names[2:]
    assert read_labels(tmp_path / "s") == {names[5]: "yy"}  # the dropped sample's label went with it
    names.append(keep_sample(settings, "s", png(), "ab"))
    assert folder.images() == names[2:]

    size = len(png(40))
    by_bytes = Settings(samples_dir=tmp_path, samples_max_bytes=2 * size + 1)
    kept = [keep_sample(by_bytes, "b", png(40), "ab") for _ in range(2)]
    assert Folder(tmp_path / "b").images() == kept
    kept.append(keep_sample(by_bytes, "b", png(40), "ab"))  # over: down to 90 % of the bytes, one image
    assert Folder(tmp_path / "b").images() == kept[2:]


def test_the_bounds_are_restored_when_the_usage_file_is_lost_or_stale(tmp_path):
    settings = Settings(samples_dir=tmp_path, samples_max_count=10)
    names = [keep_sample(settings, "s", png(), "ab") for _ in range(10)]
    (tmp_path / "s" / ".usage.json").unlink()
    names.append(keep_sample(settings, "s", png(), "ab"))
    assert Folder(tmp_path / "s").images() == names[2:]
    (tmp_path / "s" / ".usage.json").write_text('{"count": 0, "bytes": 0}')  # e.g. files copied in by hand
    for path in sorted((tmp_path / "s").glob("*.png"))[:3]:
        path.unlink()  # fewer samples than counted: the next drop recounts from the folder
    names += [keep_sample(settings, "s", png(), "ab") for _ in range(11)]
    assert len(Folder(tmp_path / "s").images()) <= 10


def test_labels_are_checked_and_stay_inside_the_folder(registry, tmp_path):
    with client(registry, samples_dir=tmp_path) as c:
        name = c.post("/recognize/demo?keep=true", content=IMAGE).json()["sample"]
        for bad in ("..%2F..%2Fx.png", "model.yaml", ".lock", name + ".json"):
            assert c.put(f"/v1/samples/demo/{bad}", json={"label": "ab"}).status_code == 404, bad
            assert c.get(f"/v1/samples/demo/{bad}").status_code == 404, bad
        for label in ("", "a,b", 'q"', "x" * 65, 5):
            answer = c.put(f"/v1/samples/demo/{name}", json={"label": label})
            assert answer.status_code == 400 and answer.json()["error"]["code"] in ("bad_label", "bad_json")
        assert c.put(f"/v1/samples/demo/{name}", json={"label": " 7kp3 "}).json()["label"] == "7kp3"
        assert c.get(f"/v1/samples/demo/{name}").content == IMAGE
        assert c.get("/v1/samples/demo").json() | {"command": ""} == {
            "ok": True, "site": "demo", "labelled": 1, "samples": [], "command": ""}
    assert (tmp_path / "demo" / "labels.csv").read_text() == f"file,label\n{name},7kp3\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["demo", name, name + ".json", ".lock", ".usage.json", "labels.csv"])


def test_report_files_come_only_from_the_entry_report_folder(tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(DEMO, root / "demo" / "1")
    (tmp_path / "secret.md").write_text("secret")
    (root / "demo" / "1" / "report" / "link.md").symlink_to(tmp_path / "secret.md")
    registry = Registry([root])
    registry.refresh()
    with client(registry) as c:
        version = c.get("/v1/models/demo").json()["versions"][0]
        assert version["report"] == ["README.md", "curves.png", "failures.png", "history.json"]
        assert c.get("/v1/models/demo/1/report/curves.png").headers["content-type"] == "image/png"
        assert c.get("/v1/models/demo/1/report/README.md").text.startswith("# demo v1")
        for name in ("link.md", "..%2Fmodel.yaml", "..%2F..%2F..%2Fsecret.md", "nothing.png"):
            assert c.get(f"/v1/models/demo/1/report/{name}").status_code == 404, name
        assert c.get("/v1/models/demo/2/report/README.md").json()["error"]["code"] == "unknown_site"


def test_with_keys_samples_need_a_key_for_their_site(registry, tmp_path):
    access = Access([ApiKey("demo", digest("k-demo"), sites=frozenset({"demo"})),
                     ApiKey("other", digest("k-other"), sites=frozenset({"broken"}))])
    with client(registry, access, samples_dir=tmp_path) as c:
        assert c.get("/").status_code == 200  # the page itself holds nothing: it asks for a key
        assert c.get("/v1/console").json() == {"keys": True, "samples": True, "label_site": None}
        name = c.post("/recognize/demo?keep=true", content=IMAGE, headers={"x-api-key": "k-demo"}).json()["sample"]
        for method, path, body in (("GET", "/v1/samples/demo", None), ("GET", f"/v1/samples/demo/{name}", None),
                                   ("PUT", f"/v1/samples/demo/{name}", {"label": "ab"}), ("POST", "/v1/samples/demo", None)):
            assert c.request(method, path, json=body).status_code == 401, path
            assert c.request(method, path, json=body, headers={"x-api-key": "k-other"}).status_code == 403, path
        assert c.get("/v1/samples/demo", headers={"x-api-key": "k-demo"}).json()["samples"][0]["name"] == name
        assert c.get("/v1/models/demo/1/report/README.md").status_code == 401


def test_a_labelling_app_labels_its_one_folder(registry, tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "notes.txt").write_text("x")
    app = create_app(registry, Settings(), access=Access(), watch=False, label=("demo", tmp_path))
    with TestClient(app) as c:
        assert c.get("/v1/console").json() == {"keys": False, "samples": False, "label_site": "demo"}
        assert c.get("/v1/samples/demo").json()["samples"] == [{"name": "a.png", "answer": None}]
        assert c.get("/v1/samples/broken").status_code == 404
        assert c.post("/v1/samples/demo", content=IMAGE).status_code == 404
        assert c.put("/v1/samples/demo/a.png", json={"label": "ab"}).status_code == 200
    assert read_labels(tmp_path) == {"a.png": "ab"}
