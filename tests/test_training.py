"""Training end to end, tiny and fast: from a generator and from a folder to a registry entry
that the registry loads and the server answers with; export in every mode, verified in
LiteRT; refusals (Flex ops, accuracy loss); checkpoints, resume and early stop.

The "bars" test generator draws an image a tiny model learns in a few epochs, so these tests
can check real recognition, not just shapes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from capserve.core.model import Model  # noqa: E402
from capserve.model_registry.registry import Registry  # noqa: E402
from capserve.core.spec import load_spec  # noqa: E402
from capserve.plugins import manager  # noqa: E402
from capserve.core.chain import InputShape  # noqa: E402
from capserve.training import cli, datasets  # noqa: E402
from capserve.training.export import MODES, ExportError, _convert, convert, export, run_file  # noqa: E402
from capserve.training.models import ModelConfig, build_model  # noqa: E402
from capserve.training.train import TrainConfig, fit, make_augment, parse_augment  # noqa: E402

from tests.training_helpers import BarsPlugin, bars, write_folder  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]

SHAPE = InputShape(64, 16, 1)
CHAIN = datasets.default_preprocess(1)
SPEC = "test-bars:charset=abc,min_length=2,max_length=3"


@pytest.fixture(scope="module", autouse=True)
def bars_plugin():
    plugin = BarsPlugin()
    manager.pm.register(plugin, "test-bars-plugin")
    yield
    manager.pm.unregister(plugin)


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fresh_bars(count: int, seed: int = 999):
    rng = random.Random(seed)
    return [bars(rng, charset="abc", min_length=2, max_length=3) for _ in range(count)]


@pytest.fixture(scope="module")
def bars_data():
    gen, params = datasets.parse_generator_spec(SPEC)
    train = datasets.generate(gen, params, 1200, SHAPE, CHAIN, seed=1)
    val = datasets.generate(gen, params, 200, SHAPE, CHAIN, seed=2)
    return train, val


def small_config(**kw) -> ModelConfig:
    base = dict(height=16, width=64, channels=1, charset_size=3, length=3, filters=(8, 16, 16, 24), units=32)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def trained(bars_data):
    train, val = bars_data
    config = small_config()
    result = fit(config, "abc", train, val,
                 TrainConfig(epochs=8, batch_size=16, learning_rate=3e-3, target_accuracy=0.97, augment={},
                             progress="none", seed=1))
    return config, result


@pytest.fixture(scope="module")
def generator_entry(tmp_path_factory):
    out = tmp_path_factory.mktemp("registry")
    code = cli.main([
        "train", "--site", "bars", "--generator", SPEC, "--samples", "1200", "--val-samples", "200",
        "--epochs", "8", "--batch-size", "16", "--lr", "3e-3", "--augment", "none", "--filters", "8,16,16,24",
        "--units", "32", "--target-accuracy", "0.97", "--progress", "none", "--seed", "1", "--out", str(out),
    ])
    assert code == 0
    return out, out / "bars" / "1"


# -- from a generator -----------------------------------------------------------------------


def test_tiny_model_learns(trained):
    _, result = trained
    assert result.best_accuracy >= 0.9, [r.to_dict() for r in result.history]
    assert result.history[-1].epoch == len(result.history)


def test_generator_training_writes_a_servable_entry(generator_entry):
    out, folder = generator_entry
    spec = load_spec(folder / "model.yaml")
    content = (folder / "model.tflite").read_bytes()
    assert spec.site == "bars" and spec.version == 1 and spec.decoder == "ctc"
    assert spec.sha256 == hashlib.sha256(content).hexdigest()
    assert (spec.width, spec.height, spec.channels) == (64, 16, 1)
    assert spec.charset == "abc" and (spec.min_length, spec.max_length) == (2, 3)
    assert spec.preprocess == CHAIN
    t = spec.training
    assert t["quantization"] == "dynamic" and t["model_bytes"] == len(content)
    assert t["samples"] == {"train": 1200, "validation": 200}
    assert t["command"].startswith("capserve train --site bars --generator")
    assert 0.9 <= t["accuracy"] <= 1 and abs(t["keras_accuracy"] - t["accuracy"]) <= 0.003
    report = folder / "report"
    for name in ("README.md", "curves.png", "history.json"):
        assert (report / name).is_file(), name
    text = (report / "README.md").read_text()
    assert t["command"] in text and "| char |" in text
    assert len(json.loads((report / "history.json").read_text())) == t["epochs"]

    model = Model(spec, manager.catalog())
    samples = fresh_bars(100)
    correct = sum(model.recognize(png(image)).text == label for image, label in samples)
    assert correct >= 85


def test_server_answers_with_the_trained_entry(generator_entry):
    from starlette.testclient import TestClient

    from capserve.server.app import create_app

    out, _ = generator_entry
    samples = fresh_bars(20, seed=5)
    app = create_app(Registry([out]), watch=False)
    with TestClient(app) as client:
        answers = [
            client.get("/recognize/bars", params={"base64Image": base64.b64encode(png(image)).decode()}).json()
            for image, _ in samples
        ]
    assert all(a["ok"] and a["site"] == "bars" for a in answers)
    assert sum(a["text"] == label for a, (_, label) in zip(answers, samples)) >= 16


def test_next_version_and_no_overwrite(generator_entry, capsys):
    from capserve.training.entry import next_version

    out, _ = generator_entry
    assert next_version(out, "bars") == 2
    code = cli.main(["train", "--site", "bars", "--generator", SPEC, "--samples", "50", "--val-samples", "10",
                     "--epochs", "1", "--version", "1", "--out", str(out)])
    assert code == 1 and "exists" in capsys.readouterr().err


# -- from a folder --------------------------------------------------------------------------


def test_folder_training_then_eval(tmp_path, capsys):
    data = tmp_path / "data"
    write_folder(data, 900, seed=3, charset="abc")
    out = tmp_path / "reg"
    code = cli.main([
        "train", "--site", "folder-bars", "--data", str(data), "--val-split", "0.2", "--from-scratch", "--epochs", "8",
        "--batch-size", "16", "--lr", "3e-3", "--augment", "none", "--filters", "8,16,16,24", "--units", "32",
        "--target-accuracy", "0.97", "--progress", "none", "--out", str(out), "--quantization", "int8",
    ])
    assert code == 0
    folder = out / "folder-bars" / "1"
    spec = load_spec(folder / "model.yaml")
    assert spec.training["samples"] == {"train": 720, "validation": 180}
    assert spec.training["quantization"] == "int8"
    assert spec.charset == "abc"

    # No skew: the tensor training used for a file is the served tensor of its bytes.
    model = Model(spec, manager.catalog())
    loaded, _ = datasets.load_folder(data, SHAPE, CHAIN)
    for source, tensor in list(zip(loaded.sources, loaded.x))[:25]:
        with open(source, "rb") as f:
            assert np.array_equal(tensor, model.preprocess.tensor(model.preprocess.decode(f.read(), model.limits)))

    fresh = tmp_path / "fresh"
    write_folder(fresh, 100, seed=77, charset="abc")
    capsys.readouterr()
    assert cli.main(["eval", "--site", "folder-bars", str(fresh), "--registry", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 100 and result["sequence_accuracy"] >= 0.85
    assert cli.main(["eval", "--site", "folder-bars", str(fresh), "--registry", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sequence accuracy" in text and "worst-confused" in text


def test_eval_unknown_site(tmp_path, capsys):
    write_folder(tmp_path / "d", 5)
    code = cli.main(["eval", "--site", "nosuch", str(tmp_path / "d"), "--registry", str(tmp_path)])
    assert code == 2 and "nosuch" in capsys.readouterr().err


# -- export ---------------------------------------------------------------------------------


def test_export_every_mode_runs_in_litert(trained, bars_data):
    config, result = trained
    train, val = bars_data
    sizes = {}
    for mode in MODES:
        exported = export(result.model, config, "abc", val.x, val.labels, mode=mode, representative=train.x[:100],
                          keras_predictions=result.predictions)
        assert exported.mode == mode
        assert exported.drop <= 0.003, mode
        assert exported.scores.sequence_accuracy >= 0.9, mode
        preds, _ = run_file(exported.content, val.x[:20], "abc", "ctc")
        assert preds == exported.predictions[:20]
        sizes[mode] = exported.size
    assert sizes["dynamic"] < sizes["float16"] < sizes["none"]
    assert sizes["int8"] < sizes["none"]


def test_export_refuses_accuracy_loss(trained, bars_data):
    config, _ = trained
    _, val = bars_data
    untrained = build_model(config)
    with pytest.raises(ExportError, match="refusing"):
        # pretend the Keras model was perfect: the untrained file is far below it
        export(untrained, config, "abc", val.x, val.labels, mode="none", keras_predictions=list(val.labels))


def test_export_refuses_flex_ops():
    class NeedsFlex(keras.layers.Layer):
        def call(self, x):
            return tf.math.bessel_i1e(x)

    inp = keras.Input((8,), batch_size=1)
    model = keras.Model(inp, NeedsFlex()(inp))
    with pytest.raises(ExportError, match="Flex"):
        _convert(model, "dynamic")


def test_unknown_mode():
    with pytest.raises(ExportError, match="unknown quantization"):
        convert(None, small_config(), "int4")


def test_crnn_exports_with_builtin_ops(bars_data):
    train, val = bars_data
    config = small_config(arch="crnn")
    result = fit(config, "abc", train.subset(range(200)), val.subset(range(100)),
                 TrainConfig(epochs=1, batch_size=32, augment={}, progress="none"))
    for mode in ("none", "dynamic"):
        exported = export(result.model, config, "abc", val.x[:100], val.labels[:100], mode=mode, tolerance=1.0,
                          keras_predictions=result.predictions)
        # the unrolled batch-1 GRU gives the Keras model's answers
        assert exported.scores.sequence_accuracy == pytest.approx(exported.keras_scores.sequence_accuracy, abs=0.02)
    # full-integer export of the GRU converts here and runs in LiteRT (its accuracy is what
    # export() checks against the tolerance; the pipeline falls back when it is refused)
    exported = export(result.model, config, "abc", val.x[:50], val.labels[:50], mode="int8", tolerance=1.0,
                      representative=train.x[:50], keras_predictions=result.predictions[:50])
    assert exported.size > 0 and len(exported.predictions) == 50


def test_fixed_length_head(tmp_path):
    gen, params = datasets.parse_generator_spec("test-bars:charset=abc,min_length=3,max_length=3")
    train = datasets.generate(gen, params, 1000, SHAPE, CHAIN, seed=1)
    val = datasets.generate(gen, params, 150, SHAPE, CHAIN, seed=2)
    config = small_config(decoder="fixed")
    result = fit(config, "abc", train, val, TrainConfig(epochs=8, batch_size=16, learning_rate=3e-3, augment={},
                                                        target_accuracy=0.95, progress="none"))
    exported = export(result.model, config, "abc", val.x, val.labels, mode="dynamic",
                      keras_predictions=result.predictions)
    from capserve.training.entry import write_entry

    folder = write_entry(tmp_path, site="fixed-bars", version=1, content=exported.content, width=64, height=16,
                         channels=1, charset="abc", decoder="fixed", min_length=3, max_length=3, preprocess=CHAIN,
                         postprocess=[], description="", training={"accuracy": exported.scores.sequence_accuracy})
    model = Model(load_spec(folder / "model.yaml"), manager.catalog())
    assert model.runtime.output_shape == (1, 3, 3)
    samples = fresh_bars(40)
    samples = [(im, lb) for im, lb in samples if len(lb) == 3] or samples[:1]
    hits = sum(model.recognize(png(im)).text == lb for im, lb in samples)
    assert hits >= 0.8 * len(samples), (hits, len(samples), result.best_accuracy)


# -- the loop -------------------------------------------------------------------------------


def test_checkpoint_and_resume(bars_data, tmp_path):
    train, val = bars_data
    config = small_config()
    base = dict(batch_size=64, augment={}, progress="none", checkpoint_dir=tmp_path / "ckpt", learning_rate=3e-3)
    val = val.subset(range(50))
    first = fit(config, "abc", train.subset(range(200)), val, TrainConfig(epochs=1, **base))
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["epoch"] == 1 and (tmp_path / "ckpt" / "last.keras").is_file()
    second = fit(config, "abc", train.subset(range(200)), val, TrainConfig(epochs=2, resume=True, **base))
    assert [r.epoch for r in second.history] == [1, 2]
    assert second.history[0].to_dict() == first.history[0].to_dict()
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["epoch"] == 2
    with pytest.raises(ValueError, match="another model"):
        fit(small_config(units=16), "abc", train.subset(range(100)), val, TrainConfig(epochs=3, resume=True, **base))


def test_warm_start_begins_from_the_best_weights_with_a_new_schedule(bars_data, tmp_path):
    train, val = bars_data
    config = small_config()
    base = dict(batch_size=64, augment={}, progress="none", learning_rate=3e-3)
    val = val.subset(range(50))
    first = fit(config, "abc", train.subset(range(400)), val, TrainConfig(epochs=2, checkpoint_dir=tmp_path / "a", **base))
    warm = fit(config, "abc", train.subset(range(400)), val,
               TrainConfig(epochs=1, warm_start=tmp_path / "a", checkpoint_dir=tmp_path / "b", **base))
    cold = fit(config, "abc", train.subset(range(400)), val, TrainConfig(epochs=1, **base))
    # One more epoch from the best weights ends far below the first epoch's loss of a fresh model.
    assert [r.epoch for r in warm.history] == [1]
    assert warm.history[0].loss < first.history[0].loss
    assert warm.history[0].loss < cold.history[0].loss
    with pytest.raises(ValueError, match="cannot warm-start from this checkpoint: its units is 32 and this run's is 16"):
        fit(small_config(units=16), "abc", train.subset(range(100)), val,
            TrainConfig(epochs=1, warm_start=tmp_path / "a", **base))
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        fit(config, "abc", train.subset(range(100)), val, TrainConfig(epochs=1, warm_start=tmp_path / "nothing", **base))


def test_warm_start_from_another_charset_takes_the_backbone_under_a_new_head(bars_data, tmp_path, capsys):
    from capserve.training.models import build_model

    train, val = bars_data
    base = dict(batch_size=64, augment={}, progress="none")
    val = val.subset(range(50))
    fit(small_config(), "abc", train.subset(range(200)), val,
        TrainConfig(epochs=1, checkpoint_dir=tmp_path / "a", learning_rate=3e-3, **base))
    source = build_model(small_config())
    source.load_weights(tmp_path / "a" / "best.weights.h5")
    wider = small_config(charset_size=5)  # a new charset: the head has other classes
    frozen = dict(epochs=1, learning_rate=0.0, **base)  # no step moves a weight: what it started from stays
    warm = fit(wider, "cbade", train.subset(range(100)), val, TrainConfig(warm_start=tmp_path / "a", **frozen))
    cold = fit(wider, "cbade", train.subset(range(100)), val, TrainConfig(**frozen))
    assert "a new head for 5 characters, 3 of them read as the backbone read them" in capsys.readouterr().err
    for name in ("block1_conv", "block4_conv", "column_dense", "context2"):
        lent = source.get_layer(name).get_weights()[0]
        assert np.array_equal(warm.model.get_layer(name).get_weights()[0], lent), name
        assert not np.array_equal(cold.model.get_layer(name).get_weights()[0], lent), name
    # The head keeps the blank's and each known character's output weights, in this charset's order.
    (kernel, bias), (new_kernel, new_bias) = source.get_layer("logits").get_weights(), warm.model.get_layer("logits").get_weights()
    assert new_kernel.shape == (32, 6)
    for to, frm in ((0, 0), (1, 3), (2, 2), (3, 1)):  # blank, c, b, a
        assert np.array_equal(new_kernel[:, to], kernel[:, frm]) and new_bias[to] == bias[frm], (to, frm)
    assert not any(np.array_equal(new_kernel[:, 4], kernel[:, k]) for k in range(4))  # d: never seen, random
    with pytest.raises(ValueError, match="trained on 1-channel images and this run's are 3-channel"):
        fit(small_config(channels=3), "abc", train.subset(range(100)), val,
            TrainConfig(epochs=1, warm_start=tmp_path / "a", **base))


def test_a_new_head_on_a_lent_backbone_trains_alone_first(bars_data, tmp_path, monkeypatch, capsys):
    from capserve.training import train as train_module

    train, val = bars_data
    base = dict(batch_size=64, augment={}, progress="none", learning_rate=3e-3)
    val = val.subset(range(50))
    fit(small_config(), "abc", train.subset(range(200)), val, TrainConfig(epochs=1, checkpoint_dir=tmp_path / "a", **base))
    source = build_model(small_config())
    source.load_weights(tmp_path / "a" / "best.weights.h5")
    monkeypatch.setattr(train_module, "HEAD_SHARE", 0.5)  # of 2 epochs: the first trains the head alone
    seen = []
    wider = small_config(charset_size=4)
    holder = {}

    def snapshot(record):
        model = holder["model"]
        seen.append({name: [w.copy() for w in model.get_layer(name).get_weights()]
                     for name in ("block1_conv", "block1_bn", "context2", "logits")})

    real_build = train_module.build_model

    def build(config, **kw):  # the run's own model, to look at after each epoch
        model = real_build(config, **kw)
        if config == wider:
            holder.setdefault("model", model)
        return model

    monkeypatch.setattr(train_module, "build_model", build)
    fit(wider, "abcd", train.subset(range(300)), val, TrainConfig(epochs=2, warm_start=tmp_path / "a", **base),
        on_epoch=snapshot)
    err = capsys.readouterr().err
    assert "the new head trains alone first" in err and "epoch 2 on: every layer trains" in err
    after_head, after_all = seen
    for name in ("block1_conv", "block1_bn", "context2"):  # frozen: weights and batch-norm statistics stay
        assert all(np.array_equal(a, b) for a, b in zip(after_head[name], source.get_layer(name).get_weights())), name
        assert not all(np.array_equal(a, b) for a, b in zip(after_all[name], after_head[name])), name
    assert not np.array_equal(after_head["logits"][0], after_all["logits"][0])


def test_a_tie_keeps_the_later_weights_and_patience_counts_from_the_last_gain(bars_data):
    train, val = bars_data
    # No step moves a weight: every epoch reads validation alike (0.0), so epoch 2 ties epoch 1.
    result = fit(small_config(), "abc", train.subset(range(100)), val.subset(range(50)),
                 TrainConfig(epochs=4, patience=1, learning_rate=0.0, augment={}, progress="none"))
    assert [r.sequence_accuracy for r in result.history] == [0.0, 0.0]
    assert result.stopped == "patience" and result.best_epoch == 2


def test_target_accuracy_stops_early(bars_data):
    train, val = bars_data
    result = fit(small_config(), "abc", train.subset(range(200)), val,
                 TrainConfig(epochs=5, target_accuracy=0.0, augment={}, progress="none"))
    assert result.stopped == "target" and len(result.history) == 1


def test_augmentation_keeps_shapes_and_changes_pixels():
    spec = parse_augment("strong")
    assert set(spec) == {"shift", "rotate", "zoom", "noise", "contrast"}
    assert parse_augment("light,noise=0")["shift"] > 0 and "noise" not in parse_augment("light,noise=0")
    with pytest.raises(ValueError):
        parse_augment("blur=3")
    augment = make_augment(spec, 16, 64, seed=0)
    x = tf.random.uniform((5, 16, 64, 1))
    y = tf.zeros((5, 3), tf.int32)
    ax, ay = augment(x, y)
    assert ax.shape == x.shape and ay is y
    assert not np.allclose(ax.numpy(), x.numpy())


# -- styles the defaults must cope with -----------------------------------------------------


def test_unseen_styles_transparency_animation_noise_case(tmp_path, capsys):
    """One folder mixing transparent PNGs (black RGB under alpha), animated GIFs whose frames each
    show only some characters, multicolour noise, and case-sensitive, variable-length labels."""
    from tests.training_helpers import STYLES, write_styled_folder

    data = tmp_path / "data"
    write_styled_folder(data, 1200, seed=1, charset="aAb")
    out = tmp_path / "reg"
    code = cli.main([
        "train", "--site", "styles", "--data", str(data), "--val-split", "0.15", "--from-scratch", "--epochs", "12", "--tolerance", "0.05",
        "--batch-size", "16", "--lr", "3e-3", "--augment", "none", "--filters", "8,16,16,24", "--units", "32",
        "--target-accuracy", "0.97", "--progress", "none", "--out", str(out),
    ])
    assert code == 0
    spec = load_spec(out / "styles" / "1" / "model.yaml")
    assert spec.charset == "Aab"  # case kept
    assert spec.preprocess[0] == "frames_min"  # animated images found: every frame counts
    assert (spec.min_length, spec.max_length) == (2, 3)
    for style in STYLES:
        fresh = tmp_path / f"fresh-{style}"
        write_styled_folder(fresh, 60, seed=100, charset="aAb", styles=(style,))
        capsys.readouterr()
        assert cli.main(["eval", "--site", "styles", str(fresh), "--registry", str(out), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["sequence_accuracy"] >= 0.85, (style, result)


def test_transparent_still_images_get_flatten_alpha(tmp_path):
    from capserve.training.pipeline import TrainOptions, configure, prepare
    from tests.training_helpers import write_styled_folder

    write_styled_folder(tmp_path / "d", 40, charset="ab", styles=("alpha", "plain"))
    _, _, _, _, chain = prepare(configure(TrainOptions(site="x", out=tmp_path / "o", data=tmp_path / "d"))[0])
    assert chain[0] == "flatten_alpha"
    write_styled_folder(tmp_path / "p", 40, charset="ab", styles=("plain",))
    _, _, _, _, chain = prepare(configure(TrainOptions(site="x", out=tmp_path / "o", data=tmp_path / "p"))[0])
    assert chain == datasets.default_preprocess(1)


def test_refused_quantization_falls_back_to_a_less_quantized_mode(tmp_path, monkeypatch):
    import capserve.training.export as export_module

    real = export_module.export

    def refuse_dynamic(*args, mode="dynamic", **kwargs):
        if mode == "dynamic":
            raise export_module.AccuracyRefused("the dynamic file reads worse (simulated)")
        return real(*args, mode=mode, **kwargs)

    monkeypatch.setattr(export_module, "export", refuse_dynamic)
    args = ["train", "--site", "fb", "--generator", SPEC, "--samples", "200", "--val-samples", "40", "--epochs", "1",
            "--filters", "8,8,16,16", "--units", "16", "--progress", "none", "--out", str(tmp_path)]
    assert cli.main(args + ["--no-fallback"]) == 1  # refused, nothing written
    assert not (tmp_path / "fb" / "1" / "model.yaml").exists()
    assert cli.main(args) == 0
    spec = load_spec(tmp_path / "fb" / "1" / "model.yaml")
    assert spec.training["quantization"] == "float16"
    assert spec.training["quantization_requested"] == "dynamic"


def test_auto_epochs_give_small_datasets_enough_steps():
    from capserve.training.pipeline import auto_epochs

    assert auto_epochs(80000, 64) == 10
    assert auto_epochs(900, 64) == 150
    assert auto_epochs(6400, 64) == 30
