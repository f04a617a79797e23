"""Where a training step's time goes: model size against input pipeline and augmentation.

    .venv/bin/python benchmarks/step_time.py                 # default sizes, 3 interleaved rounds
    .venv/bin/python benchmarks/step_time.py --sizes 160x60,128x48 --steps 30

For each input size it times, in one process, interleaved round by round (medians reported):

- ``model``: ``train_on_batch`` on one fixed batch (the model's forward and backward pass alone);
- ``pipeline``: ``fit`` over capserve's tf.data pipeline without augmentation;
- ``augment``: the same with the ``light`` augmentation (one projective transform, contrast and
  noise per image, mapped in parallel).

So ``pipeline - model`` is the input pipeline's cost and ``augment - pipeline`` the
augmentation's. Rows are milliseconds per step of 64 images on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100x50,128x48,160x60,200x110", help="WIDTHxHEIGHT,...")
    parser.add_argument("--steps", type=int, default=20, help="steps timed per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import keras

    from capserve.training.datasets import Dataset
    from capserve.training.models import ModelConfig, build_model
    from capserve.training.train import AUGMENT_PRESETS, TrainConfig, _losses, encode_labels, make_dataset

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    charset, length, n = "0123456789abcdefghijklmnopqrstuvwxyz", 6, args.batch_size * args.steps
    labels = ["".join(rng.choice(list(charset), length)) for _ in range(n)]
    setups = {}
    for width, height in sizes:
        config = ModelConfig(height=height, width=width, channels=1, charset_size=len(charset), length=length)
        model = build_model(config)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=_losses()["ctc"])
        data = Dataset(rng.random((n, height, width, 1), dtype=np.float32), labels, ["x"] * n)
        y = encode_labels(labels, charset, "ctc", length)
        datasets = {
            name: make_dataset(data, y, TrainConfig(batch_size=args.batch_size, augment=augment), height, width)
            for name, augment in (("pipeline", {}), ("augment", AUGMENT_PRESETS["light"]))
        }
        batch = (data.x[: args.batch_size], y[: args.batch_size])
        model.train_on_batch(*batch)  # build and trace once, outside the timings
        for ds in datasets.values():
            model.fit(ds.take(2), verbose=0)
        setups[(width, height)] = (model, datasets, batch, int(model.count_params()))

    times: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for size, (model, datasets, batch, _) in setups.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(*batch)
            times.setdefault((size, "model"), []).append((time.perf_counter() - t0) / args.steps)
            for name, ds in datasets.items():
                t0 = time.perf_counter()
                model.fit(ds, verbose=0)
                times.setdefault((size, name), []).append((time.perf_counter() - t0) / args.steps)

    print(f"ms per step of {args.batch_size} images, median of {args.rounds} interleaved rounds\n")
    print("| input | parameters | model | pipeline | augment | pipeline share | augment share |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size, (_, _, _, params) in setups.items():
        model, pipe, aug = (statistics.median(times[(size, k)]) * 1e3 for k in ("model", "pipeline", "augment"))
        print(f"| {size[0]}x{size[1]} | {params:,} | {model:.0f} | {pipe:.0f} | {aug:.0f} | "
              f"{max(0.0, pipe - model) / aug:.0%} | {max(0.0, aug - pipe) / aug:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
