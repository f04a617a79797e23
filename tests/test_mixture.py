"""The ``mixture`` generator: captchas of many styles, seeded, within its parameters."""

from __future__ import annotations

import random

import numpy as np
import pytest

from capserve.plugins import manager
from capserve.plugins.builtin.mixture import system_fonts

GENERATOR = manager.catalog().generators["mixture"]


def dejavu(name: str) -> str:
    """The system's DejaVu font file ``name`` (Debian's fonts-dejavu-core)."""
    return next(path for path in system_fonts() if path.endswith(f"/{name}"))


def test_it_is_registered_and_seeded():
    params = GENERATOR.bind({"width": 120, "height": 40, "charset": "ab12", "min_length": 3, "max_length": 5})
    one, two, other = (GENERATOR.func(random.Random(seed), **params) for seed in (5, 5, 6))
    assert one[0].size == (120, 40) and one[0].mode == "RGB"
    assert 3 <= len(one[1]) <= 5 and set(one[1]) <= set("ab12")
    assert one[1] == two[1] and np.array_equal(np.asarray(one[0]), np.asarray(two[0]))
    assert not np.array_equal(np.asarray(one[0]), np.asarray(other[0]))


def test_its_images_differ_in_style_not_only_in_text():
    params = GENERATOR.bind({})
    images = [np.asarray(GENERATOR.func(random.Random(seed), **params)[0], dtype=np.float32) for seed in range(60)]
    backgrounds = {tuple(np.round(np.median(image.reshape(-1, 3), axis=0) / 32)) for image in images}
    assert len(backgrounds) >= 15  # many background colours
    lightness = [image.mean() for image in images]
    assert min(lightness) < 90 and max(lightness) > 170  # dark and light ones
    lengths = {len(GENERATOR.func(random.Random(seed), **params)[1]) for seed in range(60)}
    assert lengths == set(range(3, 9))


def test_the_text_contrasts_with_its_background():
    """Every image has pixels far from its background's median: the text is never invisible."""
    params = GENERATOR.bind({"width": 100, "height": 40})
    for seed in range(40):
        image = np.asarray(GENERATOR.func(random.Random(seed), **params)[0], dtype=np.float32).mean(axis=2)
        assert np.abs(image - np.median(image)).max() >= 60, seed


def test_fonts_default_to_the_system_and_a_missing_one_is_named():
    assert system_fonts() and all(path.endswith(".ttf") for path in system_fonts())
    one = system_fonts()[0]
    image, text = GENERATOR.func(random.Random(1), **GENERATOR.bind({"fonts": one}))
    assert image.size == (160, 60) and text
    with pytest.raises(ValueError, match="no such font file: /nowhere.ttf"):
        GENERATOR.func(random.Random(1), **GENERATOR.bind({"fonts": f"{one}|/nowhere.ttf"}))
    with pytest.raises(ValueError, match="greater than max_length"):
        GENERATOR.func(random.Random(1), **GENERATOR.bind({"min_length": 6, "max_length": 4}))


def test_perspective_moves_a_glyph_and_salt_and_pepper_sprinkles_black_and_white():
    from PIL import Image, ImageDraw

    from capserve.plugins.builtin.mixture import _perspective, _salt_and_pepper

    tile = Image.new("RGBA", (40, 50), (0, 0, 0, 0))
    ImageDraw.Draw(tile).rectangle((10, 10, 29, 39), fill=(200, 0, 0, 255))
    seen = np.asarray(_perspective(random.Random(3), tile, 0.25))
    assert seen.shape == (50, 40, 4) and not np.array_equal(seen, np.asarray(tile))
    covered = (seen[..., 3] > 0).sum()
    assert 0.5 * 600 < covered < 1.6 * 600  # the 20x30 block, seen from aside: moved, not lost
    assert np.array_equal(np.asarray(_perspective(random.Random(3), tile, 0.0)), np.asarray(tile))

    gray = Image.new("RGB", (100, 50), (128, 128, 128))
    noisy = np.asarray(_salt_and_pepper(random.Random(4), gray))
    black, white = (noisy == 0).all(axis=2).sum(), (noisy == 255).all(axis=2).sum()
    changed = (noisy != 128).any(axis=2).sum()
    assert black > 0 and white > 0 and changed == black + white
    assert 0.004 * 5000 <= changed <= 0.05 * 5000


def test_glyphs_sit_on_the_fonts_baseline_most_of_the_time():
    """Drawn in red and blue by turns, ``xpxp``'s p descends below the x's while their tops
    line up, as in a line of text; glyphs centred one by one would split the difference."""
    from PIL import Image

    from capserve.plugins.builtin.mixture import _glyphs

    font = dejavu("DejaVuSans.ttf")
    tops, bottoms = [], []
    for seed in range(60):
        image = Image.new("RGB", (160, 60), (255, 255, 255))
        _glyphs(random.Random(seed), image, "xpxp", (font,), [(255, 0, 0), (0, 0, 255)])
        pixels = np.asarray(image).astype(int)
        red = (pixels[..., 0] > 200) & (pixels[..., 1] < 120) & (pixels[..., 2] < 120)
        blue = (pixels[..., 2] > 200) & (pixels[..., 0] < 120) & (pixels[..., 1] < 120)
        rows_x, rows_p = np.nonzero(red.any(axis=1))[0], np.nonzero(blue.any(axis=1))[0]
        tops.append(rows_x[0] - rows_p[0])
        bottoms.append(rows_p[-1] - rows_x[-1])
    assert np.median(bottoms) >= 4  # the descender, below the baseline
    assert abs(np.median(tops)) <= np.median(bottoms) / 4


def test_a_line_sometimes_runs_off_an_edge():
    """Text clipped by the image's edge, as some captchas draw it: one line in seven is placed
    off an edge, and in a bold font about one in thirteen loses ink to it."""
    from PIL import Image

    from capserve.plugins.builtin.mixture import _glyphs

    bold = (dejavu("DejaVuSans-Bold.ttf"),)  # ink, not only padding, at the edge
    clipped = 0
    for seed in range(400):
        image = Image.new("RGB", (160, 60), (255, 255, 255))
        _glyphs(random.Random(seed), image, "abcde", bold, [(0, 0, 0)])
        pixels = np.asarray(image.convert("L"))
        clipped += bool((pixels[:, 0] < 128).any() or (pixels[:, -1] < 128).any())
    assert 12 <= clipped <= 80, clipped


def test_letters_are_sometimes_outlined():
    """About one line in ten is the stroke alone: across its middle row a solid O is two runs
    of ink, an outlined one four (the outline's two rings)."""
    from PIL import Image

    from capserve.plugins.builtin.mixture import _glyphs

    bold = (dejavu("DejaVuSans-Bold.ttf"),)
    outlined = 0
    for seed in range(400):
        image = Image.new("RGB", (200, 120), (255, 255, 255))
        _glyphs(random.Random(seed), image, "O", bold, [(0, 0, 0)])
        ink = np.asarray(image.convert("L")) < 128
        rows, columns = np.nonzero(ink)
        middle = ink[(rows.min() + rows.max()) // 2, columns.min():columns.max() + 1].astype(int)
        outlined += int(middle[0]) + int((np.diff(middle) == 1).sum()) >= 4
    assert 10 <= outlined <= 80, outlined
