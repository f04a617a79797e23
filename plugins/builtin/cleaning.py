"""Cleaning steps: threshold (fixed or Otsu), median filter, remove small specks.

These work on uint8 images (as decoded, before ``normalize``); a colour image is reduced to
its luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, as PIL's ``convert("L")``) where a step
needs one value per pixel.

``remove_specks`` labels connected components without scipy: horizontal runs, then a
data-parallel union-find over the runs in numpy (see ``label_components``), so its cost grows
with the number of foreground pixels and only logarithmically with the size of a component,
never with a Python loop per pixel.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from capserve.plugins.builtin.colour import require_uint8
from capserve.plugins.hookspecs import hookimpl
from capserve.core.steps import Param, Step


def luma(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 luma of a uint8 ``(H, W, C)`` image."""
    channels = image.shape[-1]
    if channels == 1:
        return image[..., 0]
    return np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).convert("L"))


def otsu_threshold(gray: np.ndarray) -> int:
    """The Otsu threshold of a uint8 image: values ``<= t`` form one class, ``> t`` the other.

    Maximises the between-class variance over all 256 candidate thresholds at once. An image
    with a single grey level has no split; 127 is returned then.
    """
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    weight = np.cumsum(hist)  # pixels <= t
    mass = np.cumsum(hist * np.arange(256))
    between = (mass[-1] * weight - mass * total) ** 2
    denominator = weight * (total - weight)
    valid = denominator > 0
    if not valid.any():
        return 127
    score = np.zeros(256)
    score[valid] = between[valid] / denominator[valid]
    return int(np.argmax(score))


def threshold(image: np.ndarray, *, method: str = "fixed", value: int = 128, invert: bool = False) -> np.ndarray:
    """One channel of 0 and 255: pixels whose luma is above the threshold become 255 (white).

    ``method: otsu`` picks the threshold per image from its histogram (bimodal images: text
    and background); ``fixed`` uses ``value``. ``invert`` swaps black and white.
    """
    require_uint8(image, "threshold")
    gray = luma(image)
    cut = otsu_threshold(gray) if method == "otsu" else value
    above, below = (0, 255) if invert else (255, 0)
    table = np.full(256, below, dtype=np.uint8)
    table[cut + 1 :] = above
    return table[gray][..., None]


# A median-of-9 sorting network (N. Devillard, "Fast median search", after Paeth): after
# these 19 compare-exchanges the fifth of nine values is their median.
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
            (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))  # fmt: skip


def _median3(image: np.ndarray) -> np.ndarray:
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = image.shape[:2]
    v = [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
    for a, b in _MEDIAN9:
        low = np.minimum(v[a], v[b])
        v[b] = np.maximum(v[a], v[b])
        v[a] = low
    return v[4]


def median_filter(image: np.ndarray, *, size: int = 3) -> np.ndarray:
    """Each pixel (each channel) becomes the median of its ``size`` x ``size`` neighbourhood.

    Removes salt-and-pepper noise and thin lines while keeping edges; edges are replicated.
    Size 3 runs a median-of-9 sorting network on nine shifted views of the image (19
    ``np.minimum``/``np.maximum`` pairs; the same result as PIL's ``MedianFilter(3)``, several
    times faster); larger sizes use PIL's ``ImageFilter.MedianFilter`` (uint8) or a numpy
    sliding window (float).
    """
    if size == 3:
        return _median3(image)
    if image.dtype == np.uint8:
        channels = image.shape[-1]
        plane = image[..., 0] if channels == 1 else image
        filtered = Image.fromarray(np.ascontiguousarray(plane)).filter(
            ImageFilter.MedianFilter(size)
        )
        out = np.asarray(filtered)
        return out[..., None] if channels == 1 else out
    pad = size // 2
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(0, 1))
    return np.median(windows, axis=(-2, -1)).astype(image.dtype)


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the True pixels of a 2-D bool ``mask``.

    Returns ``(pixels, labels)``: the flat indices of the True pixels (ascending) and, for each,
    the id of its component (ids are small integers, equal within a component, not contiguous).

    Method, all whole-array numpy:

    1. Horizontal runs: on a copy padded with one empty column and row, every True pixel whose
       left neighbour is empty starts a run; a cumulative sum numbers the runs, so horizontal
       connections cost nothing further.
    2. Edges between runs: for the pixel below (and, with ``connectivity: 8``, below-left and
       below-right) of every True pixel, one gather says whether it is True and which run it is in.
    3. Union-find on runs, all edges at once: each round hooks the larger root of every edge
       onto the smaller (``np.minimum.at``), then pointer jumping (``parent = parent[parent]``)
       flattens every tree; edges whose ends share a root are dropped, and rounds repeat until
       none is left. Ids only ever decrease, so no cycle can form. Every root that has a
       neighbouring root with a smaller id is hooked in a round, so only roots smaller than
       all their neighbours survive it; on captcha-sized images this takes a few rounds (2 on
       the 100x50 captcha of benchmarks/chain_cost.py).
    """
    height, width = mask.shape
    stride = width + 1
    padded = np.zeros((height + 1, stride), dtype=bool)
    padded[:height, :width] = mask
    flat = padded.ravel()
    where = np.flatnonzero(flat)
    if where.size == 0:
        return where, where.copy()
    starts = ~flat[where - 1]  # index -1 reads the last (padding, empty) element
    run = np.cumsum(starts) - 1
    run_at = np.empty(flat.size, dtype=np.intp)
    run_at[where] = run
    offsets = (stride, stride + 1, stride - 1) if connectivity == 8 else (stride,)
    us, vs = [], []
    for offset in offsets:
        neighbour = where + offset  # stays inside: the last row and column are padding
        present = flat[neighbour]
        us.append(run[present])
        vs.append(run_at[neighbour[present]])
    u, v = np.concatenate(us), np.concatenate(vs)
    parent = np.arange(int(run[-1]) + 1)
    while u.size:
        pu, pv = parent[u], parent[v]
        active = pu != pv
        if not active.any():
            break
        u, v, pu, pv = u[active], v[active], pu[active], pv[active]
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:  # pointer jumping until every run points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    rows, cols = np.divmod(where, stride)
    return rows * width + cols, parent[run]


def remove_specks(
    image: np.ndarray,
    *,
    min_size: int = 10,
    connectivity: int = 8,
    foreground: str = "dark",
    threshold: int = 128,
) -> np.ndarray:
    """Clear every connected blob of foreground smaller than ``min_size`` pixels.

    Foreground is the pixels whose luma is below ``threshold`` (``dark``) or above it
    (``light``); a removed blob is painted white (dark foreground) or black (light), in every
    colour channel (alpha is kept).
    """
    require_uint8(image, "remove_specks")
    gray = luma(image)
    mask = gray < threshold if foreground == "dark" else gray > threshold
    pixels, labels = label_components(mask, connectivity)
    if pixels.size == 0:
        return image
    sizes = np.bincount(labels)
    small = pixels[sizes[labels] < min_size]
    if small.size == 0:
        return image
    out = image.copy()
    flat = out.reshape(-1, out.shape[-1])
    colour = slice(0, 3) if out.shape[-1] == 4 else slice(None)
    flat[small, colour] = 255 if foreground == "dark" else 0
    return out


@hookimpl
def register_preprocess_steps():
    return [
        Step(
            "threshold",
            threshold,
            (
                Param("method", "str", default="fixed", choices=("fixed", "otsu")),
                Param("value", "int", default=128, min=0, max=254, help="for fixed: luma above it is white"),
                Param("invert", "bool", default=False, help="white text on black instead"),
            ),
            "Binarize to one channel of 0 and 255, by a fixed threshold or Otsu's per image.",
        ),
        Step(
            "median_filter",
            median_filter,
            (Param("size", "int", default=3, choices=(3, 5, 7), help="window size"),),
            "Median of each pixel's neighbourhood: removes salt-and-pepper noise and thin lines.",
        ),
        Step(
            "remove_specks",
            remove_specks,
            (
                Param("min_size", "int", default=10, min=1, help="blobs with fewer pixels are removed"),
                Param("connectivity", "int", default=8, choices=(4, 8), help="8 counts diagonal neighbours"),
                Param("foreground", "str", default="dark", choices=("dark", "light")),
                Param("threshold", "int", default=128, min=1, max=254, help="luma that separates foreground"),
            ),
            "Remove connected blobs of foreground smaller than min_size pixels (dots, specks).",
        ),
    ]
