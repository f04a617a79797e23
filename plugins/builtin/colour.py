"""Colour steps: grayscale (by lightness, or by the colours' main axis), scaling to [0, 1],
invert, keep or drop colours, flatten transparency.

Every step here is a handful of whole-array numpy or PIL operations. The colour-matching steps
(``keep_colors``, ``drop_colors``, ``flatten_alpha``) work on uint8 images (values 0-255, as
decoded), so they belong before ``normalize`` in a chain.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from capserve.plugins.hookspecs import hookimpl
from capserve.core.steps import Param, Step


def require_uint8(image: np.ndarray, step: str) -> None:
    if image.dtype != np.uint8:
        raise TypeError(f"{step} works on uint8 images (0-255); put it before normalize, got {image.dtype}")


LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R 601 lightness weights of R, G and B: grayscale's default, and what PIL's "L" uses."""
LUMA = np.asarray(LUMA_WEIGHTS, dtype=np.float32)


def grayscale(image: np.ndarray, *, weights: tuple[float, ...] = LUMA_WEIGHTS) -> np.ndarray:
    """RGB(A) -> one channel, as a weighted sum of R, G and B (alpha is ignored)."""
    if image.shape[-1] == 1:
        return image
    rgb = image[..., :3]
    if image.dtype != np.uint8:
        return (rgb @ np.asarray(weights, dtype=np.float32))[..., None]
    # float32 first: a matmul straight on uint8 takes numpy's slow mixed-type path.
    gray = rgb.astype(np.float32) @ np.asarray(weights, dtype=np.float32)
    gray += 0.5
    if min(weights) < 0 or sum(weights) > 1:  # only then can a value leave 0..255
        np.clip(gray, 0, 255, out=gray)
    return gray.astype(np.uint8)[..., None]


def decolorize(image: np.ndarray, *, switch_below: float = 0.2) -> np.ndarray:
    """RGB(A) uint8 -> one channel: ``grayscale``, unless lightness hardly tells the colours apart.

    Text whose lightness matches its background's (red on a green as light) vanishes in gray.
    When the lightness's spread is below ``switch_below`` of the spread along the colours' main
    axis (their first principal component; gray images score 0.58), the image is projected on
    that axis instead, stretched to 0..255 between its 1st and 99th percentiles and turned so
    that the most common shade, the background, is the lighter side. Every other image comes
    back exactly as ``grayscale`` gives it.
    """
    if image.shape[-1] == 1:
        return image
    require_uint8(image, "decolorize")
    sample = np.ascontiguousarray(image[::2, ::2, :3].reshape(-1, 3).T, dtype=np.float32)  # (3, N): fast sums
    mean = sample.mean(axis=1)
    covariance = sample @ sample.T / sample.shape[1] - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(covariance)
    if LUMA @ covariance @ LUMA >= switch_below**2 * values[-1]:  # the lightness's variance, from the same sums
        return grayscale(image)
    projected = image[..., :3].astype(np.float32) @ vectors[:, -1]
    low, middle, high = np.percentile(projected[::2, ::2], (1, 50, 99))
    if high - low < 1:
        return grayscale(image)
    if middle < (low + high) / 2:  # the background is the common shade: make it the light one
        projected, low, high = -projected, -high, -low
    return np.clip((projected - low) * (255 / (high - low)) + 0.5, 0, 255).astype(np.uint8)[..., None]


def normalize(image: np.ndarray, *, scale: float = 1 / 255, offset: float = 0.0) -> np.ndarray:
    """``image * scale + offset`` as float32 (by default uint8 0..255 -> 0..1)."""
    return image.astype(np.float32) * np.float32(scale) + np.float32(offset)


def invert(image: np.ndarray, *, maximum: float = 1.0) -> np.ndarray:
    """Dark <-> light: ``255 - x`` for uint8, ``maximum - x`` for float. Alpha is kept as is."""
    colour = image[..., :3] if image.shape[-1] == 4 else image
    flipped = np.invert(colour) if image.dtype == np.uint8 else np.float32(maximum) - colour
    if image.shape[-1] != 4:
        return flipped
    return np.concatenate([flipped, image[..., 3:]], axis=-1)


def color_distance_mask(image: np.ndarray, colors: tuple[tuple[int, int, int], ...], tolerance: float) -> np.ndarray:
    """``(H, W)`` bool: True where a pixel's RGB lies within ``tolerance`` (Euclidean) of any colour.

    A one-channel image is compared as gray (r = g = b). Alpha, if any, is ignored. The
    distance is computed on whole colour planes in float32 (exact for these integers).
    """
    if image.shape[-1] >= 3:
        planes = np.moveaxis(image[..., :3], -1, 0).astype(np.float32)  # (3, H, W), contiguous
    else:
        gray = image[..., 0].astype(np.float32)
        planes = (gray, gray, gray)
    limit = np.float32(tolerance * tolerance)
    mask = None
    for colour in colors:
        dist = planes[0] - np.float32(colour[0])
        dist *= dist
        for plane, value in zip(planes[1:], colour[1:]):
            diff = plane - np.float32(value)
            diff *= diff
            dist += diff
        near = dist <= limit
        mask = near if mask is None else np.logical_or(mask, near, out=mask)
    return mask


def _fill(colour: tuple[int, int, int], channels: int) -> np.ndarray:
    """``colour`` as one pixel of an image with ``channels`` channels (gray: its luma; opaque)."""
    if channels == 1:
        return np.asarray([round(0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2])], dtype=np.uint8)
    return np.asarray(tuple(colour) + ((255,) if channels == 4 else ()), dtype=np.uint8)


def _paint(image: np.ndarray, where: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """A copy of ``image`` with the pixels in ``where`` set to ``colour`` (opaque if RGBA)."""
    out = image.copy()
    out[where] = _fill(colour, image.shape[-1])
    return out


def keep_colors(
    image: np.ndarray,
    *,
    colors: tuple[tuple[int, int, int], ...],
    tolerance: float = 40.0,
    background: tuple[int, int, int] = (255, 255, 255),
    foreground: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Keep pixels near any of ``colors``; every other pixel becomes ``background``.

    With ``foreground`` the kept pixels are painted that colour too, which binarizes the image
    by colour (e.g. red text on noise of every other colour -> black on white).
    """
    require_uint8(image, "keep_colors")
    near = color_distance_mask(image, colors, tolerance)
    if foreground is None:
        return _paint(image, ~near, background)
    # binarized: every pixel is one of two colours, picked per pixel in one pass
    channels = image.shape[-1]
    two = np.asarray([_fill(background, channels), _fill(foreground, channels)], dtype=np.uint8)
    return two[near.view(np.uint8)]


def drop_colors(
    image: np.ndarray,
    *,
    colors: tuple[tuple[int, int, int], ...],
    tolerance: float = 40.0,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Pixels near any of ``colors`` become ``background``; every other pixel is kept."""
    require_uint8(image, "drop_colors")
    return _paint(image, color_distance_mask(image, colors, tolerance), background)


def flatten_alpha(image: np.ndarray, *, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """RGBA -> RGB, compositing onto ``background``; an image without alpha passes unchanged.

    Transparent captchas often keep black (0, 0, 0) in their fully transparent pixels, so
    without this step the text (also dark) disappears into a black background.
    """
    if image.shape[-1] != 4:
        return image
    require_uint8(image, "flatten_alpha")
    if image[..., 3].min() == 255:
        return image[..., :3]
    return composite(image, background)


def composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """``(..., H, W, 4)`` uint8 over an opaque ``background`` -> ``(..., H, W, 3)`` uint8.

    PIL's ``paste`` with the image as its own mask, one frame at a time (C code; several times
    faster than numpy on interleaved channels). The tests check that it equals the exact
    ``round((rgb * a + bg * (255 - a)) / 255)`` for every colour value and alpha, on eight
    background colours.
    """
    if rgba.ndim == 4:
        return np.stack([composite(frame, background) for frame in rgba])
    layer = Image.fromarray(np.ascontiguousarray(rgba))
    base = Image.new("RGB", layer.size, tuple(background))
    base.paste(layer, mask=layer)
    return np.asarray(base)


_COLOR_PARAMS = (
    Param("colors", "list[rgb]", help="colours as [r, g, b] or '#rrggbb'"),
    Param("tolerance", "float", default=40.0, min=0, max=442, help="Euclidean RGB distance counted as near"),
    Param("background", "rgb", default=(255, 255, 255), help="colour of the pixels that are cleared"),
)


@hookimpl
def register_preprocess_steps():
    return [
        Step(
            "grayscale",
            grayscale,
            (Param("weights", "list[float]", default=LUMA_WEIGHTS, length=3, help="weights of R, G, B"),),
            "Weighted sum of the colour channels into one channel.",
            # PIL's own conversion to L uses these weights in 16-bit fixed point: the same gray
            # level but for 0.05% of all 2^24 colours, which land one level apart.
            decode_mode="L",
        ),
        Step(
            "decolorize",
            decolorize,
            (Param("switch_below", "float", default=0.2, min=0, max=1,
                   help="lightness spread, as a share of the main colour axis's, under which that axis is used"),),
            "Grayscale by lightness, or by the colours' main axis where only hue shows the text.",
        ),
        Step(
            "normalize",
            normalize,
            (Param("scale", "float", default=1 / 255), Param("offset", "float", default=0.0)),
            "Scale pixel values (by default to 0..1 float32).",
        ),
        Step(
            "invert",
            invert,
            (Param("maximum", "float", default=1.0, help="for float images: the value white has"),),
            "Swap dark and light (255 - x for uint8, maximum - x for float); alpha is kept.",
        ),
        Step(
            "keep_colors",
            keep_colors,
            _COLOR_PARAMS
            + (Param("foreground", "rgb", default=None, help="if set, paint the kept pixels this colour"),),
            "Keep the pixels near the given colours; every other pixel becomes the background.",
        ),
        Step(
            "drop_colors",
            drop_colors,
            _COLOR_PARAMS,
            "Clear the pixels near the given colours to the background (e.g. coloured noise).",
        ),
        Step(
            "flatten_alpha",
            flatten_alpha,
            (Param("background", "rgb", default=(255, 255, 255), help="colour behind transparent pixels"),),
            "Composite a transparent (RGBA) image onto a background colour, giving RGB.",
        ),
    ]
