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
