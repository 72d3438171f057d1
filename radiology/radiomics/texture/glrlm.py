"""Grey level run length matrix (GLRLM), IBSI 1 section 3.7.

A run is a maximal line of consecutive ROI voxels with the same grey level along a direction;
voxels outside the ROI end a run. Directions as for the GLCM (4 in-slice, 13 in 3D), each
counted once. ``N_v`` of a merged matrix is the sum of the ``N_v`` of its parts.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from osteomics.radiology.radiomics.texture._common import (
    AGG_2D_AVERAGED,
    AGG_2D_SLICE_MERGED,
    AGG_3D_AVERAGED,
    AGG_3D_MERGED,
    AGG_25D_DIRECTION_MERGED,
    AGG_25D_MERGED,
    DIRECTIONS_3D,
    Features,
    mean_features,
    offset_flat,
    size_matrix_features,
)

FAMILY = "Run length matrix"

NAMES = {
    "short": "Short runs emphasis",
    "long": "Long runs emphasis",
    "lgl": "Low grey level run emphasis",
    "hgl": "High grey level run emphasis",
    "s_lgl": "Short run low grey level emphasis",
    "s_hgl": "Short run high grey level emphasis",
    "l_lgl": "Long run low grey level emphasis",
    "l_hgl": "Long run high grey level emphasis",
    "glnu": "Grey level non-uniformity",
    "glnu_norm": "Normalised grey level non-uniformity",
    "snu": "Run length non-uniformity",
    "snu_norm": "Normalised run length non-uniformity",
    "perc": "Run percentage",
    "gl_var": "Grey level variance",
    "s_var": "Run length variance",
    "entropy": "Run entropy",
}


def glrlm_per_slice(levels: NDArray[np.int64], n_levels: int) -> NDArray[np.float64]:
    """Run counts per slice (of the run's first voxel) and direction.

    Returns
    -------
    ndarray
        ``(n_slices, 13, N_g, L)`` with ``L`` the longest array side; column ``j`` is run
        length ``j + 1``.
    """
    padded = np.pad(levels, 1)
    flat = padded.ravel()
    n_slices = levels.shape[0]
    max_len = max(levels.shape)
    z_of = np.repeat(np.arange(-1, n_slices + 1), padded.shape[1] * padded.shape[2])
    roi = np.flatnonzero(flat)
    out = np.zeros((n_slices, len(DIRECTIONS_3D), n_levels, max_len))
    for k, d in enumerate(DIRECTIONS_3D):
        off = offset_flat(padded.shape, d)
        starts = roi[flat[roi - off] != flat[roi]]
        length = np.ones(starts.size, dtype=np.int64)
        pos = starts.copy()
        alive = flat[pos + off] == flat[pos]
        while alive.any():
            pos[alive] += off
            length[alive] += 1
            alive[alive] = flat[pos[alive] + off] == flat[pos[alive]]
        g, z = flat[starts] - 1, z_of[starts]
        idx = (z * n_levels + g) * max_len + (length - 1)
        counts = np.bincount(idx, minlength=n_slices * n_levels * max_len)
        out[:, k] = counts.reshape(n_slices, n_levels, max_len)
    return out


def glrlm_families(levels: NDArray[np.int64], n_levels: int) -> dict[str, Features]:
    """GLRLM features for the six IBSI aggregation variants (``"Run length matrix (...)"``)."""
    m = glrlm_per_slice(levels, n_levels)
    nv_slice = (levels > 0).sum(axis=(1, 2)).astype(np.float64)
    nv = float(nv_slice.sum())
    in_slice = [k for k, d in enumerate(DIRECTIONS_3D) if d[0] == 0]
    m2 = m[:, in_slice]
    slices = [z for z in range(m.shape[0]) if nv_slice[z] > 0]
    n2, n3 = m2.shape[1], m.shape[1]
    m3 = m.sum(axis=0)

    def feats(mat: NDArray[np.float64], n_vox: float) -> Features:
        return size_matrix_features(mat, n_vox, NAMES)

    res = {
        AGG_2D_AVERAGED: mean_features(
            [feats(m2[z, k], nv_slice[z]) for z in slices for k in range(n2)]
        ),
        AGG_2D_SLICE_MERGED: mean_features(
            [feats(m2[z].sum(axis=0), n2 * nv_slice[z]) for z in slices]
        ),
        AGG_25D_DIRECTION_MERGED: mean_features(
            [feats(m2[:, k].sum(axis=0), nv) for k in range(n2)]
        ),
        AGG_25D_MERGED: feats(m2.sum(axis=(0, 1)), n2 * nv),
        AGG_3D_AVERAGED: mean_features([feats(m3[k], nv) for k in range(n3)]),
        AGG_3D_MERGED: feats(m3.sum(axis=0), n3 * nv),
    }
    return {f"{FAMILY} ({agg})": f for agg, f in res.items()}
