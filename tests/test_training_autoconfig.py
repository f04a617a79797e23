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
from capserve.training import pipeline
from capserve.training.pipeline import Backbone, TrainOptions, configure

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
    """What ``configure`` chooses; from scratch unless ``from_scratch=False`` is given (the
    default start is tested below, against a backbone of the test's own)."""
    given.setdefault("from_scratch", True)
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


BACKBONE_CONFIG = {"arch": "cnn", "decoder": "ctc", "height": 48, "width": 128, "channels": 1, "charset_size": 66,
                   "length": 8, "filters": [16, 32, 64, 96], "units": 128, "dropout": 0.2, "batch_norm": True}


@pytest.fixture
def backbone(monkeypatch, tmp_path):
    """A general backbone as the bundle holds it (configure reads only its state)."""
    found = Backbone(tmp_path / "general" / "1" / "backbone", BACKBONE_CONFIG, "1")
    monkeypatch.setattr(pipeline, "general_backbone", lambda: found)
    return found


def test_a_labelled_folder_starts_from_the_general_backbone_by_default(tmp_path, backbone):
    folder = write(tmp_path / "small", [(draw(t, size=(100, 30)), t) for t in labels(20)])
    options, choices = choose(folder, from_scratch=False)
    assert options.warm_start == backbone.folder
    assert choices["start"].value == "general backbone v1" and choices["start"].override == "--from-scratch"
    assert (options.width, options.height) == (160, 48)  # 100x30 at the backbone's 48 px, aspect kept
    assert "general backbone's height" in choices["input"].why
    assert options.augment == "strong" and "augment" in choices
    options, choices = choose(folder, from_scratch=False, augment="light", width=120)
    assert options.augment == "light" and "augment" not in choices and (options.width, options.height) == (120, 48)


def test_from_scratch_opts_out_of_the_general_backbone(tmp_path, backbone):
    folder = write(tmp_path / "small", [(draw(t, size=(100, 30)), t) for t in labels(20)])
    options, choices = choose(folder, from_scratch=True)
    assert options.warm_start is None and "start" not in choices
    assert (options.width, options.height) == (100, 30) and options.augment == "light"


def test_settings_the_general_backbone_cannot_take_are_refused(tmp_path, backbone):
    folder = write(tmp_path / "small", [(draw(t, size=(100, 30)), t) for t in labels(20)])
    for given, flag in [({"channels": 3}, "--channels 3"), ({"height": 32}, "--height 32"),
                        ({"arch": "crnn"}, "--arch crnn"), ({"filters": (8, 16)}, "--filters 8,16"),
                        ({"units": 64}, "--units 64"), ({"batch_norm": False}, "--no-batch-norm")]:
        with pytest.raises(ValueError, match="train with --from-scratch") as caught:
            choose(folder, from_scratch=False, **given)
        assert str(caught.value).startswith(flag + ": the general backbone"), caught.value
    options, _ = choose(folder, from_scratch=False, channels=1, height=48, arch="cnn", decoder="fixed")
    assert options.warm_start == backbone.folder  # what the backbone has, or a new head, is no conflict


def test_colour_chosen_from_the_images_starts_from_scratch_and_says_why(tmp_path, backbone):
    hue_only = write(tmp_path / "hue", [(draw(t, fg=RED, bg=EQUAL_GREEN), t) for t in labels(20)])
    options, choices = choose(hue_only, from_scratch=False)
    assert options.channels == 3 and options.warm_start is None
    assert choices["start"].value == "from scratch" and "reads 1-channel images" in choices["start"].why
    assert options.augment == "light"


def test_a_generator_run_and_an_explicit_warm_start_keep_their_own_start(tmp_path, backbone):
    folder = write(tmp_path / "small", [(draw(t, size=(100, 30)), t) for t in labels(20)])
    options, choices = choose(folder, from_scratch=False, warm_start=tmp_path / "mine")
    assert options.warm_start == tmp_path / "mine" and "start" not in choices
    options, choices = configure(TrainOptions(site="g", out=tmp_path / "r", generator="mixture:width=96,height=32"))
    assert options.warm_start is None and "start" not in {c.setting for c in choices}


def test_without_a_general_backbone_a_folder_trains_from_scratch(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "general_backbone", lambda: None)
    folder = write(tmp_path / "small", [(draw(t, size=(100, 30)), t) for t in labels(20)])
    options, choices = choose(folder, from_scratch=False)
    assert options.warm_start is None and choices["start"].why == "no general backbone is installed"
