"""The registry entry format: ``model.yaml`` beside its ``.tflite`` file (docs/registry.md).

``load_spec`` reads and checks the YAML (``yaml.safe_load`` only, nothing is evaluated) and
returns a ``ModelSpec``; every problem is a ``SpecError`` naming the file, the field and why.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from capserve.core.files import MAX_YAML_BYTES, FileRefused, read_regular

ENTRY_FILE = "model.yaml"
SITE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DECODERS = ("ctc", "fixed")


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


def _require(doc: dict, key: str, kind: type | tuple[type, ...], path: Path, field: str | None = None) -> Any:
    field = field or key
    if key not in doc:
        raise SpecError(path, field, "is required")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SpecError(path, field, f"must be {names}, got {value!r}")
    return value


def _positive(doc: dict, key: str, path: Path, field: str) -> int:
    value = _require(doc, key, int, path, field)
    if value < 1:
        raise SpecError(path, field, f"must be a positive integer, got {value}")
    return value


def parse_spec(doc: Any, path: Path) -> ModelSpec:
    """Check a loaded YAML document; ``path`` is the YAML file it came from."""
    if not isinstance(doc, dict):
        raise SpecError(path, "(document)", "must be a mapping of fields")
    site = _require(doc, "site", str, path)
    if not SITE_PATTERN.match(site):
        raise SpecError(path, "site", f"must match {SITE_PATTERN.pattern}, got {site!r}")
    version = _positive(doc, "version", path, "version")

    model = _require(doc, "model", dict, path)
    file_name = _require(model, "file", str, path, "model.file")
    if Path(file_name).name != file_name or file_name in ("", ".", ".."):
        raise SpecError(path, "model.file", "must be a file name in the entry's folder, not a path")
    sha256 = model.get("sha256")
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256)):
        raise SpecError(path, "model.sha256", "must be 64 lowercase hex digits")

    shape = _require(doc, "input", dict, path)
    width = _positive(shape, "width", path, "input.width")
    height = _positive(shape, "height", path, "input.height")
    channels = _positive(shape, "channels", path, "input.channels")
    if channels not in (1, 3, 4):
        raise SpecError(path, "input.channels", f"must be 1, 3 or 4, got {channels}")

    charset = _require(doc, "charset", str, path)
    if not charset:
        raise SpecError(path, "charset", "must not be empty")
    if len(set(charset)) != len(charset):
        dupes = sorted({c for c in charset if charset.count(c) > 1})
        raise SpecError(path, "charset", f"has repeated characters {dupes}")

    decoder = _require(doc, "decoder", (dict, str), path)
    decoder_type = decoder if isinstance(decoder, str) else decoder.get("type")
    if decoder_type not in DECODERS:
        raise SpecError(path, "decoder.type", f"must be one of {DECODERS}, got {decoder_type!r}")

    length = doc.get("length", {})
    if not isinstance(length, dict):
        raise SpecError(path, "length", "must be a mapping with min and max")
    min_length = _positive(length, "min", path, "length.min") if "min" in length else 1
    max_length = _positive(length, "max", path, "length.max") if "max" in length else 64
    if min_length > max_length:
        raise SpecError(path, "length", f"min ({min_length}) is greater than max ({max_length})")
    if decoder_type == "fixed" and min_length != max_length:
        raise SpecError(path, "length", "a fixed decoder needs min == max")

    for chain in ("preprocess", "postprocess"):
        if not isinstance(doc.get(chain, []) or [], list):
            raise SpecError(path, chain, "must be a list of steps")
    training = doc.get("training", {}) or {}
    if not isinstance(training, dict):
        raise SpecError(path, "training", "must be a mapping")

    return ModelSpec(
        site=site,
        version=version,
        path=path,
        model_file=path.parent / file_name,
        sha256=sha256,
        width=width,
        height=height,
        channels=channels,
        charset=charset,
        decoder=decoder_type,
        min_length=min_length,
        max_length=max_length,
        preprocess=list(doc.get("preprocess") or []),
        postprocess=list(doc.get("postprocess") or []),
        description=str(doc.get("description", "")),
        training=dict(training),
    )


def load_spec(path: Path) -> ModelSpec:
    """Read and check one ``model.yaml``."""
    try:
        text = read_regular(path, max_bytes=MAX_YAML_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise SpecError(path, "(file)", "does not exist") from None
    except FileRefused as exc:
        raise SpecError(path, "(file)", f"refused: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(path, "(file)", f"cannot be read: {exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(path, "(yaml)", f"is not valid YAML: {exc}") from None
    return parse_spec(doc, path)
