"""Turn a model's per-position probabilities into text and per-character confidence.

Both decoders are a few vectorised numpy operations over the ``(T, classes)`` output.
"""

from __future__ import annotations

import numpy as np

CTC_BLANK = 0
"""Index of the CTC blank class; character ``i`` of the charset is class ``i + 1``."""


def ctc_greedy(probs: np.ndarray, charset: str) -> tuple[str, tuple[float, ...]]:
    """Best path: argmax per timestep, merge repeats, drop blanks.

    A character's confidence is the highest probability among the timesteps it spans.
    """
    best = probs.argmax(axis=-1)
    is_char = best != CTC_BLANK
    # A new character starts where the class changes and is not blank.
    starts = np.flatnonzero(is_char & np.concatenate(([True], best[1:] != best[:-1])))
    if not len(starts):
        return "", ()
    # Between two starts every non-blank step belongs to the first one's character.
    best_p = np.where(is_char, probs[np.arange(len(best)), best], 0.0)
    confidences = np.maximum.reduceat(best_p, starts)
    text = "".join(charset[i - 1] for i in best[starts])
    return text, tuple(float(c) for c in confidences)


def fixed_argmax(probs: np.ndarray, charset: str) -> tuple[str, tuple[float, ...]]:
    """One character per position: the argmax of each row."""
    best = probs.argmax(axis=-1)
    confidences = probs[np.arange(len(best)), best]
    return "".join(charset[i] for i in best), tuple(float(c) for c in confidences)


DECODERS = {"ctc": ctc_greedy, "fixed": fixed_argmax}


def output_classes(decoder: str, charset: str) -> int:
    """How many classes the model's last axis must have for ``charset``."""
    return len(charset) + 1 if decoder == "ctc" else len(charset)
