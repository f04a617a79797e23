"""In-process latency of one recognition, by stage, against a naive baseline.

The baseline is what many hand-written cloud functions do: build the input with a
per-pixel ``Image.getpixel`` loop, run ``tf.lite.Interpreter`` (TensorFlow), decode in a
Python loop. Both read the same captchas with the same ``.tflite`` file, on one core.

Also printed: the CPU time of one ``Model.recognize`` (decode, chain, invoke, CTC; no HTTP),
the mean of ``time.process_time`` over every image, which the HTTP server's CPU per request
(benchmarks/load_http.py) is compared with in BENCHMARKS.md. ``--no-baseline`` skips the
TensorFlow baseline.

    python benchmarks/latency.py [--site demo] [--registry DIR] [-n 2000] [--no-baseline]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from capserve.model_registry.registry import Registry  # noqa: E402


def sample_images(spec, n: int) -> list[bytes]:
    from captcha.image import ImageCaptcha

    gen = ImageCaptcha(width=spec.width, height=spec.height)
    rng = random.Random(0)
    out = []
    for _ in range(n):
        text = "".join(rng.choice(spec.charset) for _ in range(spec.max_length))
        buffer = io.BytesIO()
        gen.generate_image(text).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def naive_recognize(interpreter, spec, data: bytes) -> str:
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((spec.width, spec.height))
    x = np.zeros((1, spec.height, spec.width, 1), np.float32)
    for row in range(spec.height):
        for col in range(spec.width):
            r, g, b = image.getpixel((col, row))
            x[0, row, col, 0] = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    probs = interpreter.get_tensor(out["index"])[0]
    text, previous = "", 0
    for step in probs:
        k = int(np.argmax(step))
        if k != previous and k != 0:
            text += spec.charset[k - 1]
        previous = k
    return text


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", default="demo")
    parser.add_argument("--registry", action="append", type=Path)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--no-baseline", action="store_true", help="skip the TensorFlow baseline")
    args = parser.parse_args()

    registry = Registry(args.registry or None)
    registry.refresh()
    model = registry.get(args.site)
    spec = model.spec
    images = sample_images(spec, args.n)

    stages: dict[str, list[float]] = {"decode": [], "preprocess": [], "invoke": [], "postprocess": []}
    totals = []
    for data in images[:50]:
        model.recognize(data)  # warm caches
    cpu = time.process_time()
    for data in images:
        t = time.perf_counter()
        result = model.recognize(data)
        totals.append((time.perf_counter() - t) * 1e3)
        for key, value in result.timings_ms.items():
            stages[key].append(value)
    cpu_ms = (time.process_time() - cpu) * 1e3 / len(images)
    print(f"site {spec.site} v{spec.version}, {spec.width}x{spec.height} PNG, {args.n} images, one thread\n")
    print(f"CPU per recognition in-process (decode, chain, invoke, CTC; no HTTP): {cpu_ms:.3f} ms\n")
    if args.no_baseline:
        print("| path | p50 ms | p90 ms | p99 ms | mean ms |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, values in list(stages.items()) + [("capserve total", totals)]:
            print(f"| {name} | {percentile(values, 50):.3f} | {percentile(values, 90):.3f} | "
                  f"{percentile(values, 99):.3f} | {statistics.mean(values):.3f} |")
        return

    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(spec.model_file), num_threads=1)
    interpreter.allocate_tensors()
    baseline = []
    agree = 0
    for data in images[:20]:
        naive_recognize(interpreter, spec, data)
    for data in images:
        t = time.perf_counter()
        text = naive_recognize(interpreter, spec, data)
        baseline.append((time.perf_counter() - t) * 1e3)
        agree += text == model.recognize(data).raw_text

    print("| path | p50 ms | p90 ms | p99 ms | mean ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in list(stages.items()) + [("capserve total", totals), ("naive baseline total", baseline)]:
        print(f"| {name} | {percentile(values, 50):.3f} | {percentile(values, 90):.3f} | "
              f"{percentile(values, 99):.3f} | {statistics.mean(values):.3f} |")
    print(f"\nspeed-up (baseline p50 / capserve p50): {percentile(baseline, 50) / percentile(totals, 50):.1f}x")
    print(f"same text from both paths: {agree}/{len(images)}")


if __name__ == "__main__":
    main()
