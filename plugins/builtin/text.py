"""Built-in text plugin."""

from __future__ import annotations

from plugins.hookspecs import hookimpl
