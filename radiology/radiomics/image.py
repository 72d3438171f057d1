"""The nouns of the radiomics engine: a 3D image :class:`Volume` and an ROI :class:`Mask`.

Arrays are indexed ``[z, y, x]`` (slice, row, column). Geometry follows the DICOM patient
coordinate system (LPS, millimetres):

- ``spacing_mm``: voxel size along the array axes, ``(dz, dy, dx)`` in mm;
- ``origin_mm``: patient position ``(x, y, z)`` of the centre of voxel ``[0, 0, 0]``, mm;
- ``direction``: 3 x 3 matrix whose column ``k`` is the unit vector, in patient ``(x, y, z)``,
  along which array axis ``k`` (z, y, x order) increases.

IBSI 2D and 2.5D texture variants work "by slice": a slice is one index of axis 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from osteomics.radiology.radiomics.errors import EmptyMaskError, GeometryMismatchError

_IDENTITY_ZYX = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def _check_geometry(
    shape: tuple[int, ...], spacing: tuple[float, float, float], direction: NDArray[np.float64]
) -> None:
    if len(shape) != 3:
        raise GeometryMismatchError(f"expected a 3D array (z, y, x), got shape {shape}")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise GeometryMismatchError(f"voxel spacing must be 3 positive numbers (mm), got {spacing}")
    if direction.shape != (3, 3):
        raise GeometryMismatchError(f"direction must be a 3 x 3 matrix, got {direction.shape}")


@dataclass(frozen=True)
class Volume:
    """A 3D image with its geometry.

    Attributes
    ----------
    array
        Intensities, float64, shape ``(z, y, x)`` (for example HU, SUV, arbitrary MR units).
    spacing_mm
        Voxel size ``(dz, dy, dx)``, mm.
    origin_mm
        Patient position ``(x, y, z)`` of the centre of voxel ``[0, 0, 0]``, mm (LPS).
    direction
        3 x 3 matrix; column ``k`` is the patient-space unit vector of array axis ``k``.
    """

    array: NDArray[np.float64]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: NDArray[np.float64] = field(default_factory=lambda: _IDENTITY_ZYX.copy())

    def __post_init__(self) -> None:
        object.__setattr__(self, "array", np.asarray(self.array, dtype=np.float64))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64))
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(s) for s in self.origin_mm))
        _check_geometry(self.array.shape, self.spacing_mm, self.direction)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``, voxels."""
        z, y, x = self.array.shape
        return (z, y, x)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel, mm³."""
        return float(np.prod(self.spacing_mm))


@dataclass(frozen=True)
class Mask:
    """A binary region of interest on the voxel grid of a :class:`Volume`.

    Attributes
    ----------
    array
        Boolean, shape ``(z, y, x)``; True inside the ROI.
    spacing_mm, origin_mm, direction
        As in :class:`Volume`; must match the image's grid.
    name
        ROI name (for example ``GTV_Mass``), for the output table.
    """

    array: NDArray[np.bool_]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: NDArray[np.float64] = field(default_factory=lambda: _IDENTITY_ZYX.copy())
    name: str = "roi"

    def __post_init__(self) -> None:
        object.__setattr__(self, "array", np.asarray(self.array).astype(bool))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64))
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(s) for s in self.origin_mm))
        _check_geometry(self.array.shape, self.spacing_mm, self.direction)

    @property
    def n_voxels(self) -> int:
        """Number of voxels in the ROI."""
        return int(self.array.sum())


def check_same_grid(volume: Volume, mask: Mask, *, tol_mm: float = 1e-3) -> None:
    """Raise unless ``mask`` lies on the voxel grid of ``volume`` and is not empty.

    Raises
    ------
    GeometryMismatchError
        Shapes, spacings, origins (within ``tol_mm``) or directions differ.
    EmptyMaskError
        The mask holds no voxel.
    """
    if volume.shape != mask.array.shape:
        raise GeometryMismatchError(
            f"image shape {volume.shape} and mask shape {mask.array.shape} differ; "
            "resample the mask onto the image grid first"
        )
    if not np.allclose(volume.spacing_mm, mask.spacing_mm, atol=tol_mm):
        raise GeometryMismatchError(
            f"image spacing {volume.spacing_mm} mm and mask spacing {mask.spacing_mm} mm differ"
        )
    if not np.allclose(volume.origin_mm, mask.origin_mm, atol=tol_mm):
        raise GeometryMismatchError(
            f"image origin {volume.origin_mm} mm and mask origin {mask.origin_mm} mm differ"
        )
    if not np.allclose(volume.direction, mask.direction, atol=1e-4):
        raise GeometryMismatchError("image and mask directions (orientation) differ")
    if mask.n_voxels == 0:
        raise EmptyMaskError(f"ROI {mask.name!r} is empty: no voxel is inside the mask")
