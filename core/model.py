"""A loaded registry entry and the recognition core: ``Model.recognize(image bytes)``.

The HTTP app and the SCF adapter both call ``recognize``; it is the whole data path of a
request after transport: decode, preprocess chain, interpreter, decoder, postprocess chain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import math
import time
from typing import Any

import numpy as np
from PIL import Image

from capserve.core.decoders import DECODERS, RESTRICTED_DECODERS, Restriction, output_classes
from capserve.core.errors import CapserveError, RecognitionFailed
from capserve.core.files import MAX_MODEL_BYTES, FileRefused, read_regular
from capserve.core.runtime import Runtime
from capserve.core.spec import ModelSpec, SpecError
from capserve.core.steps import Catalog
from capserve.core.chain import ChainError, InputShape, Postprocessor, Preprocessor, compile_postprocess, compile_preprocess
from capserve.core.images import DEFAULT_LIMITS, ImageLimits, open_image, pixels_to_decode


@dataclasses.dataclass(frozen=True)
class Recognition:
    text: str
    confidence: float
    raw_text: str
    char_confidences: tuple[float, ...]
    timings_ms: dict[str, float]

    def details(self) -> dict[str, Any]:
        """The decoder's text before post-processing, each of its characters with its
        probability, and where the time went (``?details=true``, ``capserve predict --details``)."""
        return {
            "raw_text": self.raw_text,
            "characters": [
                {"char": char, "confidence": round(p, 4)} for char, p in zip(self.raw_text, self.char_confidences)
            ],
            "timings_ms": {stage: round(ms, 3) for stage, ms in self.timings_ms.items()},
        }


class Model:
    """One servable entry: its spec, its interpreter pool and its compiled chains."""

    def __init__(
        self,
        spec: ModelSpec,
        catalog: Catalog,
        *,
        content: bytes | None = None,
        limits: ImageLimits = DEFAULT_LIMITS,
        max_interpreters: int = 8,
    ) -> None:
        """``content``: the model file as ``read_model(spec)`` returned it (read here if None)."""
        self.spec = spec
        self.limits = limits
        if content is None:
            content = read_model(spec)
        self.runtime = Runtime(content, max_interpreters=max_interpreters)
        _check_shapes(spec, self.runtime)
        shape = InputShape(spec.width, spec.height, spec.channels)
        try:
            self.preprocess: Preprocessor = compile_preprocess(spec.preprocess, shape, catalog.preprocess)
            self.postprocess: Postprocessor = compile_postprocess(spec.postprocess, catalog.postprocess)
        except ChainError as exc:
            raise SpecError(spec.path, f"{exc.chain}[{exc.index}]", f"step {exc.step!r}: {exc.reason}") from None
        self._decode = DECODERS[spec.decoder]
        self._decode_restricted = RESTRICTED_DECODERS[spec.decoder]
        # The shortest and longest text the decoder can give: up to one character per CTC
        # timestep, or exactly one per position.
        steps = self.runtime.output_shape[1]
        self.lengths: tuple[int, int] = (0, steps) if spec.decoder == "ctc" else (steps, steps)

    def warm_up(self) -> None:
        """Run the interpreter once, and then a blank image through the whole path, so that the
        first request pays no one-off cost: the interpreter's first invoke, and PIL's codec
        set-up on a process's first decode (7-19 ms measured)."""
        self.runtime.run(np.zeros((self.spec.height, self.spec.width, self.spec.channels), np.float32))
        with contextlib.suppress(CapserveError):  # e.g. PNG not among the accepted formats
            self.recognize(_blank_png(self.spec.width, self.spec.height))

    def open(self, data: bytes) -> Image.Image:
        """Read the image's header and check it against the limits; decodes nothing."""
        return open_image(data, self.limits)

    def decode_cost(self, image: Image.Image) -> int:
        """The pixels recognizing the opened ``image`` decodes (every frame for a frames chain)."""
        return pixels_to_decode(image, self.preprocess.wants_frames)

    def recognize(
        self, data: bytes, image: Image.Image | None = None, restrict: Restriction | None = None
    ) -> Recognition:
        """Recognize ``data``; ``image``: ``data`` as ``open`` returned it. ``restrict``: the
        decoder's text must meet it (the best reading that does; ``RestrictionUnmet`` if none can)."""
        t0 = time.perf_counter()
        image = self.preprocess.decode(data, self.limits, image)
        t1 = time.perf_counter()
        try:
            tensor = self.preprocess.tensor(image)
            t2 = time.perf_counter()
            probs = self.runtime.run(tensor)
            t3 = time.perf_counter()
            if restrict is None:
                raw, confidences = self._decode(probs, self.spec.charset)
            else:
                raw, confidences = self._decode_restricted(probs, self.spec.charset, restrict)
            text = self.postprocess(raw, confidences)
        except CapserveError:
            raise
        except Exception as exc:  # a plugin or the interpreter failed on this one request
            # The cause stays chained for the transport to log; its text is not for clients.
            raise RecognitionFailed(f"{self.spec.site} v{self.spec.version}: recognition failed") from exc
        t4 = time.perf_counter()
        return Recognition(
            text=text,
            confidence=math.prod(confidences) if confidences else 0.0,
            raw_text=raw,
            char_confidences=confidences,
            timings_ms={
                "decode": (t1 - t0) * 1e3,
                "preprocess": (t2 - t1) * 1e3,
                "invoke": (t3 - t2) * 1e3,
                "postprocess": (t4 - t3) * 1e3,
            },
        )

    def preview(self, data: bytes) -> bytes:
        """The tensor the model receives for ``data`` after preprocessing, as a PNG (scaled
        from its own minimum and maximum to 0-255). For people looking at why a model
        answered what it did; requests without it never run this."""
        tensor = self.preprocess.tensor(self.preprocess.decode(data, self.limits))
        return tensor_png(tensor)

    def describe(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "site": spec.site,
            "version": spec.version,
            "description": spec.description,
            "input": {"width": spec.width, "height": spec.height, "channels": spec.channels},
            "charset": spec.charset,
            "decoder": spec.decoder,
            "length": {"min": spec.min_length, "max": spec.max_length},
            "preprocess": list(self.preprocess.names),
            "postprocess": list(self.postprocess.names),
            "model_bytes": self.runtime.size,
            "quantization": spec.quantization,
            "training": spec.training,
        }


def tensor_png(tensor: np.ndarray) -> bytes:
    """An (H, W, C) float tensor as a PNG: gray for one channel, RGB for three, RGBA for four."""
    low, high = float(tensor.min()), float(tensor.max())
    scaled = (tensor - low) * (255.0 / (high - low)) if high > low else np.zeros_like(tensor)
    pixels = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def _blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def read_model(spec: ModelSpec) -> bytes:
    """The entry's model file (a regular file inside the entry's folder, under the size cap),
    checked against ``model.sha256`` when the entry has one."""
    try:
        content = read_regular(spec.model_file, max_bytes=MAX_MODEL_BYTES, inside=spec.directory)
    except FileNotFoundError:
        raise SpecError(spec.path, "model.file", f"{spec.model_file.name} does not exist") from None
    except FileRefused as exc:
        raise SpecError(spec.path, "model.file", f"refused: {exc}") from None
    except OSError as exc:
        raise SpecError(spec.path, "model.file", f"cannot be read: {exc}") from None
    if spec.sha256 is not None:
        digest = hashlib.sha256(content).hexdigest()
        if digest != spec.sha256:
            raise SpecError(spec.path, "model.sha256", f"does not match {spec.model_file.name} (its sha256 is {digest})")
    return content


def _check_shapes(spec: ModelSpec, runtime: Runtime) -> None:
    expected_in = (1, spec.height, spec.width, spec.channels)
    if runtime.input_shape != expected_in:
        raise SpecError(
            spec.path, "input", f"the entry says {expected_in[1:]} (H, W, C), the model takes {runtime.input_shape}"
        )
    classes = output_classes(spec.decoder, spec.charset)
    out = runtime.output_shape
    if len(out) != 3 or out[-1] != classes:
        raise SpecError(
            spec.path,
            "charset",
            f"{len(spec.charset)} characters need {classes} output classes with the {spec.decoder} decoder, "
            f"the model outputs shape {out}",
        )
    if spec.decoder == "fixed" and out[1] != spec.max_length:
        raise SpecError(spec.path, "length", f"the model predicts {out[1]} positions, the entry says {spec.max_length}")
