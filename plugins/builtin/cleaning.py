"""Built-in cleaning plugin."""

from __future__ import annotations

from plugins.hookspecs import hookimpl
