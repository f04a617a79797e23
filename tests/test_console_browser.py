"""The web console in a real browser: Playwright driving Debian's chromium against a real
``capserve serve``. Each test also writes a screenshot for docs/console.md (docs/console/)."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import model_factory
from tests.conftest import DEMO_EXAMPLE, REPO
from tests.servers import free_port, start_server

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = REPO / "docs" / "console"
DEMO = REPO / "model_registry" / "bundled" / "demo" / "1"
DEMO_CHARSET = "23456789abcdefghjkmpqrstuvwxy"
KEY, OTHER_KEY = "console-demo-key", "console-other-key"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text
            and "403" not in m.text and "404" not in m.text and "422" not in m.text else None)
    yield page
    context.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors


@pytest.fixture
def registry(tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(DEMO, root / "demo" / "1")
    model_factory.write_entry(root / "broken" / "1", b"not a model", site="broken")
    return root


def shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def captchas(count: int) -> list[tuple[str, bytes]]:
    """``count`` ImageCaptcha images in the demo model's style, with their texts."""
    from captcha.image import ImageCaptcha
    import random

    rng = random.Random(7)
    maker = ImageCaptcha(width=100, height=50)
    out = []
    for _ in range(count):
        text = "".join(rng.choice(DEMO_CHARSET) for _ in range(4))
        buffer = io.BytesIO()
        maker.generate_image(text).save(buffer, format="PNG")
        out.append((text, buffer.getvalue()))
    return out


def test_try_upload_paste_wrong_and_errors(page, registry, tmp_path):
    samples = tmp_path / "samples"
    with start_server(registry, env={"CAPSERVE_SAMPLES_DIR": str(samples)}) as base:
        page.goto(base + "/")
        page.wait_for_selector("#try-site option[value=demo]", state="attached")
        page.set_input_files("#try-file", str(DEMO_EXAMPLE))
        page.wait_for_function("() => document.getElementById('try-text').textContent === '7kp3'")
        assert page.locator("#try-chars span").count() == 4
        assert page.get_attribute("#try-preview", "src").startswith("data:image/png;base64,")
        assert page.evaluate("() => document.getElementById('try-preview').naturalWidth") == 100  # the model's input
        assert "curl --data-binary @'demo-7kp3.png' -H 'Content-Type: image/png'" in page.text_content("#try-curl")
        assert page.locator("#try-timings tr").count() == 5
        shot(page, "try")

        page.click("#try-wrong")
        page.wait_for_function("() => document.getElementById('try-wrong-state').textContent.startsWith('kept as')")
        kept = json.loads(next((samples / "demo").glob("*.png.json")).read_text())
        assert kept["answer"] == "7kp3" and kept["reason"] == "wrong"

        page.evaluate("() => { document.getElementById('try-text').textContent = ''; }")  # pasting: a ClipboardEvent holding the image file
        page.evaluate("""(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "pasted.png", { type: "image/png" }));
            document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true }));
        }""", base64.b64encode(DEMO_EXAMPLE.read_bytes()).decode())
        page.wait_for_function("() => document.getElementById('try-text').textContent === '7kp3'")

        page.evaluate("() => { document.getElementById('try-text').textContent = ''; }")  # dropping a file
        page.evaluate("""(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }""", base64.b64encode(DEMO_EXAMPLE.read_bytes()).decode())
        page.wait_for_function("() => document.getElementById('try-text').textContent === '7kp3'")

        page.set_input_files("#try-file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}])
        page.wait_for_selector("#try-error:not([hidden])")
        assert page.text_content("#try-error").startswith("bad_image: ")
        assert page.is_hidden("#try-result")


def test_registry_shows_failures_reports_and_new_entries_live(page, registry):
    with start_server(registry) as base:
        page.goto(base + "/#registry")
        broken = page.locator(".site[data-site=broken]")
        broken.wait_for()
        assert "FAILED" in broken.text_content()
        assert "LiteRT cannot load the model" in broken.locator(".error").text_content()
        demo = page.locator(".site[data-site=demo]")
        for fact in ("100×50×1", DEMO_CHARSET, "99.70 %", "dynamic"):
            assert fact in demo.text_content()
        demo.locator("summary").click()
        demo.locator(".report img").first.wait_for()
        page.wait_for_function("() => [...document.querySelectorAll('.report img')].every((i) => i.naturalWidth > 0)")
        assert "training report" in demo.locator(".report pre").text_content()
        page.evaluate("() => { window.notReloaded = true; }")

        added = registry / "added" / "1"
        shutil.copytree(DEMO, added)
        (added / "model.yaml").write_text((added / "model.yaml").read_text().replace("site: demo", "site: added"))
        page.locator(".site[data-site=added]").wait_for(timeout=15000)
        assert page.evaluate("() => window.notReloaded") is True
        page.locator(".site[data-site=added] summary").scroll_into_view_if_needed()
        page.evaluate("() => window.scrollTo(0, 0)")
        shot(page, "registry")


def _label_all(page, texts: list[str]) -> None:
    """Label every sample from the keyboard: type, Enter; one Esc and one back on the way."""
    field = page.locator("#label-input")
    for i, text in enumerate(texts):
        page.wait_for_function(f"() => document.getElementById('label-progress').textContent.startsWith('{i + 1} of')")
        if i == 3:  # skip one, come back to it
            page.keyboard.press("Escape")
            page.wait_for_function("() => document.getElementById('label-progress').textContent.startsWith('5 of')")
            page.keyboard.press("ArrowUp")
            page.wait_for_function("() => document.getElementById('label-progress').textContent.startsWith('4 of')")
        assert field.evaluate("(e) => e === document.activeElement")
        page.keyboard.type(text)  # the guess is selected: typing replaces it
        if i == 10:
            shot(page, "label")
        page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('label-message').textContent.includes('Every sample')")
    page.wait_for_load_state("networkidle")  # saving is not awaited by the page: let the last PUT finish


def test_label_twenty_collected_samples_with_the_keyboard(page, registry, tmp_path):
    samples = tmp_path / "samples"
    made = captchas(20)
    with start_server(registry, env={"CAPSERVE_SAMPLES_DIR": str(samples)}) as base:
        for _, image in made:
            answer = httpx.post(base + "/recognize/demo?keep=true", content=image, headers={"content-type": "image/png"})
            assert answer.json()["sample"]
        page.goto(base + "/#label/demo")
        page.wait_for_selector("#label-image[src^=blob]")
        assert page.input_value("#label-input") == httpx.get(base + "/v1/samples/demo").json()["samples"][0]["answer"]
        assert "--warm-start" in page.text_content("#label-command")
        _label_all(page, [text for text, _ in made])
        timings = page.evaluate("() => window.capserveNextSampleMs")
    folder = samples / "demo"
    with open(folder / "labels.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["file", "label"]
    names = sorted(p.name for p in folder.glob("*.png"))
    assert dict(rows[1:]) == {name: text for name, (text, _) in zip(names, made)}

    from capserve.training.datasets import scan_folder

    assert sorted((p.name, label) for p, label in scan_folder(folder)) == sorted(map(tuple, rows[1:]))
    report = {"samples": len(timings), "median_ms": round(statistics.median(timings), 1),
              "max_ms": round(max(timings), 1)}
    print(f"\nnext sample after Enter, in the browser: {report}")
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "console_next_sample.json").write_text(json.dumps(report) + "\n")


@pytest.mark.train
def test_train_accepts_the_labelled_folder(tmp_path):
    pytest.importorskip("tensorflow")
    folder = tmp_path / "labelled"
    folder.mkdir()
    rows = ["file,label"]
    for i, (text, image) in enumerate(captchas(24)):
        (folder / f"{i:020d}-0000000{i % 10}.png").write_bytes(image)
        rows.append(f"{i:020d}-0000000{i % 10}.png,{text}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    (folder / "0.png.json").write_text("{}")  # a collected sample's side file is ignored
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "capserve.server.cli", "train", "--site", "demo", "--data", str(folder), "--out", str(out),
         "--from-scratch", "--epochs", "1", "--filters", "8,16", "--units", "16", "--batch-size", "8", "--augment", "none",
         "--quantization", "none", "--progress", "none"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "demo" / "1" / "model.yaml").is_file()


def test_console_asks_for_a_key_and_refuses_without_one(page, registry, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - {{name: demo, key: {KEY}, sites: [demo]}}\n  - {{name: other, key: {OTHER_KEY}, sites: [broken]}}\n")
    samples = tmp_path / "samples"
    env = {"CAPSERVE_API_KEYS_FILE": str(keys), "CAPSERVE_SAMPLES_DIR": str(samples)}
    with start_server(registry, env=env) as base:
        assert httpx.post(base + "/recognize/demo?keep=true", content=DEMO_EXAMPLE.read_bytes(),
                          headers={"X-API-Key": KEY}).json()["sample"]
        assert httpx.get(base + "/v1/samples/demo").status_code == 401
        assert httpx.get(base + "/v1/samples/demo", headers={"X-API-Key": OTHER_KEY}).status_code == 403
        page.goto(base + "/")
        page.wait_for_selector("#key-panel:not([hidden])")
        assert page.locator("#try-site option").count() == 0
        shot(page, "key")
        page.fill("#key-input", "not-a-key")
        page.press("#key-input", "Enter")
        page.wait_for_function("() => document.getElementById('key-message').textContent.includes('not valid')")

        page.fill("#key-input", OTHER_KEY)  # a key for another site: the demo samples stay closed
        page.press("#key-input", "Enter")
        page.goto(base + "/#label/demo")
        page.wait_for_function("() => document.getElementById('label-message').textContent.startsWith('forbidden')")

        page.click("#key-forget")
        page.fill("#key-input", KEY)
        page.press("#key-input", "Enter")
        page.wait_for_selector("#label-image[src^=blob]")
        page.keyboard.type("7kp3")
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.getElementById('label-message').textContent.includes('Every sample')")
        page.wait_for_load_state("networkidle")  # saving is not awaited by the page: let the last PUT finish
        page.goto(base + "/#try")
        page.set_input_files("#try-file", str(DEMO_EXAMPLE))
        page.wait_for_function("() => document.getElementById('try-text').textContent === '7kp3'")
    assert "7kp3" in (samples / "demo" / "labels.csv").read_text()


@contextlib.contextmanager
def label_server(folder: Path):
    """``capserve label FOLDER --site demo`` on a free port, listening; yields its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "capserve.server.cli", "label", str(folder), "--site", "demo",
                             "--port", str(port), "--no-open"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lines = iter(proc.stdout.readline, b"")
        assert any(f"http://127.0.0.1:{port}/#label/demo" in line.decode() for line in lines)
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def image_folder(tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    folder = tmp_path / "images"
    folder.mkdir()
    made = captchas(count)
    for i, (_, image) in enumerate(made):
        (folder / f"img{i}.png").write_bytes(image)
    return folder, [text for text, _ in made]


def test_capserve_label_opens_the_page_for_any_folder(page, tmp_path):
    folder, texts = image_folder(tmp_path, 3)
    with label_server(folder) as port:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#label-image[src^=blob]")
        page.wait_for_function("() => document.getElementById('label-input').value.length === 4")  # the model's guess
        _label_all(page, texts)
    assert (folder / "labels.csv").read_text().splitlines()[1:] == [f"img{i}.png,{t}" for i, t in enumerate(texts)]


def test_a_sample_gone_since_the_list_was_read_is_passed_over(page, tmp_path):
    folder, texts = image_folder(tmp_path, 3)
    page.route("**/v1/samples/demo/img1.png", lambda route: route.fulfill(
        status=404, content_type="application/json", body='{"ok": false, "error": {"code": "unknown_sample", "message": "no such sample"}}'))
    with label_server(folder) as port:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#label-image[src^=blob]")
        page.keyboard.type(texts[0])
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.getElementById('label-progress').textContent.startsWith('2 of 2')")
        assert "img1.png: unknown_sample" in page.text_content("#label-message")
        page.keyboard.type(texts[2])
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.getElementById('label-message').textContent.includes('Every sample')")
        page.wait_for_load_state("networkidle")  # saving is not awaited by the page: let the last PUT finish
    assert (folder / "labels.csv").read_text().splitlines()[1:] == [f"img0.png,{texts[0]}", f"img2.png,{texts[2]}"]
