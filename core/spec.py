"""The registry entry format: ``model.yaml`` beside its ``.tflite`` file (docs/registry.md).

``EntryDocument`` is the one schema of the file: ``load_spec`` reads the YAML within size and
alias limits (``core.yamlfile``; nothing is evaluated), checks it against the schema and
returns a ``ModelSpec``. Every problem is a ``SpecError`` naming the file, the field and why.
``json_schema()`` publishes the schema for editors (``capserve schema``).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

from capserve.core import yamlfile
from capserve.core.files import FileRefused, read_regular

ENTRY_FILE = "model.yaml"
MAX_ENTRY_BYTES = 256 * 1024
SITE_RE = r"[a-z0-9][a-z0-9_-]{0,63}"
SITE_PATTERN = re.compile(SITE_RE + r"\Z")  # matches a whole name: "demo\n" is no site


def _whole(regex: str) -> str:
    """A JSON Schema pattern matching the whole string in every regex dialect (``$`` would also
    match before a final newline in Python's)."""
    return f"^{regex}(?![\\s\\S])"


DECODERS = ("ctc", "fixed")
MAX_INT = 2**31 - 1
MAX_TEXT = 4096  # characters in the description and in each string of the training record
MAX_RECORD_ITEMS = 1000  # values in the training record, nested ones included
MAX_RECORD_DEPTH = 8
MAX_RECORD_INT = 2**53  # larger integers do not survive a JSON round trip


class SpecError(ValueError):
    """An entry that cannot be served: which file, which field, why."""

    def __init__(self, path: Path | str, field: str, reason: str) -> None:
        self.path, self.field, self.reason = str(path), field, reason
        super().__init__(f"{path}: {field}: {reason}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    site: str
    version: int
    path: Path  # the YAML file
    model_file: Path
    sha256: str | None
    width: int
    height: int
    channels: int
    charset: str
    decoder: str
    min_length: int
    max_length: int
    preprocess: list[Any]
    postprocess: list[Any]
    description: str = ""
    training: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def quantization(self) -> str | None:
        return self.training.get("quantization")


# -- the schema ---------------------------------------------------------------------------------

Positive = Annotated[int, Field(ge=1, le=MAX_INT)]
STEP_SCHEMA = {
    "anyOf": [
        {"type": "string", "description": "a step without parameters"},
        {"type": "object", "minProperties": 1, "maxProperties": 1, "description": "a step name: its parameters"},
    ]
}
Steps = Annotated[
    list[Any] | None,
    WithJsonSchema({"anyOf": [{"type": "array", "items": STEP_SCHEMA}, {"type": "null"}]}),
]


class _Part(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ModelFile(_Part):
    file: str = Field(description="the .tflite file, in this entry's folder (a name, not a path)")
    sha256: str | None = Field(
        None, description="the file's SHA-256, checked at load", json_schema_extra={"pattern": _whole("[0-9a-f]{64}")})

    @field_validator("file")
    @classmethod
    def _a_name(cls, value: str) -> str:
        if Path(value).name != value or value in ("", ".", ".."):
            raise ValueError("must be a file name in the entry's folder, not a path")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be 64 lowercase hex digits")
        return value


class InputShape(_Part):
    """What the model takes: (1, height, width, channels) float32."""

    width: Positive
    height: Positive
    channels: Literal[1, 3, 4]


class Decoder(_Part):
    type: Literal["ctc", "fixed"] = Field(
        description="ctc: output (1, T, len(charset)+1), blank = class 0; "
        "fixed: output (1, length, len(charset)), one character per position")


class Length(_Part):
    """Bounds of the text length (a fixed decoder needs min == max)."""

    min: Positive = 1
    max: Positive = 64


class EntryDocument(_Part):
    """A capserve registry entry (model.yaml)."""

    model_config = ConfigDict(title="capserve model.yaml")

    site: str = Field(description="the URL is /recognize/<site>", json_schema_extra={"pattern": _whole(SITE_RE)})
    version: Positive = Field(description="the highest version that loads serves")
    description: str = Field("", max_length=MAX_TEXT)
    model: ModelFile
    input: InputShape
    charset: str = Field(min_length=1, description="class i + 1 of a ctc model is character i")
    decoder: Annotated[
        Decoder,
        WithJsonSchema({"anyOf": [Decoder.model_json_schema(), {"enum": list(DECODERS)}]}),
    ]
    length: Length = Length()
    preprocess: Steps = Field(None, description="plugin steps, in order: image -> input tensor")
    postprocess: Steps = Field(None, description="plugin steps on the text")
    training: Annotated[Any, WithJsonSchema({"type": ["object", "null"]})] = Field(
        None, description="free-form record shown by /v1/models/<site>: numbers, strings, lists, mappings")

    @field_validator("site")
    @classmethod
    def _site(cls, value: str) -> str:
        if not SITE_PATTERN.match(value):
            raise ValueError(f"must match {SITE_RE}, got {value!r}")
        return value

    @field_validator("description", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("charset")
    @classmethod
    def _unique(cls, value: str) -> str:
        seen: set[str] = set()
        repeated: set[str] = set()
        for char in value:  # one pass: a charset may hold thousands of characters
            (repeated if char in seen else seen).add(char)
        if repeated:
            more = f" and {len(repeated) - 10} more" if len(repeated) > 10 else ""
            raise ValueError(f"has repeated characters {sorted(repeated)[:10]}{more}")
        return value

    @field_validator("decoder", mode="before")
    @classmethod
    def _decoder_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"type": value}
        if not isinstance(value, dict):
            raise ValueError(f"must be dict or str, got {value!r}")
        return value


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``model.yaml`` (``capserve schema``)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **EntryDocument.model_json_schema()}


# -- checking -----------------------------------------------------------------------------------

TYPE_NAMES = {
    "int_type": "int", "string_type": "str", "model_type": "dict", "dict_type": "dict", "model_attributes_type": "dict",
}


def _field(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(document)"


def _reason(error: dict[str, Any]) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if not error["loc"] and kind in TYPE_NAMES:
        return "must be a mapping of fields"
    if kind in TYPE_NAMES:
        return f"must be {TYPE_NAMES[kind]}, got {value!r}"
    if kind == "list_type":
        return f"must be a list of steps, got {value!r}"
    if kind == "greater_than_equal":
        return f"must be a positive integer, got {value}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, got {value}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {value!r}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"is longer than {ctx['max_length']} characters"
    return str(error["msg"]).removeprefix("Value error, ")


def _json_safe(value: Any, field: str, path: Path, budget: list[int], depth: int = 0) -> Any:
    """The training record as small JSON values: dates become ISO strings, a non-finite number
    None, keys strings; anything else (bytes, sets, huge numbers, long strings, deep or
    self-referring nesting, too many values) is a SpecError naming where it is."""
    budget[0] -= 1
    if budget[0] < 0:
        raise SpecError(path, "training", f"holds more than {MAX_RECORD_ITEMS} values")
    if depth > MAX_RECORD_DEPTH:
        raise SpecError(path, field, f"nests deeper than {MAX_RECORD_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_RECORD_INT:
            raise SpecError(path, field, f"is an integer beyond ±2**53, got {str(value)[:20]}...")
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise SpecError(path, field, f"is longer than {MAX_TEXT} characters")
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, list):
        return [_json_safe(v, f"{field}[{i}]", path, budget, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)):
                raise SpecError(path, field, f"has a key of type {type(key).__name__}; keys must be strings")
            key = str(key)[:MAX_TEXT]
            out[key] = _json_safe(item, f"{field}.{key}", path, budget, depth + 1)
        return out
    raise SpecError(
        path, field, f"must be a number, string, boolean, null, list or mapping, got {type(value).__name__}")


def parse_spec(doc: Any, path: Path) -> ModelSpec:
    """Check a loaded YAML document; ``path`` is the YAML file it came from."""
    try:
        entry = EntryDocument.model_validate(doc)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise SpecError(path, _field(error["loc"]), _reason(error)) from None
    length = entry.length
    if length.min > length.max:
        raise SpecError(path, "length", f"min ({length.min}) is greater than max ({length.max})")
    if entry.decoder.type == "fixed" and length.min != length.max:
        raise SpecError(path, "length", "a fixed decoder needs min == max")
    training = {} if entry.training is None else entry.training
    if not isinstance(training, dict):
        raise SpecError(path, "training", "must be a mapping")
    return ModelSpec(
        site=entry.site,
        version=entry.version,
        path=path,
        model_file=path.parent / entry.model.file,
        sha256=entry.model.sha256,
        width=entry.input.width,
        height=entry.input.height,
        channels=entry.input.channels,
        charset=entry.charset,
        decoder=entry.decoder.type,
        min_length=length.min,
        max_length=length.max,
        preprocess=list(entry.preprocess or []),
        postprocess=list(entry.postprocess or []),
        description=entry.description,
        training=_json_safe(training, "training", path, [MAX_RECORD_ITEMS + 1]),
    )


def load_spec(path: Path) -> ModelSpec:
    """Read and check one ``model.yaml``."""
    try:
        doc = yamlfile.loads(read_regular(path, max_bytes=MAX_ENTRY_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise SpecError(path, "(file)", "does not exist") from None
    except FileRefused as exc:
        raise SpecError(path, "(file)", f"refused: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(path, "(file)", f"cannot be read: {exc}") from None
    except yamlfile.YAMLLimitError as exc:
        raise SpecError(path, "(yaml)", str(exc)) from None
    except yaml.YAMLError as exc:
        raise SpecError(path, "(yaml)", f"is not valid YAML: {exc}") from None
    return parse_spec(doc, path)
