"""Every ``CAPSERVE_*`` setting in one typed object, read from the environment.

``current()`` is the process's settings: parsed once, and again only when a ``CAPSERVE_*``
variable changed since (``capserve serve`` hands its flags to the workers that way, and tests
set variables). ``Settings(...)`` builds one with explicit values, the environment filling
the rest. A bad value is a ``SettingsError`` naming the variable and why. The settings table
of docs/operating.md is ``markdown_table()`` (``capserve settings --markdown``).

The settings live in the core so that every layer may read them; most are the server's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from capserve.core.images import DEFAULT_FORMATS, ImageLimits

PREFIX = "CAPSERVE_"
SECRETS = ("api_keys", "hmac_secret", "protocol_secret", "redis_url")  # never printed


class SettingsError(ValueError):
    """A ``CAPSERVE_*`` variable holds a value that cannot be used."""


def _setting(default: Any, what: str, shown: str | None = None, **checks: Any) -> Any:
    """A field with its documentation: ``what`` it does and the default as ``shown`` in the table."""
    return Field(default, description=what, json_schema_extra={"shown": shown} if shown else None, **checks)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    registry: Annotated[tuple[Path, ...], NoDecode] = _setting(
        (), "registry folders, separated by `:` (`os.pathsep`); `--registry` overrides it", "the bundled entries")
    lazy: bool = _setting(False, "`1`: the same as `--lazy`")
    watch_interval: float = _setting(1.0, "seconds between rescans of the registry folders (hot reload)", gt=0)
    interpreter_threads: int = _setting(
        1, "LiteRT threads per interpreter (scale with `--workers` first: each worker is a process with its own "
        "interpreters)", ge=1)
    max_body_bytes: int = _setting(1024 * 1024, "largest request body or decoded image; larger ones get 413", ge=1)
    max_pixels: int = _setting(4_000_000, "largest image, in pixels per frame", ge=1)
    max_frames: int = _setting(100, "most frames in an animated image", ge=1)
    formats: Annotated[tuple[str, ...], NoDecode] = _setting(
        DEFAULT_FORMATS, "image formats accepted, separated by commas")
    api_keys: str | None = _setting(
        None, "comma-separated API keys valid for every site ([security.md](security.md))", "off")
    api_keys_file: Path | None = _setting(None, "a YAML file of keys, each with its sites and rate limit", "off")
    public_status: bool = _setting(False, "`1`: `/v1/*` and `/metrics` stay open when keys are on")
    hmac_secret: str | None = _setting(None, "require signed requests", "off")
    hmac_window: float = _setting(300, "seconds a signature's timestamp may be off", gt=0)
    redis_url: str | None = _setting(
        None, "a Redis server shared by every machine, container or replica, which then share the rate limits and "
        "the used signatures (`redis://host:6379/1`; [security.md](security.md#where-the-limits-hold))", "off")
    redis_fail: Literal["closed", "open"] = _setting(
        "closed", "rate limits while Redis cannot be reached: `closed` answers 503 `limits_unavailable`, `open` "
        "lets the requests through; signed requests are refused either way")
    limits_dir: Path | None = _setting(
        None, "the folder where the workers share rate limits and used signatures (a file they map), when "
        "`CAPSERVE_REDIS_URL` is unset; `capserve serve --workers N` makes and removes it", "set by capserve")
    samples_dir: Path | None = _setting(
        None, "collect samples here: `keep=true` requests and reported wrong answers, a folder per site "
        "([console.md](console.md))", "off")
    samples_max_count: int = _setting(10_000, "most samples kept per site; the oldest go first", ge=1)
    samples_max_bytes: int = _setting(200 * 1024 * 1024, "most bytes of images kept per site; the oldest go first", ge=1)
    default_site: str | None = _setting(
        None, "the site the 2captcha and createTask routes use when neither the request nor its key names one; "
        "`--default-site` sets it ([clients.md](clients.md))", "none")
    protocol_secret: str | None = _setting(
        None, "signs the captcha ids of the 2captcha and createTask routes; set the same one on every machine "
        "behind a load balancer", "random, shared by the workers of one `capserve serve`")
    load_plugins: bool = _setting(True, "`0`: load built-in plugins only ([plugins.md](plugins.md))")
    trace_plugins: bool = _setting(False, "`1`: print every plugin hook call to stderr")
    scf_refresh_interval: float = _setting(
        0, "cloud function: seconds after which an invocation rescans the registry; `0`: load once per "
        "container ([deploy-scf.md](deploy-scf.md))", ge=0)
    base_path: str = _setting("", "cloud function: a path prefix the trigger adds, stripped before routing", "none")
    wheelhouse: Path | None = _setting(
        None, "a folder of extra wheels for `capserve scf package` (uv `--find-links`)", "none")
    verbose_export: bool = _setting(False, "`1`: TensorFlow's own output while `capserve train` converts a model to TFLite")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None

    @field_validator("registry", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        return [p for p in value.split(os.pathsep) if p] if isinstance(value, str) else value

    @field_validator("formats", mode="before")
    @classmethod
    def _split_formats(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        return tuple(f.strip().upper() for f in items if f.strip())

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_pixels, max_frames=self.max_frames, formats=self.formats)


WANTS = {
    "int_parsing": "an integer", "int_from_float": "an integer", "float_parsing": "a number",
    "bool_parsing": "0 or 1", "string_type": "a string",
}


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def _explain(exc: ValidationError) -> str:
    """One line per bad variable: ``CAPSERVE_MAX_BODY_BYTES must be an integer, not '1MB'``."""
    lines = []
    for error in exc.errors(include_url=False):
        name = env_name(str(error["loc"][0])) if error["loc"] else "settings"
        ctx = error.get("ctx") or {}
        if error["type"] in WANTS:
            why = f"must be {WANTS[error['type']]}"
        elif "ge" in ctx or "gt" in ctx:
            why = f"must be at least {ctx['ge']}" if "ge" in ctx else f"must be greater than {ctx['gt']}"
        else:
            why = f"is not valid: {error['msg']}"
        lines.append(f"{name} {why}, not {error['input']!r}")
    return "; ".join(lines)


_current: tuple[tuple[tuple[str, str], ...], Settings] | None = None


def _environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(PREFIX)))


def current() -> Settings:
    """The settings of the process's environment, parsed once per distinct ``CAPSERVE_*`` set."""
    global _current
    key = _environment()
    if _current is None or _current[0] != key:
        _current = (key, Settings())
    return _current[1]


def markdown_table() -> str:
    """The settings table of docs/operating.md: variable, default, what it does."""
    rows = ["| variable | default | what |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        shown = (field.json_schema_extra or {}).get("shown")
        if shown is None:
            default = field.default
            if isinstance(default, bool):
                default = int(default)
            elif isinstance(default, tuple):
                default = ",".join(default)
            shown = f"`{default}`"
        rows.append(f"| `{env_name(name)}` | {shown} | {field.description} |")
    return "\n".join(rows)
