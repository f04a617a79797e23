"""Geometry steps: resize to the model input."""

from __future__ import annotations

import numpy as np
from PIL import Image

from plugins.hookspecs import hookimpl
from plugins.steps import Param, Step


def _resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if plane.dtype == np.uint8:
        return np.asarray(Image.fromarray(plane).resize(size, Image.BILINEAR))
    return np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    if image.dtype == np.uint8 and image.shape[-1] in (3, 4):
        return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    if image.dtype == np.uint8 and image.shape[-1] == 1:
        return _resize_plane(image[..., 0], size)[..., None]
    return np.stack([_resize_plane(image[..., c], size) for c in range(image.shape[-1])], axis=-1)


def resize(
    image: np.ndarray,
    *,
    mode: str = "stretch",
    background: float = 255.0,
    input_width: int,
    input_height: int,
    input_channels: int,
) -> np.ndarray:
    """Resize to the model input; ``pad`` keeps the aspect ratio and fills with ``background``."""
    if mode == "stretch":
        return _resize(image, (input_width, input_height))
    height, width = image.shape[:2]
    scale = min(input_width / width, input_height / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    scaled = _resize(image, (new_w, new_h))
    out = np.full((input_height, input_width, image.shape[-1]), background, dtype=image.dtype)
    top, left = (input_height - new_h) // 2, (input_width - new_w) // 2
    out[top : top + new_h, left : left + new_w] = scaled
    return out


@hookimpl
def register_preprocess_steps():
    return [
        Step(
            "resize",
            resize,
            (
                Param("mode", "str", default="stretch", choices=("stretch", "pad")),
                Param("background", "float", default=255.0, min=0, help="fill value for pad"),
            ),
            "Resize to the model's input size, stretched or keeping aspect ratio with padding.",
            uses_input=True,
        ),
    ]
