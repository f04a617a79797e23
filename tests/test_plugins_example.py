"""The example plugin package under examples/: pip-installed, found through the entry point,
named in a registry entry, and served over HTTP.

The package is installed with pip into a temporary ``--target`` folder, not into the
virtualenv: other test runs share the virtualenv, and a plugin left installed there would
change what they load. Everything that must see the plugin runs in a fresh interpreter with
that folder on ``PYTHONPATH``, since the plugin manager reads entry points when
``capserve.plugins.manager`` is first imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "capserve-example-plugin"
DIST_NAME = "capserve-example-plugin"
DIST_VERSION = "0.1.0"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A folder that holds the installed example plugin (its package and its dist-info)."""
    work = tmp_path_factory.mktemp("example-plugin")
    source = work / "src"
    # Build from a copy: pip builds in the source tree (build/, *.egg-info), and concurrent
    # runs must not share that.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--quiet"]
    if importlib.util.find_spec("setuptools") is not None:
        command += ["--no-build-isolation", "--no-index"]  # offline: build with the setuptools we have
    command += ["--target", str(target), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target / "capserve_example_plugin" / "__init__.py").exists()
    return target


def run_python(code: str, plugin_path: Path | None, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSERVE_")}
    paths = ([str(plugin_path)] if plugin_path else []) + [str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_entry_point_discovery_lists_origin_and_version(plugin_path):
    result = run_python(
        """
        import json
        from capserve.plugins import manager
        print(json.dumps({
            "plugins": manager.list_plugins(),
            "pre": {k: v.describe() for k, v in manager.catalog().preprocess.items()},
            "post": sorted(manager.catalog().postprocess),
        }))
        """,
        plugin_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    (example,) = [p for p in out["plugins"] if p["name"] == "example"]
    assert example["origin"] == DIST_NAME and example["version"] == DIST_VERSION
    assert example["preprocess"] == ["example_gamma"] and example["postprocess"] == ["example_min_confidence"]
    # the built-ins are still there, and listed first
    assert out["plugins"][0]["origin"] == "builtin" and out["plugins"][-1]["name"] == "example"
    assert {"grayscale", "frames_min", "example_gamma"} <= set(out["pre"])
    assert out["pre"]["example_gamma"]["params"][0] == {
        "name": "gamma", "type": "float", "required": False, "default": 0.5, "min": 0.1, "max": 10.0,
        "help": "below 1 darkens mid-tones",
    }
    assert "example_min_confidence" in out["post"]


def test_without_the_install_the_plugin_is_absent():
    result = run_python("from capserve.plugins import manager; print(sorted(manager.catalog().preprocess))", None)
    assert result.returncode == 0, result.stderr
    assert "example_gamma" not in result.stdout and "grayscale" in result.stdout


def test_load_plugins_0_skips_entry_points(plugin_path):
    result = run_python(
        "from capserve.plugins import manager; print([p['name'] for p in manager.list_plugins()])",
        plugin_path,
        CAPSERVE_LOAD_PLUGINS="0",
    )
    assert result.returncode == 0, result.stderr
    assert "'example'" not in result.stdout and "capserve.plugins.builtin.colour" in result.stdout


def test_capserve_plugins_cli_lists_it(plugin_path):
    result = run_python("import sys; from capserve.server.cli import main; sys.exit(main(['plugins']))", plugin_path)
    assert result.returncode == 0, result.stderr
    assert f"example  ({DIST_NAME} {DIST_VERSION})" in result.stdout
    assert "preprocess: example_gamma" in result.stdout


def test_registry_entry_naming_its_steps_compiles_and_runs(plugin_path, tmp_path):
    entry = tmp_path / "model.yaml"
    entry.write_text(
        textwrap.dedent(
            """
            site: example
            version: 1
            model: {file: model.tflite}
            input: {width: 64, height: 32, channels: 1}
            charset: "0123456789"
            decoder: ctc
            preprocess:
              - example_gamma: {gamma: 0.5}
              - grayscale
              - resize: {mode: pad}
              - normalize
            postprocess:
              - example_min_confidence: {threshold: 0.9, replacement: "?"}
            """
        )
    )
    result = run_python(
        f"""
        import io, json
        import numpy as np
        from PIL import Image
        from capserve.core.spec import load_spec
        from capserve.core.chain import InputShape
        from capserve.plugins.manager import compile_preprocess, compile_postprocess

        spec = load_spec(__import__("pathlib").Path({str(entry)!r}))
        pre = compile_preprocess(spec.preprocess, InputShape(spec.width, spec.height, spec.channels))
        post = compile_postprocess(spec.postprocess)
        buf = io.BytesIO()
        Image.new("RGB", (100, 50), (128, 128, 128)).save(buf, "PNG")
        tensor = pre.tensor(pre.decode(buf.getvalue()))
        print(json.dumps({{
            "names": list(pre.names), "shape": list(tensor.shape), "value": float(tensor[16, 32, 0]),
            "sure": post("42", (0.95, 0.99)), "doubtful": post("42", (0.95, 0.5)),
        }}))
        """,
        plugin_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["names"] == ["example_gamma", "grayscale", "resize", "normalize"]
    assert out["shape"] == [32, 64, 1]
    # grey 128 with gamma 0.5: 255 * (128/255) ** 0.5 = 180.7 -> 181
    assert out["value"] == pytest.approx(181 / 255, abs=1e-6)
    assert out["sure"] == "42" and out["doubtful"] == "?"


def test_served_over_http(plugin_path, tmp_path, tiny_model_bytes):
    """The example plugin end to end: registry entry -> Starlette app -> /recognize and /v1/plugins."""
    pytest.importorskip("capserve.server.app")
    from tests import model_factory

    root = tmp_path / "registry"
    model_factory.write_entry(
        root / "example" / "1",
        tiny_model_bytes,
        site="example",
        preprocess=["example_gamma", "grayscale", {"resize": {"mode": "pad"}}, "normalize"],
        # every character of a random model is below 1.0: the answer is always the replacement
        postprocess=[{"example_min_confidence": {"threshold": 1.0, "replacement": "retry"}}],
    )
    model_factory.write_entry(
        root / "broken" / "1",
        tiny_model_bytes,
        site="broken",
        preprocess=["grayscale", {"example_gamma": {"gamma": 50}}, "resize", "normalize"],
    )
    result = run_python(
        f"""
        import base64, io, json
        from PIL import Image, ImageDraw
        from starlette.testclient import TestClient
        from capserve.model_registry.registry import Registry
        from capserve.server.app import create_app

        image = Image.new("RGB", (100, 50), "white")
        ImageDraw.Draw(image).text((10, 15), "1234", fill="black")
        buf = io.BytesIO()
        image.save(buf, "PNG")
        app = create_app(Registry([__import__("pathlib").Path({str(root)!r})]), watch=False)
        with TestClient(app) as client:
            r = client.get("/recognize/example", params={{"base64Image": base64.b64encode(buf.getvalue()).decode()}})
            plugins = client.get("/v1/plugins").json()
            broken = client.get("/v1/models/broken").json()
        print(json.dumps({{"status": r.status_code, "body": r.json(), "plugins": plugins, "broken": broken}}))
        """,
        plugin_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == 200, out["body"]
    assert out["body"]["ok"] is True and out["body"]["text"] == "retry"
    (example,) = [p for p in out["plugins"]["plugins"] if p["name"] == "example"]
    assert example["origin"] == DIST_NAME and example["version"] == DIST_VERSION
    # the entry with an out-of-range parameter of the plugin's step fails alone, saying where and why
    assert out["broken"]["state"] == "FAILED"
    error = out["broken"]["versions"][0]["error"]
    assert "model.yaml" in error and "preprocess[1]" in error and "example_gamma" in error and "<= 10.0" in error
