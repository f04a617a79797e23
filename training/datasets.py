"""Training data: a labelled folder or a synthetic generator, as arrays of model inputs.

Every input tensor is made by the *serving* path: file bytes go through
``Preprocessor.decode`` and generator images through ``Preprocessor.from_image``, then the
entry's compiled preprocess chain (``Preprocessor.tensor``). There is no second
implementation of preprocessing here, so the model is trained on exactly what it will see.

Problems with a dataset (empty folder, unreadable images, labels outside the charset, a
single class, lengths a fixed head cannot take) raise ``DatasetError`` before any training.
This module does not import TensorFlow.
"""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing
import os
import random
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from capserve.plugins import manager
from capserve.core.chain import InputShape, Preprocessor
from capserve.plugins.manager import compile_preprocess
from capserve.core.steps import Generator, ParamError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
LABEL_FILES = ("labels.csv", "labels.txt")
CASES = ("sensitive", "lower", "upper")


class DatasetError(ValueError):
    """A dataset that cannot be trained on, and why (raised before training starts)."""


def default_preprocess(channels: int, *, alpha: bool = False, animated: bool = False) -> list[Any]:
    """The chain a new entry gets unless one is given: gray or colour, stretch, 0..1.

    With ``animated`` data the chain starts with ``frames_min`` (each pixel's darkest value
    over the frames: dark text that blinks or appears in parts is whole); with transparent
    data with ``flatten_alpha`` (onto white), since transparent pixels often hide black RGB.
    """
    chain: list[Any] = []
    if animated:
        chain.append("frames_min")
    elif alpha and channels != 4:
        chain.append("flatten_alpha")
    if channels == 1:
        chain.append("grayscale")
    return chain + [{"resize": {"mode": "stretch"}}, "normalize"]


def image_traits(paths: Sequence[Path], *, limit: int = 500) -> tuple[bool, bool]:
    """``(has transparency, is animated)`` over (a sample of) the images, from headers only."""
    from PIL import Image

    alpha = animated = False
    step = max(1, len(paths) // limit)
    for path in list(paths)[::step]:
        try:
            with Image.open(path) as image:
                animated |= getattr(image, "n_frames", 1) > 1
                alpha |= image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
        except Exception:
            continue  # load_folder reports unreadable files, all together
    return alpha, animated


@dataclasses.dataclass
class Dataset:
    """Model inputs ``x`` (N, H, W, C) float32 and their labels."""

    x: np.ndarray
    labels: list[str]
    sources: list[str]  # file paths, or "generator:<index>"

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | np.ndarray) -> "Dataset":
        index = np.asarray(index, dtype=np.int64)
        return Dataset(self.x[index], [self.labels[i] for i in index], [self.sources[i] for i in index])


# -- labels ---------------------------------------------------------------------------------


def apply_case(label: str, case: str) -> str:
    if case == "lower":
        return label.lower()
    if case == "upper":
        return label.upper()
    return label


def label_from_name(path: Path) -> str:
    """``ab3k_0001.png`` -> ``ab3k``; ``ab3k.png`` -> ``ab3k``."""
    return path.stem.split("_", 1)[0]


def _read_label_file(path: Path) -> dict[str, str]:
    """``labels.csv`` (``file,label`` rows, optional header) or ``labels.txt`` (``file<TAB or space>label``)."""
    mapping: dict[str, str] = {}
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".csv":
        rows = list(csv.reader(text.splitlines()))
    else:
        rows = [line.split("\t", 1) if "\t" in line else line.split(None, 1) for line in text.splitlines()]
    for number, row in enumerate(rows, 1):
        if not row or not "".join(row).strip() or row[0].startswith("#"):
            continue
        if len(row) < 2:
            raise DatasetError(f"{path}:{number}: expected 'file,label', got {row!r}")
        name, label = row[0].strip(), row[1].strip("\r\n")
        if number == 1 and name.lower() in ("file", "filename", "image", "path") and label.lower() in ("label", "text"):
            continue  # header
        mapping[name] = label
    return mapping


def scan_folder(folder: Path | str, *, case: str = "sensitive") -> list[tuple[Path, str]]:
    """The labelled images of ``folder``: from ``labels.csv``/``labels.txt`` if present, else file names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: is not a folder")
    if case not in CASES:
        raise DatasetError(f"case must be one of {CASES}, got {case!r}")
    label_file = next((folder / name for name in LABEL_FILES if (folder / name).is_file()), None)
    items: list[tuple[Path, str]] = []
    if label_file is not None:
        for name, label in _read_label_file(label_file).items():
            path = folder / name
            if not path.is_file():
                raise DatasetError(f"{label_file}: names {name!r}, which is not a file in {folder}")
            items.append((path, apply_case(label, case)))
    else:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((path, apply_case(label_from_name(path), case)))
    if not items:
        raise DatasetError(
            f"{folder}: no labelled images found (looked for {', '.join(IMAGE_SUFFIXES)} files"
            f" named LABEL.png or LABEL_anything.png, or a {' / '.join(LABEL_FILES)} mapping)"
        )
    return items


def infer_charset(labels: Sequence[str]) -> str:
    """Every character that occurs in the labels, sorted."""
    return "".join(sorted(set("".join(labels))))


def check_labels(
    labels: Sequence[str],
    sources: Sequence[str],
    *,
    charset: str | None,
    decoder: str = "ctc",
    where: str = "dataset",
) -> str:
    """Check the labels against the charset (inferred when None) and return the charset."""
    empty = [s for s, label in zip(sources, labels) if not label]
    if empty:
        raise DatasetError(f"{where}: {len(empty)} sample(s) have an empty label, e.g. {empty[:3]}")
    if charset is None:
        charset = infer_charset(labels)
    elif len(set(charset)) != len(charset):
        raise DatasetError(f"charset {charset!r} repeats characters")
    allowed = set(charset)
    outside = [(s, label) for s, label in zip(sources, labels) if set(label) - allowed]
    if outside:
        chars = sorted(set("".join(label for _, label in outside)) - allowed)
        examples = ", ".join(f"{Path(s).name}={label!r}" for s, label in outside[:5])
        raise DatasetError(
            f"{where}: {len(outside)} label(s) use characters outside the charset {charset!r}: "
            f"{''.join(chars)!r} (e.g. {examples}); fix the labels, pass --case, or widen --charset"
        )
    if len(set(labels)) < 2:
        raise DatasetError(
            f"{where}: every sample has the same label {labels[0]!r} (one class only); "
            "a model cannot learn to read from that"
        )
    if len(charset) < 2:
        raise DatasetError(f"{where}: the charset {charset!r} has one character only (one class only)")
    if decoder == "fixed" and len({len(label) for label in labels}) > 1:
        lengths = sorted({len(label) for label in labels})
        raise DatasetError(f"{where}: a fixed-length head needs labels of one length, found lengths {lengths}")
    return charset


# -- building tensors -----------------------------------------------------------------------


def _worker_count(n: int, workers: int | None) -> int:
    if workers is None:
        workers = os.cpu_count() or 1
    if n < 2000:
        return 1
    return max(1, min(workers, n // 500))


def _pool(workers: int):
    # Forking a process that already runs TensorFlow's thread pools is unsafe; spawn then.
    # (Spawned workers import the caller's main module: a script that imports TensorFlow and
    # then generates or reads 2,000+ samples needs the usual ``if __name__ == "__main__":``.)
    method = "spawn" if "tensorflow" in sys.modules else "fork"
    return multiprocessing.get_context(method).Pool(workers)


def _file_tensors(args: tuple) -> tuple[list[np.ndarray | None], list[str | None]]:
    paths, preprocess, shape = args
    pre = compile_preprocess(preprocess, shape)
    out, errors = [], []
    for path in paths:
        try:
            tensor = file_tensor(Path(path).read_bytes(), pre)
            out.append(tensor)
            errors.append(None)
        except Exception as exc:  # reported together, before training
            out.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return out, errors


def file_tensor(data: bytes, pre: Preprocessor) -> np.ndarray:
    """The model input for image file bytes: exactly ``Model.tensor``'s path."""
    return pre.tensor(pre.decode(data))


def image_tensor(image, pre: Preprocessor) -> np.ndarray:
    """The model input for a generated PIL image (the served path from decoded pixels on)."""
    return pre.tensor(pre.from_image(image))


def load_folder(
    folder: Path | str,
    shape: InputShape,
    preprocess: Sequence[Any],
    *,
    case: str = "sensitive",
    charset: str | None = None,
    decoder: str = "ctc",
    workers: int | None = None,
) -> tuple[Dataset, str]:
    """Read every labelled image of ``folder`` into model inputs; returns the data and its charset."""
    items = scan_folder(folder, case=case)
    sources = [str(p) for p, _ in items]
    labels = [label for _, label in items]
    charset = check_labels(labels, sources, charset=charset, decoder=decoder, where=str(folder))
    compile_preprocess(preprocess, shape)  # a bad chain fails here, in this process
    n_workers = _worker_count(len(sources), workers)
    chunks = [sources[i::n_workers] for i in range(n_workers)]
    if n_workers == 1:
        results = [_file_tensors((sources, list(preprocess), shape))]
    else:
        with _pool(n_workers) as pool:
            results = pool.map(_file_tensors, [(c, list(preprocess), shape) for c in chunks])
    tensors: list[np.ndarray | None] = [None] * len(sources)
    errors: list[str | None] = [None] * len(sources)
    for i, (chunk_tensors, chunk_errors) in enumerate(results):
        tensors[i::n_workers] = chunk_tensors
        errors[i::n_workers] = chunk_errors
    bad = [(s, e) for s, e in zip(sources, errors) if e is not None]
    if bad:
        lines = "\n".join(f"  {s}: {e}" for s, e in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DatasetError(f"{folder}: {len(bad)} of {len(sources)} image(s) cannot be read:\n{lines}{more}")
    return Dataset(np.stack(tensors), labels, sources), charset


# -- generators -----------------------------------------------------------------------------


def _typed(generator: Generator, key: str, value: str) -> Any:
    param = next((p for p in generator.params if p.name == key), None)
    if param is None:
        return value  # bind() reports the unknown name with the accepted ones
    if param.type == "int":
        try:
            return int(value)
        except ValueError:
            return value
    if param.type == "float":
        try:
            return float(value)
        except ValueError:
            return value
    if param.type == "bool":
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(value.lower(), value)
    return value


def parse_generator_spec(spec: str) -> tuple[Generator, dict[str, Any]]:
    """``NAME[:key=value,...]`` -> the registered generator and its checked parameters.

    Values are converted by each parameter's declared type, so ``charset=0123`` stays text.
    A ``charset`` value may contain commas only as its last parameter.
    """
    name, _, rest = spec.partition(":")
    generators = manager.catalog().generators
    generator = generators.get(name.strip())
    if generator is None:
        raise DatasetError(f"unknown generator {name!r}; registered: {', '.join(sorted(generators)) or 'none'}")
    given: dict[str, Any] = {}
    if rest:
        parts = rest.split(",")
        i = 0
        while i < len(parts):
            part = parts[i]
            if "=" not in part:
                raise DatasetError(f"generator parameter {part!r} is not key=value (in {spec!r})")
            key, value = part.split("=", 1)
            key = key.strip()
            # charset=a,b,c would split; glue back pieces that are not key=value
            while i + 1 < len(parts) and "=" not in parts[i + 1]:
                i += 1
                value += "," + parts[i]
            given[key] = _typed(generator, key, value)
            i += 1
    try:
        params = generator.bind(given)
    except ParamError as exc:
        raise DatasetError(f"generator {generator.name}: {exc}") from None
    return generator, params


def _generate_chunk(args: tuple) -> tuple[np.ndarray, list[str]]:
    func, params, seed, count, preprocess, shape = args
    pre = compile_preprocess(preprocess, shape)
    rng = random.Random(seed)
    x = np.empty((count, shape.height, shape.width, shape.channels), np.float32)
    labels = []
    for i in range(count):
        image, label = func(rng, **params)
        x[i] = image_tensor(image, pre)
        labels.append(label)
    return x, labels


CHUNK = 1000


def generate(
    generator: Generator,
    params: dict[str, Any],
    count: int,
    shape: InputShape,
    preprocess: Sequence[Any],
    *,
    seed: int = 0,
    workers: int | None = None,
    case: str = "sensitive",
) -> Dataset:
    """``count`` generated samples as model inputs, the same for the same seed and chunking.

    Chunk ``k`` of 1,000 samples draws from ``random.Random(f"{seed}:{k}")`` whichever worker
    makes it, so the result does not depend on the number of processes.
    """
    compile_preprocess(preprocess, shape)
    jobs = []
    for k, start in enumerate(range(0, count, CHUNK)):
        # the function travels by reference (module and name), so plugin generators work in workers
        jobs.append((generator.func, params, f"{seed}:{k}", min(CHUNK, count - start), list(preprocess), shape))
    n_workers = _worker_count(count, workers)
    if n_workers == 1:
        results = [_generate_chunk(job) for job in jobs]
    else:
        with _pool(n_workers) as pool:
            results = pool.map(_generate_chunk, jobs, chunksize=1)
    x = np.concatenate([r[0] for r in results]) if results else np.empty((0, shape.height, shape.width, shape.channels), np.float32)
    labels = [apply_case(label, case) for r in results for label in r[1]]
    return Dataset(x, labels, [f"generator:{i}" for i in range(len(labels))])


def generated_images(generator: Generator, params: dict[str, Any], count: int, *, seed: int = 0):
    """``count`` raw ``(PIL image, label)`` pairs (for writing fresh evaluation folders)."""
    rng = random.Random(f"images:{seed}")
    return [generator.func(rng, **params) for _ in range(count)]


def split(data: Dataset, fraction: float, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Shuffle with ``seed`` and split off ``fraction`` (at least one sample) for validation."""
    if not 0 < fraction < 1:
        raise DatasetError(f"the validation fraction must be between 0 and 1, got {fraction}")
    n = len(data)
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 1:
        raise DatasetError(f"{n} sample(s) are too few to split into training and validation")
    order = np.random.default_rng(seed).permutation(n)
    return data.subset(order[n_val:]), data.subset(order[:n_val])
