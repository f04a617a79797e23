"""The naive baseline of the recognition-server issue behind the minimal endpoint.

What many hand-written cloud functions do: ``tf.lite.Interpreter`` (TensorFlow), the input
built with a per-pixel ``Image.getpixel`` loop, text decoded in a Python loop
(``benchmarks/latency.py``'s ``naive_recognize``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.latency import naive_recognize  # noqa: E402
from benchmarks.peers.endpoint import entry_folder, make_app  # noqa: E402
from capserve.core.spec import load_spec  # noqa: E402


def build_recognizer(folder=None):
    import tensorflow as tf

    spec = load_spec((folder or entry_folder()) / "model.yaml")
    interpreter = tf.lite.Interpreter(model_path=str(spec.model_file), num_threads=1)
    interpreter.allocate_tensors()
    return lambda data: naive_recognize(interpreter, spec, data)


def create_app():
    return make_app(build_recognizer())
