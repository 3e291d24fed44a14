"""Settings: one validated object loaded from TOML + environment (see settings.py)."""

from .settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
