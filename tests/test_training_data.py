"""Training data: labels, charsets, bad datasets, generators, and no train/serve skew.

None of these tests imports TensorFlow.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capserve.plugins import manager
from capserve.core.chain import InputShape
from capserve.plugins.manager import compile_preprocess
from capserve.training import datasets
from capserve.training.datasets import DatasetError
from capserve.training.metrics import align, score

from tests.training_helpers import BarsPlugin, write_folder

pytestmark = [pytest.mark.train]  # datasets and generators come with the train extra

SHAPE = InputShape(64, 16, 1)
CHAIN = datasets.default_preprocess(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bars_plugin():
    plugin = BarsPlugin()
    manager.pm.register(plugin, "test-bars-plugin")
    yield plugin
    manager.pm.unregister(plugin)


# -- labels ---------------------------------------------------------------------------------


def test_label_is_the_name_up_to_the_first_underscore_or_the_whole_stem(tmp_path):
    for name in ("ab3k_0001.png", "ab3k_x_y.png", "q7.png"):
        Image.new("RGB", (20, 10), "white").save(tmp_path / name)
    items = {p.name: label for p, label in datasets.scan_folder(tmp_path)}
    assert items == {"ab3k_0001.png": "ab3k", "ab3k_x_y.png": "ab3k", "q7.png": "q7"}


@pytest.mark.parametrize("name,text", [
    ("labels.csv", "file,label\nimg1.png,Ab3\nimg2.png,x y\n"),
    ("labels.txt", "img1.png\tAb3\nimg2.png\tx y\n"),
])
def test_label_files(tmp_path, name, text):
    for f in ("img1.png", "img2.png"):
        Image.new("RGB", (20, 10), "white").save(tmp_path / f)
    (tmp_path / name).write_text(text)
    items = {p.name: label for p, label in datasets.scan_folder(tmp_path)}
    assert items == {"img1.png": "Ab3", "img2.png": "x y"}


def test_label_file_naming_a_missing_image(tmp_path):
    (tmp_path / "labels.csv").write_text("nothere.png,abc\n")
    with pytest.raises(DatasetError, match="nothere.png"):
        datasets.scan_folder(tmp_path)


def test_case_option_and_charset_inference(tmp_path):
    for name in ("aB_1.png", "Cd_2.png"):
        Image.new("RGB", (20, 10), "white").save(tmp_path / name)
    lower = [label for _, label in datasets.scan_folder(tmp_path, case="lower")]
    assert sorted(lower) == ["ab", "cd"]
    assert datasets.infer_charset(lower) == "abcd"
    sensitive = [label for _, label in datasets.scan_folder(tmp_path)]
    assert datasets.infer_charset(sensitive) == "BCad"


# -- bad datasets fail before training ------------------------------------------------------


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no labelled images"):
        datasets.load_folder(tmp_path, SHAPE, CHAIN)


def test_not_a_folder(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        datasets.load_folder(tmp_path / "missing", SHAPE, CHAIN)


def test_unreadable_images_are_listed(tmp_path):
    write_folder(tmp_path, 6)
    (tmp_path / "ab_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "ba_text.jpg").write_text("hello")
    with pytest.raises(DatasetError) as info:
        datasets.load_folder(tmp_path, SHAPE, CHAIN)
    message = str(info.value)
    assert "2 of 8 image(s) cannot be read" in message
    assert "ab_broken.png" in message and "ba_text.jpg" in message


def test_labels_outside_the_given_charset(tmp_path):
    write_folder(tmp_path, 6)
    Image.new("RGB", (64, 16), "white").save(tmp_path / "aXz_1.png")
    with pytest.raises(DatasetError) as info:
        datasets.load_folder(tmp_path, SHAPE, CHAIN, charset="ab")
    assert "outside the charset 'ab'" in str(info.value)
    assert "'Xz'" in str(info.value) and "aXz_1.png" in str(info.value)


def test_one_class_only(tmp_path):
    for i in range(5):
        Image.new("RGB", (64, 16), "white").save(tmp_path / f"aa_{i}.png")
    with pytest.raises(DatasetError, match="one class only"):
        datasets.load_folder(tmp_path, SHAPE, CHAIN)


def test_single_character_charset_is_one_class(tmp_path):
    for label in ("a", "aa", "aaa"):
        Image.new("RGB", (64, 16), "white").save(tmp_path / f"{label}_0.png")
    with pytest.raises(DatasetError, match="one character only"):
        datasets.load_folder(tmp_path, SHAPE, CHAIN)


def test_fixed_head_needs_one_length(tmp_path):
    write_folder(tmp_path, 20, min_length=2, max_length=3)
    with pytest.raises(DatasetError, match="one length"):
        datasets.load_folder(tmp_path, SHAPE, CHAIN, decoder="fixed")


def test_cli_reports_bad_dataset_before_training(tmp_path, monkeypatch, capsys):
    from capserve.training import cli

    def no_training(*args, **kwargs):  # pragma: no cover - reached only on failure
        raise AssertionError("training started on a bad dataset")

    monkeypatch.setattr("capserve.training.train.fit", no_training, raising=False)
    (tmp_path / "data").mkdir()
    code = cli.main(["train", "--site", "x", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "reg")])
    assert code == 2
    assert "bad dataset" in capsys.readouterr().err
    assert not (tmp_path / "reg").exists()


def test_serving_and_cli_import_no_tensorflow():
    code = (
        "import sys, capserve.training.cli, capserve.training.evaluate, capserve.training.datasets, capserve.plugins.builtin.generators;"
        "from capserve.plugins import manager; manager.catalog().generators;"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


# -- generators -----------------------------------------------------------------------------


def test_imagecaptcha_generator_is_registered_and_seeded():
    gen = manager.catalog().generators["imagecaptcha"]
    params = gen.bind({"width": 100, "height": 50, "charset": "abc", "min_length": 3, "max_length": 5})
    a = gen.func(random.Random(7), **params)
    b = gen.func(random.Random(7), **params)
    c = gen.func(random.Random(8), **params)
    assert a[0].size == (100, 50)
    assert 3 <= len(a[1]) <= 5 and set(a[1]) <= set("abc")
    assert a[1] == b[1] and np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_generator_spec_types_values_by_parameter():
    gen, params = datasets.parse_generator_spec(
        "imagecaptcha:width=100,height=50,charset=0123456789,min_length=4,max_length=6"
    )
    assert gen.name == "imagecaptcha"
    assert params["charset"] == "0123456789" and params["width"] == 100 and params["max_length"] == 6


@pytest.mark.parametrize("spec,match", [
    ("nosuch", "unknown generator"),
    ("imagecaptcha:width=abc", "must be an integer"),
    ("imagecaptcha:colour=red", "unknown parameter"),
    ("imagecaptcha:width", "not key=value"),
])
def test_bad_generator_specs(spec, match):
    with pytest.raises(DatasetError, match=match):
        datasets.parse_generator_spec(spec)


def test_generated_dataset_is_reproducible_and_uses_the_chain(bars_plugin):
    gen, params = datasets.parse_generator_spec("test-bars:charset=ab")
    one = datasets.generate(gen, params, 30, SHAPE, CHAIN, seed=3)
    two = datasets.generate(gen, params, 30, SHAPE, CHAIN, seed=3)
    other = datasets.generate(gen, params, 30, SHAPE, CHAIN, seed=4)
    assert one.x.shape == (30, 16, 64, 1) and one.x.dtype == np.float32
    assert one.labels == two.labels and np.array_equal(one.x, two.x)
    assert one.labels != other.labels
    assert 0.0 <= one.x.min() and one.x.max() <= 1.0


def test_generated_dataset_in_worker_processes_matches_in_process(bars_plugin):
    gen, params = datasets.parse_generator_spec("test-bars:charset=abc")
    serial = datasets.generate(gen, params, 2200, SHAPE, CHAIN, seed=5, workers=1)
    parallel = datasets.generate(gen, params, 2200, SHAPE, CHAIN, seed=5, workers=2)
    assert serial.labels == parallel.labels
    assert np.array_equal(serial.x, parallel.x)


# -- no skew between training tensors and served tensors ------------------------------------


def test_generated_image_tensor_equals_the_served_tensor_of_its_png():
    gen = manager.catalog().generators["imagecaptcha"]
    image, _ = gen.func(random.Random(1), **gen.bind({"width": 100, "height": 50}))
    pre = compile_preprocess(CHAIN, InputShape(100, 50, 1))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    served = pre.tensor(pre.decode(buffer.getvalue()))  # what Model.tensor does
    assert np.array_equal(datasets.image_tensor(image, pre), served)


def test_folder_tensors_are_the_served_tensors(tmp_path):
    # RGBA with transparency and a resize: the folder loader must take the served path.
    write_folder(tmp_path, 4, width=70, height=20)
    Image.new("RGBA", (70, 20), (0, 0, 0, 0)).save(tmp_path / "ba_alpha.png")
    data, _ = datasets.load_folder(tmp_path, SHAPE, CHAIN)
    pre = compile_preprocess(CHAIN, SHAPE)
    for source, tensor in zip(data.sources, data.x):
        assert np.array_equal(tensor, pre.tensor(pre.decode(Path(source).read_bytes())))


def test_split_is_seeded_and_disjoint(tmp_path):
    write_folder(tmp_path, 40)
    data, _ = datasets.load_folder(tmp_path, SHAPE, CHAIN)
    train, val = datasets.split(data, 0.25, seed=1)
    again, _ = datasets.split(data, 0.25, seed=1)
    assert len(val) == 10 and len(train) == 30
    assert not set(train.sources) & set(val.sources)
    assert train.sources == again.sources


# -- metrics --------------------------------------------------------------------------------


def test_alignment_and_scores():
    assert align("abc", "abc") == [("a", "a"), ("b", "b"), ("c", "c")]
    assert align("abc", "ac") == [("a", "a"), ("b", "∅"), ("c", "c")]
    s = score(["abcd", "abcd", "xy"], ["abcd", "abed", "xyz"])
    assert s.sequence_accuracy == pytest.approx(1 / 3)
    assert s.char_accuracy == pytest.approx(1 - 2 / 10)
    assert s.worst_confusions(5) == [("c", "e", 1), ("∅", "z", 1)] or s.worst_confusions(5) == [("∅", "z", 1), ("c", "e", 1)]
    assert s.per_char["c"] == {"total": 2, "errors": 1}
