"""Model files are proven in a child process: one that crashes LiteRT is FAILED with the
reason, and every other entry keeps serving (issue 13, item 1)."""

from __future__ import annotations

import base64
import random
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from capserve.core.runtime import Runtime
from capserve.model_registry import proof
from capserve.model_registry.registry import AVAILABLE, BUNDLED, FAILED, Registry
from capserve.server.cli import main
from tests.conftest import REPO
from tests.test_registry import touch_later
from tests.test_serve_process import start_server

DEMO = BUNDLED / "demo" / "1"
DEMO_BYTES = (DEMO / "model.tflite").read_bytes()
DEMO_IMAGE = (REPO / "docs" / "examples" / "demo-7kp3.png").read_bytes()


def crashing_model() -> bytes:
    """The demo model with two bytes changed: LiteRT raises SIGFPE in ``allocate_tensors``."""
    data = bytearray(DEMO_BYTES)
    assert (data[287588], data[290700]) == (1, 20)
    data[287588], data[290700] = 0, 16
    return bytes(data)


def demo_entry(folder: Path, content: bytes, *, site: str = "demo") -> Path:
    """A copy of the bundled demo entry with ``content`` as its model, and no sha256."""
    folder.mkdir(parents=True)
    doc = yaml.safe_load((DEMO / "model.yaml").read_text())
    doc["site"] = site
    doc["model"].pop("sha256")
    (folder / "model.tflite").write_bytes(content)
    (folder / "model.yaml").write_text(yaml.safe_dump(doc))
    return folder / "model.yaml"


@pytest.fixture()
def mixed_registry(tmp_path) -> Path:
    """The healthy demo entry beside one whose model crashes LiteRT."""
    root = tmp_path / "registry"
    shutil.copytree(DEMO, root / "demo" / "1")
    demo_entry(root / "bad" / "1", crashing_model(), site="bad")
    return root


def states(registry: Registry) -> dict[str, tuple[str, str | None]]:
    return {e.site: (e.state, e.error) for e in registry.entries()}


def test_a_crashing_model_is_failed_and_the_healthy_entry_serves(mixed_registry):
    registry = Registry([mixed_registry])
    registry.refresh()
    state, error = states(registry)["bad"]
    assert state == FAILED and "the runtime crashed: SIGFPE" in error
    assert registry.sites() == ["demo"]
    assert registry.get("demo").recognize(DEMO_IMAGE).text == "7kp3"


def test_a_crashing_model_dropped_in_later_fails_at_the_rescan(tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(DEMO, root / "demo" / "1")
    registry = Registry([root])
    registry.refresh()
    demo_entry(root / "bad" / "1", crashing_model(), site="bad")
    registry.refresh()
    assert states(registry)["bad"][0] == FAILED
    assert registry.get("demo").recognize(DEMO_IMAGE).text == "7kp3"


def test_capserve_models_lists_the_crashing_entry_failed(mixed_registry, capsys):
    assert main(["models", "--registry", str(mixed_registry)]) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["bad"][2] == "FAILED" and rows["demo"][2] == AVAILABLE
    assert "SIGFPE" in out + err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_server_keeps_answering_beside_a_crashing_model(mixed_registry, workers):
    query = {"base64Image": base64.b64encode(DEMO_IMAGE).decode()}
    with start_server(mixed_registry, "--workers", workers) as base:
        # and one more dropped in while it runs, found by the watcher's rescan
        demo_entry(mixed_registry / "worse" / "1", crashing_model(), site="worse")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sites = {m["site"]: m["state"] for m in httpx.get(base + "/v1/models", timeout=10).json()["models"]}
            if sites.get("worse") not in (None, "LOADING"):  # LOADING while its proof runs
                break
            time.sleep(0.1)
        assert sites == {"demo": "AVAILABLE", "bad": "FAILED", "worse": "FAILED"}
        for _ in range(2 * int(workers)):
            r = httpx.get(base + "/recognize/demo", params=query, timeout=10)
            assert r.status_code == 200 and r.json()["text"] == "7kp3", r.text


def test_a_rescan_does_not_prove_unchanged_files_again(mixed_registry, monkeypatch):
    monkeypatch.setattr(proof, "_verdicts", {})
    children = []
    run_child = proof._run_child
    monkeypatch.setattr(proof, "_run_child", lambda contents, *a: children.append(len(contents)) or run_child(contents, *a))
    registry = Registry([mixed_registry])
    registry.refresh()
    assert children == [2, 1]  # both in one child; the one after the crash in a fresh child
    touch_later(mixed_registry / "demo" / "1" / "model.yaml")
    registry.refresh()
    assert children == [2, 1]
    (mixed_registry / "bad" / "1" / "model.tflite").write_bytes(DEMO_BYTES + b"\0")  # new bytes, a healthy model
    touch_later(mixed_registry / "bad" / "1" / "model.tflite")
    registry.refresh()
    assert children == [2, 1, 1] and states(registry)["bad"][0] == AVAILABLE


def test_a_model_over_the_time_or_memory_limit_is_refused(monkeypatch):
    monkeypatch.setattr(proof, "_verdicts", {})
    (timed_out,) = proof.prove([DEMO_BYTES], timeout=0.001)
    assert "did not finish within" in timed_out
    assert proof._verdicts == {}  # a time-out is not remembered
    (starved,) = proof.prove([DEMO_BYTES], memory=32 << 20)
    assert starved is not None
    assert proof.prove([DEMO_BYTES]) == [None]


def mutants(seed: int, count: int) -> list[bytes]:
    """Demo models with 1-3 bytes changed, most in the file's tail (the flatbuffer's tables),
    and variations of the known crash."""
    rng = random.Random(seed)
    n = len(DEMO_BYTES)
    out = []
    for i in range(count):
        data = bytearray(crashing_model() if i % 4 == 0 else DEMO_BYTES)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(n - n // 20, n) if rng.random() < 0.8 else rng.randrange(n)
            data[pos] = rng.choice([0, 1, 0xFF, data[pos] ^ (1 << rng.randrange(8)), rng.randrange(256)])
        out.append(bytes(data))
    return out


def test_mutated_models_never_kill_the_process(monkeypatch):
    monkeypatch.setattr(proof, "_verdicts", {})
    files = mutants(seed=13, count=48)
    verdicts = proof.prove(files)
    assert len(verdicts) == len(files)
    assert any(v and "crashed" in v for v in verdicts)  # the crash variations are caught...
    proven = [f for f, v in zip(files, verdicts) if v is None]
    assert proven
    for content in proven:  # ...and what was proven loads and runs here
        runtime = Runtime(content, max_interpreters=1)
        assert runtime.run(np.zeros(runtime.input_shape[1:], np.float32)).ndim == 2


def test_a_child_that_cannot_start_fails_the_files_without_remembering_it(monkeypatch):
    monkeypatch.setattr(proof, "_verdicts", {})
    monkeypatch.setattr(proof.sys, "executable", "/bin/false")
    assert proof.prove([DEMO_BYTES]) == ["the runtime exited with status 1"]
    assert proof._verdicts == {}
