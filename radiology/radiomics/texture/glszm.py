"""Grey level size zone matrix (GLSZM), IBSI 1 section 3.8.

A zone is a connected group of ROI voxels with the same grey level: 8-connected within a slice
for the 2D and 2.5D variants, 26-connected in 3D. ``2D``: features per slice, averaged over
slices; ``2.5D``: slice matrices summed into one; ``3D``: one volume matrix.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from osteomics.radiology.radiomics.texture._common import (
    Features,
    mean_features,
    size_matrix_features,
)

FAMILY = "Size zone matrix"

NAMES = {
    "short": "Small zone emphasis",
    "long": "Large zone emphasis",
    "lgl": "Low grey level emphasis",
    "hgl": "High grey level emphasis",
    "s_lgl": "Small zone low grey level emphasis",
    "s_hgl": "Small zone high grey level emphasis",
    "l_lgl": "Large zone low grey level emphasis",
    "l_hgl": "Large zone high grey level emphasis",
    "glnu": "Grey level non-uniformity",
    "glnu_norm": "Normalised grey level non-uniformity",
    "snu": "Zone size non-uniformity",
    "snu_norm": "Normalised zone size non-uniformity",
    "perc": "Zone percentage",
    "gl_var": "Grey level variance",
    "s_var": "Zone size variance",
    "entropy": "Zone size entropy",
}

STRUCTURE_3D = np.ones((3, 3, 3), dtype=bool)
STRUCTURE_2D = np.zeros((3, 3, 3), dtype=bool)
STRUCTURE_2D[1] = True


def zones(
    levels: NDArray[np.int64], n_levels: int, *, in_slice: bool
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Label the zones of every grey level.

    Returns
    -------
    labels, zone_level, zone_slice
        ``labels``: int64 ``(z, y, x)``, zone number ``1..n`` (0 outside the ROI);
        ``zone_level[n - 1]``: grey level of zone ``n``; ``zone_slice[n - 1]``: slice of its
        first voxel.
    """
    labels = np.zeros(levels.shape, dtype=np.int64)
    level_of: list[NDArray[np.int64]] = []
    n_total = 0
    structure = STRUCTURE_2D if in_slice else STRUCTURE_3D
    for g in np.unique(levels[levels > 0]):
        lab, n = ndimage.label(levels == g, structure=structure)
        sel = lab > 0
        labels[sel] = lab[sel] + n_total
        level_of.append(np.full(n, g, dtype=np.int64))
        n_total += n
    zone_level = np.concatenate(level_of) if level_of else np.zeros(0, dtype=np.int64)
    zone_slice = np.zeros(n_total, dtype=np.int64)
    zz = np.nonzero(labels)[0]
    zone_slice[labels[labels > 0][::-1] - 1] = zz[::-1]  # first voxel wins
    return labels, zone_level, zone_slice


def zone_matrix(
    zone_level: NDArray[np.int64], zone_value: NDArray[np.int64], n_levels: int, n_cols: int
) -> NDArray[np.float64]:
    """Count zones by grey level (rows) and size or distance ``1..n_cols`` (columns)."""
    idx = (zone_level - 1) * n_cols + (zone_value - 1)
    return np.bincount(idx, minlength=n_levels * n_cols).reshape(n_levels, n_cols).astype(float)


def glszm_families(levels: NDArray[np.int64], n_levels: int) -> dict[str, Features]:
    """GLSZM features for the IBSI 2D, 2.5D and 3D variants (``"Size zone matrix (...)"``)."""
    nv_slice = (levels > 0).sum(axis=(1, 2)).astype(np.float64)
    res: dict[str, Features] = {}
    labels, zl, zs = zones(levels, n_levels, in_slice=True)
    sizes = np.bincount(labels.ravel())[1:]
    n_cols = int(sizes.max())
    per_slice = [
        (zone_matrix(zl[zs == z], sizes[zs == z], n_levels, n_cols), nv_slice[z])
        for z in range(levels.shape[0])
        if nv_slice[z] > 0
    ]
    res["2D"] = mean_features([size_matrix_features(m, nv, NAMES) for m, nv in per_slice])
    res["2.5D"] = size_matrix_features(
        np.sum([m for m, _ in per_slice], axis=0), float(nv_slice.sum()), NAMES
    )
    labels3, zl3, _ = zones(levels, n_levels, in_slice=False)
    sizes3 = np.bincount(labels3.ravel())[1:]
    m3 = zone_matrix(zl3, sizes3, n_levels, int(sizes3.max()))
    res["3D"] = size_matrix_features(m3, float(nv_slice.sum()), NAMES)
    return {f"{FAMILY} ({agg})": f for agg, f in res.items()}
