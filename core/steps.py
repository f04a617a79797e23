"""What a plugin provides: steps and generators, each with declared parameters.

Parameters are declared, not inferred, so a registry entry is checked when it loads: an
unknown name, a missing value, a wrong type or a value out of range fails that entry with
the step's index and the reason, before any request reaches it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

REQUIRED: Any = object()
"""Default of a parameter that an entry must give."""

PARAM_TYPES = ("int", "float", "bool", "str", "rgb", "list[float]", "list[rgb]", "dict[str]")
"""``dict[str]`` is a mapping of strings to strings (YAML integers are taken as their digits)."""


class ParamError(ValueError):
    """A parameter value an entry gave (or left out) that its step does not accept."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One declared parameter of a step or generator."""

    name: str
    type: str
    default: Any = REQUIRED
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""
    length: int | None = None
    """For list types: the exact number of items (e.g. 3 weights for R, G and B)."""

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"parameter {self.name!r}: type must be one of {PARAM_TYPES}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        if not self.required:
            out["default"] = _plain(self.default, self.type)
        for key in ("min", "max", "choices", "help", "length"):
            value = getattr(self, key)
            if value not in (None, ""):
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def convert(self, value: Any) -> Any:
        """Return ``value`` in this parameter's type, or raise ``ParamError`` saying why."""
        value = _CONVERTERS[self.type](self.name, value)
        if self.length is not None and self.type.startswith("list[") and len(value) != self.length:
            raise ParamError(f"parameter {self.name!r} must have {self.length} items, got {len(value)}")
        if self.type == "dict[str]":
            return value
        for item in value if self.type.startswith("list[") else [value]:
            self._check_range(item)
        if self.choices is not None and value not in self.choices:
            raise ParamError(f"parameter {self.name!r} must be one of {list(self.choices)}, got {value!r}")
        return value

    def _check_range(self, value: Any) -> None:
        if isinstance(value, tuple):  # rgb: the range is fixed by the type
            return
        if self.min is not None and value < self.min:
            raise ParamError(f"parameter {self.name!r} must be >= {self.min}, got {value!r}")
        if self.max is not None and value > self.max:
            raise ParamError(f"parameter {self.name!r} must be <= {self.max}, got {value!r}")


def _to_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(f"parameter {name!r} must be an integer, got {value!r}")
    return value


def _to_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(f"parameter {name!r} must be a number, got {value!r}")
    return float(value)


def _to_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ParamError(f"parameter {name!r} must be true or false, got {value!r}")
    return value


def _to_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ParamError(f"parameter {name!r} must be a string, got {value!r}")
    return value


def _to_rgb(name: str, value: Any) -> tuple[int, int, int]:
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        return tuple(value)  # type: ignore[return-value]
    raise ParamError(f"parameter {name!r} must be a colour as [r, g, b] (0-255) or '#rrggbb', got {value!r}")


def _to_list(item: Callable[[str, Any], Any]) -> Callable[[str, Any], tuple]:
    def convert(name: str, value: Any) -> tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise ParamError(f"parameter {name!r} must be a non-empty list, got {value!r}")
        return tuple(item(name, v) for v in value)

    return convert


def _to_str_dict(name: str, value: Any) -> tuple[tuple[str, str], ...]:
    """A mapping as a tuple of ``(key, value)`` pairs: immutable, hashable, in the given order."""
    if not isinstance(value, dict) or not value:
        raise ParamError(f"parameter {name!r} must be a non-empty mapping of strings, got {value!r}")
    pairs = []
    for key, item in value.items():
        for part in (key, item):
            if isinstance(part, bool) or not isinstance(part, (str, int)):
                raise ParamError(
                    f"parameter {name!r} must map strings to strings (quote true/false/null), got {part!r}"
                )
        key, item = str(key), str(item)
        if not key:
            raise ParamError(f"parameter {name!r} has an empty key")
        pairs.append((key, item))
    return tuple(pairs)


def _plain(value: Any, type_: str) -> Any:
    """A parameter value as JSON-friendly data (lists and dicts, not tuples)."""
    if type_ == "dict[str]" and isinstance(value, tuple):
        return dict(value)
    if isinstance(value, tuple):
        return [list(v) if isinstance(v, tuple) else v for v in value]
    return value


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "str": _to_str,
    "rgb": _to_rgb,
    "list[float]": _to_list(_to_float),
    "list[rgb]": _to_list(_to_rgb),
    "dict[str]": _to_str_dict,
}


@dataclasses.dataclass(frozen=True)
class Step:
    """A named preprocess or postprocess function with its declared parameters."""

    name: str
    func: Callable[..., Any]
    params: tuple[Param, ...] = ()
    description: str = ""
    frames: bool = False
    uses_input: bool = False
    decode_mode: str | None = None
    """A PIL mode the image decoder can convert to instead of this step, when the step comes
    first in a chain with its default parameters ("L" for ``grayscale``). The step must then
    pass such an image through unchanged."""

    def bind(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """Validate the parameters an entry gave and fill in defaults."""
        return bind_params(self.params, given)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "params": [p.describe() for p in self.params],
            **({"frames": True} if self.frames else {}),
        }


@dataclasses.dataclass(frozen=True)
class Generator:
    """A named synthetic-data generator for training, with its declared parameters."""

    name: str
    func: Callable[..., Any]
    params: tuple[Param, ...] = ()
    description: str = ""

    def bind(self, given: dict[str, Any] | None) -> dict[str, Any]:
        return bind_params(self.params, given)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "params": [p.describe() for p in self.params]}


def bind_params(params: tuple[Param, ...], given: dict[str, Any] | None) -> dict[str, Any]:
    """Check ``given`` against ``params`` and return every parameter's value."""
    given = dict(given or {})
    known = {p.name for p in params}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ParamError(f"unknown parameter(s) {unknown}; accepted: {sorted(known) or 'none'}")
    bound = {}
    for param in params:
        if param.name in given:
            bound[param.name] = param.convert(given[param.name])
        elif param.required:
            raise ParamError(f"missing required parameter {param.name!r}")
        else:
            bound[param.name] = param.default
    return bound


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Every step and generator the loaded plugins provide, by name (``plugins.manager.catalog``)."""

    preprocess: dict[str, Step]
    postprocess: dict[str, Step]
    generators: dict[str, Generator]
