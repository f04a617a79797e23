"""The interpreter pool and the decoders."""

from __future__ import annotations

import concurrent.futures

import hypothesis
import hypothesis.strategies as st
import numpy as np

from capserve.core.decoders import ctc_greedy, fixed_argmax
from capserve.core.runtime import Runtime


def one_hot(indices, classes):
    probs = np.full((len(indices), classes), 0.01, np.float32)
    probs[np.arange(len(indices)), indices] = 0.9
    return probs


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    # blank is class 0; "a" is 1, "b" is 2
    probs = one_hot([1, 1, 0, 1, 2, 2, 0, 0], 3)
    probs[1, 1] = 0.95
    text, conf = ctc_greedy(probs, "ab")
    assert text == "aab"
    assert conf == (np.float32(0.95), np.float32(0.9), np.float32(0.9))
    assert ctc_greedy(one_hot([0, 0, 0], 3), "ab") == ("", ())


def test_ctc_greedy_last_step_is_a_character():
    text, conf = ctc_greedy(one_hot([0, 2, 2], 3), "ab")
    assert text == "b" and len(conf) == 1


def _ctc_reference(probs, charset):
    """CTC best path written out the slow, obvious way: collapse repeats, then drop blanks."""
    best = [int(np.argmax(row)) for row in probs]
    text, confidences = [], []
    for t, cls in enumerate(best):
        if cls == 0:
            continue
        if t > 0 and best[t - 1] == cls:
            confidences[-1] = max(confidences[-1], float(probs[t, cls]))
        else:
            text.append(charset[cls - 1])
            confidences.append(float(probs[t, cls]))
    return "".join(text), tuple(confidences)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    steps=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_ctc_greedy_agrees_with_the_reference(steps, seed):
    rng = np.random.default_rng(seed)
    probs = rng.random((len(steps), 4), dtype=np.float32) * 0.2
    probs[np.arange(len(steps)), steps] += rng.random(len(steps), dtype=np.float32) * 0.7 + 0.25
    assert ctc_greedy(probs, "abc") == _ctc_reference(probs, "abc")


def test_fixed_argmax_reads_every_position():
    text, conf = fixed_argmax(one_hot([2, 0, 1], 3), "xyz")
    assert text == "zxy" and len(conf) == 3


def test_pool_gives_the_same_answers_under_32_threads(tiny_model_bytes):
    runtime = Runtime(tiny_model_bytes, max_interpreters=4)
    rng = np.random.default_rng(0)
    inputs = [rng.random((32, 64, 1), dtype=np.float32) for _ in range(64)]
    expected = [runtime.run(x) for x in inputs]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        got = list(pool.map(runtime.run, inputs))
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert runtime._created <= 4
