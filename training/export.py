"""TFLite export, quantization and verification in LiteRT.

Modes:

* ``none``: float32 weights and arithmetic.
* ``dynamic`` (default): int8 weights, float activations; about 4x smaller, same speed or faster.
* ``float16``: float16 weights (dequantized at load); about 2x smaller.
* ``int8``: int8 weights and activations, calibrated on a representative sample of the
  training inputs; the model's input and output stay float32, so the registry entry and the
  serving code do not change.

Only TFLite builtin ops are allowed (``TFLITE_BUILTINS``, plus ``TFLITE_BUILTINS_INT8`` for
int8): a model needing Flex (``SELECT_TF_OPS``) fails to convert and is refused, because
``ai-edge-litert`` cannot run Flex ops. Every file is then proven in a child process as the
registry proves it (``model_registry.proof``), loaded by the *serving* runtime
(``core.runtime.Runtime``) and run on the whole validation set through the
serving decoder; the file is refused when its sequence accuracy is more than ``tolerance``
below the Keras model's on the same inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
import time
from typing import Any

import numpy as np

from capserve.core import settings
from capserve.core.decoders import DECODERS
from capserve.core.runtime import Runtime, RuntimeLoadError
from capserve.model_registry import proof
from capserve.training.metrics import Scores, score
from capserve.training.models import ModelConfig, export_model

MODES = ("none", "dynamic", "float16", "int8")
DEFAULT_TOLERANCE = 0.003  # 0.3 points of sequence accuracy


class ExportError(RuntimeError):
    """A model that cannot be exported in a mode, or whose file is refused, and why."""


class AccuracyRefused(ExportError):
    """The exported file reads the validation set worse than the Keras model, beyond the tolerance."""


@dataclasses.dataclass
class ExportResult:
    mode: str
    content: bytes
    scores: Scores  # of the .tflite file in LiteRT, on the validation set
    keras_scores: Scores
    predictions: list[str]
    invoke_us: float  # mean interpreter time per image in the verification run

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def drop(self) -> float:
        return self.keras_scores.sequence_accuracy - self.scores.sequence_accuracy


def convert(
    keras_model: Any,
    config: ModelConfig,
    mode: str = "dynamic",
    representative: np.ndarray | None = None,
    *,
    verbose: bool | None = None,
) -> bytes:
    """Convert ``keras_model`` (trained, any batch size) into a ``.tflite`` file with builtin ops only."""
    if mode not in MODES:
        raise ExportError(f"unknown quantization mode {mode!r}; modes: {', '.join(MODES)}")
    try:
        verbose = settings.current().verbose_export if verbose is None else verbose
        return _convert(export_model(keras_model, config), mode, representative, verbose=verbose)
    except ExportError as exc:
        if "Flex" in str(exc):
            raise ExportError(f"the {config.arch} model: {exc} (use --arch cnn, or another quantization mode)") from exc
        raise


def _convert(model: Any, mode: str, representative: np.ndarray | None = None, *, verbose: bool = False) -> bytes:
    """Convert a Keras model with a fixed batch of 1; builtin ops only."""
    import tensorflow as tf

    if mode not in MODES:
        raise ExportError(f"unknown quantization mode {mode!r}; modes: {', '.join(MODES)}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode in ("dynamic", "float16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        if representative is None or not len(representative):
            raise ExportError("int8 export needs representative inputs (a sample of the training data)")
        sample = np.asarray(representative, np.float32)

        def dataset():
            for row in sample:
                yield [row[None]]

        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Keep float32 at the edges: the registry's runtime feeds float32 and reads float32.
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    try:
        # The converter prints the saved signature to stdout; keep stdout for results.
        with contextlib.redirect_stdout(sys.stderr if verbose else io.StringIO()):
            return converter.convert()
    except Exception as exc:  # ConverterError and friends; say what it means for the user
        text = str(exc)
        ops = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", text)))
        if ops or "Flex" in text or "TF Select" in text or "SELECT_TF_OPS" in text:
            raise ExportError(
                f"the model needs TensorFlow ops that TFLite has no builtin for ({', '.join(ops) or 'see the log'}); "
                f"such a file would need Flex (SELECT_TF_OPS), which LiteRT cannot run, so it is refused (mode {mode!r})"
            ) from exc
        last = [line for line in text.strip().splitlines() if "error" in line.lower()] or text.strip().splitlines() or [repr(exc)]
        raise ExportError(f"TFLite conversion failed in mode {mode!r}: {last[0][:500]}") from exc


def run_file(content: bytes, x: np.ndarray, charset: str, decoder: str) -> tuple[list[str], float]:
    """Run every input through the serving runtime and decoder; returns texts and mean µs per invoke."""
    (refused,) = proof.prove([content])  # the registry's check, in a child process
    if refused is not None:
        raise ExportError(f"the exported file does not load in LiteRT (builtin ops only): {refused}")
    try:
        runtime = Runtime(content, num_threads=1, max_interpreters=1)
    except RuntimeLoadError as exc:
        raise ExportError(f"the exported file does not load in LiteRT (builtin ops only): {exc}") from None
    decode = DECODERS[decoder]
    preds = []
    started = time.perf_counter()
    for row in x:
        preds.append(decode(runtime.run(row), charset)[0])
    elapsed = time.perf_counter() - started
    return preds, elapsed / max(1, len(x)) * 1e6


def export(
    keras_model: Any,
    config: ModelConfig,
    charset: str,
    val_x: np.ndarray,
    val_labels: list[str],
    *,
    mode: str = "dynamic",
    representative: np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    keras_predictions: list[str] | None = None,
) -> ExportResult:
    """Convert, verify in LiteRT on the validation set, and refuse a file that lost accuracy."""
    from capserve.training.train import predict

    if keras_predictions is None:
        keras_predictions = predict(keras_model, val_x, charset, config.decoder)
    keras_scores = score(val_labels, keras_predictions)
    content = convert(keras_model, config, mode, representative)
    preds, invoke_us = run_file(content, val_x, charset, config.decoder)
    scores = score(val_labels, preds)
    result = ExportResult(mode, content, scores, keras_scores, preds, invoke_us)
    if result.drop > tolerance:
        raise AccuracyRefused(
            f"the {mode} file reads {scores.sequence_accuracy:.2%} of the validation set, "
            f"{result.drop * 100:.2f} points below the Keras model's {keras_scores.sequence_accuracy:.2%} "
            f"(tolerance {tolerance * 100:.2f}, validation set of {len(val_labels)}); refusing it "
            f"(try {'--quantization none or float16' if mode != 'none' else 'more validation samples'}, or --tolerance)"
        )
    return result
