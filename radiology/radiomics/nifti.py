"""Read NIfTI images and masks (nibabel) into :class:`Volume` and :class:`Mask`.

NIfTI stores data as ``[i, j, k]`` (x fastest) with an affine to RAS+ world coordinates; the
engine uses ``[z, y, x]`` arrays and DICOM LPS coordinates, so the axes are reversed and the
first two world axes are negated.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from osteomics.radiology.radiomics.errors import ImageReadError
from osteomics.radiology.radiomics.image import Mask, Volume

log = logging.getLogger(__name__)

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _load(
    path: Path,
) -> tuple[
    NDArray[np.float64], tuple[float, float, float], tuple[float, float, float], NDArray[np.float64]
]:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file; give a .nii or .nii.gz image")
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float64)  # type: ignore[attr-defined]
        affine = np.asarray(img.affine, dtype=np.float64)  # type: ignore[attr-defined]
    except (ImageFileError, OSError, EOFError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageReadError(f"{path}: expected a 3D image, got shape {data.shape}")
    linear = _RAS_TO_LPS @ affine[:3, :3]  # columns: world step per i, j, k
    spacing_ijk = np.linalg.norm(linear, axis=0)
    if np.any(spacing_ijk <= 0):
        raise ImageReadError(f"{path}: the affine has a zero-length voxel axis")
    direction_ijk = linear / spacing_ijk
    origin = _RAS_TO_LPS @ affine[:3, 3]
    array = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    spacing = (float(spacing_ijk[2]), float(spacing_ijk[1]), float(spacing_ijk[0]))
    direction = direction_ijk[:, ::-1].copy()
    return array, spacing, (float(origin[0]), float(origin[1]), float(origin[2])), direction


def read_nifti_volume(path: Path) -> Volume:
    """Read a 3D NIfTI image.

    Parameters
    ----------
    path
        ``.nii`` or ``.nii.gz`` file; scaling (``scl_slope``/``scl_inter``) is applied.

    Returns
    -------
    Volume
        Intensities as float64 ``(z, y, x)``, spacing mm, origin and direction in LPS.

    Raises
    ------
    ImageReadError
        Missing file, not NIfTI, or not 3D.
    """
    array, spacing, origin, direction = _load(path)
    log.debug("read %s: shape %s, spacing %s mm", path, array.shape, spacing)
    return Volume(array=array, spacing_mm=spacing, origin_mm=origin, direction=direction)


def read_nifti_mask(path: Path, *, name: str | None = None) -> Mask:
    """Read a 3D NIfTI mask: every non-zero voxel is inside the ROI.

    Parameters
    ----------
    path
        ``.nii`` or ``.nii.gz`` file.
    name
        ROI name for the output table; defaults to the file name without extension.

    Raises
    ------
    ImageReadError
        Missing file, not NIfTI, or not 3D.
    """
    array, spacing, origin, direction = _load(path)
    roi = name or Path(path).name.removesuffix(".gz").removesuffix(".nii")
    return Mask(
        array=array != 0, spacing_mm=spacing, origin_mm=origin, direction=direction, name=roi
    )
