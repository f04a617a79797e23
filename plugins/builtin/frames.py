"""Built-in frames plugin."""

from __future__ import annotations

from plugins.hookspecs import hookimpl
