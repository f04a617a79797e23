"""``capserve train``, ``capserve eval`` and ``capserve kaggle bundle``.

``server/cli.py`` calls ``add_parsers(subparsers)``. Nothing here imports TensorFlow at module
level: the command functions import it when they run, so serving never loads it. Until the
``capserve`` script is installed, ``python -m capserve.training.cli train ...`` does the same.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any


def _chain(text: str) -> list[Any]:
    """A chain given on the command line as YAML or JSON (a list of steps)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"not valid YAML/JSON: {exc}") from None
    if value is None:
        return []
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError("must be a list of steps, e.g. '[grayscale, {resize: {mode: pad}}, normalize]'")
    return value


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def duration(text: str) -> float:
    """Seconds from ``15m``, ``90s``, ``1h30m`` or a bare number of minutes."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text)
    if re.fullmatch(r"\s*\d+(\.\d+)?\s*", text):
        seconds = float(text) * 60
    elif match and any(match.groups()):
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    else:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 15m, 90s, 1h30m, or minutes)")
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the time budget must be positive")
    return seconds


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a model for a site and write a verified registry entry",
        description="Train a captcha model from a labelled folder or a generator, export it to TFLite, "
        "verify the file in LiteRT and write <out>/<site>/<version>/ (model.yaml, model.tflite, report/).",
    )
    p.add_argument("--site", required=True, help="site name of the entry (lowercase letters, digits, - and _)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, metavar="DIR",
                     help="labelled images: LABEL.png / LABEL_anything.png, or a labels.csv / labels.txt mapping")
    src.add_argument("--generator", metavar="SPEC",
                     help="NAME[:key=value,...], e.g. imagecaptcha:width=100,height=50,charset=abc,min_length=4,max_length=4")
    p.add_argument("--out", type=Path, required=True, metavar="REGISTRY_DIR", help="registry folder to write the entry into")
    p.add_argument("--version", type=int, help="entry version (default: one above the highest in --out)")
    p.add_argument("--description", default="")

    d = p.add_argument_group("data")
    d.add_argument("--samples", type=int, default=20000, help="generator: training samples (default 20000)")
    d.add_argument("--val-samples", type=int, default=2000, help="generator: validation samples (default 2000)")
    d.add_argument("--val-split", type=float, default=0.1, help="folder: fraction held out for validation (default 0.1)")
    d.add_argument("--val-data", type=Path, metavar="DIR", help="folder: a separate labelled validation folder")
    d.add_argument("--charset", help="allowed characters (default: inferred from the labels / the generator's charset)")
    d.add_argument("--case", choices=("sensitive", "lower", "upper"), default="sensitive",
                   help="case of labels: keep (default), or fold to lower/upper case")
    d.add_argument("--width", type=int, help="model input width (default: the images' aspect ratio at the chosen height)")
    d.add_argument("--height", type=int, help="model input height (default: the images' height, at most 48)")
    d.add_argument("--channels", type=int, choices=(1, 3, 4),
                   help="model input channels (default: 1, or 3 where colour carries the text)")
    d.add_argument("--preprocess", type=_chain, metavar="YAML",
                   help="preprocess chain, e.g. '[grayscale, {resize: {mode: pad}}, normalize]' "
                   "(default for 1 channel: [grayscale, {resize: {mode: stretch}}, normalize])")
    d.add_argument("--postprocess", type=_chain, metavar="YAML", help="postprocess chain written into the entry")
    d.add_argument("--workers", type=int, help="processes that read or generate images (default: all cores)")

    m = p.add_argument_group("model")
    m.add_argument("--arch", choices=("cnn", "crnn"),
                   help="cnn: convolutions only, CTC (default, fastest); crnn: convolutions + bidirectional GRU")
    m.add_argument("--decoder", choices=("ctc", "fixed"), default="ctc",
                   help="ctc: variable length (default); fixed: one softmax per position (labels of one length)")
    m.add_argument("--filters", type=_ints, help="filters of the convolution blocks (default 16,32,64,96)")
    m.add_argument("--units", type=int, help="width of the sequence layers (default 128)")
    m.add_argument("--no-batch-norm", dest="batch_norm", action="store_false",
                   help="leave out batch normalization (faster per step on CPU, but CTC training can stall)")

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int,
                   help="passes over the training set (default: enough for about 3,000 steps, 10 to 150)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3, dest="learning_rate", help="peak learning rate (cosine decay)")
    t.add_argument("--target-accuracy", type=_fraction, help="stop once validation sequence accuracy reaches this")
    t.add_argument("--patience", type=int, help="stop after this many epochs without a better validation accuracy")
    t.add_argument("--time-budget", type=duration, metavar="DURATION",
                   help="wall time for the whole run (15m, 90s, 1h30m): epochs and the learning-rate schedule are "
                        "planned from the first epoch's time; default on a CPU without --epochs: 18m")
    t.add_argument("--discard-on-stop", dest="keep_on_stop", action="store_false",
                   help="a run stopped by SIGTERM or Ctrl-C writes nothing (default: its best weights, marked)")
    t.add_argument("--augment",
                   help="none | light | strong | key=value list of shift, rotate, zoom, noise, contrast "
                        "(default: strong on the general backbone, light from scratch)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-dir", type=Path, help="save the model every epoch here (and the best weights)")
    t.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    t.add_argument("--warm-start", type=Path, metavar="CHECKPOINT_DIR",
                   help="start from the best weights saved in an earlier run's --checkpoint-dir, with a new "
                   "learning-rate schedule (fine-tune on new data or samples); default for --data: the bundled "
                   "general model's backbone")
    t.add_argument("--from-scratch", action="store_true",
                   help="start from random weights, not from the general backbone (--data runs start from it)")
    t.add_argument("--progress", choices=("auto", "bar", "epoch", "none"), default="auto")

    e = p.add_argument_group("export")
    e.add_argument("--quantization", choices=("none", "dynamic", "float16", "int8"), default="dynamic")
    e.add_argument("--tolerance", type=_fraction, default=0.003,
                   help="refuse the file if LiteRT accuracy is this much below Keras (default 0.003 = 0.3 points)")
    e.add_argument("--no-fallback", dest="fallback", action="store_false",
                   help="fail when the quantized file is refused, instead of trying float16, then none")
    p.set_defaults(func=cmd_train)
    return p


def add_eval_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="accuracy of a registered site's model on a labelled folder",
        description="Recognize every labelled image of DIR through the served path and print sequence and "
        "character accuracy with the most confused characters.",
    )
    p.add_argument("--site", required=True)
    p.add_argument("--registry", action="append", type=Path, metavar="DIR",
                   help="registry folder (repeatable); default: $CAPSERVE_REGISTRY or the bundled entries")
    p.add_argument("data", nargs="?", type=Path, metavar="DIR", help="labelled images (as for train --data)")
    p.add_argument("--generator", metavar="SPEC", help="evaluate on fresh generated images instead of DIR")
    p.add_argument("--count", type=int, default=2000, help="with --generator: how many images (default 2000)")
    p.add_argument("--seed", type=int, default=12345, help="with --generator: seed of the fresh images")
    p.add_argument("--case", choices=("sensitive", "lower", "upper"), default="sensitive")
    p.add_argument("--top", type=int, default=10, help="how many confusions to list")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)
    return p


def add_kaggle_parser(sub) -> argparse.ArgumentParser:
    from capserve.training.bundle import DEFAULT_GLIBC, DEFAULT_PYTHON

    p = sub.add_parser("kaggle", help="make the dataset to upload to Kaggle for the training notebook")
    kaggle = p.add_subparsers(dest="kaggle_command", required=True)
    b = kaggle.add_parser(
        "bundle",
        help="write the folder (or zip) to upload as a Kaggle dataset",
        description="Write capserve's wheel, a wheelhouse of its training dependencies for Kaggle's Python "
        "(never TensorFlow: Kaggle's own GPU build stays), the notebook and optionally labelled images, "
        "so that training/kaggle/train.ipynb installs capserve with the notebook's internet off.",
    )
    b.add_argument("--out", type=Path, required=True, metavar="DIR", help="the bundle folder to write (new or empty)")
    b.add_argument("--data", type=Path, metavar="LABELLED_DIR", help="labelled images to include as data/")
    b.add_argument("--zip", action="store_true", help="also write DIR.zip (the folder's contents) to upload")
    b.add_argument("--python-version", dest="python", default=DEFAULT_PYTHON,
                   help=f"Kaggle's Python (default {DEFAULT_PYTHON})")
    b.add_argument("--glibc", default=DEFAULT_GLIBC,
                   help=f"Kaggle's glibc, for the manylinux wheels (default {DEFAULT_GLIBC})")
    b.add_argument("--interpreter", metavar="PYTHON",
                   help="an interpreter of --python-version to resolve with (default: this one or one found)")
    b.add_argument("--source", type=Path, metavar="DIR", help="capserve's source folder (default: this checkout)")
    b.set_defaults(func=cmd_kaggle_bundle)
    return b


def add_parsers(sub) -> None:
    """Add ``train``, ``eval`` and ``kaggle bundle`` to the ``capserve`` subcommands."""
    add_train_parser(sub)
    add_eval_parser(sub)
    add_kaggle_parser(sub)


def options_from_args(args: argparse.Namespace, argv: list[str] | None = None):
    from capserve.training.pipeline import TrainOptions

    fields = TrainOptions.__dataclass_fields__
    kwargs = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    kwargs["command"] = "capserve " + shlex.join(argv if argv is not None else sys.argv[1:])
    return TrainOptions(**kwargs)


def cmd_train(args: argparse.Namespace) -> int:
    from capserve.training.datasets import DatasetError

    options = options_from_args(args, getattr(args, "_argv", None))
    try:
        from capserve.training.export import ExportError
        from capserve.training.pipeline import StoppedBeforeFirstEpoch, run

        run(options)
    except DatasetError as exc:
        print(f"capserve train: bad dataset: {exc}", file=sys.stderr)
        return 2
    except (ExportError, FileExistsError, ValueError, StoppedBeforeFirstEpoch) as exc:
        print(f"capserve train: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("capserve train: interrupted; nothing written", file=sys.stderr)
        return 130
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from capserve.training.datasets import DatasetError
    from capserve.training.evaluate import evaluate_folder, evaluate_generator, format_result

    try:
        if args.generator:
            result = evaluate_generator(args.site, args.generator, args.count, seed=args.seed,
                                        registry=args.registry, case=args.case)
        elif args.data is not None:
            result = evaluate_folder(args.site, args.data, registry=args.registry, case=args.case)
        else:
            print("capserve eval: give a labelled folder DIR or --generator SPEC", file=sys.stderr)
            return 2
    except DatasetError as exc:
        print(f"capserve eval: bad dataset: {exc}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"capserve eval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(args.top), indent=1))
    else:
        print(format_result(result, args.top))
    return 0


def cmd_kaggle_bundle(args: argparse.Namespace) -> int:
    from capserve.training.bundle import BundleError, Options, bundle

    options = Options(out=args.out, data=args.data, zip=args.zip, python=args.python, glibc=args.glibc,
                      interpreter=args.interpreter, source=args.source)
    try:
        print(bundle(options))
    except BundleError as exc:
        print(f"capserve kaggle bundle: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="capserve", description="capserve training commands")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    args._argv = argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
