"""What ``capserve train`` decides from the data by itself, and why.

Each function looks at a sample of the images or at the labels and returns its choice with the
reason; ``pipeline.prepare`` applies those the user did not set and prints them as a table
("what I chose and why"), each row naming the option that overrides it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

TARGET_HEIGHT = 48
"""Model input height for taller captchas: the bundled demo-var reads 160x60 images at 128x48
(97.95% in LiteRT); taller inputs cost training and serving time in proportion."""
MIN_HEIGHT = 16  # four poolings of the default model
GRAY_IMAGES_CHROMA = 6.0  # mean |RGB - gray| below this: the images have almost no colour
GRAY_KEEPS = 0.6  # gray keeps at least this share of the colour contrast: train on gray
ARITHMETIC_SHARE = 0.9  # this share of the labels are arithmetic: serve the computed answer


@dataclasses.dataclass(frozen=True)
class Choice:
    setting: str
    value: str
    why: str
    override: str


def table(choices: Sequence[Choice]) -> str:
    """The choices as aligned text lines, under a heading."""
    rows = [("setting", "chosen", "why", "override with")] + [(c.setting, c.value, c.why, c.override) for c in choices]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["what I chose and why:"]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    return "\n".join(lines)


def input_size(width: int, height: int, max_length: int, *, fixed_height: int | None = None) -> tuple[int, int, str]:
    """The model input for images of ``width`` x ``height``: taller ones scaled to
    ``TARGET_HEIGHT`` (or every one to ``fixed_height``, a pretrained backbone's) with their
    aspect ratio kept, and always wide enough for a CTC head to emit ``max_length`` characters
    (``8 * max_length + 4`` pixels)."""
    if fixed_height is not None:
        new_height = fixed_height
        why = ("the images' own size, the general backbone's height" if height == fixed_height else
               f"scaled from {width}x{height}, aspect kept, to the general backbone's height")
    elif height > TARGET_HEIGHT:
        new_height = TARGET_HEIGHT
        why = f"scaled from {width}x{height}, aspect kept: {TARGET_HEIGHT} px tall reads as well and costs less"
    elif height < MIN_HEIGHT:
        new_height = MIN_HEIGHT
        why = f"{height} px is below the model's least height, {MIN_HEIGHT}"
    else:
        new_height = height
        why = "the images' own size"
    new_width = max(4, round(width * new_height / height / 4) * 4)
    least = 8 * max_length + 4
    if new_width < least:
        new_width = least
        why += f"; widened to {least} px for {max_length} characters"
    return new_width, new_height, why


def colour_channels(images: Sequence[np.ndarray]) -> tuple[int, str]:
    """1 (gray) or 3 (colour) channels for ``(H, W, 3)`` uint8 images.

    The rule: images whose pixels are gray already (mean |RGB - gray| under
    ``GRAY_IMAGES_CHROMA``) train on gray; otherwise gray is kept when it keeps at least
    ``GRAY_KEEPS`` of the contrast the colour image has (the standard deviation of the gray
    image against that of the RGB values, per channel), and colour is kept when the text differs
    from its background in hue more than in lightness (red text on a green of the same
    lightness, say), which gray would erase.
    """
    if not images:
        return 1, "no images to look at"
    chroma, kept = [], []
    for image in images:
        rgb = image[..., :3].astype(np.float32)
        gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        chroma.append(float(np.abs(rgb - gray[..., None]).mean()))
        colour_contrast = float(np.sqrt(rgb.reshape(-1, 3).var(axis=0).mean()))
        kept.append(float(gray.std()) / colour_contrast if colour_contrast > 1e-3 else 1.0)
    mean_chroma, share = float(np.mean(chroma)), float(np.median(kept))
    if mean_chroma < GRAY_IMAGES_CHROMA:
        return 1, f"the images have almost no colour (mean |RGB - gray| {mean_chroma:.1f} of 255)"
    if share >= GRAY_KEEPS:
        return 1, f"gray keeps {share:.0%} of the colour contrast"
    return 3, f"gray keeps only {share:.0%} of the colour contrast: colour carries the text"


def is_arithmetic(labels: Sequence[str]) -> bool:
    """Whether the labels are arithmetic expressions (``12+7``, ``3x4=``, ``9-2=?``) whose
    answer a site wants, rather than text to read."""
    from capserve.plugins.builtin.text import OPERATORS, ExpressionError, evaluate

    if not labels:
        return False
    operators = set(OPERATORS) - set("=?")
    count = 0
    for label in labels:
        body = label.rstrip("=?").strip()
        if not any(c in operators for c in body[1:]):  # a leading minus is a sign
            continue
        try:
            evaluate(label)
        except ExpressionError:
            continue
        count += 1
    return count >= ARITHMETIC_SHARE * len(labels)


def case_rule(labels: Sequence[str]) -> str:
    """Why the labels' case is what the model learns."""
    letters = "".join(c for label in labels for c in label if c.isalpha())
    upper, lower = any(c.isupper() for c in letters), any(c.islower() for c in letters)
    if upper and lower:
        return "the labels have upper and lower case: case is read"
    if upper or lower:
        return f"the labels are all {'upper' if upper else 'lower'} case"
    return "the labels have no letters"


FRAMES_CANDIDATES = ("frames_min", "frames_max", "frames_median", "frames_blend")
PROBE_IMAGES, PROBE_VALIDATION, PROBE_STEPS = 800, 200, 120
PROBE_LEAST = 200  # fewer labelled animations than this: too few to learn from, frames_min is taken


def probe_frames(items, shape, charset: str, max_length: int, *, seed: int = 0,
                 backbone: Path | None = None) -> tuple[str, dict[str, float]]:
    """The frames step under which the animated images read best, by character accuracy on a
    sample of ``items`` (``(path, label)``). With a ``backbone`` (a checkpoint folder, such as the
    general model's), by how it reads the sample as it is, under a head for ``charset`` that keeps
    its rows (no training: a small sample is too little to learn from, not to read). Without one,
    each candidate trains the same small model from the same seed for ``PROBE_STEPS`` steps and
    is scored on held-out images."""
    import random

    from capserve.plugins.manager import compile_preprocess
    from capserve.training.datasets import Dataset, file_tensor
    from capserve.training.metrics import score
    from capserve.training.models import ModelConfig, build_model
    from capserve.training.train import TrainConfig, _load_warm_start, _read_state, fit, predict

    sample = random.Random(seed).sample(list(items), min(len(items), PROBE_IMAGES + PROBE_VALIDATION))
    cut = max(1, len(sample) * PROBE_IMAGES // (PROBE_IMAGES + PROBE_VALIDATION))
    config = ModelConfig(height=shape.height, width=shape.width, channels=shape.channels,
                         charset_size=len(charset), length=max_length, filters=(8, 16, 32, 32), units=64)
    reader = None
    if backbone is not None:
        config = ModelConfig.from_dict({**_read_state(backbone)["model_config"], "width": shape.width,
                                        "charset_size": len(charset), "length": max_length, "decoder": "ctc"})
        reader = build_model(config)
        _load_warm_start(backbone, reader, config, charset)
    batch = 32
    scores = {}
    for step in FRAMES_CANDIDATES:
        chain = [step, *(["grayscale"] if shape.channels == 1 else []), {"resize": {"mode": "stretch"}}, "normalize"]
        pre = compile_preprocess(chain, shape)
        x = np.stack([file_tensor(path.read_bytes(), pre) for path, _ in sample])
        labels = [label for _, label in sample]
        if reader is not None:
            scores[step] = score(labels, predict(reader, x, charset, "ctc")).char_accuracy
            continue
        train = Dataset(x[:cut], labels[:cut], ["probe"] * cut)
        val = Dataset(x[cut:], labels[cut:], ["probe"] * (len(sample) - cut))
        epochs = min(20, max(1, -(-PROBE_STEPS * batch // len(train))))
        result = fit(config, charset, train, val, TrainConfig(epochs=epochs, batch_size=batch, augment={}, seed=seed,
                                                              progress="none", catch_signals=False))
        scores[step] = max(r.char_accuracy for r in result.history)
    best = max(FRAMES_CANDIDATES, key=lambda s: (scores[s], -FRAMES_CANDIDATES.index(s)))
    return best, scores
