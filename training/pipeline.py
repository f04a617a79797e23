"""One training run end to end: data -> checks -> model -> fit -> export -> verified entry + report.

``run(TrainOptions(...))`` is what ``capserve train`` calls (and the Kaggle notebook, through
the CLI). Dataset problems raise ``DatasetError`` before TensorFlow is even imported.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from capserve.core.chain import ChainError, InputShape
from capserve.plugins.manager import compile_preprocess
from capserve.training import autoconfig, datasets
from capserve.training.datasets import Dataset, DatasetError


@dataclasses.dataclass
class TrainOptions:
    site: str
    out: Path
    data: Path | None = None
    generator: str | None = None
    version: int | None = None
    description: str = ""
    # data
    samples: int = 20000  # generator: training samples
    val_samples: int = 2000  # generator: validation samples (own seed, never in training)
    val_split: float = 0.1  # folder: fraction held out
    val_data: Path | None = None
    charset: str | None = None
    case: str = "sensitive"
    width: int | None = None
    height: int | None = None
    channels: int | None = None  # None: gray unless colour carries the text (autoconfig.colour_channels)
    preprocess: list[Any] | None = None
    postprocess: list[Any] | None = None
    workers: int | None = None
    # model
    arch: str | None = None  # None: cnn (or the warm start's)
    decoder: str = "ctc"
    filters: tuple[int, ...] | None = None
    units: int | None = None
    batch_norm: bool = True
    # loop
    epochs: int | None = None  # None: enough epochs for about 3,000 steps (10 to 150), or what the budget fits
    time_budget: float | None = None  # seconds for the whole run; None: DEFAULT_CPU_BUDGET on a CPU without --epochs
    keep_on_stop: bool = True  # a run stopped by SIGTERM or Ctrl-C still writes its best weights, marked
    batch_size: int = 64
    learning_rate: float = 2e-3
    target_accuracy: float | None = None
    patience: int | None = None
    augment: str | None = None  # None: light, or strong on a pretrained backbone
    seed: int = 0
    checkpoint_dir: Path | None = None
    resume: bool = False
    warm_start: Path | None = None  # None: the general backbone for a labelled folder (unless from_scratch)
    from_scratch: bool = False
    progress: str = "auto"
    # export
    quantization: str = "dynamic"
    tolerance: float = 0.003
    fallback: bool = True  # a refused quantized file: try float16, then none
    command: str | None = None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _sample(options: TrainOptions, count: int = 100) -> tuple[list[np.ndarray], list[str], tuple[int, int]]:
    """A sample of the training images as ``(H, W, 3)`` uint8 (transparency composited onto
    white, as a browser shows it; an animation's first frame), every label the data has (a
    generator's: of a sample), and the images' most common size ``(width, height)``."""
    import collections
    import random

    from PIL import Image

    if options.generator:
        generator, params = datasets.parse_generator_spec(options.generator)
        rng = random.Random(options.seed)
        pairs = [generator.func(rng, **params) for _ in range(max(count, 200))]
        images, labels = [image for image, _ in pairs[:count]], [label for _, label in pairs]
    else:
        items = datasets.scan_folder(options.data, case=options.case)
        labels = [label for _, label in items]
        step = max(1, len(items) // count)
        images = []
        for path, _ in items[::step][:count]:
            try:
                images.append(Image.open(path))
            except Exception as exc:
                raise DatasetError(f"{path}: cannot be read: {exc}") from None
    arrays = []
    for image in images:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        arrays.append(np.asarray(flat))
    sizes = collections.Counter((a.shape[1], a.shape[0]) for a in arrays)
    return arrays, labels, sizes.most_common(1)[0][0]


def _traits(options: TrainOptions) -> tuple[bool, bool]:
    """Whether the data has transparency or animation, to pick the default chain."""
    if options.generator:
        import random

        generator, params = datasets.parse_generator_spec(options.generator)
        image, _ = generator.func(random.Random(0), **params)
        mode = image.mode
        return mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info), False
    paths = [p for p, _ in datasets.scan_folder(options.data, case=options.case)]
    if options.val_data is not None:
        paths += [p for p, _ in datasets.scan_folder(options.val_data, case=options.case)]
    return datasets.image_traits(paths)


@dataclasses.dataclass(frozen=True)
class Backbone:
    folder: Path  # a checkpoint folder: state.json and best.weights.h5
    config: dict  # its ModelConfig as a dict
    version: str


def general_backbone() -> Backbone | None:
    """The backbone of the newest bundled ``general`` entry (its ``backbone/`` checkpoint folder)."""
    from capserve.model_registry.registry import BUNDLED

    found = sorted((int(p.parent.parent.name), p.parent) for p in (BUNDLED / GENERAL_SITE).glob("*/backbone/state.json")
                   if p.parent.parent.name.isdigit())
    if not found:
        return None
    version, folder = found[-1]
    return Backbone(folder, json.loads((folder / "state.json").read_text())["model_config"], str(version))


GENERAL_SITE = "general"
"""The bundled entry whose backbone a labelled folder's run starts from by default."""


def _default_start(options: TrainOptions, channels: int | None) -> tuple[Backbone | None, autoconfig.Choice | None]:
    """The general backbone a run on a labelled folder starts from, and the "start" row; a
    setting given that the backbone cannot take is refused (``--from-scratch`` opts out)."""
    if options.data is None or options.warm_start is not None or options.from_scratch:
        return None, None
    backbone = general_backbone()
    if backbone is None:
        return None, autoconfig.Choice("start", "from scratch", "no general backbone is installed", "--warm-start")
    source = backbone.config
    if options.channels is None and channels != source["channels"]:
        return None, autoconfig.Choice("start", "from scratch", f"colour carries the text, and the general backbone "
                                       f"reads {source['channels']}-channel images", "--channels 1 to start from it")
    given = {"channels": options.channels, "height": options.height, "arch": options.arch,
             "filters": list(options.filters) if options.filters else None, "units": options.units,
             "batch_norm": None if options.batch_norm else False}
    def shown(value: Any) -> Any:
        return ",".join(map(str, value)) if isinstance(value, list) else value

    for name, value in given.items():
        if value is not None and value != source[name]:
            flag = "--no-batch-norm" if name == "batch_norm" else f"--{name} {shown(value)}"
            raise ValueError(f"{flag}: the general backbone, which a run starts from by default, has {name} "
                             f"{shown(source[name])}; train with --from-scratch, or leave {flag.split()[0]} out")
    return backbone, autoconfig.Choice(
        "start", f"general backbone v{backbone.version}", "pretrained on many captcha styles; a new head for this charset", "--from-scratch")


def configure(options: TrainOptions) -> tuple[TrainOptions, list[autoconfig.Choice]]:
    """The options with every choice the user left open made from the data, and the choices."""
    arrays, labels, (width, height) = _sample(options)
    max_length = max(len(label) for label in labels)
    if options.generator:
        _, params = datasets.parse_generator_spec(options.generator)
        max_length = max(max_length, int(params.get("max_length", max_length)))
    choices = []
    changes: dict[str, Any] = {}
    if options.channels is None:
        channels, why = autoconfig.colour_channels(arrays)
        changes["channels"] = channels
        choices.append(autoconfig.Choice("colour", "gray" if channels == 1 else "RGB", why, "--channels"))
    backbone, start = _default_start(options, changes.get("channels", options.channels))
    if start is not None:
        choices.append(start)
    if backbone is not None:
        changes["warm_start"] = backbone.folder
    if options.width is None or options.height is None:
        w, h, why = autoconfig.input_size(width, height, max_length,
                                          fixed_height=backbone.config["height"] if backbone else None)
        changes["width"], changes["height"] = options.width or w, options.height or h
        choices.append(autoconfig.Choice("input", f"{changes['width']}x{changes['height']}", why, "--width --height"))
    if options.augment is None:
        changes["augment"] = "strong" if backbone is not None else "light"
        if backbone is not None:
            choices.append(autoconfig.Choice("augment", "strong", "a pretrained backbone fine-tuned on few labels: "
                                             "larger shifts, rotations, zoom, noise and contrast", "--augment"))
    if options.preprocess is None:
        alpha, animated = _traits(options)
        chain = datasets.default_preprocess(changes.get("channels", options.channels), alpha=alpha, animated=animated)
        changes["preprocess"] = chain
        if animated and (options.data is None or len(labels) < autoconfig.PROBE_LEAST):
            choices.append(autoconfig.Choice("frames", "frames_min", "animated images (too few for a probe run): each "
                                             "pixel's darkest value over the frames, so dark text that blinks or "
                                             "appears in parts is whole", "--preprocess"))
        elif animated:
            shape = InputShape(changes.get("width", options.width), changes.get("height", options.height),
                               changes.get("channels", options.channels))
            items = datasets.scan_folder(options.data, case=options.case)
            charset = options.charset or "".join(sorted(set("".join(labels))))
            log(f"animated images: trying {', '.join(autoconfig.FRAMES_CANDIDATES)} on a sample ...")
            best, scores = autoconfig.probe_frames(items, shape, charset, max_length, seed=options.seed,
                                                   backbone=backbone.folder if backbone else None)
            chain[0] = best
            tried = ", ".join(f"{step} {score:.2f}" for step, score in scores.items())
            how = "the general backbone's reading of a sample" if backbone else "a short probe run"
            choices.append(autoconfig.Choice("frames", best, f"animated images; character accuracy of {how}: {tried}",
                                             "--preprocess"))
        elif alpha:
            choices.append(autoconfig.Choice("transparency", "flatten_alpha", "transparent images, composited onto "
                                             "white as a browser shows them", "--preprocess"))
    if options.postprocess is None and autoconfig.is_arithmetic(labels):
        changes["postprocess"] = ["arithmetic"]
        choices.append(autoconfig.Choice("answer", "arithmetic", "the labels are arithmetic (e.g. "
                                         f"{labels[0]!r}): the model reads the expression, the entry answers its value",
                                         "--postprocess '[]'"))
    lengths = sorted({len(label) for label in labels})
    choices.append(autoconfig.Choice("length", f"{lengths[0]}-{lengths[-1]}" if len(lengths) > 1 else str(lengths[0]),
                                     "from the labels", "--decoder fixed for one length"))
    if options.charset is None:
        charset = "".join(sorted(set("".join(labels))))
        choices.append(autoconfig.Choice("charset", f"{len(charset)} characters", autoconfig.case_rule(labels),
                                         "--charset, --case"))
    return dataclasses.replace(options, **changes), choices


def prepare(options: TrainOptions) -> tuple[Dataset, Dataset, str, InputShape, list[Any]]:
    """Load or generate the data and check it; everything that can fail before training does.
    ``options`` are configured (``configure``): input size, channels and chain are set."""
    if (options.data is None) == (options.generator is None):
        raise DatasetError("give exactly one of --data DIR or --generator SPEC")
    if options.data is not None and not Path(options.data).is_dir():
        raise DatasetError(f"{options.data}: is not a folder")
    width, height = options.width, options.height
    shape = InputShape(width, height, options.channels)
    preprocess = options.preprocess
    log(f"preprocess chain: {preprocess}")
    try:
        compile_preprocess(preprocess, shape)
    except ChainError as exc:
        raise DatasetError(f"--preprocess: {exc}") from None

    started = time.perf_counter()
    if options.generator:
        generator, params = datasets.parse_generator_spec(options.generator)
        charset = options.charset or params.get("charset")
        if charset is not None:
            charset = datasets.apply_case(charset, options.case)
            charset = "".join(dict.fromkeys(charset))
        log(f"generating {options.samples} training and {options.val_samples} validation samples with {generator.name} ...")
        train = datasets.generate(generator, params, options.samples, shape, preprocess, seed=options.seed,
                                  workers=options.workers, case=options.case)
        val = datasets.generate(generator, params, options.val_samples, shape, preprocess,
                                seed=f"val:{options.seed}", workers=options.workers, case=options.case)
        charset = datasets.check_labels(train.labels + val.labels, train.sources + val.sources, charset=charset,
                                        decoder=options.decoder, where=f"generator {generator.name}")
    else:
        log(f"reading {options.data} ...")
        data, charset = datasets.load_folder(options.data, shape, preprocess, case=options.case,
                                             charset=options.charset, decoder=options.decoder, workers=options.workers)
        if options.val_data is not None:
            val, _ = datasets.load_folder(options.val_data, shape, preprocess, case=options.case, charset=charset,
                                          decoder=options.decoder, workers=options.workers)
            train = data
        else:
            train, val = datasets.split(data, options.val_split, seed=options.seed)
        # the split may leave the training part with one label only
        datasets.check_labels(train.labels, train.sources, charset=charset, decoder=options.decoder,
                              where=f"{options.data} (training part)")
    if options.decoder == "fixed":
        lengths = {len(label) for label in train.labels + val.labels}
        if len(lengths) > 1:
            raise DatasetError(f"a fixed-length head needs labels of one length, found lengths {sorted(lengths)}")
    log(f"{len(train)} training, {len(val)} validation samples, charset {charset!r} ({len(charset)}), "
        f"input {width}x{height}x{options.channels} ({time.perf_counter() - started:.0f}s)")
    return train, val, charset, shape, list(preprocess)


def model_config(options: TrainOptions, shape: InputShape, charset: str, max_length: int):
    from capserve.training.models import ModelConfig

    kwargs: dict[str, Any] = {}
    if options.filters:
        kwargs["filters"] = tuple(options.filters)
    if options.units:
        kwargs["units"] = options.units
    return ModelConfig(
        arch=options.arch or "cnn",
        decoder=options.decoder,
        height=shape.height,
        width=shape.width,
        channels=shape.channels,
        charset_size=len(charset),
        length=max_length,
        batch_norm=options.batch_norm,
        **kwargs,
    )


FALLBACKS = {"int8": ["dynamic", "float16", "none"], "dynamic": ["float16", "none"], "float16": ["none"], "none": []}


DEFAULT_CPU_BUDGET = 18 * 60.0
"""The time budget of a run on a CPU that names neither --epochs nor --time-budget."""
BUDGET_EPOCHS = 300
"""The most epochs a budgeted run plans (small data sets stop at a plateau long before)."""


def export_reserve(budget: float) -> float:
    """Seconds kept back from a budget for export, LiTeRT verification and the report."""
    return min(60.0, 0.15 * budget)


PLATEAU = 0.25
"""A budgeted run stops after max(5, this share of its planned epochs) without a better accuracy."""


def has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


class StoppedBeforeFirstEpoch(RuntimeError):
    """The run was stopped before one epoch ended: no validated weights to export."""


def auto_epochs(samples: int, batch_size: int, steps: int = 3000) -> int:
    """Epochs for about ``steps`` optimizer steps: small datasets get more passes (10 to 150)."""
    per_epoch = max(1, samples // max(1, batch_size))
    return max(10, min(150, -(-steps // per_epoch)))


def run(options: TrainOptions) -> Path | None:
    """Train, export, verify and write the entry; returns the entry folder (None when a stopped
    run was told not to keep its weights). SIGTERM or a first Ctrl-C during training stops it and
    exports the best weights so far; during export they are noted and the export finishes."""
    from capserve.training.train import StopRequest

    started = time.monotonic()
    stop = StopRequest()  # installed when training starts: before, a signal stops the run as usual
    try:
        return _run(options, started, stop)
    finally:
        stop.restore()


def _run(options: TrainOptions, started: float, stop) -> Path | None:
    from capserve.training import entry
    from capserve.training.export import MODES, AccuracyRefused, ExportError

    if options.quantization not in MODES:
        raise ExportError(f"unknown quantization mode {options.quantization!r}; modes: {', '.join(MODES)}")
    version = options.version or entry.next_version(options.out, options.site)
    target = Path(options.out) / options.site / str(version) / "model.yaml"
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another --version")
    if (options.data is None) == (options.generator is None):
        raise DatasetError("give exactly one of --data DIR or --generator SPEC")
    if options.data is not None and not Path(options.data).is_dir():
        raise DatasetError(f"{options.data}: is not a folder")
    options, choices = configure(options)
    log(autoconfig.table(choices))
    train, val, charset, shape, preprocess = prepare(options)
    lengths = [len(label) for label in train.labels + val.labels]
    min_length, max_length = min(lengths), max(lengths)
    if options.generator:
        _, params = datasets.parse_generator_spec(options.generator)
        min_length = min(min_length, params.get("min_length", min_length))
        max_length = max(max_length, params.get("max_length", max_length))
    config = model_config(options, shape, charset, max_length)

    from capserve.training.export import export
    from capserve.training.models import build_model
    from capserve.training.train import TrainConfig, fit, parse_augment

    build_model(config)  # an input too small for the model fails here, before any epoch
    budget = options.time_budget
    if budget is None and options.epochs is None and not has_gpu():
        budget = DEFAULT_CPU_BUDGET
    deadline = started + budget - export_reserve(budget) if budget else None
    epochs = options.epochs or (BUDGET_EPOCHS if deadline else auto_epochs(len(train), options.batch_size))
    if deadline is not None:
        log(f"time budget {budget / 60:.1f} min for the whole run: training stops "
            f"{max(0, deadline - time.monotonic()) / 60:.1f} min from now, {export_reserve(budget):.0f} s kept for export")
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        target_accuracy=options.target_accuracy,
        patience=options.patience,
        plateau=PLATEAU if deadline is not None and options.epochs is None else None,
        deadline=deadline,
        stop=stop,
        augment=parse_augment(options.augment or "light"),
        seed=options.seed,
        checkpoint_dir=options.checkpoint_dir,
        resume=options.resume,
        warm_start=options.warm_start,
        progress=options.progress,
    )
    log(f"training a {config.arch}/{config.decoder} model for up to {epochs} epochs ...")
    stop.install()
    result = fit(config, charset, train, val, train_config)
    log(f"best validation sequence accuracy {result.best_accuracy:.4f} at epoch {result.best_epoch} "
        f"({result.seconds:.0f}s, stopped: {result.stopped})")
    if not result.history:
        raise StoppedBeforeFirstEpoch("stopped before the first epoch ended: there are no validated weights to export")
    if result.stopped == "signal" and not options.keep_on_stop:
        log("stopped: --discard-on-stop, so no entry is written")
        return None

    rng = np.random.default_rng(options.seed)
    representative = train.x[rng.choice(len(train), size=min(300, len(train)), replace=False)]
    exported = None
    modes = [options.quantization] + (FALLBACKS.get(options.quantization, []) if options.fallback else [])
    for mode in modes:
        log(f"exporting ({mode}) and verifying in LiteRT on {len(val)} validation samples ...")
        try:
            exported = export(result.model, config, charset, val.x, val.labels, mode=mode,
                              representative=representative, tolerance=options.tolerance,
                              keras_predictions=result.predictions)
            break
        except AccuracyRefused as exc:
            if mode == modes[-1]:
                raise
            log(f"{exc}\nfalling back to the next, less quantized mode (--no-fallback to stop here)")
    assert exported is not None
    log(f"{exported.mode}: {exported.size} bytes, LiteRT sequence accuracy {exported.scores.sequence_accuracy:.4f} "
        f"(Keras {exported.keras_scores.sequence_accuracy:.4f}), {exported.invoke_us:.0f} us per invoke")

    history = [r.to_dict() for r in result.history]
    training_record = {
        "accuracy": round(exported.scores.sequence_accuracy, 5),
        "char_accuracy": round(exported.scores.char_accuracy, 5),
        "keras_accuracy": round(exported.keras_scores.sequence_accuracy, 5),
        "validation": "LiteRT file on the held-out validation set, serving decoder",
        "samples": {"train": len(train), "validation": len(val)},
        "data": options.generator if options.generator else str(options.data),
        "date": entry.today(),
        "quantization": exported.mode,
        **({"quantization_requested": options.quantization} if exported.mode != options.quantization else {}),
        "model_bytes": exported.size,
        "model": {"arch": config.arch, "filters": list(config.filters), "units": config.units,
                  "batch_norm": config.batch_norm, "params": int(result.model.count_params())},
        "epochs": len(history),
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "choices": [{"setting": c.setting, "value": c.value, "why": c.why} for c in choices],
        **({"stopped_early": True} if result.stopped == "signal" else {}),
        **({"time_budget_s": round(budget)} if budget else {}),
        "seconds": round(result.seconds, 1),
        "seed": options.seed,
        "augment": options.augment or "light",
        **({"warm_start": str(options.warm_start)} if options.warm_start else {}),
        "command": options.command or entry.reproduce_command(),
    }
    folder = entry.write_entry(
        options.out,
        site=options.site,
        version=version,
        content=exported.content,
        width=shape.width,
        height=shape.height,
        channels=shape.channels,
        charset=charset,
        decoder=config.decoder,
        min_length=min_length,
        max_length=max_length,
        preprocess=preprocess,
        postprocess=list(options.postprocess or []),
        description=options.description or f"{options.site}: trained with capserve train",
        training=training_record,
    )
    entry.write_report(
        folder,
        site=options.site,
        version=version,
        history=history,
        scores=exported.scores,
        keras_scores=exported.keras_scores,
        x_val=val.x,
        val_labels=val.labels,
        predictions=exported.predictions,
        training=training_record,
        extra={"invoke_us (LiteRT, this machine)": round(exported.invoke_us, 1)},
    )
    log(f"wrote {folder}" + (" (stopped early: the best weights of the epochs done)" if result.stopped == "signal" else ""))
    print(json.dumps({"entry": str(folder), "accuracy": training_record["accuracy"], "bytes": exported.size}))
    return folder
