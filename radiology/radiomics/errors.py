"""Errors of the radiomics engine.

Each also inherits the matching builtin (``ValueError``, ``OSError``), as in
:mod:`osteomics.radiology.errors`. Messages say what was wrong, with which file, and what to do.
"""

from __future__ import annotations

from osteomics.radiology.errors import RadiologyError


class RadiomicsError(RadiologyError):
    """Base of radiomics errors."""


class RadiomicsConfigError(RadiomicsError, ValueError):
    """A radiomics configuration that is unknown, unreadable or asks for what is not supported."""


class EmptyMaskError(RadiomicsError, ValueError):
    """A region of interest without any voxel (after re-segmentation, when there is one)."""


class GeometryMismatchError(RadiomicsError, ValueError):
    """An image and a mask that do not share the same voxel grid."""


class ImageReadError(RadiomicsError, OSError):
    """An image or mask file that cannot be read (missing, not NIfTI, not 3D)."""


class NothingToExtractError(RadiomicsError, LookupError):
    """A study with no contoured image series of the asked modalities, or no ROI matching."""
