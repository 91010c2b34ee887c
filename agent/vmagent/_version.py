"""The one place the version is written (the native build reads it too)."""

__version__ = "0.1.0"
