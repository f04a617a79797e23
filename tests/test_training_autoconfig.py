"""``capserve train`` configures itself from the data: small synthetic folders of each kind
(large, transparent, animated, colourful, arithmetic, mixed case) get the choices documented in
docs/training.md, and every choice the user makes stays theirs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from capserve.training import autoconfig
from capserve.training.pipeline import TrainOptions, configure

pytestmark = [pytest.mark.train]  # the training package's data tools come with the train extra

RED, EQUAL_GREEN = (255, 0, 0), (0, 130, 0)  # about the same lightness (ITU-R 601: 76 and 76)


def draw(text: str, size=(120, 40), fg=(0, 0, 0), bg=(255, 255, 255), mode="RGB") -> Image.Image:
    image = Image.new(mode, size, bg if mode == "RGB" else (*bg, 0) if len(bg) == 3 else bg)
    ImageDraw.Draw(image).text((8, size[1] // 3), text, fill=fg if mode == "RGB" else (*fg, 255))
    return image


def write(folder: Path, images: list[tuple[Image.Image, str]], fmt: str = "PNG", **save) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file,label"]
    for i, (image, label) in enumerate(images):
        name = f"{i:04d}.{fmt.lower()}"
        image.save(folder / name, fmt, **save)
        lines.append(f"{name},{label}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def labels(n: int, charset: str = "abcd", seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(charset) for _ in range(rng.randint(3, 5))) for _ in range(n)]


def choose(folder: Path, **given) -> tuple[TrainOptions, dict[str, autoconfig.Choice]]:
    options, choices = configure(TrainOptions(site="s", out=folder.parent / "registry", data=folder, **given))
    return options, {c.setting: c for c in choices}


def test_a_large_captcha_is_scaled_to_the_height_the_model_needs(tmp_path):
    folder = write(tmp_path / "large", [(draw(t, size=(640, 360)), t) for t in labels(30)])
    options, choices = choose(folder)
    assert (options.width, options.height) == (84, 48)  # 640x360 at 48 px tall, aspect kept
    assert "scaled from 640x360" in choices["input"].why
    assert options.channels == 1 and choices["colour"].why.startswith("the images have almost no colour")
    assert options.preprocess == ["grayscale", {"resize": {"mode": "stretch"}}, "normalize"]


def test_a_small_input_is_widened_for_its_longest_label(tmp_path):
    folder = write(tmp_path / "narrow", [(draw(t, size=(40, 20)), t) for t in labels(20, seed=1)])
    options, choices = choose(folder)
    assert (options.width, options.height) == (8 * 5 + 4, 20)
    assert "widened to 44 px for 5 characters" in choices["input"].why


def test_transparent_images_are_composited_onto_white(tmp_path):
    folder = write(tmp_path / "rgba", [(draw(t, fg=(0, 0, 0), bg=(0, 0, 0), mode="RGBA"), t) for t in labels(20)])
    options, choices = choose(folder)
    assert options.preprocess[0] == "flatten_alpha" and "transparency" in choices
    assert options.channels == 1  # black text on what a browser shows as white


def test_animated_images_get_a_frames_step(tmp_path):
    items = []
    for text in labels(12, seed=2):
        frames = [draw(text[: k + 1]) for k in range(len(text))]  # the text appears a character a frame
        items.append((frames, text))
    folder = tmp_path / "gif"
    folder.mkdir()
    lines = ["file,label"]
    for i, (frames, text) in enumerate(items):
        frames[0].save(folder / f"{i}.gif", save_all=True, append_images=frames[1:], duration=100)
        lines.append(f"{i}.gif,{text}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    options, choices = choose(folder)
    # too few animations to learn anything from in a probe run: the darkest value over the frames
    assert options.preprocess[0] == "frames_min" == choices["frames"].value
    assert "too few for a probe run" in choices["frames"].why


@pytest.mark.slow
def test_the_frames_probe_picks_the_step_that_shows_the_text(tmp_path):
    """Light text on black, a character per frame: only the brightest value over the frames
    shows the whole text (the darkest shows none of it)."""
    folder = tmp_path / "light"
    folder.mkdir()
    lines = ["file,label"]
    for i, text in enumerate(labels(400, charset="abcdef", seed=6)):
        frames = [draw(text[k] if k < len(text) else "", size=(72, 24), fg=(255, 255, 255), bg=(0, 0, 0))
                  for k in range(5)]
        for k, frame in enumerate(frames):  # move each frame's character to its place in the word
            shifted = Image.new("RGB", frame.size, (0, 0, 0))
            shifted.paste(frame, (k * 12, 0))
            frames[k] = shifted
        frames[0].save(folder / f"{i}.gif", save_all=True, append_images=frames[1:], duration=100)
        lines.append(f"{i}.gif,{text}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    options, choices = choose(folder)
    assert choices["frames"].value == "frames_max", choices["frames"].why
    assert all(step in choices["frames"].why for step in autoconfig.FRAMES_CANDIDATES)  # each was tried


def test_colour_is_kept_only_where_it_carries_the_text(tmp_path):
    hue_only = write(tmp_path / "hue", [(draw(t, fg=RED, bg=EQUAL_GREEN), t) for t in labels(20)])
    options, choices = choose(hue_only)
    assert options.channels == 3 and "colour carries the text" in choices["colour"].why
    assert "grayscale" not in options.preprocess

    rng = np.random.default_rng(0)
    noisy = []
    for t in labels(20, seed=3):
        background = Image.fromarray(rng.integers(120, 256, (40, 120, 3), dtype=np.uint8))
        ImageDraw.Draw(background).text((8, 13), t, fill=(0, 0, 0))
        noisy.append((background, t))
    options, choices = choose(write(tmp_path / "noisy", noisy))
    assert options.channels == 1 and "gray keeps" in choices["colour"].why


def test_arithmetic_labels_serve_the_computed_answer(tmp_path):
    rng = random.Random(4)
    exprs = [f"{rng.randint(1, 20)}{rng.choice('+-x')}{rng.randint(1, 9)}=" for _ in range(20)]
    options, choices = choose(write(tmp_path / "math", [(draw(e), e) for e in exprs]))
    assert options.postprocess == ["arithmetic"] and choices["answer"].value == "arithmetic"
    # plain text is left alone, and a choice of the user's stands
    options, choices = choose(write(tmp_path / "text", [(draw(t), t) for t in labels(20)]))
    assert options.postprocess is None and "answer" not in choices
    options, _ = choose(tmp_path / "math", postprocess=[])
    assert options.postprocess == []


def test_mixed_case_labels_are_read_with_their_case(tmp_path):
    mixed = labels(20, charset="aAbBcC", seed=5)
    _, choices = choose(write(tmp_path / "mixed", [(draw(t), t) for t in mixed]))
    assert "upper and lower case" in choices["charset"].why
    _, choices = choose(write(tmp_path / "lower", [(draw(t), t) for t in labels(20)]))
    assert choices["charset"].why == "the labels are all lower case"


def test_what_the_user_gives_is_kept(tmp_path):
    folder = write(tmp_path / "large", [(draw(t, size=(640, 360)), t) for t in labels(10)])
    options, choices = choose(folder, width=200, height=64, channels=3, preprocess=["normalize"])
    assert (options.width, options.height, options.channels, options.preprocess) == (200, 64, 3, ["normalize"])
    assert not {"input", "colour", "frames", "transparency"} & set(choices)


def test_the_table_names_each_override():
    text = autoconfig.table([autoconfig.Choice("input", "84x48", "scaled", "--width --height")])
    assert text.splitlines()[0] == "what I chose and why:"
    assert "84x48" in text and text.rstrip().endswith("--width --height")
