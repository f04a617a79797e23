"""Turn a model's per-position probabilities into text and per-character confidence."""

from __future__ import annotations

import numpy as np

CTC_BLANK = 0
"""Index of the CTC blank class; character ``i`` of the charset is class ``i + 1``."""


def ctc_greedy(probs: np.ndarray, charset: str) -> tuple[str, tuple[float, ...]]:
    """Best path: argmax per timestep, merge repeats, drop blanks.

    A character's confidence is the highest probability among the timesteps it spans.
    """
    best = probs.argmax(axis=-1)
    top = probs.max(axis=-1)
    # A few dozen timesteps: a plain loop over Python lists costs half of the equivalent
    # chain of small numpy calls (each of which has a fixed overhead of about a microsecond).
    chars: list[str] = []
    confidences: list[float] = []
    previous = CTC_BLANK
    for cls, p in zip(best.tolist(), top.tolist()):
        if cls != CTC_BLANK:
            if cls != previous:
                chars.append(charset[cls - 1])
                confidences.append(p)
            elif p > confidences[-1]:
                confidences[-1] = p
        previous = cls
    return "".join(chars), tuple(confidences)


def fixed_argmax(probs: np.ndarray, charset: str) -> tuple[str, tuple[float, ...]]:
    """One character per position: the argmax of each row."""
    best = probs.argmax(axis=-1)
    confidences = probs[np.arange(len(best)), best]
    return "".join(charset[i] for i in best), tuple(float(c) for c in confidences)


DECODERS = {"ctc": ctc_greedy, "fixed": fixed_argmax}


def output_classes(decoder: str, charset: str) -> int:
    """How many classes the model's last axis must have for ``charset``."""
    return len(charset) + 1 if decoder == "ctc" else len(charset)
