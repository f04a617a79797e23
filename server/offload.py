"""Run a recognition off the event loop when its decoding can take more than a few ms.

The header is read first (``Model.open``, microseconds). An image whose decoding costs at
most ``INLINE_PIXELS`` pixels (every captcha-sized image: 100x50 decodes in ~0.1 ms) is
recognized inline, with no thread hop; a larger one, or a frames chain's many frames, goes to
a small thread pool (PIL releases the GIL while it decodes), so other requests are answered
meanwhile. Measurements: BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from capserve.core.decoders import Restriction
from capserve.core.model import Model, Recognition

INLINE_PIXELS = 100_000  # ~2 ms of PNG decoding at worst on one core
_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="capserve-decode")


async def recognize(model: Model, data: bytes, restrict: Restriction | None = None) -> Recognition:
    image = model.open(data)
    if model.decode_cost(image) <= INLINE_PIXELS:
        return model.recognize(data, image, restrict)
    return await asyncio.get_running_loop().run_in_executor(_pool, model.recognize, data, image, restrict)
