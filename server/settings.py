"""The server's settings are the one settings object of the core (``capserve.core.settings``),
so that every layer reads the same values; command-line flags override them."""

from capserve.core.settings import Settings, SettingsError, current

__all__ = ["Settings", "SettingsError", "current"]
