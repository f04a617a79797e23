"""Time to a target validation accuracy on the ``demo`` captcha type, on this machine.

    .venv/bin/python benchmarks/train_time.py            # goal: 98% in at most 10 minutes
    .venv/bin/python benchmarks/train_time.py --target 0.99 --samples 40000

Counts everything a user waits for: generating the training and validation images (all
cores) and training until the validation sequence accuracy (greedy CTC decode, the serving
decoder) reaches the target. Prints one row per epoch, then a summary table. The comparison
point in the issue: a well-known GPU tutorial needed 30 minutes and 10,000 steps on 20,000
images.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capserve.core.chain import InputShape  # noqa: E402
from capserve.training import datasets  # noqa: E402

DEMO = "imagecaptcha:width=100,height=50,charset=23456789abcdefghjkmpqrstuvwxy,min_length=4,max_length=4"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--samples", type=int, default=40000)
    parser.add_argument("--val-samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4, help="the learning-rate schedule spans this many epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--augment", default="none")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--generator", default=DEMO)
    args = parser.parse_args()

    t0 = time.perf_counter()
    generator, params = datasets.parse_generator_spec(args.generator)
    shape = InputShape(params["width"], params["height"], 1)
    chain = datasets.default_preprocess(1)
    train = datasets.generate(generator, params, args.samples, shape, chain, seed=args.seed)
    val = datasets.generate(generator, params, args.val_samples, shape, chain, seed=f"val:{args.seed}")
    t_data = time.perf_counter() - t0

    from capserve.training.models import ModelConfig
    from capserve.training.train import TrainConfig, fit, parse_augment

    charset = params["charset"]
    config = ModelConfig(height=shape.height, width=shape.width, channels=1, charset_size=len(charset),
                         length=params["max_length"])
    rows = []

    def on_epoch(record):
        elapsed = time.perf_counter() - t0
        rows.append((record.epoch, record.sequence_accuracy, record.char_accuracy, record.seconds, elapsed))
        print(f"epoch {record.epoch}: sequence {record.sequence_accuracy:.4f}  char {record.char_accuracy:.4f}  "
              f"epoch {record.seconds:.0f}s  since start {elapsed:.0f}s", flush=True)

    t1 = time.perf_counter()
    result = fit(config, charset, train, val,
                 TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                             target_accuracy=args.target, augment=parse_augment(args.augment), seed=args.seed,
                             progress="none"),
                 on_epoch=on_epoch)
    t_train = time.perf_counter() - t1
    total = time.perf_counter() - t0
    reached = result.best_accuracy >= args.target
    steps = len(result.history) * -(-len(train) // args.batch_size)

    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average at end "
          f"{os.getloadavg()[0]:.1f}")
    print(f"| {'phase':<34} | {'value':>16} |")
    print(f"|{'-' * 36}|{'-' * 18}|")
    for name, value in (
        ("generate train + validation images", f"{t_data:.0f} s"),
        ("train (incl. per-epoch validation)", f"{t_train:.0f} s"),
        ("total", f"{total:.0f} s ({total / 60:.1f} min)"),
        ("epochs / steps", f"{len(result.history)} / {steps}"),
        ("training images", f"{len(train)}"),
        ("best validation sequence accuracy", f"{result.best_accuracy:.4f}"),
        (f"reached {args.target:.0%}", "yes" if reached else "NO"),
        ("goal: at most 10 min", "met" if reached and total <= 600 else "missed"),
    ):
        print(f"| {name:<34} | {value:>16} |")
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
