"""Built-in generators plugin: ``mixture``, captchas of many styles from one generator.

Each image draws its own style: a font from the fonts given (default: every TrueType font of
the system's font folders and of the ``captcha`` package), a background (flat, gradient,
speckle or blocks), one colour for the text or one per character (always contrasting with the
background), per-character size, rotation, jitter, perspective and spacing (from overlapping to
wide) on the font's baseline at the glyphs' advances or centred one by one, sometimes off an
edge, strokes from thin to heavy (sometimes the stroke alone: outlined letters), lines, arcs
and dots over or under the text, and sometimes a sine warp (gentle to tight), salt-and-pepper
noise and a blur. Lengths, charset and size are parameters. It is the data a general model
learns from; anyone can widen the mixture with a generator plugin of their own
(docs/plugins.md).
"""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from capserve.core.steps import Generator, Param
from capserve.plugins.hookspecs import hookimpl

FONT_FOLDERS = (Path("/usr/share/fonts/truetype"), Path("/usr/local/share/fonts"), Path.home() / ".fonts")
CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@functools.cache
def system_fonts() -> tuple[str, ...]:
    """Every .ttf in the system's font folders and the captcha package's own, sorted."""
    found = {str(p) for folder in FONT_FOLDERS if folder.is_dir() for p in folder.rglob("*.ttf")}
    try:
        import captcha

        found |= {str(p) for p in (Path(captcha.__file__).parent / "data").glob("*.ttf")}
    except ImportError:
        pass
    return tuple(sorted(found))


@functools.cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _lightness(colour: tuple[int, int, int]) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def _contrasting(rng: random.Random, background: float) -> tuple[int, int, int]:
    """A colour whose lightness is at least 90 away from ``background``."""
    while True:
        colour = _colour(rng)
        if abs(_lightness(colour) - background) >= 90:
            return colour


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    kind = rng.choice(("flat", "gradient", "speckle", "blocks"))
    dark = rng.random() < 0.25
    base = tuple(rng.randrange(0, 80) if dark else rng.randrange(170, 256) for _ in range(3))
    if kind == "flat":
        return Image.new("RGB", (width, height), base)
    if kind == "gradient":
        other = tuple(min(255, max(0, c + rng.randint(-70, 70))) for c in base)
        t = np.linspace(0, 1, width if rng.random() < 0.7 else height, dtype=np.float32)
        ramp = np.outer(t, other).astype(np.float32) + np.outer(1 - t, base)
        pixels = np.broadcast_to(ramp[None], (height, width, 3)) if len(t) == width else \
            np.broadcast_to(ramp[:, None], (height, width, 3))
        return Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint8))
    np_rng = np.random.default_rng(rng.getrandbits(32))
    if kind == "speckle":
        noise = np_rng.integers(-40, 41, (height, width, 1))
        return Image.fromarray(np.clip(np.array(base)[None, None] + noise, 0, 255).astype(np.uint8))
    image = Image.new("RGB", (width, height), base)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 10)):
        x, y = rng.randrange(width), rng.randrange(height)
        shade = tuple(min(255, max(0, c + rng.randint(-50, 50))) for c in base)
        draw.rectangle((x, y, x + rng.randint(5, width // 2), y + rng.randint(5, height)), fill=shade)
    return image


def _clutter(rng: random.Random, image: Image.Image, colours: list[tuple[int, int, int]]) -> None:
    width, height = image.size
    draw = ImageDraw.Draw(image)
    pick = lambda: rng.choice(colours) if rng.random() < 0.6 else _colour(rng)  # noqa: E731
    for _ in range(rng.choice((0, 0, 1, 2, 3, 4))):
        points = [(rng.randrange(width), rng.randrange(height)) for _ in range(2)]
        draw.line(points, fill=pick(), width=rng.randint(1, 3))
    for _ in range(rng.choice((0, 0, 1, 2))):
        x, y = rng.randrange(-width // 2, width // 2), rng.randrange(-height, height // 2)
        box = (x, y, x + rng.randint(width // 2, width * 2), y + rng.randint(height, height * 2))
        draw.arc(box, rng.randrange(360), rng.randrange(360), fill=pick(), width=rng.randint(1, 3))
    for _ in range(rng.choice((0, 0, 30, 100, 300))):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.choice((0, 0, 1))
        draw.ellipse((x, y, x + r, y + r), fill=pick())


def _glyphs(rng: random.Random, image: Image.Image, text: str, fonts: tuple[str, ...],
            colours: list[tuple[int, int, int]]) -> None:
    """Draw ``text`` glyph by glyph. Three times in four as a line of text sits: on the font's
    baseline (descenders below it, lower case the x-height tall), each glyph at its own advance
    (a narrow one tucked into its neighbours); otherwise each glyph centred on its own, a tile's
    width apart. Sometimes the line runs off an edge by part of its end glyph."""
    width, height = image.size
    font = rng.choice(fonts)
    size = int(height * rng.uniform(0.45, 0.8))
    rotate, jitter = rng.choice((0, 10, 25, 35)), int(height * rng.uniform(0, 0.15))
    stroke = rng.choice((0, 0, 0, 1, 2)) * size // 24
    hollow = rng.random() < 0.1  # outlined letters: the stroke inked, the inside left clear
    if hollow:
        stroke = max(1, round(size * rng.uniform(0.03, 0.08)))
    skew = rng.choice((0.0, 0.0, 0.12, 0.25))
    as_text = rng.random() < 0.75
    spacing = rng.uniform(-0.3, 0.35) if as_text else rng.uniform(-0.35, 0.3)  # of an advance, of a tile
    tiles, lefts, rises, pen = [], [], [], 0.0  # rise: how far the baseline sits below the tile's centre
    for i, char in enumerate(text):
        fnt = _font(font, max(8, int(size * rng.uniform(0.85, 1.15))))
        left, top, right, bottom = fnt.getbbox(char, stroke_width=stroke, anchor="ls")
        tile = Image.new("RGBA", (right - left + 8, bottom - top + 8), (0, 0, 0, 0))
        colour = (*colours[i % len(colours)], 255)
        ImageDraw.Draw(tile).text((4 - left, 4 - top), char, font=fnt, fill=(0, 0, 0, 0) if hollow else colour,
                                  stroke_width=stroke, stroke_fill=colour, anchor="ls")
        if skew:
            tile = _perspective(rng, tile, skew)
        turned = tile.rotate(rng.uniform(-rotate, rotate), resample=Image.BICUBIC, expand=True)
        if as_text:  # the tile's left edge where the pen puts the glyph's ink, the rotation's growth split
            lefts.append(pen + left - 4 - (turned.width - tile.width) / 2)
            rises.append((4 - top) - tile.height / 2)
            pen += (fnt.getlength(char) + stroke) * (1 + spacing)
        else:
            lefts.append(pen)
            rises.append(0.0)
            pen += turned.width * (1 + spacing)
        tiles.append(turned)
    start = min(lefts)
    lefts = [x - start for x in lefts]
    total = max(x + t.width for x, t in zip(lefts, tiles))
    above = max(t.height / 2 + rise for t, rise in zip(tiles, rises))  # the line's extent about its baseline
    below = max(t.height / 2 - rise for t, rise in zip(tiles, rises))
    scale = min(1.0, (width - 4) / total, (height - 2) / (above + below))
    if scale < 1.0:
        tiles = [t.resize((max(1, int(t.width * scale)), max(1, int(t.height * scale))), Image.BICUBIC) for t in tiles]
        lefts, rises = [x * scale for x in lefts], [r * scale for r in rises]
        total, above, below = total * scale, above * scale, below * scale
    baseline = (height - above - below) / 2 + above
    x0 = rng.uniform(2, max(2.0, width - total - 2))
    if rng.random() < 0.15:  # off the right or left edge by up to a third of the end glyph
        if rng.random() < 0.7:
            x0 = width - total + tiles[-1].width * rng.uniform(0.1, 0.35)
        else:
            x0 = -tiles[0].width * rng.uniform(0.1, 0.35)
    for tile, x, rise in zip(tiles, lefts, rises):
        y = int(baseline - rise - tile.height / 2) + rng.randint(-jitter, jitter)
        image.paste(tile, (int(x0 + x), max(0, min(height - tile.height, y))), tile)


def _perspective(rng: random.Random, tile: Image.Image, amount: float) -> Image.Image:
    """The tile seen from aside: each corner moved by up to ``amount`` of the tile's size."""
    w, h = tile.size
    dx, dy = lambda: rng.uniform(-amount, amount) * w, lambda: rng.uniform(-amount, amount) * h  # noqa: E731
    corners = (dx(), dy(), dx(), h + dy(), w + dx(), h + dy(), w + dx(), dy())  # upper left, lower left, ...
    return tile.transform(tile.size, Image.QUAD, corners, resample=Image.BICUBIC)


def _salt_and_pepper(rng: random.Random, image: Image.Image) -> Image.Image:
    pixels = np.array(image)
    np_rng = np.random.default_rng(rng.getrandbits(32))
    hit = np_rng.random(pixels.shape[:2]) < rng.uniform(0.005, 0.04)
    pixels[hit] = np_rng.choice(np.array([0, 255], dtype=np.uint8), size=(int(hit.sum()), 1))
    return Image.fromarray(pixels)


def _warp(rng: random.Random, image: Image.Image) -> Image.Image:
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    amplitude, period, phase = rng.uniform(1, height * 0.12), rng.uniform(width * 0.2, width * 1.2), rng.uniform(0, 6.3)
    shifts = np.rint(amplitude * np.sin(2 * math.pi * np.arange(width) / period + phase)).astype(int)
    rows = (np.arange(height)[:, None] - shifts[None, :]) % height
    return Image.fromarray(pixels[rows, np.arange(width)[None, :]])


def mixture(
    rng: random.Random,
    *,
    width: int = 160,
    height: int = 60,
    charset: str = CHARSET,
    min_length: int = 3,
    max_length: int = 8,
    fonts: str = "",
) -> tuple[Image.Image, str]:
    """One captcha of a style drawn from ``rng`` and its text. ``fonts``: ``|``-separated .ttf
    paths (default: every system font and the captcha package's)."""
    if min_length > max_length:
        raise ValueError(f"min_length ({min_length}) is greater than max_length ({max_length})")
    if not charset:
        raise ValueError("charset must not be empty")
    chosen = tuple(p.strip() for p in fonts.split("|") if p.strip()) or system_fonts()
    missing = [p for p in chosen if not Path(p).is_file()]
    if missing or not chosen:
        raise ValueError(f"no such font file: {missing[0]}" if missing else "no TrueType font found; pass fonts=")
    text = "".join(rng.choice(charset) for _ in range(rng.randint(min_length, max_length)))
    image = _background(rng, width, height)
    background = _lightness(image.resize((1, 1), Image.BOX).getpixel((0, 0)))
    colours = [_contrasting(rng, background) for _ in range(len(text) if rng.random() < 0.4 else 1)]
    if rng.random() < 0.5:
        _clutter(rng, image, colours)
    _glyphs(rng, image, text, chosen, colours)
    if rng.random() < 0.5:
        _clutter(rng, image, colours)
    if rng.random() < 0.4:
        image = _warp(rng, image)
    if rng.random() < 0.15:
        image = _salt_and_pepper(rng, image)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return image, text


@hookimpl
def register_generators():
    return [
        Generator(
            "mixture",
            mixture,
            (
                Param("width", "int", default=160, min=16, max=2000),
                Param("height", "int", default=60, min=16, max=2000),
                Param("charset", "str", default=CHARSET),
                Param("min_length", "int", default=3, min=1, max=64),
                Param("max_length", "int", default=8, min=1, max=64),
                Param("fonts", "str", default="", help="'|'-separated .ttf paths; default: every system font"),
            ),
            "Captchas of many styles: fonts, backgrounds, colours, strokes, rotations, perspective, overlaps, lines, arcs, "
            "dots, warps, noise.",
        )
    ]
