"""Build small registry entries for tests: a tiny untrained CNN-CTC model, converted to TFLite.

The weights are random, so the answers are meaningless but deterministic; tests that need
correct answers use the bundled ``demo`` entry. The default model ships as ``data/tiny.tflite``
and its seed-1 twin as ``data/tiny-seed1.tflite`` (made by ``build_tflite``), so serving tests
need no TensorFlow.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

DEFAULT_CHARSET = "0123456789"


SHIPPED = {0: Path(__file__).parent / "data" / "tiny.tflite", 1: Path(__file__).parent / "data" / "tiny-seed1.tflite"}


def tiny_tflite(width: int = 64, height: int = 32, channels: int = 1, classes: int = 11, seed: int = 0) -> bytes:
    if (width, height, channels, classes) == (64, 32, 1, 11) and seed in SHIPPED:
        return SHIPPED[seed].read_bytes()
    return build_tflite(width, height, channels, classes, seed)


def build_tflite(width: int, height: int, channels: int, classes: int, seed: int) -> bytes:
    """Build and convert the tiny model with TensorFlow (the ``train`` extra)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    inp = keras.Input((height, width, channels))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.MaxPool2D(2)(x)
    x = keras.layers.Permute((2, 1, 3))(x)
    x = keras.layers.Reshape((width // 2, (height // 2) * 8))(x)
    out = keras.layers.Dense(classes, activation="softmax")(x)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, out))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def write_entry(
    folder: Path,
    content: bytes,
    *,
    site: str = "tiny",
    version: int = 1,
    width: int = 64,
    height: int = 32,
    channels: int = 1,
    charset: str = DEFAULT_CHARSET,
    decoder: str = "ctc",
    preprocess: list | None = None,
    postprocess: list | None = None,
    with_hash: bool = True,
    **extra,
) -> Path:
    """Write ``model.yaml`` and ``model.tflite`` into ``folder``; returns the YAML path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.tflite").write_bytes(content)
    doc = {
        "site": site,
        "version": version,
        "model": {"file": "model.tflite", **({"sha256": hashlib.sha256(content).hexdigest()} if with_hash else {})},
        "input": {"width": width, "height": height, "channels": channels},
        "charset": charset,
        "decoder": {"type": decoder},
        "length": {"min": 1, "max": 8},
        "preprocess": preprocess if preprocess is not None else ["grayscale", "resize", "normalize"],
        "postprocess": postprocess or [],
        "training": {"accuracy": 0.5, "quantization": "dynamic"},
        **extra,
    }
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
