"""Accuracy of the bundled models against the ``ddddocr`` package's general model, on the
same fresh images.

    .venv/bin/python benchmarks/accuracy_vs_ddddocr.py              # 2,000 images per site
    .venv/bin/python benchmarks/accuracy_vs_ddddocr.py --count 300 --sites demo

The images are drawn by the ``captcha`` package's own ``ImageCaptcha`` with its own
(unseeded, ``secrets``-based) randomness, so none was seen in training; only the texts come
from ``--seed``. capserve reads each PNG through the served path (``Model.recognize``);
ddddocr reads the same bytes with ``DdddOcr(show_ad=False).classification``. ddddocr's general
model does not know a site's charset or case, so its answer is scored twice: as is, and
folded to the site's case with characters outside the charset dropped (its best case).
Needs ``pip install ddddocr`` (the ``bench`` extra); without it only capserve is measured.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capserve.model_registry.registry import BUNDLED, Registry  # noqa: E402
from capserve.training.metrics import score  # noqa: E402

SITES = {
    # site: (width, height, charset, min_length, max_length)
    "demo": (100, 50, "23456789abcdefghjkmpqrstuvwxy", 4, 4),
    "demo-var": (160, 60, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4, 6),
}


def fresh_images(width, height, charset, min_length, max_length, count, seed):
    from captcha.image import ImageCaptcha

    captcha = ImageCaptcha(width=width, height=height)
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text = "".join(rng.choice(charset) for _ in range(rng.randint(min_length, max_length)))
        buffer = io.BytesIO()
        captcha.generate_image(text).save(buffer, format="PNG")
        out.append((text, buffer.getvalue()))
    return out


def fold(text: str, charset: str) -> str:
    text = text.lower() if charset == charset.lower() else text.upper() if charset == charset.upper() else text
    return "".join(c for c in text if c in charset)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--sites", nargs="*", default=list(SITES))
    parser.add_argument("--registry", type=Path, default=BUNDLED)
    args = parser.parse_args()

    try:
        import ddddocr

        ocr = ddddocr.DdddOcr(show_ad=False)
    except ImportError:
        ocr = None
        print("ddddocr is not installed (pip install ddddocr); measuring capserve only", file=sys.stderr)

    registry = Registry([args.registry])
    registry.refresh()
    rows = []
    for site in args.sites:
        width, height, charset, lo, hi = SITES[site]
        model = registry.get(site)
        images = fresh_images(width, height, charset, lo, hi, args.count, args.seed)
        truths = [t for t, _ in images]
        t0 = time.perf_counter()
        ours = [model.recognize(data).text for _, data in images]
        ours_ms = (time.perf_counter() - t0) / len(images) * 1e3
        row = {"site": site, "size": f"{width}x{height}", "n": len(images), "ours": score(truths, ours), "ours_ms": ours_ms}
        if ocr is not None:
            t0 = time.perf_counter()
            theirs = [ocr.classification(data) for _, data in images]
            row["theirs_ms"] = (time.perf_counter() - t0) / len(images) * 1e3
            row["theirs"] = score(truths, theirs)
            row["theirs_folded"] = score(truths, [fold(t, charset) for t in theirs])
        rows.append(row)

    header = ("site", "images", "size", "capserve seq", "capserve char", "capserve ms",
              "ddddocr seq", "ddddocr seq (folded)", "ddddocr char (folded)", "ddddocr ms")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        cells = [r["site"], str(r["n"]), r["size"], f"{r['ours'].sequence_accuracy:.2%}",
                 f"{r['ours'].char_accuracy:.2%}", f"{r['ours_ms']:.2f}"]
        if "theirs" in r:
            cells += [f"{r['theirs'].sequence_accuracy:.2%}", f"{r['theirs_folded'].sequence_accuracy:.2%}",
                      f"{r['theirs_folded'].char_accuracy:.2%}", f"{r['theirs_ms']:.2f}"]
        else:
            cells += ["n/a"] * 4
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
