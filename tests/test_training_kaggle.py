"""The Kaggle notebook template runs top to bottom on a tiny configuration (so it cannot rot).

Parameters are overridden the way papermill does it: a cell inserted after the cell tagged
``parameters``. The notebook trains from a labelled folder (as from ``/kaggle/input/...``),
exports, evaluates and zips the entry.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("tensorflow")

from tests.training_helpers import write_folder  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "training" / "kaggle" / "train.ipynb"


def test_notebook_has_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("SITE", "DATA_DIR", "GENERATOR", "EPOCHS", "QUANTIZATION", "OUT_DIR", "INSTALL"):
        assert f"{name} =" in tagged[0].source or f"{name}," in tagged[0].source, name


def test_notebook_runs_on_a_tiny_configuration(tmp_path):
    data = tmp_path / "input" / "captchas"
    write_folder(data, 240, seed=1, charset="abc")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    overrides = f"""
SITE = "kaggle-test"
DATA_DIR = {str(data)!r}
EPOCHS = 1
BATCH_SIZE = 16
TARGET_ACCURACY = None
AUGMENT = "none"
EXTRA_ARGS = ["--filters", "8,8,16,16", "--units", "16", "--tolerance", "1"]
OUT_DIR = {str(tmp_path / "working" / "registry")!r}
ZIP_DIR = {str(tmp_path / "working")!r}
INSTALL = False
"""
    cell = nbformat.v4.new_code_cell(overrides)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute()

    archive = tmp_path / "working" / "kaggle-test-entry.zip"
    assert archive.is_file()
    names = zipfile.ZipFile(archive).namelist()
    assert "kaggle-test/1/model.yaml" in names and "kaggle-test/1/model.tflite" in names
    assert any(n.startswith("kaggle-test/1/report/") for n in names)
    outputs = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "sequence accuracy" in outputs
