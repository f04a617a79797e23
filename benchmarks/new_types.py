"""New captcha types, default command: what a user gets from ``capserve train --data DIR``.

    .venv/bin/python benchmarks/new_types.py                       # every style, 9,000 + 1,000 images
    .venv/bin/python benchmarks/new_types.py --styles blink,sums   # some of them
    .venv/bin/python benchmarks/new_types.py --quick               # 600 + 200 images, 2 min budget

Each style is drawn here with PIL and DejaVu fonts (not the ``captcha`` package the bundled
models were trained on): ``blink`` (animated GIF, each frame shows some characters), ``glass``
(transparent, every character its own colour), ``poster`` (large, 400x150), ``mixed``
(case-sensitive serif letters), ``sums`` (arithmetic: the answer is the value), and, held back
from any tuning, ``wave`` (a sine-warped line of text with speckle) and ``ink`` (red text on a
green of the same lightness). The general model's v3 mixture was chosen by reading its v2's
errors on poster and wave (BENCHMARKS.md, "The general model"): wave is held back no more.
Four styles were added after that: ``hollow`` (outlined letters), ``grid`` (serif letters on a
grid of lines), ``shadow`` (upper case with a drop shadow) and ``strike`` (a wavy line through
the text, in its colour). v3 read hollow at 0.26, and outlined letters joined the mixture for
v4: hollow is held back no more. grid, shadow and strike have been held back from any tuning.

For each style: write ``--train`` labelled images and ``--test`` fresh ones (another seed) as
folders with a ``labels.csv``; run ``capserve train --site nt-STYLE --data TRAIN --out REGISTRY``
with nothing else but ``--time-budget`` (default: the command's own default) and
``--from-scratch`` when given (the command starts from the general backbone); start ``capserve
serve`` on the registry and POST every test image over HTTP; read the same bytes with ddddocr
(the ``bench`` extra) when it is installed, raw and folded to the style's charset. Prints a
markdown table (``--out`` also writes it to a file).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter, ImageFont  # noqa: E402

from benchmarks.load_common import Server, capserve_argv, free_port  # noqa: E402
from capserve.training.entry import ENTRY_FILE  # noqa: E402

FONTS = Path("/usr/share/fonts/truetype/dejavu")
LOWER = "abcdefghjkmnpqrstuvwxyz23456789"
MIXED = "abdefghjkmnqrtyABDEFGHJKLMNQRTY3468"
UPPER = "ABCDEFGHJKLMNPRSTUVWXYZ2345679"


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONTS / name
    return ImageFont.truetype(str(path), size) if path.is_file() else ImageFont.load_default(size)


def word(rng: random.Random, charset: str, lo: int, hi: int) -> str:
    return "".join(rng.choice(charset) for _ in range(rng.randint(lo, hi)))


def glyphs(image: Image.Image, text: str, rng: random.Random, fnt, colours, *, x0: int, y: int, step: float,
           rotate: float = 0.0, visible=None) -> None:
    """Paste each character, rotated, at its place; ``visible`` (a set of indices) hides the rest."""
    x = float(x0)
    for i, char in enumerate(text):
        colour = colours(i)
        tile = Image.new("RGBA", (fnt.size * 2, fnt.size * 2), (0, 0, 0, 0))
        ImageDraw.Draw(tile).text((fnt.size // 2, fnt.size // 3), char, font=fnt, fill=colour)
        tile = tile.rotate(rng.uniform(-rotate, rotate), resample=Image.BICUBIC)
        if visible is None or i in visible:
            image.alpha_composite(tile, (int(x), y + rng.randint(-3, 3)))
        x += step * rng.uniform(0.85, 1.1)


def blink(rng: random.Random) -> tuple[list[Image.Image], str]:
    text = word(rng, LOWER, 4, 5)
    fnt = font("DejaVuSans-Bold.ttf", 30)
    order = list(range(len(text)))
    frames = []
    for k in range(6):
        frame = Image.new("RGBA", (160, 60), (250, 250, 245, 255))
        draw = ImageDraw.Draw(frame)
        for _ in range(40):  # noise that moves from frame to frame
            x, y = rng.randrange(160), rng.randrange(60)
            draw.ellipse((x, y, x + 2, y + 2), fill=(90, 90, 90, 255))
        rng.shuffle(order)
        shown = set(order[: max(1, len(text) // 2)]) | {k % len(text)}
        glyphs(frame, text, random.Random(text), fnt, lambda i: (20, 20, 60, 255), x0=4, y=4, step=28,
               rotate=8, visible=shown)
        frames.append(frame.convert("RGB"))
    return frames, text


def glass(rng: random.Random) -> tuple[Image.Image, str]:
    text = word(rng, LOWER, 4, 6)
    image = Image.new("RGBA", (150, 50), (0, 0, 0, 0))
    hues = [(rng.randint(0, 200), rng.randint(0, 200), rng.randint(0, 200), 255) for _ in text]
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        draw.arc((rng.randint(-40, 60), rng.randint(-30, 20), rng.randint(90, 200), rng.randint(30, 90)),
                 rng.randint(0, 180), rng.randint(180, 360), fill=hues[rng.randrange(len(hues))], width=2)
    glyphs(image, text, rng, font("DejaVuSans.ttf", 26), lambda i: hues[i], x0=2, y=2, step=23, rotate=15)
    return image, text


def poster(rng: random.Random) -> tuple[Image.Image, str]:
    text = word(rng, LOWER, 5, 6)
    top, bottom = [rng.randint(150, 255) for _ in range(3)], [rng.randint(100, 200) for _ in range(3)]
    image = Image.new("RGBA", (400, 150))
    draw = ImageDraw.Draw(image)
    for row in range(150):
        t = row / 149
        draw.line((0, row, 400, row), fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)) + (255,))
    for _ in range(6):
        draw.line((rng.randint(0, 400), rng.randint(0, 150), rng.randint(0, 400), rng.randint(0, 150)),
                  fill=(60, 60, 60, 255), width=rng.randint(1, 3))
    glyphs(image, text, rng, font("DejaVuSans-Bold.ttf", 70), lambda i: (30, 30, 30, 255), x0=10, y=15, step=62,
           rotate=20)
    return image.convert("RGB"), text


def mixed(rng: random.Random) -> tuple[Image.Image, str]:
    text = word(rng, MIXED, 5, 5)
    image = Image.new("RGBA", (200, 60), (255, 255, 255, 255))
    glyphs(image, text, rng, font("DejaVuSerif.ttf", 32), lambda i: (0, 0, 0, 255), x0=4, y=4, step=33, rotate=12)
    draw = ImageDraw.Draw(image)
    for _ in range(120):
        x, y = rng.randrange(200), rng.randrange(60)
        draw.point((x, y), fill=(0, 0, 0, 255))
    return image.convert("L"), text


def sums(rng: random.Random) -> tuple[Image.Image, str]:
    a, b, op = rng.randint(1, 30), rng.randint(1, 9), rng.choice("+-x")
    text = f"{a}{op}{b}=?"
    image = Image.new("RGBA", (160, 60), (235, 240, 250, 255))
    glyphs(image, text, rng, font("DejaVuSansMono-Bold.ttf", 28), lambda i: (20, 60, 120, 255), x0=4, y=6, step=24,
           rotate=6)
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(0.6)), text


def wave(rng: random.Random) -> tuple[Image.Image, str]:
    text = word(rng, LOWER, 4, 6)
    flat = Image.new("L", (170, 60), 255)
    ImageDraw.Draw(flat).text((6, 10), text, font=font("DejaVuSansCondensed-Bold.ttf", 34), fill=0)
    amplitude, period, phase = rng.uniform(3, 6), rng.uniform(40, 70), rng.uniform(0, 6.3)
    warped = Image.new("L", flat.size, 255)
    for x in range(flat.width):
        dy = int(amplitude * math.sin(2 * math.pi * x / period + phase))
        warped.paste(flat.crop((x, 0, x + 1, flat.height)), (x, dy))
    for _ in range(200):
        warped.putpixel((rng.randrange(170), rng.randrange(60)), rng.choice((0, 255)))
    return warped, text


def ink(rng: random.Random) -> tuple[Image.Image, str]:
    text = word(rng, LOWER, 4, 5)
    image = Image.new("RGBA", (140, 50), (0, 130, 0, 255))  # a green as light as the red text
    glyphs(image, text, rng, font("DejaVuSans-Bold.ttf", 28), lambda i: (255, 0, 0, 255), x0=4, y=2, step=27,
           rotate=10)
    return image.convert("RGB"), text


def hollow(rng: random.Random) -> tuple[Image.Image, str]:
    text = word(rng, LOWER, 4, 6)
    paper = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (180, 60), paper)
    outline = tuple(rng.randint(0, 90) for _ in range(3))
    fnt = font("DejaVuSans-Bold.ttf", 36)
    x = 6.0
    for char in text:  # outlined letters: the stroke inked, the inside the paper's colour
        ImageDraw.Draw(image).text((x, 8 + rng.randint(-4, 4)), char, font=fnt, fill=paper, stroke_width=2,
                                   stroke_fill=outline)
        x += fnt.getlength(char) + rng.uniform(-1, 4)
    return image.rotate(rng.uniform(-5, 5), resample=Image.BICUBIC, fillcolor=paper), text


def grid(rng: random.Random) -> tuple[Image.Image, str]:
    text = word(rng, LOWER, 5, 5)
    image = Image.new("RGBA", (160, 60), (255, 255, 255, 255))
    draw = ImageDraw.Draw(image)
    line = tuple(rng.randint(90, 170) for _ in range(3)) + (255,)
    pitch = rng.randint(7, 12)
    for x in range(rng.randrange(pitch), 160, pitch):
        draw.line((x, 0, x, 60), fill=line)
    for y in range(rng.randrange(pitch), 60, pitch):
        draw.line((0, y, 160, y), fill=line)
    glyphs(image, text, rng, font("DejaVuSerif-Bold.ttf", 30), lambda i: (0, 0, 0, 255), x0=4, y=2, step=29,
           rotate=12)
    return image.convert("RGB"), text


def shadow(rng: random.Random) -> tuple[Image.Image, str]:
    text = word(rng, UPPER, 4, 6)
    image = Image.new("RGBA", (190, 60), (240, 235, 220, 255))
    dx, dy = rng.choice((-3, -2, 2, 3)), rng.choice((2, 3))
    fnt = font("DejaVuSansMono-Bold.ttf", 30)
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    glyphs(layer, text, random.Random(text), fnt, lambda i: (130, 130, 130, 255), x0=6 + dx, y=8 + dy, step=26,
           rotate=8)
    image.alpha_composite(layer)  # the same glyphs, a gray shadow beside and below them
    glyphs(image, text, random.Random(text), fnt, lambda i: (40, 70, 150, 255), x0=6, y=8, step=26, rotate=8)
    return image.convert("RGB"), text


def strike(rng: random.Random) -> tuple[Image.Image, str]:
    text = word(rng, LOWER, 4, 6)
    image = Image.new("RGBA", (180, 60), (250, 250, 250, 255))
    colour = tuple(rng.randint(0, 120) for _ in range(3)) + (255,)
    glyphs(image, text, rng, font("DejaVuSans.ttf", 32), lambda i: colour, x0=4, y=0, step=25, rotate=15)
    amplitude, period, phase = rng.uniform(4, 10), rng.uniform(60, 160), rng.uniform(0, 6.3)
    points = [(x, 30 + amplitude * math.sin(2 * math.pi * x / period + phase)) for x in range(0, 181, 4)]
    ImageDraw.Draw(image).line(points, fill=colour, width=rng.randint(2, 3))  # through the text, in its colour
    return image.convert("RGB"), text


STYLES = {
    "blink": (blink, "animated"), "glass": (glass, "transparent, colourful"), "poster": (poster, "large"),
    "mixed": (mixed, "case-sensitive"), "sums": (sums, "arithmetic"),
    "wave": (wave, "held back: warped"), "ink": (ink, "held back: hue only"),
    "hollow": (hollow, "outlined"), "grid": (grid, "held back: on a grid"),
    "shadow": (shadow, "held back: drop shadow"), "strike": (strike, "held back: struck through"),
}


def answer(style: str, label: str) -> str:
    """What a site wants: the label, or for arithmetic its value."""
    if style != "sums":
        return label
    from capserve.plugins.builtin.text import arithmetic

    return arithmetic(label, ())


def write(style: str, folder: Path, count: int, seed: int) -> list[tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    draw, _ = STYLES[style]
    rng = random.Random(f"{style}:{seed}")
    rows, items = ["file,label"], []
    for i in range(count):
        image, label = draw(rng)
        if isinstance(image, list):
            name = f"{i:05d}.gif"
            image[0].save(folder / name, save_all=True, append_images=image[1:], duration=120, loop=0)
        else:
            name = f"{i:05d}.png"
            image.save(folder / name)
        rows.append(f"{name},{label}")
        items.append((folder / name, label))
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return items


def read_over_http(registry: Path, site: str, items: list[tuple[Path, str]], style: str) -> tuple[float, float]:
    import httpx

    port = free_port()
    with Server(capserve_argv(registry, port, 1), port) as server:
        server.wait_ready()
        right, t0 = 0, time.perf_counter()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for path, label in items:
                r = client.post(f"/recognize/{site}", content=path.read_bytes())
                right += r.status_code == 200 and r.json()["text"] == answer(style, label)
        ms = (time.perf_counter() - t0) * 1e3 / len(items)
    return right / len(items), ms


def ddddocr_accuracy(items: list[tuple[bytes, str]], style: str) -> tuple[float, float] | None:
    """ddddocr's accuracy on ``(image bytes, label)`` items, raw and folded to their charset."""
    try:
        import ddddocr
    except ImportError:
        return None
    ocr = ddddocr.DdddOcr(show_ad=False)
    charset = "".join(sorted({c for _, label in items for c in label}))
    raw = folded = 0
    for data, label in items:
        text = ocr.classification(data)
        fold = "".join(c for c in (text if any(c.isupper() for c in charset) else text.lower()) if c in charset)
        raw += answer(style, text) == answer(style, label)
        folded += answer(style, fold) == answer(style, label)
    return raw / len(items), folded / len(items)


def markdown(rows: list[tuple], test: int) -> str:
    header = ("style", "kind", "training images", "start", "budget", "train minutes", "of budget", "validation (LiteRT)",
              f"{test} fresh over HTTP", "ms per request", "ddddocr", "ddddocr folded")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", default=",".join(STYLES))
    parser.add_argument("--train", type=int, default=9000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--time-budget", help="passed to capserve train (default: the command's own)")
    parser.add_argument("--from-scratch", action="store_true", help="passed to capserve train (default: it starts "
                        "from the general backbone)")
    parser.add_argument("--quick", action="store_true", help="600 training and 200 test images, a 2-minute budget")
    parser.add_argument("--no-ddddocr", dest="ddddocr", action="store_false", help="leave ddddocr's columns out")
    parser.add_argument("--work", type=Path, help="keep the images, registry and logs here")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.time_budget = 600, 200, args.time_budget or "2m"
    work = args.work or Path(tempfile.mkdtemp(prefix="capserve-new-types-"))
    rows = []
    for style in args.styles.split(","):
        base = work / style
        write(style, base / "train", args.train, seed=1)
        test = write(style, base / "test", args.test, seed=2)
        site, registry = f"nt-{style}", base / "registry"
        command = [sys.executable, "-m", "capserve.server.cli", "train", "--site", site, "--data", str(base / "train"),
                   "--out", str(registry), "--progress", "epoch"]
        if args.time_budget:
            command += ["--time-budget", args.time_budget]
        if args.from_scratch:
            command.append("--from-scratch")
        t0 = time.perf_counter()
        with open(base / "train.log", "w") as log:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ})
        minutes = (time.perf_counter() - t0) / 60
        if done.returncode != 0:
            print(f"{style}: capserve train failed, see {base / 'train.log'}", file=sys.stderr)
            continue
        entry = json.loads(done.stdout.strip().splitlines()[-1])
        record = yaml.safe_load((Path(entry["entry"]) / ENTRY_FILE).read_text(encoding="utf-8"))["training"]
        budget = record.get("time_budget_s")
        accuracy, ms = read_over_http(registry, site, test, style)
        peer = ddddocr_accuracy([(path.read_bytes(), label) for path, label in test], style) if args.ddddocr else None
        peer_cells = tuple(f"{v:.4f}" for v in peer) if peer else ("-", "-")
        start = "general" if record.get("warm_start") else "scratch"
        rows.append((style, STYLES[style][1], args.train, start, f"{budget / 60:.0f} min" if budget else "-",
                     f"{minutes:.1f}", f"{minutes * 60 / budget:.2f}" if budget else "-", f"{entry['accuracy']:.4f}",
                     f"{accuracy:.4f}", f"{ms:.1f}", *peer_cells))
        print(f"{style}: {accuracy:.4f} over HTTP after {minutes:.1f} min", file=sys.stderr)
        if args.out:  # written after every style, so a long run that is stopped keeps its rows
            args.out.write_text(markdown(rows, args.test) + "\n")
    print(markdown(rows, args.test))
    print(f"work folder: {work}", file=sys.stderr)
    return 0 if len(rows) == len(args.styles.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
