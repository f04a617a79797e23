"""Compile the preprocess and postprocess chains a registry entry names into plain calls.

An entry lists steps as a name or a one-key mapping ``{name: {param: value}}``. Compiling
checks every step and parameter once, so running a chain is a loop over bound functions.
Training builds its input tensors with the same ``Preprocessor``, so there is no skew
between the tensors a model was trained on and those it is served.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from capserve.core.images import DEFAULT_LIMITS, ImageLimits, decode_image, image_to_array
from capserve.core.steps import ParamError, Step


class ChainError(ValueError):
    """A chain in an entry that cannot be compiled; says which step and why."""

    def __init__(self, chain: str, index: int, step: str, reason: str) -> None:
        self.chain, self.index, self.step, self.reason = chain, index, step, reason
        super().__init__(f"{chain}[{index}] ({step}): {reason}")


@dataclasses.dataclass(frozen=True)
class InputShape:
    """The model input a preprocess chain must produce: ``(height, width, channels)``."""

    width: int
    height: int
    channels: int


def parse_item(item: Any) -> tuple[str, dict[str, Any]]:
    """Split one YAML chain item into the step name and its parameters."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        ((name, params),) = item.items()
        if params is None:
            params = {}
        if isinstance(name, str) and isinstance(params, dict):
            return name, params
    raise ValueError("a step is a name or a one-key mapping {name: {parameter: value}}")


def _bind(chain: str, items: Sequence[Any], catalog: Mapping[str, Step]) -> list[tuple[Step, dict[str, Any]]]:
    if not isinstance(items, list):
        raise ChainError(chain, 0, "?", "must be a list of steps")
    bound = []
    for index, item in enumerate(items):
        try:
            name, given = parse_item(item)
        except ValueError as exc:
            raise ChainError(chain, index, "?", str(exc)) from None
        step = catalog.get(name)
        if step is None:
            raise ChainError(chain, index, name, f"unknown step; known: {', '.join(sorted(catalog))}")
        try:
            params = step.bind(given)
        except ParamError as exc:
            raise ChainError(chain, index, name, str(exc)) from None
        bound.append((step, params))
    return bound


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """A compiled preprocess chain: ``image (H, W, C) or frames (F, H, W, C) -> input tensor``."""

    calls: tuple[Callable[[np.ndarray], np.ndarray], ...]
    names: tuple[str, ...]
    input: InputShape
    wants_frames: bool
    decode_mode: str | None = None  # the first step's work, done by the image decoder

    def decode(
        self, data: bytes, limits: ImageLimits = DEFAULT_LIMITS, image: Image.Image | None = None
    ) -> np.ndarray:
        """Image bytes as the array this chain takes (the one way serving and training decode);
        ``image``: ``data`` already opened by ``images.open_image``."""
        return decode_image(data, frames=self.wants_frames, mode=self.decode_mode, limits=limits, image=image)

    def from_image(self, image: Image.Image) -> np.ndarray:
        """A PIL image (a generator's) as the array this chain takes, as ``decode`` would make it."""
        if self.wants_frames:
            return image_to_array(image.convert("RGBA"))[None]
        return image_to_array(image, self.decode_mode)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        for call in self.calls:
            image = call(image)
        return image

    def tensor(self, image: np.ndarray) -> np.ndarray:
        """Run the chain and check the result fits the model: ``(H, W, C)`` float32."""
        out = self(image)
        if out.ndim == 2:
            out = out[:, :, None]
        expected = (self.input.height, self.input.width, self.input.channels)
        if out.shape != expected:
            raise ValueError(
                f"preprocess chain {list(self.names)} made an array of shape {out.shape}, "
                f"the model wants {expected}"
            )
        return out.astype(np.float32, copy=False)


def compile_preprocess(items: Sequence[Any] | None, shape: InputShape, steps: Mapping[str, Step]) -> Preprocessor:
    """Compile a preprocess chain from the ``steps`` a catalog offers (``plugins.manager.catalog``)."""
    bound = _bind("preprocess", items or [], steps)
    calls = []
    for index, (step, params) in enumerate(bound):
        if step.frames and index != 0:
            raise ChainError("preprocess", index, step.name, "a frames step must come first in the chain")
        if step.uses_input:
            params = {**params, "input_width": shape.width, "input_height": shape.height,
                      "input_channels": shape.channels}
        calls.append(functools.partial(step.func, **params) if params else step.func)
    return Preprocessor(
        calls=tuple(calls),
        names=tuple(step.name for step, _ in bound),
        input=shape,
        wants_frames=bool(bound) and bound[0][0].frames,
        decode_mode=_decode_mode(bound),
    )


def _decode_mode(bound: list[tuple[Step, dict[str, Any]]]) -> str | None:
    """The PIL mode to decode to in place of the first step, if it has one and its defaults."""
    if not bound or bound[0][0].decode_mode is None:
        return None
    step, params = bound[0]
    return step.decode_mode if params == step.bind(None) else None


@dataclasses.dataclass(frozen=True)
class Postprocessor:
    """A compiled postprocess chain: ``(text, confidences) -> text``."""

    calls: tuple[Callable[..., str], ...]
    names: tuple[str, ...]

    def __call__(self, text: str, confidences: tuple[float, ...]) -> str:
        for call in self.calls:
            text = call(text, confidences)
        return text


def compile_postprocess(items: Sequence[Any] | None, steps: Mapping[str, Step]) -> Postprocessor:
    """Compile a postprocess chain from the ``steps`` a catalog offers."""
    bound = _bind("postprocess", items or [], steps)
    calls = tuple(functools.partial(step.func, **params) if params else step.func for step, params in bound)
    return Postprocessor(calls=calls, names=tuple(step.name for step, _ in bound))
