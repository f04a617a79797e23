"""``capserve scf package``: the deploy zip works on its own, in event and in web mode.

The tests marked ``SLOW`` build real packages with SCF's platform constraint (manylinux_2_17
wheels), which takes ~10-30 s each: uv installs the serving dependencies (downloaded once from
PyPI into uv's cache, reused after), the builder compiles bytecode and tries the package. Most
build for THIS machine's Python, so that they can run here; one builds for Python 3.10, the SCF
runtime, from this host, and runs it under a 3.10 interpreter (skipped when there is none:
``.ci/run`` fails then). They are skipped when PyPI cannot be reached and the wheels are not
cached, and are left out of the fast selection (``-m "not slow"``).

The site packaged is the bundled ``demo`` entry when it exists, or the ``demo`` site of
``$CAPSERVE_DEMO_REGISTRY`` (then the answers must be the true captcha texts), else a tiny untrained entry (then the answers must equal the in-process
app's answers, which are deterministic).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from capserve.scf_adapter import package
from tests import model_factory
from tests.conftest import REPO, png_bytes

DEMO_CHARSET = "23456789abcdefghjkmpqrstuvwxy"
DEMO_EXAMPLE = REPO / "docs" / "examples" / "demo-7kp3.png"
SLOW = pytest.mark.slow  # builds a real deploy package: uv install of manylinux wheels, bytecode, a fresh interpreter
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
BASE_PYTHON = getattr(sys, "_base_executable", None) or sys.executable
EVENTS = Path(__file__).parent / "events"
OFFLINE_SIGNS = ("Failed to fetch", "error sending request", "dns error", "Network is unreachable")

# Run inside the isolated interpreter: sys.path is the package folder plus the standard library.
RUNNER = r'''
import importlib.util, json, sys, time
started = time.perf_counter()
folder = sys.argv[1]
sys.path.insert(0, folder)
from index import main_handler
imported = time.perf_counter()
answers = [main_handler(event, None) for event in json.load(sys.stdin)]
done = time.perf_counter()
modules = {name: getattr(sys.modules.get(name), "__file__", None)
           for name in ("numpy", "starlette", "ai_edge_litert", "PIL", "capserve.server", "capserve.core", "yaml")}
print(json.dumps({"answers": answers, "sys_path": sys.path, "modules": modules, "version": list(sys.version_info[:2]),
                  "tensorflow": importlib.util.find_spec("tensorflow") is not None,
                  "import_s": imported - started, "answers_s": done - imported}))
'''


def demo_registry() -> tuple[Path, list[str]] | None:
    """The registry folder holding a trained ``demo`` entry, and the builder's registry args.

    ``$CAPSERVE_DEMO_REGISTRY`` points at another registry folder with a ``demo`` site (to try
    a candidate model); by default the bundled entry is used when it exists."""
    override = os.environ.get("CAPSERVE_DEMO_REGISTRY")
    if override:
        return Path(override), ["--registry", override]
    bundled = REPO / "model_registry" / "bundled"
    return (bundled, []) if list((bundled / "demo").glob("*/model.yaml")) else None


def demo_captchas(count: int = 5, seed: int = 1234) -> list[tuple[str, bytes]]:
    from captcha.image import ImageCaptcha

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text = "".join(rng.choice(DEMO_CHARSET) for _ in range(4))
        random.seed(rng.random())
        out.append((text, ImageCaptcha(width=100, height=50).generate(text).getvalue()))
    return out


@pytest.fixture(scope="module")
def target(tmp_path_factory, tiny_model_bytes):
    """(site, registry args, [(label or None, image bytes)]) to package and read."""
    demo = demo_registry()
    if demo is not None:
        images = [("7kp3", DEMO_EXAMPLE.read_bytes())]
        if importlib.util.find_spec("captcha") is not None:  # the train extra's generator
            images += demo_captchas()
        return "demo", demo[1], images
    root = tmp_path_factory.mktemp("registry")
    model_factory.write_entry(root / "tiny" / "1", tiny_model_bytes)
    return "tiny", ["--registry", str(root)], [(None, png_bytes(t)) for t in ("1234", "98", "5")]


def build_cli(out: Path, site: str, registry_args: list[str], *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "capserve.server.cli", "scf", "package", "--out", str(out), "--site", site,
               "--python", HOST_PYTHON, *registry_args, *extra]
    return checked(subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900))


def checked(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if done.returncode != 0 and any(sign in done.stderr for sign in OFFLINE_SIGNS):
        pytest.skip(f"the serving wheels are not cached and PyPI cannot be reached:\n{done.stderr[-2000:]}")
    assert done.returncode == 0, done.stderr
    return done


def run_isolated(python: str, folder: Path, events: list[dict], tmp_path: Path) -> dict:
    """``main_handler`` of the unzipped package in ``python -I -S``: the package and the stdlib only."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    done = subprocess.run([python, "-I", "-S", "-c", RUNNER, str(folder)], input=json.dumps(events),
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["sys_path"][0] == str(folder)
    assert all(not p or "site-packages" not in p and "dist-packages" not in p for p in report["sys_path"])
    for name, path in report["modules"].items():
        assert path and path.startswith(str(folder)), (name, path)
    assert report["tensorflow"] is False
    return report


def in_process_answers(site: str, registry_args: list[str], images) -> list[dict]:
    """What the HTTP app answers for the same images (TestClient on create_app)."""
    from starlette.testclient import TestClient

    from capserve.model_registry.registry import Registry
    from capserve.server.app import create_app

    roots = [Path(registry_args[1])] if registry_args else None
    with TestClient(create_app(Registry(roots), watch=False)) as client:
        answers = []
        for _, data in images:
            doc = client.post(f"/recognize/{site}", content=data, headers={"content-type": "image/png"}).json()
            doc.pop("elapsed_ms", None)
            answers.append(doc)
    return answers


def events_for(site: str, images) -> list[dict]:
    out = []
    for i, (_, data) in enumerate(images):
        encoded = base64.b64encode(data).decode()
        if i % 2:  # Tencent API Gateway, raw PNG body base64-encoded by the gateway
            out.append({"httpMethod": "POST", "path": f"/recognize/{site}", "headers": {"Content-Type": "image/png"},
                        "queryString": {}, "body": encoded, "isBase64Encoded": True,
                        "requestContext": {"serviceId": "service-x", "stage": "release", "path": "/"}})
        else:  # Tencent function URL, GET ?base64Image=
            out.append({"httpMethod": "GET", "path": f"/recognize/{site}", "headers": {},
                        "queryString": {"base64Image": encoded}, "body": ""})
    return out


@pytest.fixture(scope="module")
def event_package(tmp_path_factory, target):
    site, registry_args, _ = target
    out = tmp_path_factory.mktemp("dist") / "capserve-scf.zip"
    done = build_cli(out, site, registry_args)
    return out, done


# -- the event-function package -----------------------------------------------------------------


@SLOW
def test_package_contents(event_package, target):
    out, done = event_package
    site = target[0]
    assert "unzipped size:" in done.stderr and str(out) in done.stdout
    assert f"checked: under {sys.executable} -I -S the package read a {site!r} captcha" in done.stderr
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        unzipped = sum(info.file_size for info in archive.infolist())
    tops = {name.split("/")[0] for name in names}
    packages = {name.split("/")[1] for name in names if name.startswith("capserve/")}
    assert "index.py" in tops and {"core", "server", "model_registry", "plugins", "scf_adapter"} <= packages
    assert not tops & {"server", "model_registry", "plugins", "training", "tensorflow", "keras", "tests"}, tops
    assert "training" not in packages
    bundled = {n.split("/")[3] for n in names if n.startswith("capserve/model_registry/bundled/") and n.endswith("model.yaml")}
    assert bundled == {site}
    assert any(n.endswith(".pyc") for n in names), "bytecode is shipped for the target Python"
    assert unzipped <= package.SCF_LIMIT_BYTES
    yml = yaml.safe_load((out.parent / "serverless.yml").read_text())
    assert yml["component"] == "scf" and yml["inputs"]["handler"] == "index.main_handler"
    assert yml["inputs"]["type"] == "event" and "http" in yml["inputs"]["events"][0]
    assert (out.parent / yml["inputs"]["src"]["src"]).joinpath("index.py").is_file()


@SLOW
def test_isolated_process_reads_the_captchas(event_package, target, tmp_path):
    """Unzip, then main_handler in `python -I -S`: only the package folder and the stdlib."""
    out, _ = event_package
    site, registry_args, images = target
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(out) as archive:
        archive.extractall(folder)
    report = run_isolated(BASE_PYTHON, folder, events_for(site, images), tmp_path)

    answers = []
    for answer in report["answers"]:
        assert answer["statusCode"] == 200 and answer["isBase64Encoded"] is False, answer
        doc = json.loads(answer["body"])
        doc.pop("elapsed_ms")
        answers.append(doc)
    assert answers == in_process_answers(site, registry_args, images)  # the HTTP app's answers
    labels = [label for label, _ in images]
    if site == "demo":
        assert answers[0]["text"] == "7kp3"  # the bundled example captcha
        correct = sum(a["text"] == label for a, label in zip(answers, labels))
        assert correct >= len(labels) - 1, list(zip(labels, [a["text"] for a in answers]))


RUNTIME_RUNNER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from ai_edge_litert.interpreter import Interpreter
x = np.asarray(json.loads(sys.argv[2]), np.float32)
out = {}
for path in sys.argv[3:]:
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out[path] = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).tolist()
print(json.dumps(out))
"""


@SLOW
@pytest.mark.train
def test_packaged_litert_runs_every_training_architecture(event_package, tmp_path):
    """The package's LiteRT (the newest with glibc-2.17 wheels, older than the dev one) runs
    what training exports, and gives the dev runtime's outputs."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from capserve.training.export import convert
    from capserve.training.models import ARCHS, ModelConfig, build_model

    out, _ = event_package
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(out) as archive:
        archive.extractall(folder)
    x = np.random.default_rng(0).random((1, 50, 100, 1), dtype=np.float32)
    files, expected = [], {}
    for arch in ARCHS:
        config = ModelConfig(arch=arch, charset_size=len(DEMO_CHARSET))
        path = tmp_path / f"{arch}.tflite"
        path.write_bytes(convert(build_model(config), config, "dynamic"))
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        expected[str(path)] = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        files.append(str(path))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    done = subprocess.run([BASE_PYTHON, "-I", "-S", "-c", RUNTIME_RUNNER, str(folder), json.dumps(x.tolist()), *files],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for path, probs in expected.items():
        packaged = np.asarray(got[path])
        assert packaged.shape == probs.shape
        assert np.abs(packaged - probs).max() < 1e-4 and (packaged.argmax(-1) == probs.argmax(-1)).all()


# -- the web-function package -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@SLOW
def test_web_bootstrap_answers_over_loopback(tmp_path_factory, target):
    site, registry_args, images = target
    out = tmp_path_factory.mktemp("dist-web") / "capserve-web.zip"
    build_cli(out, site, registry_args, "--mode", "web", "--trigger", "apigw", "--no-compile")
    folder = out.parent / "unzipped"
    with zipfile.ZipFile(out) as archive:
        info = archive.getinfo("scf_bootstrap")
        assert (info.external_attr >> 16) & stat.S_IXUSR, "scf_bootstrap must be executable"
        archive.extractall(folder)
    script = folder / "scf_bootstrap"
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n") and "\r" not in text and "@PYTHON@" not in text
    assert '"${CAPSERVE_HOST:-0.0.0.0}"' in text and '"${CAPSERVE_PORT:-9000}"' in text  # SCF's defaults
    yml = yaml.safe_load((out.parent / "serverless.yml").read_text())
    assert yml["inputs"]["type"] == "web" and "handler" not in yml["inputs"] and "apigw" in yml["inputs"]["events"][0]
    script.chmod(0o755)  # zipfile does not restore modes

    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder),
           "CAPSERVE_PYTHON": BASE_PYTHON, "CAPSERVE_HOST": "127.0.0.1", "CAPSERVE_PORT": str(port)}
    process = subprocess.Popen([str(script)], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the bootstrap did not serve: {process.stdout.read().decode()[-3000:]}")
                time.sleep(0.2)
        label, data = images[0]
        query = urllib.parse.urlencode({"base64Image": base64.b64encode(data).decode()})
        with urllib.request.urlopen(f"{base}/recognize/{site}?{query}", timeout=10) as r:
            doc = json.loads(r.read())
        doc.pop("elapsed_ms")
        assert doc == in_process_answers(site, registry_args, images[:1])[0]
        if label:
            assert doc["text"] == label
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


# -- quick checks of the builder (no network) ---------------------------------------------------


def test_requirements_match_pyproject():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [r for r in doc["project"]["dependencies"] if not r.startswith(package.LEFT_OUT_REQUIREMENTS)]
    assert sorted(package.SERVING_REQUIREMENTS) == sorted(wanted)
    assert len(wanted) == len(doc["project"]["dependencies"]) - len(package.LEFT_OUT_REQUIREMENTS)


def test_uv_platform_for_scf_glibc():
    assert package.python_platform("2.17") == "x86_64-manylinux_2_17"
    assert package.python_platform("2.28") == "x86_64-manylinux_2_28"
    for bad in ("2", "2.17.1", "two.17", ""):
        with pytest.raises(package.PackageError, match="--glibc"):
            package.python_platform(bad)


def test_without_uv_the_builder_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uv", None)  # import uv fails
    monkeypatch.setattr(package.shutil, "which", lambda name: None)
    with pytest.raises(package.PackageError, match=r"capserve\[scf\]"):
        package.uv_binary()


def test_uv_resolves_for_the_target_with_the_wheelhouse_as_find_links(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(package.subprocess, "run",
                        lambda command, **kw: calls.append(command) or subprocess.CompletedProcess(command, 0, "", ""))
    options = package.Options(out=tmp_path / "x.zip", wheelhouse=tmp_path / "new" / "wheels", offline=True)
    package.install_dependencies(tmp_path / "stage", options)
    command = calls[0]
    assert command[command.index("--python-version") + 1] == "3.10"
    assert command[command.index("--python-platform") + 1] == "x86_64-manylinux_2_17"
    assert command[command.index("--only-binary") + 1] == ":all:" and "--offline" in command
    assert command[command.index("--find-links") + 1] == str(tmp_path / "new" / "wheels")
    assert (tmp_path / "new" / "wheels").is_dir()  # uv refuses a --find-links folder that is not there
    assert set(package.requirements("event")) <= set(command)
    assert not any(c.startswith("granian") for c in command)  # an event function runs no HTTP server
    assert any(r.startswith("granian") for r in package.requirements("web"))


def _fake_python(folder: Path, script: str, version: str = "3.10") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"python{version}"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return path


# A version no interpreter here is, so that only the fake ones can match.
FAKE = "3.99"


def test_find_python_skips_a_broken_shim_and_takes_the_next(tmp_path, monkeypatch, capsys):
    broken = _fake_python(tmp_path / "shims", f'echo "pyenv: python{FAKE}: command not found" >&2; exit 127', FAKE)
    other = _fake_python(tmp_path / "other", "echo 3.9", FAKE)
    working = _fake_python(tmp_path / "bin", f"echo {FAKE}", FAKE)
    monkeypatch.setenv("PATH", os.pathsep.join(str(p.parent) for p in (broken, other, working)))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    assert package.find_python(FAKE) == str(working)
    err = capsys.readouterr().err
    assert f"skipping {broken}: it does not run (exit 127: pyenv: python{FAKE}: command not found)" in err
    assert f"skipping {other}: it is Python 3.9" in err
    with pytest.raises(package.PackageError, match="does not run"):
        package.find_python(FAKE, str(broken))


def test_find_python_looks_in_pyenv_versions(tmp_path, monkeypatch):
    _fake_python(tmp_path / "shims", "exit 127", FAKE)
    installed = _fake_python(tmp_path / "pyenv" / "versions" / f"{FAKE}.1" / "bin", f"echo {FAKE}", FAKE)
    monkeypatch.setenv("PATH", str(tmp_path / "shims"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    assert package.find_python(FAKE) == str(installed)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "nowhere"))
    assert package.find_python(FAKE) is None


def test_forbidden_packages_are_refused(tmp_path):
    (tmp_path / "numpy").mkdir()
    package.check_forbidden(tmp_path)
    (tmp_path / "tensorflow").mkdir()
    with pytest.raises(package.PackageError, match="tensorflow"):
        package.check_forbidden(tmp_path)


@pytest.mark.parametrize("trigger", ["http", "apigw"])
@pytest.mark.parametrize("mode", ["event", "web"])
def test_serverless_yml(tmp_path, trigger, mode):
    options = package.Options(out=tmp_path / "capserve.zip", mode=mode, trigger=trigger)
    doc = yaml.safe_load(package.serverless_yml(options, "capserve"))
    inputs = doc["inputs"]
    assert doc["component"] == "scf" and inputs["runtime"] == "Python3.10" and inputs["type"] == mode
    assert ("handler" in inputs) == (mode == "event")
    event = inputs["events"][0]
    if trigger == "http":
        assert event["http"]["parameters"]["authType"] == "NONE"
    else:
        endpoint = event["apigw"]["parameters"]["endpoints"][0]
        assert endpoint["path"] == "/" and endpoint["method"] == "ANY"
        assert endpoint.get("function", {}).get("isIntegratedResponse", False) == (mode == "event")


def _quick_build(tmp_path, registry_dir, monkeypatch, size: int, **kwargs):
    monkeypatch.setattr(package, "install_dependencies", lambda stage, options: [])
    monkeypatch.setattr(package, "tree_size", lambda folder: size)
    options = package.Options(out=tmp_path / "out" / "capserve.zip", registry=[registry_dir], compile=False,
                              check=False, **kwargs)
    return package.build(options)


def test_size_over_the_scf_limit_fails(tmp_path, registry_dir, monkeypatch):
    with pytest.raises(package.PackageError, match="over SCF's"):
        _quick_build(tmp_path, registry_dir, monkeypatch, package.SCF_LIMIT_BYTES + 1)
    assert not (tmp_path / "out" / "capserve.zip").exists()


def test_build_layout_without_dependencies(tmp_path, registry_dir, monkeypatch, capsys):
    result = _quick_build(tmp_path, registry_dir, monkeypatch, 1234)
    assert result.entries == [("tiny", 1)] and "unzipped size" in capsys.readouterr().err
    with zipfile.ZipFile(result.zip_path) as archive:
        names = set(archive.namelist())
    assert "index.py" in names and "capserve/model_registry/bundled/tiny/1/model.yaml" in names
    assert not any(n.startswith(("training/", "tests/")) or "__pycache__" in n for n in names)


def test_unknown_site_and_unsupported_python_are_refused(tmp_path, registry_dir, monkeypatch):
    with pytest.raises(package.PackageError, match="nope"):
        _quick_build(tmp_path, registry_dir, monkeypatch, 1, sites=["nope"])
    with pytest.raises(package.PackageError, match="3.10"):
        _quick_build(tmp_path, registry_dir, monkeypatch, 1, python="3.9")


# -- the SCF runtime's package, built from this host ---------------------------------------------


def tencent_events(site: str, image: bytes) -> list[dict]:
    """From the platforms' sample events (tests/events/README.md): API Gateway GET ?base64Image=,
    function URL POST JSON with and without a content type, an unknown site, bad base64."""
    encoded = base64.b64encode(image).decode()

    def gateway(path: str, query: dict) -> dict:
        event = json.loads((EVENTS / "tencent-apigw.json").read_text())
        event.update(httpMethod="GET", path=path, queryString=query, queryStringParameters={}, body=None)
        return event

    url = json.loads((EVENTS / "tencent-function-url.json").read_text())
    url.update(path=f"/recognize/{site}", body=json.dumps({"image": encoded}))
    typed = json.loads(json.dumps(url))
    typed["headers"]["content-type"] = "application/json"
    return [gateway(f"/recognize/{site}", {"base64Image": encoded}), typed, url,
            gateway("/recognize/nowhere", {"base64Image": encoded}), gateway(f"/recognize/{site}", {"base64Image": "!!!"})]


@SLOW
def test_package_for_python_310_from_this_host(tmp_path):
    """The documented command, on this host's Python, with a broken python3.10 shim first on
    PATH, builds a package that answers under Python 3.10 in isolation."""
    if demo_registry() != (REPO / "model_registry" / "bundled", []):
        pytest.skip("needs the bundled demo entry")
    python310 = package.find_python("3.10")
    if python310 is None:
        pytest.skip("no Python 3.10 interpreter here (.ci/run fails in that case)")
    shim = _fake_python(tmp_path / "shims", 'echo "pyenv: python3.10: command not found" >&2; exit 127')
    scripts = Path(sys.executable).parent
    env = {**os.environ, "PATH": os.pathsep.join([str(shim.parent), str(scripts), os.environ.get("PATH", "")])}
    env.pop("CAPSERVE_REGISTRY", None)
    done = checked(subprocess.run([str(scripts / "capserve"), "scf", "package", "--out", "pkg.zip", "--site", "demo"],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900))
    tried = [line for line in done.stderr.splitlines() if line.startswith("checked: under ")]
    assert len(tried) == 1 and " -I -S the package read a 'demo' captcha as " in tried[0], done.stderr
    if HOST_PYTHON != "3.10":  # else the builder's own interpreter (its console script's path) is taken
        assert f"skipping {shim}: it does not run" in done.stderr
        assert tried[0].startswith(f"checked: under {python310} -I -S")

    with zipfile.ZipFile(tmp_path / "pkg.zip") as archive:
        names = archive.namelist()
        unzipped = sum(info.file_size for info in archive.infolist())
        archive.extractall(tmp_path / "pkg-unzipped")
    assert unzipped <= package.SIZE_GOAL_BYTES
    assert not {n.split("/")[0].split("-")[0].lower() for n in names} & {"tensorflow", "tensorflow_cpu", "keras"}
    tags = {line.split(":", 1)[1].strip() for path in (tmp_path / "pkg-unzipped").glob("*.dist-info/WHEEL")
            for line in path.read_text().splitlines() if line.startswith("Tag:")}
    assert tags and all(t.startswith(("cp310-", "py3-", "py2.py3-", "py2-")) for t in tags), tags
    assert all("manylinux" in t or t.endswith("-any") for t in tags), tags

    report = run_isolated(python310, tmp_path / "pkg-unzipped", tencent_events("demo", DEMO_EXAMPLE.read_bytes()),
                          tmp_path)
    assert report["version"] == [3, 10]
    answers = [(a["statusCode"], json.loads(a["body"])) for a in report["answers"]]
    for status, doc in answers[:3]:  # gateway GET, function URL JSON with and without content type
        assert (status, doc["text"]) == (200, "7kp3"), doc
    assert (answers[3][0], answers[3][1]["error"]["code"]) == (404, "unknown_site")
    assert (answers[4][0], answers[4][1]["error"]["code"]) == (400, "bad_base64")
