"""Reading YAML that someone else wrote (registry entries, API key files) with bounded cost.

``yaml.safe_load`` never runs code, but a kilobyte of nested aliases ("billion laughs") still
stands for gigabytes once a value is walked or serialized, and deep nesting exhausts the
stack. ``read`` caps the file's size, and the loader refuses documents with more than a few
aliases or nesting deeper than a few dozen levels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_ALIASES = 32
MAX_DEPTH = 64


class YAMLLimitError(yaml.YAMLError):
    """A document beyond the loader's limits (aliases, nesting)."""


class FileTooLarge(ValueError):
    """A file larger than its cap."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` counting alias uses and nesting depth while composing nodes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YAMLLimitError(f"uses more than {MAX_ALIASES} aliases (*name); write the values out")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YAMLLimitError(f"nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def loads(text: str) -> Any:
    """``yaml.safe_load`` within the limits; ``YAMLLimitError`` past them, ``yaml.YAMLError`` on bad YAML."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read(path: Path, max_bytes: int) -> Any:
    """Load a UTF-8 YAML file of at most ``max_bytes``; ``OSError``, ``UnicodeDecodeError``,
    ``FileTooLarge`` or the errors of ``loads``."""
    with open(path, "rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(f"is larger than {max_bytes} bytes")
    return loads(data.decode("utf-8"))
