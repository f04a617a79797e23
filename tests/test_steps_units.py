"""The built-in steps' building blocks against plain reference implementations, and the
postprocess steps on the texts they handle."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageFilter

from capserve.plugins.builtin import cleaning, colour, frames, text
from capserve.plugins.manager import compile_postprocess


# ---------------------------------------------------------------------------------------------
# connected components


def reference_labels(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Breadth-first search, one pixel at a time: slow and obviously right."""
    height, width = mask.shape
    labels = np.full(mask.shape, -1)
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if connectivity == 8:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x] >= 0:
            continue
        labels[y, x] = count
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for dy, dx in steps:
                ny, nx = cy + dy, cx + dx
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and labels[ny, nx] < 0:
                    labels[ny, nx] = count
                    queue.append((ny, nx))
        count += 1
    return labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@settings(max_examples=200, deadline=None)
@given(
    mask=hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=30)),
    connectivity=st.sampled_from([4, 8]),
)
def test_label_components_matches_breadth_first_search(mask, connectivity):
    pixels, roots = cleaning.label_components(mask, connectivity)
    assert np.array_equal(pixels, np.flatnonzero(mask))
    assert same_partition(roots, reference_labels(mask, connectivity).ravel()[pixels])
    assert roots.size == 0 or 0 <= roots.min() <= roots.max() < roots.size


@pytest.mark.parametrize("shape", [(50, 100), (200, 400)])
def test_label_components_on_long_snakes_and_random_noise(shape):
    """A one-pixel-wide serpentine (the longest possible path) and dense noise."""
    snake = np.zeros(shape, bool)
    snake[::2] = True
    snake[1::4, -1] = True
    snake[3::4, 0] = True
    pixels, roots = cleaning.label_components(snake, 4)
    assert np.unique(roots).size == 1 and pixels.size == snake.sum()
    noise = np.random.default_rng(0).random(shape) < 0.5
    for connectivity in (4, 8):
        pixels, roots = cleaning.label_components(noise, connectivity)
        assert same_partition(roots, reference_labels(noise, connectivity).ravel()[pixels])


def test_remove_specks_sizes_are_exact():
    pixels = np.full((10, 20, 1), 255, np.uint8)
    pixels[1, 1:4] = 0  # 3 pixels
    pixels[5:7, 5:7] = 0  # 4 pixels
    pixels[2:7, 12:14] = 0  # 10 pixels
    out = cleaning.remove_specks(pixels, min_size=4)
    assert out[1, 1:4].min() == 255 and out[5:7, 5:7].max() == 0 and out[2:7, 12:14].max() == 0
    out = cleaning.remove_specks(pixels, min_size=10)
    assert (out == 255).sum() == 200 - 10
    assert cleaning.remove_specks(pixels, min_size=1) is pixels  # nothing to remove: no copy


# ---------------------------------------------------------------------------------------------
# threshold, median


def brute_force_otsu(gray: np.ndarray) -> int:
    values = gray.ravel().astype(np.float64)
    best, best_t = -1.0, 127
    for t in range(255):
        low, high = values[values <= t], values[values > t]
        if low.size == 0 or high.size == 0:
            continue
        score = low.size * high.size * (low.mean() - high.mean()) ** 2
        if score > best + 1e-9:
            best, best_t = score, t
    return best_t


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint8, (12, 17)))
def test_otsu_matches_brute_force(gray):
    assert cleaning.otsu_threshold(gray) == brute_force_otsu(gray)


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("size", [3, 5, 7])
def test_median_filter_equals_pil_and_the_float_path(channels, size):
    image = np.random.default_rng(channels * size).integers(0, 256, (23, 31, channels), dtype=np.uint8)
    plane = image[..., 0] if channels == 1 else image
    expected = np.asarray(Image.fromarray(plane).filter(ImageFilter.MedianFilter(size)))
    expected = expected[..., None] if channels == 1 else expected
    out = cleaning.median_filter(image, size=size)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    as_float = cleaning.median_filter(image.astype(np.float32), size=size)
    assert as_float.dtype == np.float32 and np.array_equal(as_float, expected.astype(np.float32))


def test_luma_matches_pil_and_grayscale_default():
    image = np.random.default_rng(3).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    assert np.array_equal(cleaning.luma(image), np.asarray(Image.fromarray(image).convert("L")))
    assert np.abs(cleaning.luma(image).astype(int) - colour.grayscale(image)[..., 0]).max() <= 1


# ---------------------------------------------------------------------------------------------
# colour and frames details


def test_colour_steps_refuse_float_images_with_a_clear_message():
    image = np.zeros((2, 2, 3), np.float32)
    for call in (
        lambda: colour.keep_colors(image, colors=((0, 0, 0),)),
        lambda: colour.drop_colors(image, colors=((0, 0, 0),)),
        lambda: colour.flatten_alpha(np.zeros((2, 2, 4), np.float32)),
        lambda: cleaning.threshold(image),
        lambda: cleaning.remove_specks(image),
        lambda: frames.frames_min(np.zeros((2, 2, 2, 4), np.float32)),
    ):
        with pytest.raises(TypeError, match="uint8"):
            call()


def test_colour_distance_is_euclidean_in_rgb():
    image = np.array([[[100, 100, 100], [130, 100, 100], [118, 118, 118], [131, 100, 100]]], np.uint8)
    mask = colour.color_distance_mask(image, ((100, 100, 100),), 30)
    assert mask.tolist() == [[True, True, False, False]]  # 18*sqrt(3) = 31.2 > 30


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.uint8, (4, 5, 4)), st.tuples(*[st.integers(0, 255)] * 3))
def test_flatten_alpha_matches_pil_alpha_composite(rgba, background):
    expected = Image.alpha_composite(Image.new("RGBA", (5, 4), background + (255,)), Image.fromarray(rgba, "RGBA"))
    got = colour.flatten_alpha(rgba, background=background)
    assert np.abs(got.astype(int) - np.asarray(expected)[..., :3]).max() <= 1


def test_composite_is_exactly_the_rounded_integer_formula():
    value, alpha = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    rgba = np.stack([value, value, value, alpha], -1).astype(np.uint8)
    for background in (0, 1, 37, 127, 128, 200, 254, 255):
        got = colour.composite(rgba, (background, 255 - background, background))
        exact_r = (value * alpha + background * (255 - alpha) + 127) // 255
        exact_g = (value * alpha + (255 - background) * (255 - alpha) + 127) // 255
        assert np.array_equal(got[..., 0], exact_r) and np.array_equal(got[..., 1], exact_g)


@pytest.mark.parametrize("count", range(1, 13))
def test_frames_median_equals_numpy_median_rounded_half_up(count):
    stack = np.random.default_rng(count).integers(0, 256, (count, 7, 9, 4), dtype=np.uint8)
    stack[..., 3] = 255
    expected = np.floor(np.median(stack[..., :3].astype(np.float64), axis=0) + 0.5)
    assert np.array_equal(frames.frames_median(stack), expected.astype(np.uint8))
    mean = np.floor(stack[..., :3].mean(axis=0) + 0.5)
    assert np.array_equal(frames.frames_blend(stack), mean.astype(np.uint8))


def test_frames_steps_on_known_values():
    stack = np.zeros((3, 1, 2, 4), np.uint8)
    stack[..., 3] = 255
    stack[:, 0, 0, :3] = [[10, 10, 10], [200, 200, 200], [90, 90, 90]]
    stack[:, 0, 1, :3] = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    assert frames.frames_min(stack)[0].tolist() == [[10, 10, 10], [0, 0, 0]]
    assert frames.frames_max(stack)[0].tolist() == [[200, 200, 200], [255, 255, 255]]
    assert frames.frames_median(stack)[0].tolist() == [[90, 90, 90], [0, 0, 0]]
    assert frames.frames_blend(stack)[0].tolist() == [[100, 100, 100], [85, 85, 85]]
    assert frames.frames_pick(stack, index=1)[0].tolist() == [[200, 200, 200], [0, 255, 0]]


# ---------------------------------------------------------------------------------------------
# postprocess


@pytest.mark.parametrize(
    "read, answer",
    [
        ("12+7", "19"),
        ("8x3", "24"),
        ("8X3", "24"),
        ("8×3", "24"),
        ("8*3", "24"),
        ("9-4", "5"),
        ("4-9", "-5"),
        ("6÷2", "3"),
        ("6/2", "3"),
        ("12+7=?", "19"),
        ("12+7=", "19"),
        ("12 + 7 = ?", "19"),
        ("8x3=？", "24"),
        ("3+4*2", "11"),
        ("10-2-3", "5"),
        ("7/2", "3.5"),
        ("1/3", "0.33"),
        ("-2+5", "3"),
        ("7加8等于?", "15"),
        ("9减4", "5"),
        ("3乘4=", "12"),
        ("8除2", "4"),
        ("007+1", "8"),
    ],
)
def test_arithmetic_answers(read, answer):
    assert text.arithmetic(read, ()) == answer


@pytest.mark.parametrize(
    "read",
    ["", "12", "abc", "1+", "+", "1++", "1/0", "12+7=?3", "(1+2)", "2**3", "__import__('os')", "1e3+1", "1.5+2", "= ?"],
)
def test_arithmetic_leaves_what_it_cannot_parse(read):
    assert text.arithmetic(read, ()) == read
    assert text.arithmetic(read, (), on_error="empty") == ""


def test_arithmetic_decimals_and_no_eval():
    assert text.arithmetic("2/3", (), decimals=4) == "0.6667"
    assert text.arithmetic("2/3", (), decimals=0) == "1"
    tree = ast.parse(Path(text.__file__).read_text(encoding="utf-8"))
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}


def test_case_and_map_chars_through_a_chain():
    post = compile_postprocess(
        [{"map_chars": {"mapping": {"O": 0, "o": 0, "l": 1, "I": 1, "rn": "m", "S": 5}}}, {"case": {"mode": "upper"}}]
    )
    assert post("lOoISrnx", (0.9,) * 8) == "10015MX"
    assert compile_postprocess(["case"])("AbC", ()) == "abc"
    assert compile_postprocess([{"case": {"mode": "casefold"}}])("Straße", ()) == "strasse"
    # single characters use str.translate; the compiled translator is cached per mapping
    assert text._translator((("a", "b"),)) is text._translator((("a", "b"),))
