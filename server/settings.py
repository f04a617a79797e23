"""Server settings: defaults, environment variables, command-line flags (in that order)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from capserve.core.images import DEFAULT_FORMATS, ImageLimits


def _env_int(name: str, default: int) -> int:
    return _env_number(name, default, int)


def _env_number(name: str, default, kind: type):
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, not {value!r}") from None


@dataclasses.dataclass
class Settings:
    registry: list[Path] = dataclasses.field(default_factory=list)  # empty: $CAPSERVE_REGISTRY or bundled
    max_body_bytes: int = dataclasses.field(default_factory=lambda: _env_int("CAPSERVE_MAX_BODY_BYTES", 1024 * 1024))
    max_pixels: int = dataclasses.field(default_factory=lambda: _env_int("CAPSERVE_MAX_PIXELS", 4_000_000))
    max_frames: int = dataclasses.field(default_factory=lambda: _env_int("CAPSERVE_MAX_FRAMES", 100))
    formats: tuple[str, ...] = dataclasses.field(
        default_factory=lambda: tuple(
            f.strip().upper() for f in os.environ.get("CAPSERVE_FORMATS", ",".join(DEFAULT_FORMATS)).split(",") if f.strip()
        )
    )
    lazy: bool = dataclasses.field(default_factory=lambda: os.environ.get("CAPSERVE_LAZY", "0") not in ("", "0"))
    watch_interval: float = dataclasses.field(default_factory=lambda: _env_number("CAPSERVE_WATCH_INTERVAL", 1.0, float))

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_pixels, max_frames=self.max_frames, formats=self.formats)
