"""Geometry steps: resize to the model input, crop fixed margins, trim to the content."""

from __future__ import annotations

import numpy as np
from PIL import Image

from capserve.plugins.builtin.colour import color_distance_mask, require_uint8
from capserve.plugins.hookspecs import hookimpl
from capserve.core.steps import Param, Step


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


def crop(image: np.ndarray, *, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0) -> np.ndarray:
    """Cut ``left``, ``top``, ``right`` and ``bottom`` pixels off the edges (a view, no copy)."""
    height, width = image.shape[:2]
    if left + right >= width or top + bottom >= height:
        raise ValueError(
            f"crop margins left={left} right={right} top={top} bottom={bottom} leave nothing of a "
            f"{width}x{height} image"
        )
    return image[top : height - bottom, left : width - right]


def trim(
    image: np.ndarray,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    tolerance: float = 40.0,
    margin: int = 0,
) -> np.ndarray:
    """Crop to the bounding box of the pixels that differ from ``background``, plus ``margin``.

    An image with no such pixel is returned unchanged. uint8 images only.
    """
    require_uint8(image, "trim")
    content = ~color_distance_mask(image, (background,), tolerance)
    if image.shape[-1] == 4:
        content &= image[..., 3] > 0
    rows = np.flatnonzero(content.any(axis=1))
    if rows.size == 0:
        return image
    cols = np.flatnonzero(content.any(axis=0))
    height, width = image.shape[:2]
    top, bottom = max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, height)
    left, right = max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, width)
    return image[top:bottom, left:right]


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
        Step(
            "crop",
            crop,
            tuple(
                Param(side, "int", default=0, min=0, help=f"pixels cut off the {side} edge")
                for side in ("left", "top", "right", "bottom")
            ),
            "Cut fixed margins off the edges (e.g. a border or a logo).",
        ),
        Step(
            "trim",
            trim,
            (
                Param("background", "rgb", default=(255, 255, 255), help="colour of the empty border"),
                Param("tolerance", "float", default=40.0, min=0, max=442, help="Euclidean RGB distance"),
                Param("margin", "int", default=0, min=0, help="pixels kept around the content"),
            ),
            "Crop to the bounding box of the content (pixels that differ from the background).",
        ),
    ]
