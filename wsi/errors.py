"""Errors of the pathology room.

Each also inherits the matching builtin, so ``except FileNotFoundError`` still works.
Messages name the file and say what to do.
"""

from __future__ import annotations

from osteomics import OsteomicsError

# The house's error, re-exported where the pathology room's errors are looked for.
from osteomics.core.errors import OutputNotWritableError as OutputNotWritableError


class WsiError(OsteomicsError):
    """Base of whole-slide errors."""


class SlideNotFoundError(WsiError, FileNotFoundError):
    """The slide path does not exist."""


class NotASlideError(WsiError, ValueError):
    """No installed slide reader can open the file (not a slide, or an unsupported format)."""


class SlideReadError(WsiError, OSError):
    """The slide opened but its pixel data could not be decoded (corrupt or truncated file)."""


class MissingMppError(WsiError, ValueError):
    """The slide does not say how many µm a pixel is; pass an override."""


class ResolutionError(WsiError, ValueError):
    """The requested µm/px cannot be served by the slide (finer than its finest level)."""


class NoTissueError(WsiError, ValueError):
    """Tissue detection found no tissue, or no tile reached the minimum tissue fraction."""


class UnknownBackendError(WsiError, ValueError):
    """The requested slide reader is not installed."""


class UnknownModelError(WsiError, LookupError):
    """A model name that is neither in the registry nor a folder holding a model."""


class ModelFileError(WsiError, FileNotFoundError):
    """A model folder lacks its weights or its model card."""


class ModelCardError(WsiError, ValueError):
    """A model card that cannot be read, or that does not fit its weights."""


class WeightsChecksumError(WsiError, ValueError):
    """The weights file's SHA-256 differs from the one its model card records."""


class TrainingDataError(WsiError, ValueError):
    """A folder of labelled images that cannot train or evaluate a model as it is."""
