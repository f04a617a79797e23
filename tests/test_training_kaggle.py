"""Kaggle: the bundle a user uploads as a dataset, the notebook's install cell, and the notebook itself.

The install cell runs as written in the notebook, in a subprocess, with the dataset root
(``/kaggle/input`` on Kaggle) given by ``CAPSERVE_KAGGLE_INPUT``. The notebook run overrides
its parameters the way papermill does it: a cell inserted after the cell tagged ``parameters``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from capserve.training import bundle
from capserve.training.cli import main as training_main
from tests.training_helpers import write_folder

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "training" / "kaggle" / "train.ipynb"
HOST = "%d.%d" % sys.version_info[:2]
TENSORFLOW_STAND_IN = '__version__ = "2.18.0"  # Kaggle preinstalls TensorFlow; this stands in for it\n'


def tagged(tag: str) -> list:
    return [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if tag in c.metadata.get("tags", [])]


def run_install_cell(python: str, input_root: Path, *, capserve: str | None = None,
                     record: bool = False) -> subprocess.CompletedProcess:
    """The notebook's install cell, offline: pip sees no index and no configuration of this machine.

    With ``record`` the cell's ``subprocess.run`` prints the command instead of running it.
    """
    (cell,) = tagged("install")
    prefix = f"INSTALL = True\nCAPSERVE = {capserve!r}\n"
    if record:
        prefix += "import json, subprocess\nsubprocess.run = lambda command, **kw: print('RUN', json.dumps(command))\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(CAPSERVE_KAGGLE_INPUT=str(input_root), PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    return subprocess.run([python, "-c", prefix + cell.source], env=env, capture_output=True, text=True)


def recorded_command(done: subprocess.CompletedProcess) -> list[str]:
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("RUN ")]
    return json.loads(line[4:])


# -- the notebook's cells -----------------------------------------------------------------------


def test_notebook_has_a_parameters_cell_and_an_install_cell():
    (parameters,) = tagged("parameters")
    for name in ("SITE", "DATA_DIR", "GENERATOR", "EPOCHS", "QUANTIZATION", "OUT_DIR", "INSTALL", "CAPSERVE"):
        assert f"{name} =" in parameters.source or f"{name}," in parameters.source, name
    assert len(tagged("install")) == 1


@pytest.mark.parametrize("mount", ["capserve-bundle", "datasets/someone/capserve-bundle"])
def test_install_cell_installs_from_the_attached_bundle_without_an_index(tmp_path, mount):
    wheels = tmp_path / "input" / mount / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "capserve-0.1.0-py3-none-any.whl").touch()
    (tmp_path / "input" / "my-captchas").mkdir()  # another dataset beside it
    command = recorded_command(run_install_cell(sys.executable, tmp_path / "input", record=True))
    assert command[:5] == [sys.executable, "-m", "pip", "install", "-q"]
    assert command[5:] == ["--no-index", "--find-links", str(wheels), "capserve[kaggle]"]


def test_install_cell_installs_from_a_git_url_when_one_is_set(tmp_path):
    url = "git+https://example.invalid/capserve.git"
    command = recorded_command(run_install_cell(sys.executable, tmp_path, capserve=url, record=True))
    assert command[5:] == [f"capserve[kaggle] @ {url}"]


def test_install_cell_without_a_bundle_says_what_to_attach(tmp_path):
    (tmp_path / "my-captchas").mkdir()
    done = run_install_cell(sys.executable, tmp_path, record=True)
    assert done.returncode != 0
    assert f"no capserve bundle under {tmp_path}" in done.stderr and "capserve kaggle bundle" in done.stderr


# -- the bundle command, without the network ----------------------------------------------------


def test_platform_tags_cover_every_glibc_up_to_the_target():
    tags = bundle.platform_tags("2.35")
    assert tags[0] == "manylinux_2_35_x86_64" and "manylinux_2_27_x86_64" in tags
    assert tags[-1] == "manylinux2014_x86_64" and "manylinux_2_36_x86_64" not in tags
    for bad in ("2", "two.35", "2.16"):
        with pytest.raises(bundle.BundleError, match="--glibc"):
            bundle.platform_tags(bad)


def test_a_broken_interpreter_is_skipped_or_refused(tmp_path, monkeypatch, capsys):
    other = "3.10" if HOST != "3.10" else "3.12"
    shim = tmp_path / "bin" / f"python{other}"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\necho 'pyenv: version not installed' >&2\nexit 127\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", str(shim.parent))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    with pytest.raises(bundle.BundleError, match=f"no Python {other} found"):
        bundle.find_interpreter(other)
    assert f"skipping {shim}" in capsys.readouterr().err
    with pytest.raises(bundle.BundleError, match="does not run"):
        bundle.find_interpreter(other, str(shim))
    with pytest.raises(bundle.BundleError, match=f"is Python {HOST}, not {other}"):
        bundle.find_interpreter(other, sys.executable)
    assert bundle.find_interpreter(HOST) == sys.executable


def test_the_wheel_is_built_from_the_packages_only(tmp_path):
    source = tmp_path / "checkout"
    for name in ("pyproject.toml", "README.md", "core/__init__.py", "core/__pycache__/x.pyc", "core/a.py",
                 "build/lib/capserve/core/removed.py", "my-captchas/ab_1.png", "capserve-bundle.zip",
                 "capserve.egg-info/PKG-INFO", "docs/x.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(name)
    bundle.copy_source(source, tmp_path / "copy")
    copied = sorted(p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert copied == ["README.md", "core/__init__.py", "core/a.py", "pyproject.toml"]


def test_the_wheelhouse_never_holds_tensorflow(tmp_path, monkeypatch):
    def fake_pip(args, interpreter=None):
        dest = Path(args[args.index("--dest") + 1])
        for name in ("captcha-0.7.1-py3-none-any.whl", "tensorflow_cpu-2.18.0-cp311-cp311-manylinux_2_17_x86_64.whl"):
            (dest / name).touch()

    monkeypatch.setattr(bundle, "pip", fake_pip)
    with pytest.raises(bundle.BundleError, match="tensorflow_cpu-2.18.0"):
        bundle.download_wheelhouse(tmp_path / "capserve.whl", tmp_path, bundle.Options(out=tmp_path, python=HOST))
    assert [bundle.is_tensorflow(bundle.distribution(n)) for n in ("tensorflow-2.18.0-x.whl", "tf_keras-2-x.whl",
                                                                    "captcha-0.7-x.whl", "tqdm-4-x.whl")] == [
        True, True, False, False]


def test_bundle_refuses_a_used_folder_and_bad_data_before_building(tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert training_main(["kaggle", "bundle", "--out", str(used)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err and (used / "keep.txt").read_text() == "mine"

    empty = tmp_path / "no-images"
    empty.mkdir()
    assert training_main(["kaggle", "bundle", "--out", str(tmp_path / "new"), "--data", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "--data: " in err and "no labelled images" in err
    assert not (tmp_path / "new").exists()


# -- the real thing: a bundle built here, installed the way Kaggle runs the cell ------------------


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory) -> Path:
    """``capserve kaggle bundle --data ... --zip``, unpacked as Kaggle mounts an uploaded zip."""
    work = tmp_path_factory.mktemp("kaggle")
    write_folder(work / "labelled", 240, seed=1, charset="abc")
    out = work / "bundle"
    done = subprocess.run([sys.executable, "-m", "capserve.training.cli", "kaggle", "bundle", "--out", str(out),
                           "--data", str(work / "labelled"), "--zip"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) + ".zip"
    mounted = work / "input" / "capserve-bundle"
    with zipfile.ZipFile(done.stdout.strip()) as archive:
        archive.extractall(mounted)
    return mounted


@pytest.mark.slow
def test_the_bundle_holds_what_the_notebook_needs_and_no_tensorflow(uploaded):
    wheels = sorted(p.name for p in (uploaded / "wheels").glob("*.whl"))
    names = {bundle.distribution(n) for n in wheels}
    assert {"capserve", "captcha", "matplotlib", "tqdm", "ai-edge-litert", "starlette"} <= names
    assert not [n for n in names if bundle.is_tensorflow(n)]
    assert (uploaded / "train.ipynb").read_bytes() == NOTEBOOK.read_bytes()
    assert len(list((uploaded / "data").glob("*.png"))) == 240


@pytest.mark.slow
def test_the_wheelhouse_is_resolved_for_the_target_python_not_this_one(tmp_path):
    other = "3.10" if HOST != "3.10" else "3.11"
    out = tmp_path / "bundle"
    assert training_main(["kaggle", "bundle", "--out", str(out), "--python-version", other]) == 0
    wheels = [p.name for p in (out / "wheels").glob("*.whl")]
    names = {bundle.distribution(name) for name in wheels}
    cp = "cp" + other.replace(".", "")
    assert [n for n in wheels if n.startswith("numpy-")] and all(f"-{cp}-{cp}-" in n for n in wheels if n.startswith("numpy-"))
    # anyio needs exceptiongroup only below Python 3.11: the markers were evaluated for the target
    assert ("exceptiongroup" in names) == (other == "3.10")


@pytest.mark.slow
def test_install_cell_installs_capserve_offline_beside_kaggles_tensorflow(uploaded, tmp_path):
    env_dir = tmp_path / "kaggle-python"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "tensorflow").mkdir()
    (site / "tensorflow" / "__init__.py").write_text(TENSORFLOW_STAND_IN)
    (site / "tensorflow-2.18.0.dist-info").mkdir()
    (site / "tensorflow-2.18.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorflow\nVersion: 2.18.0\n")
    (site / "tensorflow-2.18.0.dist-info" / "RECORD").touch()

    done = run_install_cell(python, uploaded.parent)
    assert done.returncode == 0, done.stderr
    assert f"installing capserve from {uploaded / 'wheels'}" in done.stdout

    listed = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True)
    installed = {d["name"].lower(): d["version"] for d in json.loads(listed.stdout)}
    assert "capserve" in installed and "captcha" in installed
    assert [n for n in installed if bundle.is_tensorflow(n)] == ["tensorflow"] and installed["tensorflow"] == "2.18.0"
    assert (site / "tensorflow" / "__init__.py").read_text() == TENSORFLOW_STAND_IN

    image = REPO / "docs" / "examples" / "demo-7kp3.png"
    predicted = subprocess.run([str(env_dir / "bin" / "capserve"), "predict", "--site", "demo", str(image), "--json"],
                               capture_output=True, text=True, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["text"] == image.stem.split("-")[1]
    imports = "import capserve.training.cli, captcha, matplotlib, tqdm"
    assert subprocess.run([python, "-c", imports], capture_output=True, cwd=tmp_path).returncode == 0


# -- the notebook top to bottom, and the whole story ----------------------------------------------

STORY_SITE = "kaggle-story"
# Run by Python 3.10 with -I -S: sys.path is the package folder plus the standard library.
SCF_RUNNER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from index import main_handler
print(json.dumps([main_handler(event, None) for event in json.load(sys.stdin)]))
"""


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory):
    """The notebook run top to bottom (nbclient) on labelled images, as from /kaggle/input."""
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("tensorflow")
    work = tmp_path_factory.mktemp("notebook")
    data = work / "input" / "my-captchas"
    write_folder(data, 900, seed=3, charset="abc")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    overrides = f"""
SITE = {STORY_SITE!r}
DATA_DIR = {str(data)!r}
EPOCHS = 8
BATCH_SIZE = 16
TARGET_ACCURACY = 0.97
AUGMENT = "none"
FROM_SCRATCH = True
EXTRA_ARGS = ["--filters", "8,16,16,24", "--units", "32", "--lr", "3e-3", "--val-split", "0.2", "--seed", "1"]
OUT_DIR = {str(work / "working" / "registry")!r}
ZIP_DIR = {str(work / "working")!r}
INSTALL = False
"""
    cell = nbformat.v4.new_code_cell(overrides)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute()
    return work, nb


@pytest.mark.slow
@pytest.mark.train
def test_notebook_trains_and_zips_an_entry(notebook_run):
    work, nb = notebook_run
    archive = work / "working" / f"{STORY_SITE}-entry.zip"
    names = zipfile.ZipFile(archive).namelist()
    assert f"{STORY_SITE}/1/model.yaml" in names and f"{STORY_SITE}/1/model.tflite" in names
    assert any(n.startswith(f"{STORY_SITE}/1/report/") for n in names)
    outputs = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "sequence accuracy" in outputs


def scf_events(site: str, image: bytes) -> list[dict]:
    """One Tencent Function URL event (POST JSON) and one API Gateway event (GET ?base64Image=)."""
    encoded = base64.b64encode(image).decode()
    function_url = {"body": json.dumps({"image": encoded}), "httpMethod": "POST", "path": f"/recognize/{site}",
                    "queryString": {}, "headers": {"accept": "*/*", "content-type": "application/json",
                                                   "x-scf-remote-addr": "111.206.96.145"}}
    api_gateway = {
        "requestContext": {"serviceId": "service-f94sy04v", "path": "/", "httpMethod": "ANY", "stage": "release",
                           "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "identity": {}, "sourceIp": "10.0.2.14"},
        "headers": {"Host": "service-f94sy04v-1250000000.gz.apigw.tencentcs.com", "User-Agent": "curl/8"},
        "body": None, "isBase64Encoded": False, "pathParameters": {}, "queryStringParameters": {},
        "headerParameters": {}, "stageVariables": {"stage": "release"}, "path": f"/recognize/{site}",
        "queryString": {"base64Image": encoded}, "httpMethod": "GET",
    }
    return [function_url, api_gateway]


@pytest.mark.slow
@pytest.mark.train
def test_the_notebooks_entry_served_from_an_scf_package_under_python_3_10(notebook_run, tmp_path):
    work, _ = notebook_run
    python310 = bundle.find_interpreter("3.10")
    registry = tmp_path / "my-registry"
    with zipfile.ZipFile(work / "working" / f"{STORY_SITE}-entry.zip") as archive:
        archive.extractall(registry)  # unzip my-site-entry.zip -d my-registry/
    out = tmp_path / "pkg.zip"
    built = subprocess.run([sys.executable, "-m", "capserve.server.cli", "scf", "package", "--out", str(out),
                            "--site", STORY_SITE, "--registry", str(registry), "--python", "3.10", "--no-compile",
                            "--wheelhouse", str(tmp_path / "wheels")], capture_output=True, text=True, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    folder = tmp_path / "pkg-src"
    with zipfile.ZipFile(out) as archive:
        archive.extractall(folder)

    write_folder(tmp_path / "fresh", 10, seed=99, charset="abc")
    images = sorted((tmp_path / "fresh").glob("*.png"))
    events = [event for image in images for event in scf_events(STORY_SITE, image.read_bytes())]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    done = subprocess.run([python310, "-I", "-S", "-c", SCF_RUNNER, str(folder)], input=json.dumps(events),
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.splitlines()[-1])
    assert [a["statusCode"] for a in answers] == [200] * len(events), answers
    texts = [json.loads(a["body"])["text"] for a in answers]
    assert texts[0::2] == texts[1::2]  # the Function URL and the API Gateway event read each image alike
    labels = [image.name.split("_")[0] for image in images]
    right = sum(text == label for text, label in zip(texts[0::2], labels))
    assert right >= 8, list(zip(texts[0::2], labels))
