"""Frames steps: turn the frames of an animated image (GIF, WebP) into one image.

A frames step must be the first of a preprocess chain; the server then decodes every frame
as ``(F, H, W, 4)`` RGBA uint8 (a still image is one frame). Each step first flattens the
frames onto ``background`` (so transparent pixels do not count as black) and returns one
``(H, W, 3)`` RGB uint8 image.
"""

from __future__ import annotations

import numpy as np

from plugins.hookspecs import hookimpl
from plugins.steps import Param, Step


def flatten_frames(frames: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """``(F, H, W, C)`` -> ``(F, H, W, 3)``: RGBA composited onto ``background``, gray widened."""
    if frames.ndim == 3:  # one still image given where frames were expected
        frames = frames[None]
    if frames.dtype != np.uint8:
        raise TypeError(f"frames steps work on uint8 frames as decoded, got {frames.dtype}")
    channels = frames.shape[-1]
    if channels == 1:
        return np.repeat(frames, 3, axis=-1)
    if channels == 3:
        return frames
    alpha = frames[..., 3:]
    if alpha.min() == 255:
        return frames[..., :3]
    alpha = alpha.astype(np.uint16)
    bg = np.asarray(background, dtype=np.uint16)
    out = (frames[..., :3].astype(np.uint16) * alpha + bg * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def frames_concat(
    frames: np.ndarray, *, direction: str = "horizontal", background: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """The frames side by side (``horizontal``: F*W wide) or stacked (``vertical``: F*H high)."""
    flat = flatten_frames(frames, background)
    count, height, width, channels = flat.shape
    if direction == "horizontal":
        return flat.transpose(1, 0, 2, 3).reshape(height, count * width, channels)
    return flat.reshape(count * height, width, channels)


def frames_blend(frames: np.ndarray, *, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """The mean of the frames, per pixel and channel (rounded)."""
    flat = flatten_frames(frames, background)
    if flat.shape[0] == 1:
        return flat[0]
    total = flat.sum(axis=0, dtype=np.uint32)
    return ((total + flat.shape[0] // 2) // flat.shape[0]).astype(np.uint8)


def frames_median(frames: np.ndarray, *, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """The median of the frames, per pixel and channel: drops noise that moves between frames."""
    flat = flatten_frames(frames, background)
    count = flat.shape[0]
    if count == 1:
        return flat[0]
    ordered = np.sort(flat, axis=0)
    middle = count // 2
    if count % 2:
        return ordered[middle]
    return ((ordered[middle - 1].astype(np.uint16) + ordered[middle] + 1) // 2).astype(np.uint8)


def frames_min(frames: np.ndarray, *, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """The darkest value of each pixel and channel over the frames.

    For animations that show a different part of dark text in each frame: the minimum puts
    every part together on a light background.
    """
    return flatten_frames(frames, background).min(axis=0)


def frames_max(frames: np.ndarray, *, background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """The lightest value of each pixel and channel over the frames (light text on dark)."""
    return flatten_frames(frames, background).max(axis=0)


def frames_pick(frames: np.ndarray, *, index: int = 0, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """One frame; negative counts from the end, and an index past either end takes the end frame."""
    if frames.ndim == 3:
        frames = frames[None]
    count = frames.shape[0]
    position = index if index >= 0 else count + index
    position = min(max(position, 0), count - 1)
    return flatten_frames(frames[position : position + 1], background)[0]


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
