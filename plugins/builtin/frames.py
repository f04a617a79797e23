"""Frames steps: turn the frames of an animated image (GIF, WebP) into one image.

A frames step must be the first of a preprocess chain; the server then decodes every frame
as ``(F, H, W, 4)`` RGBA uint8 (a still image is one frame). Each step first flattens the
frames onto ``background`` (so transparent pixels do not count as black) and returns one
``(H, W, 3)`` RGB uint8 image.
"""

from __future__ import annotations

import numpy as np

from capserve.plugins.builtin.colour import composite
from capserve.plugins.hookspecs import hookimpl
from capserve.core.steps import Param, Step


def opaque_frames(frames: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """``(F, H, W, C)`` with no transparency left: RGBA composited onto ``background``.

    Frames that are all opaque come back as they are, alpha channel included, so the reductions
    below run on the contiguous array (several times faster than on an RGB view of RGBA);
    ``_rgb`` drops the alpha channel of the one image they return.
    """
    if frames.ndim == 3:  # one still image given where frames were expected
        frames = frames[None]
    if frames.dtype != np.uint8:
        raise TypeError(f"frames steps work on uint8 frames as decoded, got {frames.dtype}")
    if frames.shape[-1] != 4 or frames[..., 3].min() == 255:
        return frames
    return composite(frames, background)


def _rgb(image: np.ndarray) -> np.ndarray:
    """One reduced ``(H, W, C)`` image as RGB: alpha dropped, gray widened."""
    if image.shape[-1] == 4:
        return image[..., :3]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image


def frames_concat(
    frames: np.ndarray, *, direction: str = "horizontal", background: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """The frames side by side (``horizontal``: F*W wide) or stacked (``vertical``: F*H high)."""
    flat = opaque_frames(frames, background)
    count, height, width, channels = flat.shape
    if direction == "horizontal":
        return _rgb(flat.transpose(1, 0, 2, 3).reshape(height, count * width, channels))
    return _rgb(flat.reshape(count * height, width, channels))


def frames_blend(frames: np.ndarray, *, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """The mean of the frames, per pixel and channel (rounded half up)."""
    flat = opaque_frames(frames, background)
    count = flat.shape[0]
    if count == 1:
        return _rgb(flat[0])
    total = flat.sum(axis=0, dtype=np.uint32)
    return _rgb((total / count + 0.5).astype(np.uint8))


def _sorted_planes(frames: np.ndarray) -> list[np.ndarray]:
    """The frames sorted per pixel and channel, by an odd-even transposition network."""
    planes = list(frames)
    count = len(planes)
    for round_ in range(count):
        for i in range(round_ % 2, count - 1, 2):
            low = np.minimum(planes[i], planes[i + 1])
            planes[i + 1] = np.maximum(planes[i], planes[i + 1])
            planes[i] = low
    return planes


def frames_median(frames: np.ndarray, *, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """The median of the frames, per pixel and channel: drops noise that moves between frames.

    Up to 9 frames: a sorting network of ``np.minimum``/``np.maximum`` over whole frames; more:
    ``np.partition``. An even count gives the mean of the middle two (rounded half up).
    """
    flat = opaque_frames(frames, background)
    count = flat.shape[0]
    if count == 1:
        return _rgb(flat[0])
    middle = count // 2
    if count <= 9:
        ordered = _sorted_planes(flat)
        high, low = ordered[middle], ordered[middle - 1]
    else:
        kth = [middle - 1, middle] if count % 2 == 0 else [middle]
        parted = np.partition(flat, kth, axis=0)
        high, low = parted[middle], parted[middle - 1]
    if count % 2:
        return _rgb(high)
    return _rgb(((low.astype(np.uint16) + high + 1) >> 1).astype(np.uint8))


def frames_min(frames: np.ndarray, *, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """The darkest value of each pixel and channel over the frames.

    For animations that show a different part of dark text in each frame: the minimum puts
    every part together on a light background.
    """
    return _rgb(opaque_frames(frames, background).min(axis=0))


def frames_max(frames: np.ndarray, *, background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """The lightest value of each pixel and channel over the frames (light text on dark)."""
    return _rgb(opaque_frames(frames, background).max(axis=0))


def frames_pick(frames: np.ndarray, *, index: int = 0, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """One frame; negative counts from the end, and an index past either end takes the end frame."""
    if frames.ndim == 3:
        frames = frames[None]
    count = frames.shape[0]
    position = index if index >= 0 else count + index
    position = min(max(position, 0), count - 1)
    return _rgb(opaque_frames(frames[position : position + 1], background)[0])


def _background(default: tuple[int, int, int] = (255, 255, 255)) -> Param:
    return Param("background", "rgb", default=default, help="colour behind transparent pixels")


@hookimpl
def register_preprocess_steps():
    return [
        Step(
            "frames_concat",
            frames_concat,
            (Param("direction", "str", default="horizontal", choices=("horizontal", "vertical")), _background()),
            "Every frame side by side (or stacked) in one image.",
            frames=True,
        ),
        Step("frames_blend", frames_blend, (_background(),), "The mean of the frames.", frames=True),
        Step(
            "frames_median",
            frames_median,
            (_background(),),
            "The per-pixel median of the frames (removes noise that moves between frames).",
            frames=True,
        ),
        Step(
            "frames_min",
            frames_min,
            (_background(),),
            "The darkest value of each pixel over the frames (dark text shown in parts).",
            frames=True,
        ),
        Step(
            "frames_max",
            frames_max,
            (_background((0, 0, 0)),),
            "The lightest value of each pixel over the frames (light text on dark, shown in parts).",
            frames=True,
        ),
        Step(
            "frames_pick",
            frames_pick,
            (
                Param("index", "int", default=0, help="frame number from 0; negative counts from the end"),
                _background(),
            ),
            "One frame of the animation (indices past the end take the last frame).",
            frames=True,
        ),
    ]
