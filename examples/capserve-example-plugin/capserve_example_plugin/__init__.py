"""An example capserve plugin: one preprocess step and one postprocess step.

capserve finds this module through the ``capserve`` entry-point group declared in
``pyproject.toml`` and calls its registration hooks once, at start-up. The steps' functions
are then called directly on every request, with the parameters a registry entry gave
(checked against the ``Param`` declarations when the entry loads).
"""

from __future__ import annotations

import numpy as np

from capserve.plugins.hookspecs import hookimpl
from capserve.core.steps import Param, Step

__version__ = "0.1.0"


def gamma(image: np.ndarray, *, gamma: float = 0.5) -> np.ndarray:
    """``255 * (x / 255) ** gamma`` for uint8 images (a lookup table), ``x ** gamma`` for float."""
    if image.dtype == np.uint8:
        table = np.round(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)
        return table[image]
    return np.power(np.clip(image, 0, None), np.float32(gamma), dtype=np.float32)


def min_confidence(text: str, confidences: tuple[float, ...], *, threshold: float = 0.5, replacement: str = "") -> str:
    """``replacement`` when the text is empty or a character's probability is below ``threshold``."""
    if not text or not confidences or min(confidences) < threshold:
        return replacement
    return text


@hookimpl
def register_preprocess_steps():
    return [
        Step(
            "example_gamma",
            gamma,
            (Param("gamma", "float", default=0.5, min=0.1, max=10.0, help="below 1 darkens mid-tones"),),
            "Gamma correction (example plugin): makes faint grey text darker.",
        )
    ]


@hookimpl
def register_postprocess_steps():
    return [
        Step(
            "example_min_confidence",
            min_confidence,
            (
                Param("threshold", "float", default=0.5, min=0.0, max=1.0, help="lowest acceptable character probability"),
                Param("replacement", "str", default="", help="the answer when a character is doubtful"),
            ),
            "Replace a doubtful answer (example plugin): any character below the threshold.",
        )
    ]
