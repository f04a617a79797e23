"""The plugin manager: built-ins registered like third-party modules, what it lists, tracing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from capserve.plugins import manager

REPO = Path(__file__).resolve().parent.parent

OWN_PREPROCESS = {
    "capserve.plugins.builtin.colour": ["grayscale", "decolorize", "normalize", "invert", "keep_colors", "drop_colors", "flatten_alpha"],
    "capserve.plugins.builtin.frames": ["frames_concat", "frames_blend", "frames_median", "frames_min", "frames_max", "frames_pick"],
    "capserve.plugins.builtin.geometry": ["resize", "crop", "trim"],
    "capserve.plugins.builtin.cleaning": ["threshold", "median_filter", "remove_specks"],
}


def test_builtins_are_registered_as_modules_and_listed():
    listed = {p["name"]: p for p in manager.list_plugins()}
    for name in manager.BUILTIN_PLUGINS:
        assert name in listed and listed[name]["origin"] == "builtin"
    for name, steps in OWN_PREPROCESS.items():
        assert listed[name]["preprocess"] == steps
    assert listed["capserve.plugins.builtin.text"]["postprocess"] == ["arithmetic", "case", "map_chars"]


def test_every_builtin_step_is_described_with_its_params():
    for catalog in (manager.catalog().preprocess, manager.catalog().postprocess):
        for name, step in catalog.items():
            described = step.describe()
            json.dumps(described)  # the HTTP listing serialises it
            assert described["name"] == name and len(described["description"]) > 10, name
            for param in described["params"]:
                assert param["type"] and ("default" in param) != param["required"], (name, param)
                if not param["required"] and param["default"] is not None:
                    # every default is itself a valid value of its parameter
                    (declared,) = [p for p in step.params if p.name == param["name"]]
                    declared.convert(json.loads(json.dumps(param["default"])))


def test_frames_steps_are_marked():
    steps = manager.catalog().preprocess
    assert {name for name, step in steps.items() if step.frames} == set(OWN_PREPROCESS["capserve.plugins.builtin.frames"])
    assert steps["frames_min"].describe()["frames"] is True


def test_trace_env_var_prints_hook_calls():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSERVE_")}
    env.update(CAPSERVE_TRACE_PLUGINS="1", CAPSERVE_LOAD_PLUGINS="0", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", "from capserve.plugins import manager; manager.catalog().preprocess"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "register_preprocess_steps" in result.stderr and "finish register_preprocess_steps" in result.stderr
    quiet = subprocess.run(
        [sys.executable, "-c", "from capserve.plugins import manager; manager.catalog().preprocess"],
        cwd=REPO, env={**env, "CAPSERVE_TRACE_PLUGINS": "0"}, capture_output=True, text=True, timeout=120,
    )
    assert "register_preprocess_steps" not in quiet.stderr


def test_the_plugin_guide_documents_every_builtin_step():
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    for name in list(manager.catalog().preprocess) + list(manager.catalog().postprocess):
        if not name.startswith("example_"):
            assert f"`{name}`" in guide, name
