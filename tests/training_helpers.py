"""Shared helpers of the training tests: tiny labelled folders and an easy test generator."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from plugins.hookspecs import hookimpl
from plugins.steps import Generator, Param


def bars(rng: random.Random, *, charset: str = "ab", min_length: int = 2, max_length: int = 3, width: int = 64,
         height: int = 16):
    """An image a tiny model learns in seconds: one 12-pixel slot per character;
    ``a`` is a filled block, ``b`` a thin bar, anything else a hollow box."""
    length = rng.randint(min_length, max_length)
    text = "".join(rng.choice(charset) for _ in range(length))
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    x = rng.randint(0, 3)
    for c in text:
        top = rng.randint(1, 3)
        if c == charset[0]:
            draw.rectangle((x + 2, top, x + 9, height - 2), fill=(0, 0, 0))
        elif c == charset[1]:
            draw.rectangle((x + 5, top, x + 6, height - 2), fill=(20, 20, 20))
        else:
            draw.rectangle((x + 2, top, x + 9, height - 2), outline=(0, 0, 0))
        x += 12 + rng.randint(0, 2)
    return image, text


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
