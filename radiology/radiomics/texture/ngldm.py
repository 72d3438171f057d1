"""Neighbouring grey level dependence matrix (NGLDM), IBSI 1 section 3.11.

Coarseness parameter ``a = 0`` and Chebyshev distance 1: the dependence ``k`` of an ROI voxel
is one plus the number of its neighbours in the ROI (8 in-slice for 2D/2.5D, 26 in 3D) with
the same grey level. ``2D``: per slice, averaged; ``2.5D``: slice matrices summed; ``3D``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from osteomics.radiology.radiomics.texture._common import (
    NEIGHBOURS_2D,
    NEIGHBOURS_3D,
    Features,
    mean_features,
    neighbour,
    size_matrix_features,
)

FAMILY = "Neighbouring grey level dependence matrix"

NAMES = {
    "short": "Low dependence emphasis",
    "long": "High dependence emphasis",
    "lgl": "Low grey level count emphasis",
    "hgl": "High grey level count emphasis",
    "s_lgl": "Low dependence low grey level emphasis",
    "s_hgl": "Low dependence high grey level emphasis",
    "l_lgl": "High dependence low grey level emphasis",
    "l_hgl": "High dependence high grey level emphasis",
    "glnu": "Grey level non-uniformity",
    "glnu_norm": "Normalised grey level non-uniformity",
    "snu": "Dependence count non-uniformity",
    "snu_norm": "Normalised dependence count non-uniformity",
    "perc": "Dependence count percentage",
    "gl_var": "Grey level variance",
    "s_var": "Dependence count variance",
    "entropy": "Dependence count entropy",
}


def ngldm_per_slice(
    levels: NDArray[np.int64], n_levels: int, *, in_slice: bool
) -> NDArray[np.float64]:
    """Dependence counts per slice: ``(n_slices, N_g, n_neighbours + 1)``."""
    offsets = NEIGHBOURS_2D if in_slice else NEIGHBOURS_3D
    dep = np.ones(levels.shape, dtype=np.int64)
    for d in offsets:
        dep += neighbour(levels, d) == levels
    roi = levels > 0
    z = np.nonzero(roi)[0]
    n_cols = len(offsets) + 1
    n_slices = levels.shape[0]
    idx = (z * n_levels + levels[roi] - 1) * n_cols + dep[roi] - 1
    counts = np.bincount(idx, minlength=n_slices * n_levels * n_cols)
    return counts.reshape(n_slices, n_levels, n_cols).astype(np.float64)


def _features(m: NDArray[np.float64], n_voxels: float) -> Features:
    out = size_matrix_features(m, n_voxels, NAMES)
    p = m / m.sum()
    out["Dependence count energy"] = float((p**2).sum())
    return out


def ngldm_families(levels: NDArray[np.int64], n_levels: int) -> dict[str, Features]:
    """NGLDM features for the IBSI 2D, 2.5D and 3D variants."""
    nv_slice = (levels > 0).sum(axis=(1, 2)).astype(np.float64)
    m2 = ngldm_per_slice(levels, n_levels, in_slice=True)
    m3 = ngldm_per_slice(levels, n_levels, in_slice=False).sum(axis=0)
    slices = [z for z in range(levels.shape[0]) if nv_slice[z] > 0]
    nv = float(nv_slice.sum())
    res = {
        "2D": mean_features([_features(m2[z], nv_slice[z]) for z in slices]),
        "2.5D": _features(m2.sum(axis=0), nv),
        "3D": _features(m3, nv),
    }
    return {f"{FAMILY} ({agg})": f for agg, f in res.items()}
