"""Every built-in preprocess step on an image with the property it handles.

Images are drawn here with PIL, encoded (PNG or GIF), decoded by ``Preprocessor.decode``
as the server does, and run through a chain compiled by ``core.chain.compile_preprocess``.
"The text reads" is measured against a clean rendering of the same text at the same place: the
dark pixels of the chain's output overlap the clean text's dark pixels (intersection over union).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from capserve.core.chain import InputShape
from capserve.plugins.manager import compile_preprocess
from capserve.plugins.builtin.colour import grayscale
from capserve.core.images import decode_image

SIZE = (100, 50)
TEXT = "4827"
FONT = ImageFont.load_default(size=30)
ORIGIN = (8, 6)
SHAPE = InputShape(width=100, height=50, channels=1)


# ---------------------------------------------------------------------------------------------
# helpers


def draw_text(image: Image.Image, text: str = TEXT, fill=(0, 0, 0), *, parts: slice | None = None, crisp=True):
    """Draw ``text`` (or only the characters ``parts`` picks, at their usual places)."""
    draw = ImageDraw.Draw(image)
    if crisp:
        draw.fontmode = "1"  # no anti-aliasing: one exact mask per text
    x, y = ORIGIN
    for i, char in enumerate(text):
        if parts is None or i in range(len(text))[parts]:
            draw.text((x, y), char, fill=fill, font=FONT)
        x += FONT.getlength(char)
    return image


def text_mask(text: str = TEXT, size=SIZE) -> np.ndarray:
    """``(H, W)`` bool: where the clean text is."""
    return np.asarray(draw_text(Image.new("L", size, 255), text, fill=0)) < 128


def encode(image: Image.Image | list[Image.Image], fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    if isinstance(image, list):
        image[0].save(buffer, fmt, save_all=True, append_images=image[1:], **kwargs)
    else:
        image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def run(data: bytes, chain: list, shape: InputShape = SHAPE) -> np.ndarray:
    pre = compile_preprocess(chain, shape)
    return pre(pre.decode(data))


def dark(array: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the dark pixels of an output (luma < 128, or < 0.5 for float)."""
    plane = array.astype(np.float32)
    if plane.ndim == 3 and plane.shape[-1] >= 3:
        plane = plane[..., :3] @ np.float32([0.299, 0.587, 0.114])
    elif plane.ndim == 3:
        plane = plane[..., 0]
    return plane < (0.5 if array.dtype != np.uint8 else 128)


def iou(array: np.ndarray, text: str = TEXT) -> float:
    got, want = dark(array), text_mask(text, (array.shape[1], array.shape[0]))
    return float((got & want).sum() / max((got | want).sum(), 1))


def reads(array: np.ndarray, text: str = TEXT) -> bool:
    return iou(array, text) >= 0.95


RNG = np.random.default_rng(1234)


def grown(mask: np.ndarray, gap: int) -> np.ndarray:
    """``mask`` dilated by ``gap`` pixels (a square neighbourhood)."""
    image = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * gap + 1))
    return np.asarray(image) > 0


def free_spots(mask: np.ndarray, count: int, rng=RNG, gap: int = 2, step: int = 1) -> list[tuple[int, int]]:
    """``count`` random (y, x) more than ``gap`` pixels from every True pixel of ``mask`` (and
    from the edges), on a grid of ``step`` pixels."""
    free = np.argwhere(~grown(mask, gap + 2))
    inside = (free[:, 0] >= 1) & (free[:, 0] < mask.shape[0] - 2) & (free[:, 1] >= 1) & (free[:, 1] < mask.shape[1] - 2)
    on_grid = (free[:, 0] % step == 0) & (free[:, 1] % step == 0)
    free = free[inside & on_grid]
    return [tuple(p) for p in free[rng.choice(len(free), count, replace=False)]]


def test_the_measure_itself():
    clean = np.asarray(draw_text(Image.new("RGB", SIZE, "white")))
    assert reads(clean) and iou(clean) == 1.0
    assert not reads(np.asarray(draw_text(Image.new("RGB", SIZE, "white"), "4821")))
    assert text_mask().sum() > 300  # the text has substance


# ---------------------------------------------------------------------------------------------
# colour


def test_flatten_alpha_makes_a_transparent_png_readable():
    # Black text on a fully transparent background whose hidden colour is black, as many
    # captcha generators write it: ignoring alpha, everything is black.
    image = draw_text(Image.new("RGBA", SIZE, (0, 0, 0, 0)), fill=(0, 0, 0, 255))
    data = encode(image)
    assert decode_image(data).shape == (50, 100, 4)
    without = run(data, ["grayscale"])
    assert dark(without).all() and not reads(without)
    flattened = run(data, ["flatten_alpha", "grayscale"])
    assert flattened.shape == (50, 100, 1) and reads(flattened) and iou(flattened) == 1.0


def test_flatten_alpha_composites_partial_transparency_onto_the_background():
    pixels = np.zeros((2, 3, 4), np.uint8)
    pixels[0, 0] = (0, 0, 0, 128)  # half-transparent black over white -> 127
    pixels[0, 1] = (200, 100, 0, 255)  # opaque: unchanged
    pixels[0, 2] = (10, 20, 30, 0)  # transparent: the background
    data = encode(Image.fromarray(pixels, "RGBA"))
    out = run(data, [{"flatten_alpha": {"background": "#ff8000"}}])
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (127, 64, 0)  # (0*128 + c*127 + 127) // 255
    assert tuple(out[0, 1]) == (200, 100, 0)
    assert tuple(out[0, 2]) == (255, 128, 0)
    # an image without alpha passes unchanged
    rgb = np.asarray(draw_text(Image.new("RGB", SIZE, "white")))
    assert np.array_equal(run(encode(Image.fromarray(rgb)), ["flatten_alpha"]), rgb)


def coloured_noise_captcha(rng=None) -> Image.Image:
    """Red text over green and blue lines and yellow and cyan dots, on white."""
    rng = rng or np.random.default_rng(99)
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    for colour in ((40, 170, 40), (30, 60, 200)):
        for _ in range(3):
            ends = rng.integers(0, (100, 50), (2, 2))
            draw.line([tuple(ends[0]), tuple(ends[1])], fill=colour, width=2)
    for colour in ((230, 200, 20), (20, 200, 220)):
        for y, x in rng.integers(0, (50, 100), (60, 2)):
            draw.rectangle([x, y, x + 1, y + 1], fill=colour)
    return draw_text(image, fill=(200, 30, 30))


def test_drop_colors_removes_coloured_noise():
    data = encode(coloured_noise_captcha())
    noisy = run(data, ["grayscale", {"threshold": {"value": 160}}])
    assert not reads(noisy)
    cleaned = run(
        data,
        [
            {"drop_colors": {"colors": [[40, 170, 40], "#1e3cc8", [230, 200, 20], [20, 200, 220]], "tolerance": 30}},
            "grayscale",
            {"threshold": {"value": 160}},
        ],
    )
    assert iou(cleaned) == 1.0


def test_keep_colors_with_foreground_binarizes_by_colour():
    data = encode(coloured_noise_captcha())
    kept = run(data, [{"keep_colors": {"colors": ["#c81e1e"], "tolerance": 30, "foreground": [0, 0, 0]}}])
    assert kept.shape == (50, 100, 3)
    assert set(np.unique(kept)) <= {0, 255}  # black text, white everything else
    assert iou(kept) == 1.0
    # without foreground the kept pixels keep their colour
    plain = run(data, [{"keep_colors": {"colors": [[200, 30, 30]], "tolerance": 30}}])
    assert (plain[dark(plain)] == (200, 30, 30)).all()


def test_keep_and_drop_colors_keep_alpha_opaque_and_work_on_gray():
    gray = np.array([[[10], [128], [250]]], np.uint8)
    data = encode(Image.fromarray(gray[..., 0], "L"))
    assert decode_image(data).shape == (1, 3, 3)
    out = compile_preprocess(["grayscale", {"keep_colors": {"colors": [[128, 128, 128]], "tolerance": 5}}], SHAPE)(
        decode_image(data)
    )
    assert out.shape == (1, 3, 1) and out[0, :, 0].tolist() == [255, 128, 255]
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)
    rgba[0, 1] = (0, 0, 255, 255)
    out = run(encode(Image.fromarray(rgba, "RGBA")), [{"drop_colors": {"colors": [[255, 0, 0]], "tolerance": 1}}])
    assert out[0, 0].tolist() == [255, 255, 255, 255] and out[0, 1].tolist() == [0, 0, 255, 255]


def test_invert_makes_white_on_black_readable_and_keeps_alpha():
    image = draw_text(Image.new("RGB", SIZE, "black"), fill=(255, 255, 255))
    data = encode(image)
    assert not reads(run(data, ["grayscale"]))
    assert reads(run(data, ["grayscale", "invert"]))
    as_float = run(data, ["grayscale", "normalize", "invert"])
    assert as_float.dtype == np.float32 and reads(as_float)
    assert float(as_float.max()) == 1.0 and float(as_float.min()) == 0.0
    rgba = np.array([[[0, 10, 250, 77]]], np.uint8)
    assert compile_preprocess(["invert"], SHAPE)(rgba).tolist() == [[[255, 245, 5, 77]]]


def test_grayscale_weights_pick_the_channel_the_text_is_in():
    # Text only in the red channel: on green-and-red noise only the red weights see it.
    rng = np.random.default_rng(5)
    pixels = np.empty((50, 100, 3), np.uint8)
    pixels[..., 0] = 255
    pixels[..., 1] = rng.integers(0, 256, (50, 100))
    pixels[..., 2] = 255
    pixels[text_mask(), 0] = 0
    data = encode(Image.fromarray(pixels))
    assert not reads(run(data, ["grayscale", {"threshold": {"value": 128}}]))
    assert iou(run(data, [{"grayscale": {"weights": [1, 0, 0]}}, {"threshold": {"value": 128}}])) == 1.0


@pytest.mark.parametrize("text, background", [((255, 0, 0), (0, 130, 0)), ((40, 40, 230), (120, 40, 20))])
def test_decolorize_reads_text_that_only_its_hue_shows(text, background):
    # The two colours are equally light: grayscale loses the text, the colours' main axis keeps
    # it, as dark on light whichever way that axis points.
    image = draw_text(Image.new("RGB", SIZE, background), fill=text)
    data = encode(image)
    gray = run(data, ["grayscale"])
    assert int(gray.max()) - int(gray.min()) <= 3
    out = run(data, ["decolorize"])
    assert out.shape == (50, 100, 1) and out.dtype == np.uint8
    assert iou(out) == 1.0 and int(out.min()) == 0 and int(out.max()) == 255
    swapped = encode(draw_text(Image.new("RGB", SIZE, text), fill=background))
    assert iou(run(swapped, ["decolorize"])) == 1.0


def test_decolorize_is_grayscale_where_lightness_shows_the_text():
    rng = np.random.default_rng(8)
    for _ in range(20):
        background = tuple(int(v) for v in rng.integers(150, 256, 3))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        pixels = np.asarray(draw_text(Image.new("RGB", SIZE, background), fill=ink, crisp=False))
        noisy = np.clip(pixels + rng.integers(-30, 31, pixels.shape), 0, 255).astype(np.uint8)
        for image in (pixels, noisy):
            assert np.array_equal(compile_preprocess(["decolorize"], SHAPE)(image), grayscale(image))
    flat = np.full((50, 100, 3), (0, 130, 0), np.uint8)  # one colour: nothing to stretch
    assert np.array_equal(compile_preprocess(["decolorize"], SHAPE)(flat), grayscale(flat))
    with pytest.raises(TypeError, match="decolorize works on uint8"):
        compile_preprocess(["normalize", "decolorize"], SHAPE)(flat)


def test_only_a_leading_grayscale_with_its_default_weights_is_left_to_the_decoder():
    assert compile_preprocess(["grayscale", "normalize"], SHAPE).decode_mode == "L"
    assert compile_preprocess([{"grayscale": {"weights": [0.299, 0.587, 0.114]}}], SHAPE).decode_mode == "L"
    assert compile_preprocess([{"grayscale": {"weights": [1, 0, 0]}}], SHAPE).decode_mode is None
    assert compile_preprocess(["invert", "grayscale"], SHAPE).decode_mode is None
    assert compile_preprocess([], SHAPE).decode_mode is None


def _noise_image(mode: str) -> Image.Image:
    rng = np.random.default_rng(11)
    rgb = Image.fromarray(rng.integers(0, 256, (50, 100, 3), dtype=np.uint8))
    if mode == "RGBA":
        rgba = np.concatenate([np.asarray(rgb), rng.integers(0, 256, (50, 100, 1), dtype=np.uint8)], axis=-1)
        return Image.fromarray(rgba, "RGBA")
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "LA", "I;16"])
def test_decoding_straight_to_gray_gives_what_the_grayscale_step_gives(mode):
    data = encode(_noise_image(mode))
    pre = compile_preprocess(["grayscale"], SHAPE)
    decoded = pre.decode(data)
    assert (decoded.shape[-1] == 1) == (mode in ("RGB", "RGBA", "L"))  # PIL converts these itself
    served = pre(decoded)
    by_the_step = grayscale(decode_image(data))
    assert served.shape == by_the_step.shape == (50, 100, 1) and served.dtype == np.uint8
    differ = served.astype(int) - by_the_step
    # PIL's fixed-point weights put 0.05% of all colours one level apart (1 of these 5,000 pixels).
    assert np.abs(differ).max() <= 1 and np.count_nonzero(differ) <= 0.005 * differ.size
    if mode in ("L", "LA"):
        assert np.array_equal(served[..., 0], np.asarray(Image.open(io.BytesIO(data)).convert("L")))


# ---------------------------------------------------------------------------------------------
# frames


def parts_gif(frames: int = 3, transparent: bool = False) -> bytes:
    """An animation whose frame k shows only characters k, k+frames, ... of the text."""
    images = []
    for k in range(frames):
        if transparent:
            frame = draw_text(Image.new("RGBA", SIZE, (0, 0, 0, 0)), fill=(0, 0, 0, 255), parts=slice(k, None, frames))
        else:
            frame = draw_text(Image.new("RGB", SIZE, "white"), parts=slice(k, None, frames))
        images.append(frame)
    if transparent:
        return encode(images, "GIF", duration=100, loop=0, disposal=2)
    return encode([im.convert("P") for im in images], "GIF", duration=100, loop=0)


def test_a_3_frame_gif_reads_only_when_its_frames_are_combined():
    data = parts_gif(3)
    frames = decode_image(data, frames=True)
    assert frames.shape == (3, 50, 100, 4)
    for k in range(3):
        assert not reads(run(data, [{"frames_pick": {"index": k}}]))
    assert not reads(run(data, ["grayscale"]))  # a still decode sees the first frame only
    combined = run(data, ["frames_min", "grayscale", {"threshold": {"value": 128}}])
    assert combined.shape == (50, 100, 1) and iou(combined) == 1.0


def test_frames_min_flattens_transparent_frames_first():
    data = parts_gif(3, transparent=True)
    frames = decode_image(data, frames=True)
    assert frames.shape[0] == 3 and (frames[..., 3] == 0).any()
    assert iou(run(data, ["frames_min"])) == 1.0


def test_frames_max_combines_light_text_on_dark():
    images = [
        draw_text(Image.new("RGB", SIZE, "black"), fill=(255, 255, 255), parts=slice(k, None, 2)).convert("P")
        for k in range(2)
    ]
    data = encode(images, "GIF", duration=100)
    combined = run(data, ["frames_max", "invert"])
    assert iou(combined) == 1.0
    assert not reads(run(data, ["frames_pick", "invert"]))


def moving_noise_gif(frames: int = 3, rng=RNG) -> bytes:
    """The whole text in every frame, with black specks at different places in each."""
    spots = free_spots(text_mask(), 40 * frames, rng)
    images = []
    for k in range(frames):
        frame = draw_text(Image.new("RGB", SIZE, "white"))
        draw = ImageDraw.Draw(frame)
        for y, x in spots[k::frames]:
            draw.point((x, y), fill="black")
        images.append(frame.convert("P"))
    return encode(images, "GIF", duration=100)


def test_frames_median_and_blend_drop_noise_that_moves_between_frames():
    data = moving_noise_gif(3)
    single = run(data, ["frames_pick"])
    assert not reads(single)
    assert iou(run(data, ["frames_median"])) == 1.0
    # the mean of 3 frames: text stays black, a speck in one frame becomes light grey (170)
    blended = run(data, ["frames_blend"])
    assert np.isin(np.unique(blended), [0, 85, 170, 255]).all()
    assert iou(run(data, ["frames_blend", "grayscale", {"threshold": {"value": 100}}])) == 1.0


def test_frames_median_of_an_even_count_is_the_mean_of_the_middle_two():
    frames = np.zeros((4, 1, 1, 4), np.uint8)
    frames[..., 3] = 255
    frames[:, 0, 0, 0] = (10, 20, 200, 100)
    out = compile_preprocess(["frames_median"], SHAPE)(frames)
    assert out.shape == (1, 1, 3) and out[0, 0, 0] == 60  # (20 + 100) / 2


def test_frames_concat_puts_the_frames_side_by_side():
    data = parts_gif(3)
    frames = decode_image(data, frames=True)
    wide = run(data, ["frames_concat"])
    assert wide.shape == (50, 300, 3)
    for k in range(3):
        assert np.array_equal(wide[:, 100 * k : 100 * (k + 1)], frames[k, ..., :3])
    tall = run(data, [{"frames_concat": {"direction": "vertical"}}])
    assert tall.shape == (150, 100, 3) and np.array_equal(tall[50:100], frames[1, ..., :3])
    # and to the model's input with resize
    assert run(data, ["frames_concat", "grayscale", "resize", "normalize"]).shape == (50, 100, 1)


def test_frames_pick_counts_from_the_end_and_clamps():
    data = parts_gif(3)
    frames = decode_image(data, frames=True)[..., :3]
    for index, expected in ((0, 0), (2, 2), (-1, 2), (-3, 0), (7, 2), (-9, 0)):
        assert np.array_equal(run(data, [{"frames_pick": {"index": index}}]), frames[expected])


def test_frames_steps_take_a_still_image_as_one_frame():
    data = encode(draw_text(Image.new("RGB", SIZE, "white")))
    for step in ("frames_min", "frames_max", "frames_blend", "frames_median", "frames_pick", "frames_concat"):
        out = run(data, [step])
        assert out.shape == (50, 100, 3) and reads(out), step


# ---------------------------------------------------------------------------------------------
# geometry


def test_crop_cuts_a_border_off():
    image = draw_text(Image.new("RGB", SIZE, "white"))
    ImageDraw.Draw(image).rectangle([0, 0, 99, 49], outline="black", width=3)
    data = encode(image)
    assert not reads(run(data, ["grayscale"]))
    out = run(data, [{"crop": {"left": 3, "top": 3, "right": 3, "bottom": 3}}])
    assert out.shape == (44, 94, 3)
    assert np.array_equal(dark(out), text_mask()[3:47, 3:97])
    with pytest.raises(ValueError, match="leave nothing"):
        run(data, [{"crop": {"left": 60, "right": 40}}])


def test_trim_crops_to_the_content_and_resize_pad_keeps_the_aspect_ratio():
    image = Image.new("RGB", (200, 80), "white")
    ImageDraw.Draw(image).rectangle([50, 30, 89, 49], fill="black")  # 40 x 20 of content
    data = encode(image)
    trimmed = run(data, [{"trim": {"margin": 2}}])
    assert trimmed.shape == (24, 44, 3) and dark(trimmed)[2:22, 2:42].all() and not dark(trimmed)[:2].any()
    out = run(data, ["trim", "grayscale", {"resize": {"mode": "pad"}}], InputShape(100, 100, 1))
    assert out.shape == (100, 100, 1)
    rows = np.flatnonzero(dark(out).any(axis=1))
    assert dark(out).all(axis=1)[rows].all() and len(rows) == 50  # 2:1 kept: 100 x 50, centred
    assert rows[0] == 25
    blank = encode(Image.new("RGB", (10, 10), "white"))
    assert run(blank, ["trim"]).shape == (10, 10, 3)


def test_resize_stretch_gives_the_model_input():
    data = encode(draw_text(Image.new("RGB", (200, 100), "white")))
    pre = compile_preprocess(["grayscale", "resize", "normalize"], InputShape(64, 32, 1))
    tensor = pre.tensor(decode_image(data))
    assert tensor.shape == (32, 64, 1) and tensor.dtype == np.float32 and 0 <= tensor.min() < tensor.max() <= 1


# ---------------------------------------------------------------------------------------------
# cleaning


def bimodal(background: int, ink: int, spread: int, rng=RNG) -> np.ndarray:
    pixels = rng.normal(background, spread, (50, 100))
    pixels[text_mask()] = rng.normal(ink, spread, text_mask().sum())
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("background, ink", [(180, 60), (235, 150), (90, 20)])
def test_otsu_finds_the_threshold_of_a_bimodal_image(background, ink):
    data = encode(Image.fromarray(bimodal(background, ink, 8), "L"))
    out = run(data, [{"threshold": {"method": "otsu"}}])
    assert out.shape == (50, 100, 1) and set(np.unique(out)) == {0, 255}
    assert iou(out) == 1.0
    fixed = run(data, [{"threshold": {"value": 128}}])
    assert iou(fixed) < 0.95 if not (ink < 128 < background) else iou(fixed) == 1.0


def test_threshold_fixed_and_inverted():
    data = encode(Image.fromarray(np.array([[0, 99, 100, 101, 255]], np.uint8), "L"))
    assert run(data, [{"threshold": {"value": 100}}])[0, :, 0].tolist() == [0, 0, 0, 255, 255]
    assert run(data, [{"threshold": {"value": 100, "invert": True}}])[0, :, 0].tolist() == [255, 255, 255, 0, 0]
    flat = encode(Image.new("L", (4, 4), 200))  # one level: no split, stays white
    assert (run(flat, [{"threshold": {"method": "otsu"}}]) == 255).all()


def test_median_filter_removes_salt_and_pepper():
    rng = np.random.default_rng(7)
    clean = np.asarray(draw_text(Image.new("L", SIZE, 255), fill=0))
    noisy = clean.copy()
    noise = rng.random(clean.shape)
    noisy[noise < 0.04] = 0
    noisy[noise > 0.96] = 255
    data = encode(Image.fromarray(noisy, "L"))
    before = iou(run(data, ["grayscale"]))
    out = run(data, ["grayscale", "median_filter"])
    assert out.shape == (50, 100, 1)
    assert np.array_equal(run(data, ["median_filter", "grayscale"]), out)  # per channel, same result
    # a 3x3 median rounds the corners of 3-pixel strokes a little (0.94 on the clean text) ...
    assert before < 0.7 and iou(out) > 0.85
    # ... and leaves almost none of the pepper away from the text (only where two specks touch
    # at the image's edge, which is replicated)
    assert (dark(out) & ~grown(text_mask(), 1)).sum() <= 3
    assert (dark(run(data, ["grayscale"])) & ~grown(text_mask(), 1)).sum() > 100


def test_remove_specks_removes_small_blobs_and_keeps_the_text():
    mask = text_mask()
    image = draw_text(Image.new("RGB", SIZE, "white"))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(11)
    for y, x in free_spots(mask, 40, rng, gap=2, step=4):  # 4 apart: specks never touch
        w, h = rng.integers(0, 2, 2)  # 1x1 to 2x2 specks
        draw.rectangle([x, y, x + w, y + h], fill=(rng.integers(0, 90),) * 3)
    data = encode(image)
    assert iou(run(data, ["grayscale"])) < 0.9
    out = run(data, [{"remove_specks": {"min_size": 5}}])
    assert out.shape == (50, 100, 3)
    assert np.array_equal(out, np.asarray(draw_text(Image.new("RGB", SIZE, "white"))))


def test_remove_specks_connectivity_and_light_foreground():
    pixels = np.full((6, 6), 255, np.uint8)
    pixels[1, 1] = pixels[2, 2] = 0  # two pixels touching at a corner
    data = encode(Image.fromarray(pixels, "L"))
    assert (run(data, ["grayscale", {"remove_specks": {"min_size": 2, "connectivity": 8}}]) == pixels[..., None]).all()
    assert (run(data, ["grayscale", {"remove_specks": {"min_size": 2, "connectivity": 4}}]) == 255).all()
    inverse = encode(Image.fromarray(255 - pixels, "L"))
    out = run(inverse, ["grayscale", {"remove_specks": {"min_size": 2, "connectivity": 4, "foreground": "light"}}])
    assert (out == 0).all()


def test_a_typical_chain_from_bytes_to_tensor():
    """Transparent, noisy PNG -> flatten, drop noise colours, gray, specks, resize, 0..1."""
    image = coloured_noise_captcha().convert("RGBA")
    alpha = np.full((50, 100), 255, np.uint8)
    alpha[:, :5] = 0
    image.putalpha(Image.fromarray(alpha))
    chain = [
        "flatten_alpha",
        {"drop_colors": {"colors": [[40, 170, 40], [30, 60, 200], [230, 200, 20], [20, 200, 220]], "tolerance": 30}},
        "grayscale",
        {"threshold": {"value": 160}},
        {"remove_specks": {"min_size": 4}},
        {"resize": {"mode": "pad"}},
        "normalize",
    ]
    pre = compile_preprocess(chain, InputShape(128, 64, 1))
    tensor = pre.tensor(decode_image(encode(image)))
    assert tensor.shape == (64, 128, 1) and tensor.dtype == np.float32
    assert float(tensor.min()) == 0.0 and float(tensor.max()) == 1.0
    # the padding (rows above and below the 128 x 64 scaled image of 100 x 50) is white
    assert (tensor[:, :, 0].min(axis=1) == 1.0).sum() >= 2
