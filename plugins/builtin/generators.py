"""Built-in generators plugin: synthetic training captchas.

``imagecaptcha`` draws images with the ``captcha`` package's ``ImageCaptcha`` (the style
many sites use as is). The ``captcha`` package draws its randomness from ``secrets`` (newer
versions) or ``random`` (older ones), which cannot be seeded; while it draws one image we
point that module reference at a shim over the caller's ``random.Random``, so a seed gives
the same images again. Generators run one per process in training, the lock keeps threads
safe too.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from capserve.plugins.hookspecs import hookimpl
from capserve.core.steps import Generator, Param

_LOCK = threading.Lock()


class _SeededRandomness:
    """The functions ``captcha.image`` calls on ``secrets`` or ``random``, drawn from one rng."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    # secrets API (captcha >= 0.6)
    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq: Any) -> Any:
        return self._rng.choice(seq)

    # random API (captcha < 0.6)
    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b)

    def uniform(self, a: float, b: float) -> float:
        return self._rng.uniform(a, b)

    def random(self) -> float:
        return self._rng.random()


_CAPTCHAS: dict[tuple, Any] = {}


def _image_captcha(width: int, height: int, fonts: tuple[str, ...] | None, font_sizes: tuple[int, ...] | None):
    key = (width, height, fonts, font_sizes)
    captcha = _CAPTCHAS.get(key)
    if captcha is None:
        from captcha.image import ImageCaptcha  # training extra; imported only when used

        captcha = _CAPTCHAS[key] = ImageCaptcha(
            width=width, height=height, fonts=list(fonts) if fonts else None, font_sizes=font_sizes
        )
    return captcha


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.replace(";", ",").replace("|", ",").split(",") if part.strip())


def imagecaptcha(
    rng: random.Random,
    *,
    width: int = 160,
    height: int = 60,
    charset: str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_length: int = 4,
    max_length: int = 4,
    fonts: str = "",
    font_sizes: str = "",
):
    """One ``ImageCaptcha`` image and its text, every random choice drawn from ``rng``.

    ``fonts`` is a ``|``-separated list of .ttf paths (default: the package's font);
    ``font_sizes`` a ``|``-separated list of sizes (default: the package's 42, 50, 56).
    """
    if min_length > max_length:
        raise ValueError(f"min_length ({min_length}) is greater than max_length ({max_length})")
    if not charset:
        raise ValueError("charset must not be empty")
    import captcha.image as module

    sizes = tuple(int(s) for s in _split(font_sizes)) or None
    captcha = _image_captcha(width, height, _split(fonts) or None, sizes)
    length = rng.randint(min_length, max_length)
    text = "".join(rng.choice(charset) for _ in range(length))
    name = "secrets" if hasattr(module, "secrets") else "random"
    with _LOCK:
        original = getattr(module, name)
        setattr(module, name, _SeededRandomness(rng))
        try:
            image = captcha.generate_image(text)
        finally:
            setattr(module, name, original)
    return image, text


@hookimpl
def register_generators():
    return [
        Generator(
            "imagecaptcha",
            imagecaptcha,
            (
                Param("width", "int", default=160, min=8, max=2000),
                Param("height", "int", default=60, min=8, max=2000),
                Param("charset", "str", default="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                Param("min_length", "int", default=4, min=1, max=64),
                Param("max_length", "int", default=4, min=1, max=64),
                Param("fonts", "str", default="", help="'|'-separated .ttf paths; default: the package's font"),
                Param("font_sizes", "str", default="", help="'|'-separated sizes; default: 42|50|56"),
            ),
            "Images drawn by the captcha package's ImageCaptcha (rotated, warped glyphs, dots, an arc).",
        )
    ]
