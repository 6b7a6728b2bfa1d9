"""The package version, in one place: hatch reads it for the wheel, code imports it."""

__version__ = "0.1.0"
