"""Decode image bytes into the numpy arrays preprocess chains take.

Still images become ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (when the image has
transparency) uint8 arrays; with ``frames=True`` an animated image becomes ``(F, H, W, C)``.
With ``mode="L"`` (a chain that starts with ``grayscale``, see ``Step.decode_mode``) an L, RGB
or RGBA image becomes ``(H, W, 1)`` gray straight from PIL, which converts in C while decoding
rather than after it in numpy.

Every limit is checked before the pixels it guards are decoded: the format (only the
allowed formats' parsers ever see the bytes), the pixels of a frame and of all frames
together (from the header and the frame count), and the number of scans of a JPEG (each
scan of a progressive JPEG costs a pass over the whole image). The EXIF orientation, when
there is one, is applied.
"""

from __future__ import annotations

import dataclasses
import io
import struct

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from capserve.core.errors import ImageError

DEFAULT_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 4_000_000  # of one frame
    max_frames: int = 100
    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_total_pixels: int = 16_000_000  # of all the frames a frames step decodes
    max_jpeg_scans: int = 64  # a baseline JPEG has one per component, progressive ones about 10


DEFAULT_LIMITS = ImageLimits()

# What PIL's parsers raise on broken files (a GIF cut inside a frame raises IndexError).
_BROKEN = (OSError, EOFError, ValueError, SyntaxError, IndexError, struct.error)


def open_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Open (not yet decode) ``data`` and check its format and size against ``limits``."""
    if not data:
        raise ImageError("the image is empty", code="empty_image")
    try:
        image = Image.open(io.BytesIO(data), formats=limits.formats)
    except UnidentifiedImageError:
        _refuse_other_format(data, limits)
        raise ImageError("the data is not an image in a known format") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"the image is too large: {exc}", code="image_too_large") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"the image cannot be read: {exc}") from None
    if image.format not in limits.formats:  # e.g. an MPO file from the JPEG parser
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
    if image.format == "JPEG":
        scans = data.count(b"\xff\xda")  # SOS markers; entropy-coded data escapes 0xFF as 0xFF00
        if scans > limits.max_jpeg_scans:
            raise ImageError(
                f"the JPEG has {scans} scans, over the limit of {limits.max_jpeg_scans}", code="too_many_scans"
            )
    return image


def _refuse_other_format(data: bytes, limits: ImageLimits) -> None:
    """415 for an image in a format PIL knows but ``limits`` does not accept, told from its
    first bytes only (no parser of that format runs)."""
    Image.init()
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        if name not in limits.formats and accept is not None and _accepts(accept, prefix):
            raise ImageError(
                f"image format {name} is not accepted; accepted: {', '.join(limits.formats)}",
                code="unsupported_image_format",
            )


def _accepts(accept, prefix: bytes) -> bool:
    try:
        return bool(accept(prefix))
    except Exception:  # a format's own test of the first bytes; any failure is a "no"
        return False


def frame_count(image: Image.Image) -> int:
    """How many frames ``image`` has (counting them reads the file, decoding nothing)."""
    try:
        return getattr(image, "n_frames", 1)
    except _BROKEN as exc:
        raise ImageError(f"the image's frames cannot be counted: {exc}") from None


def pixels_to_decode(image: Image.Image, frames: bool) -> int:
    """The pixels decoding ``image`` costs: its first frame, or with ``frames`` all of them."""
    width, height = image.size
    return width * height * (frame_count(image) if frames else 1)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


# The images PIL turns into gray with the ITU-R 601-2 weights of the grayscale step and no
# other change (alpha ignored); palette and 16-bit images take the general path.
_GRAY_FROM = ("L", "RGB", "RGBA")


def image_to_array(image: Image.Image, mode: str | None = None) -> np.ndarray:
    """One PIL image (its current frame) as an ``(H, W, 3|4)`` uint8 array, or ``(H, W, 1)``
    for ``mode="L"`` where the image allows it; turned upright if its EXIF says so."""
    if "exif" in image.info:  # set at open by JPEG, WebP and PNG (eXIf before the pixels)
        ImageOps.exif_transpose(image, in_place=True)
    if mode == "L" and image.mode in _GRAY_FROM:
        return np.asarray(image.convert("L") if image.mode != "L" else image)[..., None]
    mode = "RGBA" if _has_alpha(image) else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    return np.asarray(image)


def frames_to_array(image: Image.Image, limits: ImageLimits) -> np.ndarray:
    """Every frame of ``image`` as ``(F, H, W, 4)`` uint8 (RGBA, since frames may differ),
    refused before any frame is decoded if there are too many or they hold too many pixels."""
    n_frames = frame_count(image)
    if n_frames > limits.max_frames:
        raise ImageError(
            f"the image has {n_frames} frames, over the limit of {limits.max_frames}", code="too_many_frames"
        )
    total = pixels_to_decode(image, frames=True)
    if total > limits.max_total_pixels:
        raise ImageError(
            f"the image's {n_frames} frames of {image.size[0]}x{image.size[1]} are {total} pixels, "
            f"over the limit of {limits.max_total_pixels}",
            code="image_too_large",
        )
    out = np.empty((n_frames, image.size[1], image.size[0], 4), np.uint8)
    for index, frame in enumerate(ImageSequence.Iterator(image)):
        if index == n_frames or frame.size != image.size:
            raise ImageError("the image's frames do not match its header")
        out[index] = np.asarray(frame.convert("RGBA"))
    return out


def decode_image(
    data: bytes,
    *,
    frames: bool = False,
    mode: str | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
    image: Image.Image | None = None,
) -> np.ndarray:
    """Decode ``data``: the first frame as ``(H, W, C)`` (``mode`` as in ``image_to_array``),
    or with ``frames`` all as ``(F, H, W, C)``. ``image``: ``data`` already opened by ``open_image``."""
    if image is None:
        image = open_image(data, limits)
    try:
        return frames_to_array(image, limits) if frames else image_to_array(image, mode)
    except ImageError:
        raise
    except (*_BROKEN, Image.DecompressionBombError) as exc:
        raise ImageError(f"the image cannot be decoded: {exc}") from None
