"""Built-in generators plugin."""

from __future__ import annotations

from plugins.hookspecs import hookimpl
