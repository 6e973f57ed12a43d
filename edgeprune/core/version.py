"""The package version, declared once (pyproject reads it too)."""

__version__ = "0.1.0"
