"""Shared helpers of the training tests: tiny labelled folders and an easy test generator."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from capserve.plugins.hookspecs import hookimpl
from capserve.core.steps import Generator, Param


def bars_layout(rng: random.Random, *, charset: str = "ab", min_length: int = 2, max_length: int = 3):
    """A random label and where each of its characters goes: ``(label, [(x, top), ...])``."""
    length = rng.randint(min_length, max_length)
    text = "".join(rng.choice(charset) for _ in range(length))
    x = rng.randint(0, 3)
    places = []
    for _ in text:
        places.append((x, rng.randint(1, 3)))
        x += 12 + rng.randint(0, 2)
    return text, places


def draw_bars(text: str, places, charset: str, width: int, height: int, only=None):
    """``charset[0]`` is a filled block, ``charset[1]`` a thin bar, anything else a hollow box."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i, (c, (x, top)) in enumerate(zip(text, places)):
        if only is not None and i not in only:
            continue
        if c == charset[0]:
            draw.rectangle((x + 2, top, x + 9, height - 2), fill=(0, 0, 0))
        elif c == charset[1]:
            draw.rectangle((x + 5, top, x + 6, height - 2), fill=(20, 20, 20))
        else:
            draw.rectangle((x + 2, top, x + 9, height - 2), outline=(0, 0, 0))
    return image


def bars(rng: random.Random, *, charset: str = "ab", min_length: int = 2, max_length: int = 3, width: int = 64,
         height: int = 16):
    """An image a tiny model learns in seconds: one 12-pixel slot per character."""
    text, places = bars_layout(rng, charset=charset, min_length=min_length, max_length=max_length)
    return draw_bars(text, places, charset, width, height), text


BARS = Generator(
    "test-bars",
    bars,
    (
        Param("charset", "str", default="ab"),
        Param("min_length", "int", default=2),
        Param("max_length", "int", default=3),
        Param("width", "int", default=64),
        Param("height", "int", default=16),
    ),
    "Blocks and bars (tests only).",
)


class BarsPlugin:
    """A third-party-style plugin object adding the test generator."""

    @staticmethod
    @hookimpl
    def register_generators():
        return [BARS]


def write_folder(folder: Path, count: int, *, seed: int = 0, charset: str = "ab", fmt: str = "png", **params) -> list[str]:
    """Write ``count`` bars images named ``LABEL_INDEX.png``; returns their labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    labels = []
    for i in range(count):
        image, label = bars(rng, charset=charset, **params)
        image.save(folder / f"{label}_{i:04d}.{fmt}")
        labels.append(label)
    return labels


STYLES = ("plain", "alpha", "gif", "noise")


def styled_bars(rng: random.Random, style: str, *, charset: str = "ab", min_length: int = 2, max_length: int = 3,
                width: int = 64, height: int = 16) -> tuple[bytes, str]:
    """Encoded bytes of a bars image in one of ``STYLES``, and its label.

    ``alpha``: black glyphs on a fully transparent background whose RGB is black too (naive
    grayscale sees an all-black image); ``gif``: an animation where each frame shows only some
    of the characters; ``noise``: multicolour dots and lines over the glyphs.
    """
    import io

    label, places = bars_layout(rng, charset=charset, min_length=min_length, max_length=max_length)
    image = draw_bars(label, places, charset, width, height)
    buffer = io.BytesIO()
    if style == "alpha":
        gray = image.convert("L")
        rgba = Image.new("RGBA", image.size, (0, 0, 0, 0))
        rgba.putalpha(gray.point(lambda v: 255 - v))  # dark glyph -> opaque black, white -> transparent
        rgba.save(buffer, format="PNG")
    elif style == "gif":
        # frame k shows the characters i with i % 3 == k: no frame has them all
        frames = [draw_bars(label, places, charset, width, height, only={i for i in range(len(label)) if i % 3 == k})
                  for k in range(3)]
        frames = [f.convert("P") for f in frames]
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif style == "noise":
        draw = ImageDraw.Draw(image)
        for _ in range(25):
            x, y = rng.randrange(width), rng.randrange(height)
            draw.point((x, y), fill=tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(2):
            colour = tuple(rng.randrange(60, 230) for _ in range(3))
            draw.line((rng.randrange(width), rng.randrange(height), rng.randrange(width), rng.randrange(height)),
                      fill=colour, width=1)
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue(), label


def write_styled_folder(folder: Path, count: int, *, seed: int = 0, charset: str = "ab", styles=STYLES) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        style = styles[i % len(styles)]
        data, label = styled_bars(rng, style, charset=charset)
        suffix = "gif" if style == "gif" else "png"
        (folder / f"{label}_{style}_{i:04d}.{suffix}").write_bytes(data)
