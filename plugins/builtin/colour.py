"""Colour steps: grayscale, scaling to [0, 1]."""

from __future__ import annotations

import numpy as np

from plugins.hookspecs import hookimpl
from plugins.steps import Param, Step


def grayscale(image: np.ndarray, *, weights: tuple[float, ...] = (0.299, 0.587, 0.114)) -> np.ndarray:
    """RGB(A) -> one channel, as a weighted sum of R, G and B (alpha is ignored)."""
    if image.shape[-1] == 1:
        return image
    gray = image[..., :3] @ np.asarray(weights, dtype=np.float32)
    if image.dtype == np.uint8:
        gray = np.clip(gray + 0.5, 0, 255).astype(np.uint8)
    return gray[..., None]


def normalize(image: np.ndarray, *, scale: float = 1 / 255, offset: float = 0.0) -> np.ndarray:
    """``image * scale + offset`` as float32 (by default uint8 0..255 -> 0..1)."""
    return image.astype(np.float32) * np.float32(scale) + np.float32(offset)


@hookimpl
def register_preprocess_steps():
    return [
        Step(
            "grayscale",
            grayscale,
            (Param("weights", "list[float]", default=(0.299, 0.587, 0.114), help="weights of R, G, B"),),
            "Weighted sum of the colour channels into one channel.",
        ),
        Step(
            "normalize",
            normalize,
            (Param("scale", "float", default=1 / 255), Param("offset", "float", default=0.0)),
            "Scale pixel values (by default to 0..1 float32).",
        ),
    ]
