"""Turn a model's per-position probabilities into text and per-character confidence.

Unrestricted, the CTC decoder is the greedy best path and the fixed decoder an argmax per
position. A ``Restriction`` (a charset and a length range, asked for per request) selects
the restricted decoders: the best path whose text meets it, found exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from capserve.core.errors import RestrictionUnmet

CTC_BLANK = 0
"""Index of the CTC blank class; character ``i`` of the charset is class ``i + 1``."""


@dataclasses.dataclass(frozen=True)
class Restriction:
    """What the decoder's text (before post-processing) must be: characters of ``allowed``
    only (None: any of the charset's), and ``min_length`` to ``max_length`` characters long."""

    allowed: str | None = None
    min_length: int = 0
    max_length: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.min_length <= self.max_length:
            raise ValueError(f"lengths {self.min_length}-{self.max_length} are not a range")


def _collapse(classes: list[int], probs: list[float], charset: str) -> tuple[str, tuple[float, ...]]:
    """A CTC path as text: merge repeats, drop blanks. A character's confidence is the highest
    probability among the timesteps it spans."""
    # A few dozen timesteps: a plain loop over Python lists costs half of the equivalent
    # chain of small numpy calls (each of which has a fixed overhead of about a microsecond).
    chars: list[str] = []
    confidences: list[float] = []
    previous = CTC_BLANK
    for cls, p in zip(classes, probs):
        if cls != CTC_BLANK:
            if cls != previous:
                chars.append(charset[cls - 1])
                confidences.append(p)
            elif p > confidences[-1]:
                confidences[-1] = p
        previous = cls
    return "".join(chars), tuple(confidences)


def ctc_greedy(probs: np.ndarray, charset: str) -> tuple[str, tuple[float, ...]]:
    """Best path: argmax per timestep, merge repeats, drop blanks."""
    return _collapse(probs.argmax(axis=-1).tolist(), probs.max(axis=-1).tolist(), charset)


def fixed_argmax(probs: np.ndarray, charset: str) -> tuple[str, tuple[float, ...]]:
    """One character per position: the argmax of each row."""
    best = probs.argmax(axis=-1)
    confidences = probs[np.arange(len(best)), best]
    return "".join(charset[i] for i in best), tuple(float(c) for c in confidences)


def _mask(charset: str, allowed: str | None) -> np.ndarray | None:
    """The characters ``allowed`` leaves out (True); None for none."""
    if allowed is None:
        return None
    permitted = set(allowed)
    out = np.array([c not in permitted for c in charset])
    return out if out.any() else None


def ctc_restricted(probs: np.ndarray, charset: str, restrict: Restriction) -> tuple[str, tuple[float, ...]]:
    """The most probable CTC path whose collapsed text has only ``restrict.allowed`` characters
    and a length within its range; ``RestrictionUnmet`` when no path has.

    A Viterbi pass over the states (characters emitted so far, class of the last timestep),
    one vectorised step per timestep: the blank keeps the count, the same class again extends
    the last character, any other character emits one (so a doubled letter needs a blank
    between its two). Backpointers give the path, which collapses as ``ctc_greedy``'s does.
    """
    steps = probs.shape[0]
    low, high = restrict.min_length, min(restrict.max_length, steps)
    if low > high:
        raise RestrictionUnmet(f"the model reads at most {steps} characters, {low} were asked for")
    # The pass runs over the blank and the allowed characters only: a few digits of a large
    # charset cost a few columns.
    if restrict.allowed is None:
        kept = np.arange(probs.shape[1])
    else:
        permitted = set(restrict.allowed)
        kept = np.array([CTC_BLANK, *(i + 1 for i, c in enumerate(charset) if c in permitted)])
    classes = len(kept)
    # Floored, so that a probability a float32 softmax rounded to 0 leaves its paths possible:
    # only a restriction no path can meet at all is unmet.
    logp = np.log(np.maximum(probs[:, kept].astype(np.float64), 1e-300))
    count = np.arange(high + 1)
    rows, cols = count[:, None], np.arange(classes)[None, :]
    score = np.full((high + 1, classes), -np.inf)  # best log probability of each state so far
    score[0, CTC_BLANK] = 0.0  # before the first timestep: nothing emitted, as after a blank
    came_from = np.empty((steps, high + 1, classes), dtype=np.int32)  # the previous state, as n * classes + class
    for t in range(steps):
        # Emitting class k into row n comes from row n - 1's best state of another class than
        # k: its best, or its second best where k is the best.
        best_class = score.argmax(axis=1)
        best = score[count, best_class]
        others = score.copy()
        others[count, best_class] = -np.inf
        second_class = others.argmax(axis=1)
        is_best = cols == best_class[:, None]
        emit_class = np.where(is_best, second_class[:, None], best_class[:, None])
        emit = np.full_like(score, -np.inf)
        emit[1:] = np.where(is_best, others[count, second_class][:, None], best[:, None])[:-1]
        stay = score >= emit  # class k again, as at the previous timestep: nothing emitted
        new = np.where(stay, score, emit)
        emitted_from = (rows - 1) * classes + np.vstack([emit_class[:1], emit_class[:-1]])
        origin = np.where(stay, rows * classes + cols, emitted_from)
        new[:, CTC_BLANK] = best  # the blank: from the row's best state, nothing emitted
        origin[:, CTC_BLANK] = count * classes + best_class
        score = new + logp[t]
        came_from[t] = origin
    final = score[low:high + 1]
    if not np.isfinite(final.max()):
        allowed = "any" if restrict.allowed is None else f"only {restrict.allowed[:32]!r}"
        raise RestrictionUnmet(
            f"no reading of {low}-{high} characters of {allowed} fits in the model's {steps} timesteps")
    n, cls = np.unravel_index(int(final.argmax()), final.shape)
    state = (int(n) + low) * classes + int(cls)
    path = np.empty(steps, dtype=np.intp)
    for t in range(steps - 1, -1, -1):
        path[t] = state % classes
        state = int(came_from[t].flat[state])
    path = kept[path]
    return _collapse(path.tolist(), probs[np.arange(steps), path].tolist(), charset)


def fixed_restricted(probs: np.ndarray, charset: str, restrict: Restriction) -> tuple[str, tuple[float, ...]]:
    """``fixed_argmax`` over the allowed characters only; ``RestrictionUnmet`` when the fixed
    length is outside the range or no character is allowed."""
    length = probs.shape[0]
    if not restrict.min_length <= length <= restrict.max_length:
        raise RestrictionUnmet(f"the model reads exactly {length} characters, "
                               f"not {restrict.min_length}-{restrict.max_length}")
    mask = _mask(charset, restrict.allowed)
    if mask is None:
        return fixed_argmax(probs, charset)
    if mask.all():
        raise RestrictionUnmet("the model reads none of the allowed characters")
    return fixed_argmax(np.where(mask, -1.0, probs), charset)


DECODERS = {"ctc": ctc_greedy, "fixed": fixed_argmax}
RESTRICTED_DECODERS = {"ctc": ctc_restricted, "fixed": fixed_restricted}


def output_classes(decoder: str, charset: str) -> int:
    """How many classes the model's last axis must have for ``charset``."""
    return len(charset) + 1 if decoder == "ctc" else len(charset)
