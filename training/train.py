"""The training loop: tf.data pipeline, augmentation, validation each epoch, early stop,
a time budget, checkpoints and resume.

With a time budget (``TrainConfig.deadline``) the first epoch is timed, the number of epochs
that fit is planned from it and the cosine learning-rate schedule is stretched over exactly
those steps; training stops at the deadline (mid-epoch if need be), at a plateau, or when
SIGTERM or Ctrl-C asks it to, and the best weights so far are always what ``fit`` returns.

Validation decodes the Keras model's output with the *serving* decoders
(``core.decoders``), so the accuracy printed each epoch is the accuracy the
registry entry will have (before quantization, which export measures separately).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from capserve.core.decoders import DECODERS
from capserve.training.datasets import Dataset
from capserve.training.metrics import score
from capserve.training.models import ModelConfig, build_model

AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "none": {},
    "light": {"shift": 0.03, "rotate": 3.0, "zoom": 0.04, "noise": 0.02, "contrast": 0.15},
    "strong": {"shift": 0.06, "rotate": 6.0, "zoom": 0.08, "noise": 0.05, "contrast": 0.3},
}
AUGMENT_KEYS = ("shift", "rotate", "zoom", "noise", "contrast")


def parse_augment(text: str) -> dict[str, float]:
    """``light`` | ``strong`` | ``none`` | ``shift=0.05,rotate=4,...`` (a preset may lead: ``light,noise=0``)."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" not in part:
            if part not in AUGMENT_PRESETS:
                raise ValueError(f"unknown augmentation preset {part!r}; presets: {', '.join(AUGMENT_PRESETS)}")
            out.update(AUGMENT_PRESETS[part])
            continue
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in AUGMENT_KEYS:
            raise ValueError(f"unknown augmentation {key!r}; known: {', '.join(AUGMENT_KEYS)}")
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"augmentation {key} needs a number, got {value!r}") from None
        if out[key] < 0:
            raise ValueError(f"augmentation {key} must be >= 0")
    return {k: v for k, v in out.items() if v > 0}


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    target_accuracy: float | None = None  # stop once validation sequence accuracy reaches it
    patience: int | None = None  # stop after this many epochs without a better accuracy
    augment: dict[str, float] = dataclasses.field(default_factory=lambda: dict(AUGMENT_PRESETS["light"]))
    seed: int = 0
    checkpoint_dir: Path | None = None
    resume: bool = False
    warm_start: Path | None = None  # a checkpoint folder whose best weights start a new run
    progress: str = "auto"  # bar | epoch | none | auto (bar on a terminal, epoch lines otherwise)
    deadline: float | None = None  # time.monotonic() by which training must stop (the time budget)
    plateau: float | None = None  # stop after max(5, this share of the planned epochs) with no gain of any kind
    catch_signals: bool = True  # SIGTERM and a first Ctrl-C stop training; the best weights are kept
    stop: "StopRequest | None" = None  # a caller's own, installed for longer than fit (training's pipeline)


@dataclasses.dataclass
class EpochRecord:
    epoch: int
    loss: float
    sequence_accuracy: float
    char_accuracy: float
    learning_rate: float
    seconds: float

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class TrainResult:
    model: Any  # keras.Model with the best validation weights
    history: list[EpochRecord]
    best_epoch: int
    best_accuracy: float
    seconds: float
    stopped: str  # "target", "patience", "plateau", "epochs", "budget", "signal"
    predictions: list[str]  # validation predictions of the best model


def encode_labels(labels: list[str], charset: str, decoder: str, length: int) -> np.ndarray:
    """CTC: class ``charset.index(c) + 1`` padded with 0 (the blank); fixed: ``charset.index(c)``."""
    index = {c: i for i, c in enumerate(charset)}
    out = np.zeros((len(labels), length), np.int32)
    offset = 1 if decoder == "ctc" else 0
    for row, label in enumerate(labels):
        out[row, : len(label)] = [index[c] + offset for c in label]
    return out


def decode_batch(probs: np.ndarray, charset: str, decoder: str) -> list[str]:
    """The serving decoder over a batch of model outputs."""
    decode = DECODERS[decoder]
    return [decode(p, charset)[0] for p in probs]


def predict(model, x: np.ndarray, charset: str, decoder: str, batch_size: int = 256) -> list[str]:
    if not len(x):
        return []
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    return decode_batch(np.asarray(probs), charset, decoder)


def _losses():
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="capserve")
    def ctc_loss(y_true, y_pred):
        y_true = tf.cast(y_true, tf.int32)
        label_length = tf.math.count_nonzero(y_true, axis=1, dtype=tf.int32)
        batch = tf.shape(y_pred)[0]
        logit_length = tf.fill([batch], tf.shape(y_pred)[1])
        log_probs = tf.math.log(y_pred + 1e-7)
        return tf.nn.ctc_loss(
            labels=y_true,
            logits=log_probs,
            label_length=label_length,
            logit_length=logit_length,
            logits_time_major=False,
            blank_index=0,
        )

    return {"ctc": ctc_loss, "fixed": keras.losses.SparseCategoricalCrossentropy()}


def make_augment(spec: dict[str, float], height: int, width: int, seed: int) -> Callable | None:
    """A batch function for tf.data: one random shift/rotation/zoom per image, noise, contrast."""
    if not spec:
        return None
    import tensorflow as tf

    shift, rotate, zoom = spec.get("shift", 0.0), spec.get("rotate", 0.0), spec.get("zoom", 0.0)
    noise, contrast = spec.get("noise", 0.0), spec.get("contrast", 0.0)
    generator = tf.random.Generator.from_seed(seed + 7919)
    cx, cy = (width - 1) / 2, (height - 1) / 2

    def augment(x, y):
        n = tf.shape(x)[0]
        if shift or rotate or zoom:
            theta = generator.uniform([n], -rotate, rotate) * (math.pi / 180)
            scale = 1 + generator.uniform([n], -zoom, zoom)
            tx = generator.uniform([n], -shift, shift) * width
            ty = generator.uniform([n], -shift, shift) * height
            cos, sin = tf.cos(theta) / scale, tf.sin(theta) / scale
            a2 = cx - cos * cx + sin * cy - tx
            b2 = cy - sin * cx - cos * cy - ty
            zeros = tf.zeros_like(cos)
            transforms = tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)
            x = tf.raw_ops.ImageProjectiveTransformV3(
                images=x,
                transforms=transforms,
                output_shape=tf.constant([height, width]),
                fill_value=0.0,
                interpolation="BILINEAR",
                fill_mode="NEAREST",
            )
        if contrast:
            factor = 1 + generator.uniform([n, 1, 1, 1], -contrast, contrast)
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = (x - mean) * factor + mean
        if noise:
            x = x + generator.normal(tf.shape(x)) * noise
        return x, y

    return augment


def make_dataset(data: Dataset, y: np.ndarray, config: TrainConfig, height: int, width: int):
    """Batches of ``(x, labels)``, reshuffled every epoch, augmented in parallel, prefetched.

    The arrays stay in numpy: each batch is gathered by index (a copy of one batch), rather
    than copying the whole set into a tf.data shuffle buffer (twice the memory, and large
    sets in one buffer were seen to stall learning).
    """
    import tensorflow as tf

    x = data.x
    n = len(data)
    batch = min(config.batch_size, n)
    steps = n // batch
    epoch_counter = iter(range(1 << 30))

    def batches():
        order = np.random.default_rng((config.seed, next(epoch_counter))).permutation(n)
        for k in range(steps):
            index = np.sort(order[k * batch : (k + 1) * batch])
            yield x[index], y[index]

    # Every batch is full (the remainder is dropped), so the batch size is part of the static
    # shape. In a process that trains models of several input sizes, an unknown batch size made
    # the CTC loss's loop of the later ones fail graph optimization (a step of 64 at 160x60 took
    # 0.72 s against 0.32 s); with one model per process the two shapes cost the same
    # (benchmarks/step_time.py, BENCHMARKS.md).
    signature = (
        tf.TensorSpec((batch, *x.shape[1:]), tf.float32),
        tf.TensorSpec((batch, y.shape[1]), tf.int32),
    )
    ds = tf.data.Dataset.from_generator(batches, output_signature=signature)
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    augment = make_augment(config.augment, height, width, config.seed)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(4)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cosine(step: int, total: int, peak: float, alpha: float = 0.02) -> float:
    """Cosine decay from ``peak`` to ``alpha * peak`` over ``total`` steps."""
    progress = min(1.0, step / max(1, total))
    return peak * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)))


class StopRequest:
    """Why training should stop now, set by a signal handler or the deadline; None to go on."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """SIGTERM and a first SIGINT ask for a stop; a second SIGINT interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.reason == "signal":
            raise KeyboardInterrupt
        if self.reason == "signal":
            return
        self.reason = "signal"
        _log(f"\n{signal.Signals(signum).name}: stopping after this batch; the best weights so far are kept"
             + (" (Ctrl-C again to abort)" if signum == signal.SIGINT else ""))


def _callback(model, schedule: dict, stop: StopRequest, deadline: float | None, bar):
    """Per batch: the learning rate from the fitted schedule, the stop checks, the progress bar."""
    import keras

    class Steps(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            model.optimizer.learning_rate = cosine(schedule["step"], schedule["total"], schedule["peak"])

        def on_train_batch_end(self, batch, logs=None):
            schedule["step"] += 1
            if batch in (WARM_STEPS, schedule["last_batch"]):  # the steady step time, tracing left out
                schedule["clock"][batch] = time.perf_counter()
            if bar is not None:
                bar.update(1)
            if deadline is not None and time.monotonic() >= deadline and stop.reason is None:
                stop.reason = "budget"
            if stop.reason is not None:
                model.stop_training = True

    return Steps()


def _progress_bar(total: int, progress: str):
    if progress != "bar":
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)


def fit(
    model_config: ModelConfig,
    charset: str,
    train: Dataset,
    val: Dataset,
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train a model for ``model_config`` and return the one with the best validation accuracy."""
    import keras

    keras.utils.set_random_seed(config.seed)
    decoder = model_config.decoder
    length = model_config.length
    y_train = encode_labels(train.labels, charset, decoder, length)
    steps_per_epoch = max(1, len(train) // min(config.batch_size, len(train)))
    ckpt = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    history: list[EpochRecord] = []
    best_acc, best_epoch, initial_epoch = -1.0, 0, 0
    losses = _losses()
    epochs = config.epochs

    model, lent = None, set()
    if ckpt is not None and config.resume and (ckpt / "last.keras").is_file():
        state = _checkpoint_state(ckpt, model_config, charset, "; remove it or drop --resume")
        model = keras.models.load_model(ckpt / "last.keras", custom_objects={"ctc_loss": losses["ctc"]})
        history = [EpochRecord(**r) for r in state["history"]]
        initial_epoch = state["epoch"]
        epochs = max(epochs, state.get("planned_epochs", epochs))
        best_acc, best_epoch = state["best_accuracy"], state["best_epoch"]
        _log(f"resuming from {ckpt} after epoch {initial_epoch} (best {best_acc:.4f} at epoch {best_epoch})")
        if not all(layer.trainable for layer in model.layers):  # saved during a head-first phase
            _set_trainable(model, {layer.name for layer in model.layers}, True, config, losses[decoder])
    if model is None:
        model = build_model(model_config)
        if config.warm_start is not None:
            lent = _load_warm_start(Path(config.warm_start), model, model_config, charset)
        _set_trainable(model, set(), True, config, losses[decoder])
    schedule = {"step": initial_epoch * steps_per_epoch, "total": steps_per_epoch * epochs, "peak": config.learning_rate,
                "clock": {}, "last_batch": steps_per_epoch - 1 if steps_per_epoch > WARM_STEPS + 1 else -1}

    best_weights = model.get_weights() if best_epoch else None
    if ckpt is not None and best_epoch and (ckpt / "best.weights.h5").is_file():
        holder = build_model(model_config)
        holder.load_weights(ckpt / "best.weights.h5")
        best_weights = holder.get_weights()
    stop_reason = "epochs"
    if config.target_accuracy is not None and best_acc >= config.target_accuracy:
        stop_reason = "target"
    dataset = make_dataset(train, y_train, config, model_config.height, model_config.width)
    progress = config.progress
    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "epoch"
    stop = config.stop or StopRequest()
    if config.catch_signals and config.stop is None:
        stop.install()
    bar = _progress_bar(schedule["total"], progress)
    steps = _callback(model, schedule, stop, config.deadline, bar)
    started = time.perf_counter()
    epoch = last_gain = initial_epoch
    last_better = best_epoch
    best_char, best_loss = -1.0, math.inf
    try:
        while epoch < epochs and stop_reason == "epochs":
            # A new head on a lent backbone trains alone first: its rows for characters the backbone
            # never saw start at random, and would upset it. Its share is of the epochs planned now
            # (a budget replans after epoch 1).
            if lent and epoch == initial_epoch:
                _set_trainable(model, lent, False, config, losses[decoder])
                _log("the new head trains alone first, on the frozen backbone")
            elif lent and epoch >= max(1, round(HEAD_SHARE * epochs)):
                _set_trainable(model, lent, True, config, losses[decoder])
                _log(f"epoch {epoch + 1} on: every layer trains")
                lent = set()
            t0 = time.perf_counter()
            result = model.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, verbose=0, shuffle=False,
                               callbacks=[steps])
            preds = predict(model, val.x, charset, decoder)
            scores = score(val.labels, preds)
            epoch += 1
            record = EpochRecord(
                epoch=epoch,
                loss=float(result.history["loss"][-1]) if result.history.get("loss") else float("nan"),
                sequence_accuracy=scores.sequence_accuracy,
                char_accuracy=scores.char_accuracy,
                learning_rate=float(cosine(schedule["step"], schedule["total"], schedule["peak"])),
                seconds=time.perf_counter() - t0,
            )
            history.append(record)
            improved = record.sequence_accuracy > best_acc
            # A tie keeps the later weights: a small validation set saturates early, and the later
            # weights have trained longer, at a lower rate (BENCHMARKS.md, "The general model").
            kept = record.sequence_accuracy >= best_acc
            # A plateau is no gain in sequence or character accuracy, nor 1% less loss: early in
            # a CTC run the sequence accuracy sits at 0 for epochs while the rest improves.
            if improved or record.char_accuracy > best_char or record.loss < 0.99 * best_loss:
                last_gain = epoch
            best_char, best_loss = max(best_char, record.char_accuracy), min(best_loss, record.loss)
            if improved:
                last_better = epoch
            if kept:
                best_acc, best_epoch, best_weights = record.sequence_accuracy, epoch, model.get_weights()
            if config.deadline is not None and stop.reason is None:
                # The first epoch pays for tracing: its steady step time (after WARM_STEPS) and the
                # validation's time plan the run; later, the median of the last three epochs'
                # times corrects a plan off by 20% (a machine that got busier or quieter).
                recent = [r.seconds for r in history[initial_epoch + 1:]][-REPLAN_EPOCHS:] or [record.seconds]
                seconds = statistics.median(recent)  # this run's first epoch left out: it traced
                clock = schedule["clock"]
                if epoch == initial_epoch + 1 and len(clock) == 2:
                    steady = (clock[schedule["last_batch"]] - clock[WARM_STEPS]) / (schedule["last_batch"] - WARM_STEPS)
                    seconds = steady * steps_per_epoch + time.perf_counter() - clock[schedule["last_batch"]]
                planned = _plan(epoch, seconds, config.deadline, config.epochs)
                if epoch == initial_epoch + 1 or abs(planned - epochs) > 0.2 * epochs:
                    epochs = planned
                    _log(f"an epoch takes {seconds:.1f}s: {epochs} epochs fit the time budget; "
                         "the learning rate decays over them")
                    schedule["total"] = steps_per_epoch * epochs
                    if bar is not None:
                        bar.total = schedule["total"]
            if bar is not None:
                left = "" if config.deadline is None else f", {max(0, config.deadline - time.monotonic()) / 60:.1f} min left"
                bar.set_postfix_str(f"epoch {epoch}/{epochs}, best {best_acc:.4f}{left}")
            if progress == "epoch":
                _log(
                    f"epoch {epoch}/{epochs}: loss {record.loss:.4f}  val sequence {record.sequence_accuracy:.4f}"
                    f"  char {record.char_accuracy:.4f}  lr {record.learning_rate:.2e}  {record.seconds:.0f}s"
                    + ("  *best*" if kept else "")
                )
            if on_epoch is not None:
                on_epoch(record)
            if ckpt is not None:
                _save_checkpoint(ckpt, model, model_config, charset, epoch, history, best_acc, best_epoch, kept,
                                 epochs)
            if stop.reason is not None:
                stop_reason = stop.reason
            elif config.target_accuracy is not None and best_acc >= config.target_accuracy:
                stop_reason = "target"
            elif config.patience is not None and epoch - last_better >= config.patience:
                stop_reason = "patience"
            elif config.plateau and epoch - last_gain >= max(5, int(epochs * config.plateau)):
                stop_reason = "plateau"
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
    if best_weights is not None:
        model.set_weights(best_weights)
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        best_accuracy=best_acc,
        seconds=time.perf_counter() - started,
        stopped=stop_reason,
        predictions=predict(model, val.x, charset, decoder),
    )


WARM_STEPS = 3
"""Steps of a run's first epoch left out of its steady step time (tracing, warm-up)."""
HEAD_SHARE = 0.05
"""On a lent backbone, this share of the planned epochs (at least one) trains the new head alone."""
REPLAN_EPOCHS = 3
"""A budgeted run corrects its plan from the median time of this many recent epochs."""


def _set_trainable(model, names: set[str], trainable: bool, config: TrainConfig, loss) -> None:
    """Freeze or thaw the layers ``names`` and compile (a fresh optimizer: the schedule sets its
    learning rate every step)."""
    import keras

    for layer in model.layers:
        if layer.name in names:
            layer.trainable = trainable
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, clipnorm=5.0), loss=loss)


def _plan(done: int, epoch_seconds: float, deadline: float, cap: int) -> int:
    """Epochs that fit before ``deadline`` after ``done`` of them, at ``epoch_seconds`` each."""
    fit_more = int(max(0.0, deadline - time.monotonic()) // max(epoch_seconds, 1e-3))
    return max(done, min(cap, done + fit_more))


def _read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: not a checkpoint folder (state.json: {exc})") from None


def _checkpoint_state(folder: Path, model_config: ModelConfig, charset: str, hint: str = "") -> dict:
    """The ``state.json`` of a checkpoint folder, refused unless it was made for this model and charset."""
    state = _read_state(folder)
    if state.get("model_config") != model_config.to_dict() or state.get("charset") != charset:
        raise ValueError(f"{folder}: the checkpoint was made for another model or charset{hint}")
    return state


def _backbone_problem(source: dict, target: ModelConfig) -> str | None:
    """Why a model made with ``source`` (a ``ModelConfig`` dict) cannot lend its layers to ``target``."""
    if source.get("channels") != target.channels:
        return (f"it was trained on {source.get('channels')}-channel images and this run's are {target.channels}-channel "
                f"(choose the colour mode with --channels, or train with --from-scratch)")
    if source.get("height") != target.height:
        return f"its input is {source.get('height')} pixels high and this run's is {target.height} (set --height)"
    for name in ("arch", "filters", "units", "batch_norm"):
        if source.get(name) != target.to_dict()[name]:
            return f"its {name} is {source.get(name)} and this run's is {target.to_dict()[name]}"
    return None


def _load_warm_start(folder: Path, model, model_config: ModelConfig, charset: str) -> set[str]:
    """Start from the best weights of an earlier run, with a fresh optimizer and learning-rate
    schedule. Made for the same model and charset, every weight is taken (fine-tuning on new
    data, or a warm restart); made for another charset, decoder or width, every layer but the
    output head is (a backbone, e.g. a general model's, under a new head for this charset that
    keeps the lent head's rows for the characters both know). Returns the names of the layers a
    backbone lent (none when every weight was taken)."""
    state = _read_state(folder)
    if state.get("model_config") == model_config.to_dict() and state.get("charset") == charset:
        model.load_weights(folder / "best.weights.h5")
        _log(f"starting from the best weights of {folder} (epoch {state['best_epoch']}, "
             f"validation {state['best_accuracy']:.4f})")
        return set()
    source_config = state.get("model_config") or {}
    problem = _backbone_problem(source_config, model_config)
    if problem is not None:
        raise ValueError(f"{folder}: cannot warm-start from this checkpoint: {problem}")
    source = build_model(ModelConfig.from_dict(source_config))
    source.load_weights(folder / "best.weights.h5")
    lenders, lent = {layer.name: layer for layer in source.layers}, set()
    for layer in model.layers:
        if layer.name == "logits" or not layer.weights or layer.name not in lenders:
            continue
        weights = lenders[layer.name].get_weights()
        if [w.shape for w in weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(weights)
            lent.add(layer.name)
    known = _lend_head_rows(source.get_layer("logits"), model.get_layer("logits"), state.get("charset") or "",
                            charset, source_config.get("decoder"), model_config.decoder)
    _log(f"starting from the backbone of {folder} ({len(lent)} layers; a new head for {len(charset)} characters, "
         f"{known} of them read as the backbone read them)")
    return lent


def _lend_head_rows(source, target, source_charset: str, charset: str, source_decoder, decoder: str) -> int:
    """Start a new CTC head where the lent one left off: the blank, and each character the source
    knew, keep its output weights; only characters it never saw start at random. A run then begins
    at the source's reading restricted to this charset, instead of at chance. Returns how many
    characters were known."""
    if source_decoder != "ctc" or decoder != "ctc":
        return 0
    (kernel, bias), (new_kernel, new_bias) = source.get_weights(), target.get_weights()  # the same units
    pairs = [(0, 0)] + [(i + 1, source_charset.index(c) + 1) for i, c in enumerate(charset) if c in source_charset]
    for to, frm in pairs:
        new_kernel[:, to], new_bias[to] = kernel[:, frm], bias[frm]
    target.set_weights([new_kernel, new_bias])
    return len(pairs) - 1


def _save_checkpoint(
    ckpt: Path, model, model_config, charset, epoch, history, best_acc, best_epoch, new_best, planned_epochs
) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    model.save(ckpt / "last.keras.tmp.keras")
    os.replace(ckpt / "last.keras.tmp.keras", ckpt / "last.keras")
    if new_best:
        model.save_weights(ckpt / "best.weights.h5")
    state = {
        "epoch": epoch,
        "best_accuracy": best_acc,
        "best_epoch": best_epoch,
        "planned_epochs": planned_epochs,
        "charset": charset,
        "model_config": model_config.to_dict(),
        "history": [r.to_dict() for r in history],
    }
    tmp = ckpt / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, ckpt / "state.json")
