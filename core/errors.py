"""Errors that belong to no single room."""

from __future__ import annotations

from osteomics import OsteomicsError


class OutputNotWritableError(OsteomicsError, PermissionError):
    """The output folder cannot be created or written."""


class InvalidOptionError(OsteomicsError, ValueError):
    """A parameter outside its allowed range (an option the user typed, or a setting in code)."""
