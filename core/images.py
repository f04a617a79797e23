"""Decode image bytes into the numpy arrays preprocess chains take.

Still images become ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (when the image has
transparency) uint8 arrays; with ``frames=True`` an animated image becomes ``(F, H, W, C)``.
With ``mode="L"`` (a chain that starts with ``grayscale``, see ``Step.decode_mode``) an L, RGB
or RGBA image becomes ``(H, W, 1)`` gray straight from PIL, which converts in C while decoding
rather than after it in numpy. Size limits are checked from the header before any pixel is
decoded.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from capserve.core.errors import ImageError

DEFAULT_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 4_000_000
    max_frames: int = 100
    formats: tuple[str, ...] = DEFAULT_FORMATS


DEFAULT_LIMITS = ImageLimits()


def open_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Open (not yet decode) ``data`` and check its format and size against ``limits``."""
    if not data:
        raise ImageError("the image is empty", code="empty_image")
    try:
        image = Image.open(io.BytesIO(data), formats=None)
    except UnidentifiedImageError:
        raise ImageError("the data is not an image in a known format") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"the image is too large: {exc}", code="image_too_large") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"the image cannot be read: {exc}") from None
    if image.format not in limits.formats:
        raise ImageError(
            f"image format {image.format} is not accepted; accepted: {', '.join(limits.formats)}",
            code="unsupported_image_format",
        )
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError("the image has no pixels")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"the image is {width}x{height} pixels, over the limit of {limits.max_pixels}",
            code="image_too_large",
        )
    return image


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


# The images PIL turns into gray with the ITU-R 601-2 weights of the grayscale step and no
# other change (alpha ignored); palette and 16-bit images take the general path.
_GRAY_FROM = ("L", "RGB", "RGBA")


def image_to_array(image: Image.Image, mode: str | None = None) -> np.ndarray:
    """One PIL image (its current frame) as an ``(H, W, 3|4)`` uint8 array, or ``(H, W, 1)``
    for ``mode="L"`` where the image allows it."""
    if mode == "L" and image.mode in _GRAY_FROM:
        return np.asarray(image.convert("L") if image.mode != "L" else image)[..., None]
    mode = "RGBA" if _has_alpha(image) else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    return np.asarray(image)


def frames_to_array(image: Image.Image, max_frames: int) -> np.ndarray:
    """Every frame of ``image`` as ``(F, H, W, 4)`` uint8 (RGBA, since frames may differ)."""
    n_frames = getattr(image, "n_frames", 1)
    if n_frames > max_frames:
        raise ImageError(
            f"the image has {n_frames} frames, over the limit of {max_frames}", code="too_many_frames"
        )
    return np.stack([np.asarray(frame.convert("RGBA")) for frame in ImageSequence.Iterator(image)])


def decode_image(
    data: bytes, *, frames: bool = False, mode: str | None = None, limits: ImageLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """Decode ``data``: the first frame as ``(H, W, C)`` (``mode`` as in ``image_to_array``),
    or with ``frames`` all as ``(F, H, W, C)``."""
    image = open_image(data, limits)
    try:
        return frames_to_array(image, limits.max_frames) if frames else image_to_array(image, mode)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"the image cannot be decoded: {exc}") from None
