"""Registry entries: validation messages, versions, hot reload, broken entries beside healthy ones."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from capserve.core.errors import ModelUnavailable, UnknownSite
from capserve.model_registry.registry import AVAILABLE, BUNDLED, FAILED, Registry
from tests import model_factory
from tests.conftest import DEMO_EXAMPLE, png_bytes


def load_one(root: Path) -> Registry:
    registry = Registry([root])
    registry.refresh()
    return registry


def only_error(registry: Registry) -> str:
    (entry,) = registry.entries()
    assert entry.state == FAILED
    return entry.error


def edit_yaml(path: Path, **changes) -> None:
    doc = yaml.safe_load(path.read_text())
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc))


def touch_later(path: Path) -> None:
    """Make sure the file's mtime moves even on coarse-grained filesystems."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))


def test_healthy_entry_serves(tmp_path):
    """A copy of the bundled demo entry in a registry folder reads the bundled example."""
    shutil.copytree(BUNDLED / "demo", tmp_path / "demo")
    registry = load_one(tmp_path)
    assert registry.sites() == ["demo"]
    assert registry.get("demo").recognize(DEMO_EXAMPLE.read_bytes()).text == "7kp3"


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"charset": "0123456789abc"}, "charset", "need 14 output classes"),
        ({"input": {"width": 100, "height": 32, "channels": 1}}, "input", "the model takes"),
        ({"model": {"file": "model.tflite", "sha256": "0" * 64}}, "model.sha256", "does not match"),
        ({"model": {"file": "missing.tflite"}}, "model.file", "does not exist"),
        ({"model": {"file": "../escape.tflite"}}, "model.file", "not a path"),
        ({"preprocess": ["grayscale", "sharpen"]}, "preprocess[1]", "unknown step"),
        ({"preprocess": [{"resize": {"mode": "zoom"}}]}, "preprocess[0]", "must be one of"),
        ({"postprocess": ["nothing_like_this"]}, "postprocess[0]", "unknown step"),
        ({"site": "Bad Name!"}, "site", "must match"),
        ({"version": 0}, "version", "positive"),
        ({"decoder": {"type": "beam"}}, "decoder.type", "must be one of"),
        ({"input": {"width": 64, "height": 32}}, "input.channels", "is required"),
    ],
)
def test_validation_names_file_field_and_reason(registry_dir, change, field, words):
    yaml_path = registry_dir / "tiny" / "1" / "model.yaml"
    edit_yaml(yaml_path, **change)
    error = only_error(load_one(registry_dir))
    assert str(yaml_path) in error and field in error and words in error


def test_truncated_yaml_and_corrupt_model_fail_alone(registry_dir, tiny_model_bytes):
    model_factory.write_entry(registry_dir / "broken-yaml" / "1", tiny_model_bytes, site="broken-yaml")
    (registry_dir / "broken-yaml" / "1" / "model.yaml").write_text("site: broken-yaml\nversion: [1,\n")
    model_factory.write_entry(registry_dir / "corrupt" / "1", b"not a flatbuffer" * 10, site="corrupt")
    registry = load_one(registry_dir)
    states = {e.path.parent.parent.name: e for e in registry.entries()}
    assert states["tiny"].state == AVAILABLE
    assert states["broken-yaml"].state == FAILED and "not valid YAML" in states["broken-yaml"].error
    assert states["corrupt"].state == FAILED and "LiteRT cannot load" in states["corrupt"].error
    assert registry.sites() == ["tiny"]
    with pytest.raises(UnknownSite):
        registry.get("corrupt")


def test_highest_valid_version_serves(registry_dir, tiny_model_bytes):
    model_factory.write_entry(registry_dir / "tiny" / "3", tiny_model_bytes, version=3)
    broken = model_factory.write_entry(registry_dir / "tiny" / "4", tiny_model_bytes, version=4, charset="01")
    registry = load_one(registry_dir)
    assert registry.get("tiny").spec.version == 3
    assert [e.state for e in registry.site_entries("tiny")] == [FAILED, AVAILABLE, AVAILABLE]
    assert str(broken) in registry.site_entries("tiny")[0].error


def test_duplicate_site_version_is_reported(registry_dir, tiny_model_bytes):
    model_factory.write_entry(registry_dir / "tiny-copy", tiny_model_bytes, site="tiny", version=1)
    registry = load_one(registry_dir)
    failed = [e for e in registry.entries() if e.state == FAILED]
    assert len(failed) == 1 and "also defined by" in failed[0].error
    assert registry.get("tiny").spec.version == 1


def test_hot_reload_add_modify_delete(registry_dir, tiny_model_bytes):
    registry = load_one(registry_dir)
    old = registry.get("tiny")

    # add: a new site is served on the next scan
    model_factory.write_entry(registry_dir / "other" / "1", tiny_model_bytes, site="other")
    registry.refresh()
    assert registry.sites() == ["other", "tiny"]

    # modify: a new version replaces the old one once loaded; a request holding the old one finishes on it
    yaml_path = registry_dir / "tiny" / "1" / "model.yaml"
    edit_yaml(yaml_path, version=2, description="retrained")
    touch_later(yaml_path)
    registry.refresh()
    new = registry.get("tiny")
    assert new is not old and new.spec.version == 2 and new.spec.description == "retrained"
    assert old.spec.version == 1 and isinstance(old.recognize(png_bytes()).text, str)

    # a broken modification keeps the last good copy serving, reported FAILED
    yaml_path.write_text("site: tiny\nversion: [")
    registry.refresh()
    assert registry.get("tiny") is new
    (entry,) = registry.site_entries("tiny")
    assert entry.state == FAILED and "not valid YAML" in entry.error

    # delete: the site answers 404
    shutil.rmtree(registry_dir / "tiny")
    registry.refresh()
    assert registry.sites() == ["other"]
    with pytest.raises(UnknownSite):
        registry.get("tiny")


def test_unchanged_entries_are_not_reloaded(registry_dir):
    registry = load_one(registry_dir)
    model = registry.get("tiny")
    registry.refresh()
    assert registry.get("tiny") is model


def test_watch_thread_picks_up_a_new_entry(registry_dir, tiny_model_bytes):
    registry = load_one(registry_dir)
    registry.watch(interval=0.05)
    try:
        model_factory.write_entry(registry_dir / "late" / "1", tiny_model_bytes, site="late")
        deadline = time.monotonic() + 30
        while "late" not in registry.sites() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "late" in registry.sites()
    finally:
        registry.close()


def test_entries_through_links_outside_the_registry_are_ignored(tmp_path, tiny_model_bytes):
    outside = tmp_path / "outside"
    model_factory.write_entry(outside / "evil", tiny_model_bytes, site="evil")
    root = tmp_path / "registry"
    root.mkdir()
    (root / "evil").symlink_to(outside / "evil", target_is_directory=True)
    registry = load_one(root)
    assert registry.sites() == [] and registry.entries() == []


def test_lazy_mode_loads_a_site_on_its_first_request(registry_dir, tiny_model_bytes, monkeypatch):
    from capserve.model_registry.registry import UNLOADED

    model_factory.write_entry(registry_dir / "tiny" / "2", tiny_model_bytes, version=2)
    model_factory.write_entry(registry_dir / "bad" / "1", tiny_model_bytes, site="bad", charset="01")
    registry = Registry([registry_dir], lazy=True)
    registry.refresh()
    assert registry.sites() == ["bad", "tiny"] and registry.serving("tiny") is None
    assert {e.state for e in registry.site_entries("tiny")} == {UNLOADED}

    from capserve.core.model import Model

    release, real_warm_up = threading.Event(), Model.warm_up
    monkeypatch.setattr(Model, "warm_up", lambda model: (release.wait(30), real_warm_up(model)))
    with pytest.raises(ModelUnavailable):  # the first request starts the load, in a thread, and returns
        registry.get("tiny")
    assert registry.loading("tiny") is not None and registry.serving("tiny") is None
    release.set()
    model = registry.get("tiny", wait=60)
    assert model.spec.version == 2 and registry.serving("tiny") is model
    assert {e.state for e in registry.site_entries("tiny")} == {AVAILABLE}
    # a broken entry is found out on its first request, and then answers 404 like any failed site
    with pytest.raises(UnknownSite):
        registry.get("bad", wait=60)
    assert registry.site_entries("bad")[0].state == FAILED


def test_loading_runs_a_blank_image_through_the_whole_path(registry_dir, monkeypatch):
    from capserve.core.model import Model

    seen = []
    recognize = Model.recognize

    def spy(self, data):
        seen.append(data)
        return recognize(self, data)

    monkeypatch.setattr(Model, "recognize", spy)
    load_one(registry_dir)
    assert len(seen) == 1 and seen[0].startswith(b"\x89PNG")


def test_a_warm_up_the_entry_cannot_answer_does_not_fail_it(registry_dir):
    from capserve.core.images import ImageLimits

    registry = Registry([registry_dir], limits=ImageLimits(formats=("JPEG",)))  # the blank image is a PNG
    registry.refresh()
    assert registry.sites() == ["tiny"]
    assert [e.state for e in registry.entries()] == [AVAILABLE]


def in_thread(call, *args, **kwargs):
    """Run ``call`` in a thread and require it to return: a hang fails the test instead of
    stalling it. Returns what it returned or raised."""
    import threading

    result = []

    def run():
        try:
            result.append(call(*args, **kwargs))
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), f"{call.__name__}() is blocked"
    return result[0]


def load_in_thread(registry: Registry) -> None:
    in_thread(registry.refresh)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "fifo-in-folder"])
def test_a_model_file_that_is_not_a_regular_file_is_refused(registry_dir, tiny_model_bytes, kind):
    folder = registry_dir / "special" / "1"
    model_factory.write_entry(folder, tiny_model_bytes, site="special", with_hash=False)
    model = folder / "model.tflite"
    model.unlink()
    makers = {
        "fifo": os.mkfifo,
        "dev-zero": lambda p: p.symlink_to("/dev/zero"),
        "directory": os.mkdir,
        "fifo-in-folder": lambda p: (os.mkfifo(p.parent / "pipe"), p.symlink_to("pipe")),
    }
    makers[kind](model)
    registry = Registry([registry_dir])
    load_in_thread(registry)
    entry = registry.site_entries("special")[0]
    reason = "leads outside the entry's folder" if kind == "dev-zero" else "not a regular file"
    assert entry.state == FAILED and reason in entry.error
    assert registry.sites() == ["tiny"]
    # the watcher is not stuck: a new entry still loads
    model_factory.write_entry(registry_dir / "later" / "1", tiny_model_bytes, site="later")
    load_in_thread(registry)
    assert registry.sites() == ["later", "tiny"]


def test_a_fifo_model_in_lazy_mode_fails_the_first_request_only(registry_dir, tiny_model_bytes):
    folder = registry_dir / "special" / "1"
    model_factory.write_entry(folder, tiny_model_bytes, site="special", with_hash=False)
    (folder / "model.tflite").unlink()
    os.mkfifo(folder / "model.tflite")
    registry = Registry([registry_dir], lazy=True)
    registry.refresh()
    assert isinstance(in_thread(registry.get, "special", wait=30), UnknownSite)
    assert "not a regular file" in registry.site_entries("special")[0].error
    assert registry.get("tiny", wait=30).recognize(png_bytes()).text is not None


def test_a_model_file_linked_outside_the_entry_is_refused_and_its_hash_never_shown(tmp_path, tiny_model_bytes):
    import hashlib

    outside = tmp_path / "secret.tflite"
    outside.write_bytes(tiny_model_bytes + b"private")
    root = tmp_path / "registry"
    for site, sha256 in (("nohash", None), ("wronghash", "0" * 64)):
        folder = root / site / "1"
        model_factory.write_entry(folder, tiny_model_bytes, site=site, with_hash=False)
        if sha256:
            edit_yaml(folder / "model.yaml", model={"file": "model.tflite", "sha256": sha256})
        (folder / "model.tflite").unlink()
        (folder / "model.tflite").symlink_to(outside)
    registry = load_one_of(root)
    assert registry.sites() == []
    for entry in registry.entries():
        assert entry.state == FAILED and "leads outside the entry's folder" in entry.error
        assert hashlib.sha256(outside.read_bytes()).hexdigest() not in entry.error


def load_one_of(root: Path) -> Registry:
    registry = Registry([root])
    registry.refresh()
    return registry


def test_a_model_file_over_the_size_cap_is_refused(registry_dir, monkeypatch):
    from capserve.core import model

    monkeypatch.setattr(model, "MAX_MODEL_BYTES", 1000)
    error = only_error(load_one(registry_dir))
    assert "larger than 1000 bytes" in error


def test_a_yaml_file_over_the_size_cap_is_refused(registry_dir, monkeypatch):
    from capserve.core import spec

    monkeypatch.setattr(spec, "MAX_ENTRY_BYTES", 100)
    error = only_error(load_one(registry_dir))
    assert "model.yaml" in error and "larger than 100 bytes" in error


def test_a_duplicate_outside_its_site_folder_never_replaces_the_real_entry(registry_dir):
    real = registry_dir / "tiny" / "1" / "model.yaml"
    impostor = model_factory.write_entry(registry_dir / "aaa", model_factory.tiny_tflite(seed=1), site="tiny")
    registry = load_one(registry_dir)
    assert registry.get("tiny").spec.path == real
    states = {e.path: e for e in registry.entries()}
    assert states[real].state == AVAILABLE
    assert states[impostor].state == FAILED and str(real) in states[impostor].error
    # the rule holds whichever way the scan found them, and the impostor never serves
    impostor.parent.rename(registry_dir / "zzz")
    registry.refresh()
    assert registry.get("tiny").spec.path == real
    # when the duplicate goes, the entry it shadowed is AVAILABLE again
    shutil.rmtree(registry_dir / "zzz")
    real_copy = model_factory.write_entry(registry_dir / "tiny-copy" / "tiny" / "1", model_factory.tiny_tflite(seed=1))
    registry.refresh()
    assert registry.get("tiny").spec.path == real
    assert {e.path: e.state for e in registry.entries()} == {real: AVAILABLE}
    assert real_copy not in {e.path for e in registry.entries()}  # three levels down: not an entry


def test_a_shadowed_entry_serves_again_when_its_duplicate_goes(tmp_path, tiny_model_bytes):
    first, second = tmp_path / "first", tmp_path / "second"
    model_factory.write_entry(first / "tiny" / "1", tiny_model_bytes)
    model_factory.write_entry(second / "tiny" / "1", tiny_model_bytes)
    registry = Registry([second, first])
    registry.refresh()
    winner, loser = second / "tiny" / "1" / "model.yaml", first / "tiny" / "1" / "model.yaml"
    assert registry.get("tiny").spec.path == winner  # the first registry folder wins
    by_path = {e.path: e for e in registry.entries()}
    assert by_path[loser].state == FAILED and str(winner) in by_path[loser].error
    shutil.rmtree(second / "tiny")
    registry.refresh()
    assert registry.get("tiny").spec.path == loser
    assert [(e.path, e.state, e.error) for e in registry.entries()] == [(loser, AVAILABLE, None)]
