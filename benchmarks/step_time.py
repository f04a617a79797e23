"""Where a training step's time goes: model size against input pipeline and augmentation.

    .venv/bin/python benchmarks/step_time.py                 # default sizes, 3 interleaved rounds
    .venv/bin/python benchmarks/step_time.py --sizes 160x60 --batch-shape dynamic

Each measurement runs in a process of its own (TensorFlow shares traced functions between the
models of one process, which skews the later ones), the sizes interleaved round by round, and
the medians are reported. Per input size:

- ``model``: ``train_on_batch`` on one fixed batch (the model's forward and backward pass alone);
- ``pipeline``: ``fit`` over capserve's tf.data pipeline without augmentation;
- ``augment``: the same with the ``light`` augmentation (one projective transform, contrast and
  noise per image, mapped in parallel).

So ``pipeline - model`` is the input pipeline's cost and ``augment - pipeline`` the
augmentation's. ``--batch-shape dynamic`` feeds batches whose size is not part of their static
shape, as capserve did before 2026-12-01. Rows are milliseconds per step of 64 images.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def measure(width: int, height: int, steps: int, batch_size: int, batch_shape: str) -> dict[str, float]:
    """One size, in this process: seconds per step of each kind."""
    import keras

    from capserve.training.datasets import Dataset
    from capserve.training.models import ModelConfig, build_model
    from capserve.training.train import AUGMENT_PRESETS, TrainConfig, _losses, encode_labels, make_dataset

    rng = np.random.default_rng(0)
    charset, length, n = "0123456789abcdefghijklmnopqrstuvwxyz", 6, batch_size * steps
    labels = ["".join(rng.choice(list(charset), length)) for _ in range(n)]
    config = ModelConfig(height=height, width=width, channels=1, charset_size=len(charset), length=length)
    model = build_model(config)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=_losses()["ctc"])
    data = Dataset(rng.random((n, height, width, 1), dtype=np.float32), labels, ["x"] * n)
    y = encode_labels(labels, charset, "ctc", length)
    datasets = {}
    for name, augment in (("pipeline", {}), ("augment", AUGMENT_PRESETS["light"])):
        ds = make_dataset(data, y, TrainConfig(batch_size=batch_size, augment=augment), height, width)
        datasets[name] = ds.unbatch().batch(batch_size) if batch_shape == "dynamic" else ds
    batch = (data.x[:batch_size], y[:batch_size])
    model.train_on_batch(*batch)  # build and trace once, outside the timings
    for ds in datasets.values():
        model.fit(ds.take(2), verbose=0)
    out = {"params": int(model.count_params())}
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(*batch)
    out["model"] = (time.perf_counter() - t0) / steps
    for name, ds in datasets.items():
        t0 = time.perf_counter()
        model.fit(ds, verbose=0)
        out[name] = (time.perf_counter() - t0) / steps
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100x50,128x48,160x60,200x110", help="WIDTHxHEIGHT,...")
    parser.add_argument("--steps", type=int, default=20, help="steps timed per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batch-shape", choices=("static", "dynamic"), default="static")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # WIDTHxHEIGHT: measure it here, print JSON
    args = parser.parse_args()
    if args.one:
        width, height = (int(v) for v in args.one.split("x"))
        print(json.dumps(measure(width, height, args.steps, args.batch_size, args.batch_shape)))
        return 0

    results: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for size in args.sizes.split(","):
            done = subprocess.run(
                [sys.executable, __file__, "--one", size, "--steps", str(args.steps), "--batch-size",
                 str(args.batch_size), "--batch-shape", args.batch_shape],
                capture_output=True, text=True, check=True,
            )
            results.setdefault(size, []).append(json.loads(done.stdout.strip().splitlines()[-1]))

    print(f"ms per step of {args.batch_size} images ({args.batch_shape} batch shape), "
          f"median of {args.rounds} interleaved rounds, a process each\n")
    print("| input | parameters | model | pipeline | augment | pipeline share | augment share |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size, runs in results.items():
        model, pipe, aug = (statistics.median(r[k] for r in runs) * 1e3 for k in ("model", "pipeline", "augment"))
        print(f"| {size} | {runs[0]['params']:,} | {model:.0f} | {pipe:.0f} | {aug:.0f} | "
              f"{max(0.0, pipe - model) / aug:.0%} | {max(0.0, aug - pipe) / aug:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
