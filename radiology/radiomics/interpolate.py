"""IBSI image and mask interpolation (IBSI 1 section 2.4) onto a new grid with aligned centres.

Grid (IBSI 1 "Notes on interpolation"): along each interpolated axis the new size is
``ceil(n * s / s_new)`` and the new grid is centred on the centre of the original grid, so in
original index coordinates new voxel ``j`` sits at ``(n - 1) / 2 + (j - (n_new - 1) / 2) *
s_new / s``. The new grid may extend past the original one: intensities there are extrapolated
from the nearest boundary voxel (``mode="nearest"``), mask values are 0 outside.

Image: nearest neighbour, (bi/tri)linear, or cubic B-spline ("tricubic spline") with
``scipy.ndimage.map_coordinates``; optionally rounded to the nearest integer afterwards (CT).
Mask: interpolated as a float (linear by default) and thresholded at the partial-volume fraction
(0.5): a voxel is in the ROI when the interpolated value is >= the threshold (a 1e-6 slack
keeps 0.4999... from excluding voxels, as IBSI warns).
2D interpolation (IBSI configurations A/B) keeps the slice spacing: only rows and columns move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from osteomics.radiology.radiomics.errors import RadiomicsConfigError
from osteomics.radiology.radiomics.image import Mask, Volume

Method = Literal["nearest", "linear", "cubic"]
_ORDER = {"nearest": 0, "linear": 1, "cubic": 3}


@dataclass(frozen=True)
class Interpolation:
    """How to resample before feature extraction.

    Attributes
    ----------
    in_plane_mm
        New row and column spacing, mm.
    slice_mm
        New slice spacing, mm; None keeps the original slices (2D, in-plane interpolation).
    image_method
        ``"nearest"``, ``"linear"`` (bilinear/trilinear) or ``"cubic"`` (cubic B-spline).
    mask_method
        Same choices for the ROI mask (IBSI configurations: linear).
    mask_threshold
        Partial-volume fraction above which an interpolated mask voxel is in the ROI.
    round_intensities
        Round interpolated intensities to the nearest integer (CT, HU).
    """

    in_plane_mm: float
    slice_mm: float | None = None
    image_method: Method = "linear"
    mask_method: Method = "linear"
    mask_threshold: float = 0.5
    round_intensities: bool = False

    def __post_init__(self) -> None:
        for name in ("image_method", "mask_method"):
            if getattr(self, name) not in _ORDER:
                raise RadiomicsConfigError(
                    f"interpolation {name} must be one of {list(_ORDER)}, "
                    f"got {getattr(self, name)!r}"
                )
        if not self.in_plane_mm > 0 or (self.slice_mm is not None and not self.slice_mm > 0):
            raise RadiomicsConfigError("interpolation spacings must be > 0 mm")
        if not 0 < self.mask_threshold <= 1:
            raise RadiomicsConfigError("interpolation mask_threshold must be in (0, 1]")


def _axis_coords(n: int, old: float, new: float) -> tuple[NDArray[np.float64], int]:
    n_new = max(1, math.ceil(n * old / new - 1e-9))
    j = np.arange(n_new, dtype=np.float64)
    return (n - 1) / 2.0 + (j - (n_new - 1) / 2.0) * new / old, n_new


def resample(volume: Volume, mask: Mask, settings: Interpolation) -> tuple[Volume, Mask]:
    """Interpolate ``volume`` and ``mask`` (on the same grid) onto the IBSI-aligned new grid.

    Returns
    -------
    (Volume, Mask)
        On the new grid; origin moved so that patient coordinates are preserved.
    """
    old = volume.spacing_mm
    new = (
        old[0] if settings.slice_mm is None else settings.slice_mm,
        settings.in_plane_mm,
        settings.in_plane_mm,
    )
    axes = [_axis_coords(n, o, s) for n, o, s in zip(volume.shape, old, new, strict=True)]
    coords = np.meshgrid(*(a for a, _ in axes), indexing="ij", sparse=False)
    image = ndimage.map_coordinates(
        volume.array, coords, order=_ORDER[settings.image_method], mode="nearest"
    )
    if settings.round_intensities:
        image = np.round(image)
    frac = ndimage.map_coordinates(
        mask.array.astype(np.float64),
        coords,
        order=_ORDER[settings.mask_method],
        mode="grid-constant",  # interpolate towards 0 beyond the edge ("constant" does not)
        cval=0.0,
    )
    roi = frac >= settings.mask_threshold - 1e-6
    first = np.array([a[0] for a, _ in axes])
    origin = np.asarray(volume.origin_mm) + volume.direction @ (first * np.asarray(old))
    o = (float(origin[0]), float(origin[1]), float(origin[2]))
    return (
        Volume(array=image, spacing_mm=new, origin_mm=o, direction=volume.direction),
        Mask(array=roi, spacing_mm=new, origin_mm=o, direction=volume.direction, name=mask.name),
    )
