"""The restricted decoders on hand-built probabilities: the best CTC path whose text meets a
charset and a length range (checked against every path of small random arrays), and the
fixed-length decoder's masking."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from capserve.core.decoders import (
    Restriction, ctc_greedy, ctc_restricted, fixed_argmax, fixed_restricted,
)
from capserve.core.errors import RestrictionUnmet

CHARSET = "abc"  # classes: 0 blank, 1 a, 2 b, 3 c


def rows(*timesteps: dict[int, float], classes: int = 4) -> np.ndarray:
    """One row per timestep: the given classes' probabilities, the rest spread evenly."""
    out = np.empty((len(timesteps), classes))
    for t, given in enumerate(timesteps):
        rest = (1.0 - sum(given.values())) / (classes - len(given))
        out[t] = [given.get(k, rest) for k in range(classes)]
    return out


# a b c, each followed by a blank; the blank at t=3 could also have been an a (0.2), the one
# at t=5 another c (0.3), which would only extend the c before it
ABC = rows({1: 0.9}, {0: 0.8}, {2: 0.9}, {0: 0.7, 1: 0.2}, {3: 0.9}, {0: 0.6, 3: 0.3})


def test_the_unrestricted_best_path_reads_abc():
    assert ctc_greedy(ABC, CHARSET)[0] == "abc"


def test_a_length_restriction_gives_the_best_path_of_that_length():
    """Four characters: a fourth one must stand where a blank does, and not beside its own
    kind; the a at t=3 costs least (0.2 against 0.7), the others three times as much or more."""
    text, confidences = ctc_restricted(ABC, CHARSET, Restriction(None, 4, 4))
    assert text == "abac"
    assert confidences == pytest.approx((0.9, 0.9, 0.2, 0.9))


def test_a_masked_character_is_replaced_by_the_next_best():
    probs = rows({1: 0.9}, {0: 0.8}, {2: 0.6, 3: 0.3}, {0: 0.9})
    assert ctc_greedy(probs, CHARSET)[0] == "ab"
    text, confidences = ctc_restricted(probs, CHARSET, Restriction("ac", 0, 4))
    assert text == "ac" and confidences == pytest.approx((0.9, 0.3))


def test_a_doubled_letter_needs_a_blank_between():
    # a a a: with no blank inside, one a; two a's need the blank at t=1 (second best there)
    probs = rows({1: 0.8, 0: 0.15}, {1: 0.7, 0: 0.25}, {1: 0.8, 0: 0.15})
    assert ctc_greedy(probs, CHARSET)[0] == "a"
    text, confidences = ctc_restricted(probs, CHARSET, Restriction("a", 2, 2))
    assert text == "aa" and confidences == pytest.approx((0.8, 0.8))
    with pytest.raises(RestrictionUnmet):  # three a's in three timesteps: no room for two blanks
        ctc_restricted(probs, CHARSET, Restriction("a", 3, 3))


def test_the_restriction_that_allows_everything_is_the_greedy_path():
    rng = np.random.default_rng(7)
    for steps in (1, 2, 5, 25):
        for _ in range(20):
            probs = rng.dirichlet(np.full(4, 0.5), size=steps).astype(np.float32)
            assert ctc_restricted(probs, CHARSET, Restriction(None, 0, 64)) == ctc_greedy(probs, CHARSET)
            assert ctc_restricted(probs, CHARSET, Restriction(CHARSET, 0, steps)) == ctc_greedy(probs, CHARSET)


@pytest.mark.parametrize("restrict", [Restriction(None, 7, 9), Restriction("a", 4, 6), Restriction(None, 7, 7)])
def test_an_impossible_length_raises(restrict):
    with pytest.raises(RestrictionUnmet) as raised:
        ctc_restricted(ABC, CHARSET, restrict)
    assert raised.value.code == "restriction_unmet" and raised.value.message


def test_a_probability_rounded_to_zero_leaves_its_paths_possible():
    probs = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    assert ctc_restricted(probs, CHARSET, Restriction("b", 1, 1))[0] == "b"


def _collapse(path: tuple[int, ...]) -> str:
    text, previous = [], 0
    for cls in path:
        if cls and cls != previous:
            text.append(CHARSET[cls - 1])
        previous = cls
    return "".join(text)


@pytest.mark.parametrize("seed", range(40))
def test_the_best_path_agrees_with_every_path_enumerated(seed):
    """T=6, three characters and the blank: every one of the 4**6 paths, collapsed, kept when
    its text meets the restriction; the highest product of probabilities is the answer."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(4, 0.6), size=6)
    low = int(rng.integers(0, 6))
    restrict = Restriction([None, "ab", "c", "ac"][seed % 4], low, int(rng.integers(low, 8)))
    best, expected = -1.0, None
    for path in itertools.product(range(4), repeat=6):
        text = _collapse(path)
        if not restrict.min_length <= len(text) <= restrict.max_length:
            continue
        if restrict.allowed is not None and not set(text) <= set(restrict.allowed):
            continue
        score = math.prod(probs[t, c] for t, c in enumerate(path))
        if score > best:
            best, expected = score, text
    if expected is None:
        with pytest.raises(RestrictionUnmet):
            ctc_restricted(probs, CHARSET, restrict)
    else:
        assert ctc_restricted(probs, CHARSET, restrict)[0] == expected


def test_the_fixed_decoder_masks_characters_and_needs_its_length():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])  # reads "xz"
    assert fixed_restricted(probs, "xyz", Restriction(None, 2, 2)) == fixed_argmax(probs, "xyz")
    text, confidences = fixed_restricted(probs, "xyz", Restriction("yz", 1, 3))
    assert text == "yz" and confidences == pytest.approx((0.2, 0.8))
    for restrict in (Restriction(None, 3, 4), Restriction("q", 2, 2)):
        with pytest.raises(RestrictionUnmet):
            fixed_restricted(probs, "xyz", restrict)


def test_a_restriction_is_a_range():
    with pytest.raises(ValueError):
        Restriction(None, 5, 3)
