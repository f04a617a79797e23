"""The bundled ``general`` model: zero-shot accuracy and what serving it costs.

    .venv/bin/python benchmarks/general.py                  # 300 mixture samples a font family, 1,000 a style
    .venv/bin/python benchmarks/general.py --quick          # 50 and 200
    .venv/bin/python benchmarks/general.py --out general.md

Three tables:

* **The mixture, by font family**: fresh ``mixture`` samples (another seed than training's)
  drawn with one family's fonts at a time, and by text length over all of them.
* **Styles it was not trained on**: the bundled demo types' generator (``imagecaptcha``) and the
  new-types benchmark's styles (``benchmarks/new_types.py``: the same 1,000 test images, seed 2),
  read as they come and restricted to the style's charset and lengths (``?charset=&length=``, as
  a client that knows its captcha type would ask), next to ddddocr raw and folded to the charset
  (the ``bench`` extra).
* **Serving cost**: one 160x60 PNG recognized by ``general`` and by each bundled site model,
  in interleaved rounds; the median of each round's per-request time, and general's ratio.

Everything runs in this process on the bundled registry (``Model.recognize``, the same call
``/recognize`` makes).
"""

from __future__ import annotations

import argparse
import collections
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.new_types import STYLES, answer, ddddocr_accuracy, write  # noqa: E402
from capserve.core.errors import CapserveError  # noqa: E402
from capserve.model_registry.registry import BUNDLED, Registry  # noqa: E402
from capserve.plugins.builtin.mixture import mixture, system_fonts  # noqa: E402
from capserve.server.errors import BadRequest  # noqa: E402
from capserve.server.restriction import restriction  # noqa: E402


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read(model, data: bytes, restrict=None) -> str | None:
    try:
        return model.recognize(data, restrict=restrict).text
    except CapserveError:  # e.g. no reading meets the restriction
        return None


def family(path: str) -> str:
    """``DejaVuSansCondensed-BoldOblique.ttf`` -> ``DejaVuSansCondensed``."""
    return Path(path).stem.split("-")[0]


def mixture_rows(model, count: int) -> tuple[list[tuple], list[tuple]]:
    width, height, charset = model.spec.width, model.spec.height, model.spec.charset
    families = collections.defaultdict(list)
    for path in system_fonts():
        families[family(path)].append(path)
    rows, by_length = [], collections.defaultdict(lambda: [0, 0])
    for name, paths in sorted(families.items()):
        rng = random.Random(f"general-benchmark:{name}")
        right = 0
        for _ in range(count):
            image, text = mixture(rng, width=width, height=height, charset=charset, fonts="|".join(paths))
            ok = read(model, png(image)) == text
            right += ok
            by_length[len(text)][0] += ok
            by_length[len(text)][1] += 1
        rows.append((name, len(paths), count, f"{right / count:.4f}"))
    lengths = [(n, total, f"{right / total:.4f}") for n, (right, total) in sorted(by_length.items())]
    return rows, lengths


def style_row(model, name: str, items: list[tuple[bytes, str]], style: str, peer: bool) -> tuple:
    labels = [label for _, label in items]
    charset = "".join(sorted(set("".join(labels))))
    lengths = sorted({len(label) for label in labels})
    n = len(items)
    raw = sum(answer(style, read(model, data) or "") == answer(style, label) for data, label in items)
    try:
        restrict = restriction(model, charset, f"{lengths[0]}-{lengths[-1]}")
    except BadRequest:  # the style has characters the model cannot read
        held = "-"
    else:
        right = sum(answer(style, read(model, data, restrict) or "") == answer(style, label) for data, label in items)
        held = f"{right / n:.4f}"
    scores = ddddocr_accuracy(items, style) if peer else None
    peer_cells = tuple(f"{v:.4f}" for v in scores) if scores else ("-", "-")
    return (name, n, f"{raw / n:.4f}", held, *peer_cells)


def imagecaptcha_items(count: int) -> list[tuple[bytes, str]]:
    from capserve.plugins.builtin.generators import imagecaptcha

    rng = random.Random("general-benchmark:imagecaptcha")
    items = []
    for _ in range(count):
        image, text = imagecaptcha(rng, width=160, height=60, charset="23456789abcdefghjkmpqrstuvwxy",
                                   min_length=4, max_length=6)
        items.append((png(image), text))
    return items


def cost_rows(registry: Registry, rounds: int, calls: int) -> list[tuple]:
    from capserve.plugins.builtin.generators import imagecaptcha

    image, _ = imagecaptcha(random.Random(5), width=160, height=60, charset="abcdefgh", min_length=4, max_length=4)
    data = png(image)
    sites = ["general"] + [s for s in registry.sites() if s != "general"]
    models = {site: registry.get(site, wait=60) for site in sites}
    for model in models.values():
        model.warm_up()
    times = collections.defaultdict(list)
    for _ in range(rounds):
        for site, model in models.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                model.recognize(data)
            times[site].append((time.perf_counter() - t0) / calls * 1e6)
    rows = []
    for site in sites:
        ratios = [g / s for g, s in zip(times["general"], times[site])]
        rows.append((site, f"{statistics.median(times[site]):.0f}", f"{statistics.median(ratios):.2f}"))
    return rows


def markdown(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, default=BUNDLED, help="a registry with a general entry")
    parser.add_argument("--mixture", type=int, default=300, help="samples per font family")
    parser.add_argument("--test", type=int, default=1000, help="images per style")
    parser.add_argument("--styles", default=",".join(STYLES))
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-ddddocr", dest="ddddocr", action="store_false", help="leave ddddocr's columns out")
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    if args.quick:
        args.mixture, args.test, args.rounds = 50, 200, 5
    registry = Registry([args.registry])
    registry.refresh()
    model = registry.get("general", wait=60)
    print(f"general v{model.spec.version}: {model.spec.width}x{model.spec.height}x{model.spec.channels}, "
          f"{len(model.spec.charset)} characters", file=sys.stderr)
    out = []
    families, lengths = mixture_rows(model, args.mixture)
    out.append("### The mixture, by font family\n\n" + markdown(("font family", "fonts", "samples", "sequence accuracy"),
                                                               families))
    out.append("### The mixture, by text length\n\n" + markdown(("length", "samples", "sequence accuracy"), lengths))
    print("\n\n".join(out), file=sys.stderr)
    peer = args.ddddocr
    rows = [style_row(model, "imagecaptcha (the bundled types' generator)", imagecaptcha_items(args.test),
                      "imagecaptcha", peer)]
    with tempfile.TemporaryDirectory(prefix="capserve-general-") as work:
        for style in args.styles.split(","):
            items = [(path.read_bytes(), label) for path, label in write(style, Path(work) / style, args.test, seed=2)]
            rows.append(style_row(model, style, items, style, peer))
            print(f"{style}: {rows[-1]}", file=sys.stderr)
    out.append("### Styles it was not trained on, zero-shot\n\n" + markdown(
        ("style", "images", "general", "general, restricted", "ddddocr", "ddddocr folded"), rows))
    out.append("### Serving cost (us per request, one 160x60 PNG)\n\n" + markdown(
        ("site", "median us", "general / site"), cost_rows(registry, args.rounds, 200)))
    text = "\n\n".join(out)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
