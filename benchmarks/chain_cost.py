"""Cost per image of typical preprocess and postprocess chains, step by step.

What is measured: the compiled chain (``core.chain.compile_preprocess``) run on an already
decoded 100x50 captcha, in-process, one thread; each chain's total is the chain's own
``Preprocessor.tensor`` call (the loop over bound functions plus the final shape check and
float32 cast). Each step is also timed on its own, called repeatedly on the output of the
steps before it; the table shows the sum of these next to the chain's total. The total is
usually higher than the sum: in a real run every step allocates and fills fresh arrays, while
a step called on the same input again and again finds its memory in cache. Each chain runs on
what it is served (``Preprocessor.decode``): RGB(A), or gray straight from PIL when it starts
with ``grayscale``. Decoding the PNG/GIF bytes is shown on its own lines, both ways. Times are the best of ``--repeat`` repeats of ``-n`` calls,
divided by ``-n`` (the mean per call in the quietest repeat, as ``timeit`` reports), in CPU
time of the benchmarking thread (``time.thread_time``), so that other processes on a shared
machine do not inflate them; ``--wall`` uses wall-clock time (``time.perf_counter``) instead.

To set the chains' cost next to the interpreter's own, the table also shows the time of one
``Runtime.run`` (LiteRT, one thread) on an input of the model's size: of a registry entry
(``--registry DIR --site NAME``, or the bundled ``demo`` site when there is one), of any
``--tflite FILE``, or of the project's own model architecture built untrained at the
``--input`` size (``--build-model cnn|crnn``; needs TensorFlow).

    python benchmarks/chain_cost.py [-n 300] [--repeat 20] [--wall] [--input 128x64x1]
        [--registry DIR --site NAME | --tflite FILE | --build-model cnn|crnn]
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import platform
import sys
import time
import timeit
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from capserve.core.chain import InputShape  # noqa: E402
from capserve.plugins.manager import compile_postprocess, compile_preprocess
from capserve.core.images import decode_image  # noqa: E402

SIZE = (100, 50)
TEXT = "4827"
NOISE_COLOURS = ((40, 170, 40), (30, 60, 200))


def _captcha(rng: np.random.Generator, mode: str = "RGB", parts: slice | None = None) -> Image.Image:
    background = (0, 0, 0, 0) if mode == "RGBA" else "white"
    image = Image.new(mode, SIZE, background)
    draw = ImageDraw.Draw(image)
    for colour in NOISE_COLOURS:  # lines and dots of two colours
        for _ in range(3):
            ends = rng.integers(0, (100, 50), (2, 2))
            draw.line([tuple(ends[0]), tuple(ends[1])], fill=colour, width=2)
        for y, x in rng.integers(0, (50, 100), (30, 2)):
            draw.point((int(x), int(y)), fill=colour)
    font = ImageFont.load_default(size=30)
    x = 8
    for i, char in enumerate(TEXT):
        if parts is None or i in range(len(TEXT))[parts]:
            draw.text((x, 6), char, fill=(200, 30, 30), font=font)
        x += font.getlength(char)
    for y, x in rng.integers(0, (50, 100), (20, 2)):  # dark specks
        draw.point((int(x), int(y)), fill=(20, 20, 20))
    return image


def _encode(images: list[Image.Image], fmt: str) -> bytes:
    buffer = io.BytesIO()
    if len(images) > 1:
        images[0].save(buffer, fmt, save_all=True, append_images=images[1:], duration=100)
    else:
        images[0].save(buffer, fmt)
    return buffer.getvalue()


def samples() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        "png": _encode([_captcha(rng)], "PNG"),
        "rgba": _encode([_captcha(rng, "RGBA")], "PNG"),
        "gif": _encode([_captcha(rng, parts=slice(k, None, 3)).convert("P") for k in range(3)], "GIF"),
    }


DROP = {"drop_colors": {"colors": [list(c) for c in NOISE_COLOURS], "tolerance": 30}}
CHAINS = [
    # (name, sample, preprocess chain)
    ("minimal", "png", ["grayscale", "resize", "normalize"]),
    ("pad", "png", ["grayscale", {"resize": {"mode": "pad"}}, "normalize"]),
    ("colour noise", "png", [DROP, "grayscale", {"threshold": {"method": "otsu"}}, "resize", "normalize"]),
    ("keep colour", "png", [{"keep_colors": {"colors": [[200, 30, 30]], "foreground": [0, 0, 0]}}, "grayscale", "resize", "normalize"]),
    ("transparent", "rgba", ["flatten_alpha", "grayscale", {"resize": {"mode": "pad"}}, "normalize"]),
    ("specks", "png", ["grayscale", {"threshold": {"value": 128}}, {"remove_specks": {"min_size": 6}}, "resize", "normalize"]),
    ("median", "png", ["grayscale", "median_filter", "resize", "normalize"]),
    ("gif parts", "gif", ["frames_min", "grayscale", "resize", "normalize"]),
    ("gif median", "gif", ["frames_median", "grayscale", "resize", "normalize"]),
    ("crop+trim", "png", [{"crop": {"left": 2, "right": 2}}, "trim", "grayscale", "resize", "normalize"]),
]
POSTPROCESS = [
    ("arithmetic", ["arithmetic"], "12+7=?"),
    ("map+case", [{"map_chars": {"mapping": {"O": "0", "l": "1", "rn": "m"}}}, {"case": {"mode": "upper"}}], "lOrn7x"),
]


REPEAT = 20


TIMER = time.thread_time


def per_call_us(func, number: int) -> float:
    func()  # warm up
    return min(timeit.repeat(func, number=number, repeat=REPEAT, timer=TIMER)) / number * 1e6


def per_step_us(calls, image, number: int) -> list[float]:
    """Each step on its own, called repeatedly on the output of the steps before it."""
    costs, value = [], image
    for call in calls:
        costs.append(per_call_us(functools.partial(call, value), number))
        value = call(value)
    return costs


def build_model(arch: str, shape: InputShape) -> bytes:
    """A ``.tflite`` file of the project's ``arch`` model (training/models.py) with untrained
    weights, dynamic-range quantized as training exports by default: the interpreter's time
    does not depend on the weights' values. Needs TensorFlow (the ``train`` extra)."""
    from capserve.training.export import convert
    from capserve.training.models import ModelConfig, build_model as build

    config = ModelConfig(arch=arch, height=shape.height, width=shape.width, channels=shape.channels, charset_size=30)
    return convert(build(config), config, "dynamic")


def interpreter(args, shape: InputShape):
    """``(label, run)`` for the model to time next to the chains, or None."""
    from capserve.model_registry.registry import BUNDLED, Registry
    from capserve.core.runtime import Runtime

    content, label = None, None
    if args.tflite:
        content, label = Path(args.tflite).read_bytes(), f"interpreter ({Path(args.tflite).name})"
    elif args.build_model:
        content = build_model(args.build_model, shape)
        label = f"interpreter ({args.build_model}, untrained)"
    if content is not None:
        runtime = Runtime(content, num_threads=1)
        tensor = np.zeros(runtime.input_shape[1:], np.float32)
        h, w, c = tensor.shape
        return f"{label[:-1]}, {w}x{h}x{c}, {len(content) // 1024} KB)", functools.partial(runtime.run, tensor)
    roots = [Path(args.registry)] if args.registry else [BUNDLED]
    if not any(root.exists() and any(root.iterdir()) for root in roots):
        return None
    registry = Registry(roots)
    registry.refresh()
    site = args.site or ("demo" if "demo" in registry.sites() else None)
    if site is None:
        return None
    model = registry.get(site)
    spec = model.spec
    tensor = np.zeros((spec.height, spec.width, spec.channels), np.float32)
    label = f"interpreter ({site} v{spec.version}, {spec.width}x{spec.height}x{spec.channels})"
    return label, functools.partial(model.runtime.run, tensor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=300, help="calls per repeat")
    parser.add_argument("--repeat", type=int, default=20, help="repeats; the quietest counts")
    parser.add_argument("--wall", action="store_true", help="wall-clock time instead of thread CPU time")
    parser.add_argument("--input", default="128x64x1", help="model input WxHxC the chains resize to")
    parser.add_argument("--registry", help="a registry folder, for the interpreter line")
    parser.add_argument("--site", help="the site whose interpreter to time")
    parser.add_argument("--tflite", help="a .tflite file whose interpreter to time")
    parser.add_argument("--build-model", choices=("cnn", "crnn"), help="time the project's model of this "
                        "architecture at --input size, untrained (needs TensorFlow)")
    args = parser.parse_args(argv)
    width, height, channels = (int(v) for v in args.input.split("x"))
    shape = InputShape(width, height, channels)
    n = args.n
    global REPEAT, TIMER
    REPEAT = args.repeat
    TIMER = time.perf_counter if args.wall else time.thread_time

    print(f"# chain cost per {SIZE[0]}x{SIZE[1]} image -> {width}x{height}x{channels} float32")
    print(
        f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, Pillow {PIL.__version__}; best of {REPEAT} x {n} calls, "
        f"{'wall-clock' if args.wall else 'thread CPU'} time"
    )
    data = samples()
    print()
    print(f"{'decode':<28}{'us/image':>10}")
    for name, blob in data.items():
        frames = name == "gif"
        cost = per_call_us(functools.partial(decode_image, blob, frames=frames), n)
        print(f"  {name + (' (3 frames)' if frames else ''):<26}{cost:>10.1f}")
        if not frames:
            cost = per_call_us(functools.partial(decode_image, blob, mode="L"), n)
            print(f"  {name + ' (straight to gray)':<26}{cost:>10.1f}")

    print()
    print(f"{'preprocess chain / step':<28}{'chain us':>10}{'steps us':>10}")
    totals = {}
    for name, sample, chain in CHAINS:
        pre = compile_preprocess(chain, shape)
        image = pre.decode(data[sample])
        total = per_call_us(functools.partial(pre.tensor, image), n)
        totals[name] = total
        steps = per_step_us(pre.calls, image, n)
        print(f"{name + ' [' + sample + ']':<28}{total:>10.1f}{sum(steps):>10.1f}")
        for step_name, cost in zip(pre.names, steps):
            print(f"  {step_name:<26}{'':>10}{cost:>10.1f}")

    print()
    print(f"{'postprocess chain':<28}{'us/text':>10}")
    for name, chain, sample_text in POSTPROCESS:
        post = compile_postprocess(chain)
        cost = per_call_us(functools.partial(post, sample_text, (0.9,) * len(sample_text)), n)
        print(f"  {name + ' ' + repr(sample_text) + ' -> ' + repr(post(sample_text, ())):<26}{cost:>10.2f}")

    found = interpreter(args, shape)
    print()
    if found is None:
        print("interpreter: no model (pass --registry DIR --site NAME, --tflite FILE or --build-model cnn)")
    else:
        label, run = found
        cost = per_call_us(run, max(n // 10, 20))
        print(f"{label:<44}{cost:>10.1f} us/image (1 thread)")

    slowest = max(totals, key=totals.get)
    under = [name for name, cost in totals.items() if cost < 200]
    print()
    print(f"chains under 200 us: {len(under)} of {len(totals)}; slowest: {slowest} ({totals[slowest]:.1f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
