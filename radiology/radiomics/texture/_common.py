"""Shared pieces of the texture modules: directions, aggregation names, size-zone features."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

#: The 13 unique 3D directions at Chebyshev distance 1, ``(dz, dy, dx)``, first non-zero > 0.
DIRECTIONS_3D: tuple[tuple[int, int, int], ...] = tuple(
    (dz, dy, dx)
    for dz in (-1, 0, 1)
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if (dz, dy, dx) > (0, 0, 0)
)
#: The 4 in-slice directions (``dz == 0``) used by the 2D and 2.5D variants.
DIRECTIONS_2D: tuple[tuple[int, int, int], ...] = tuple(d for d in DIRECTIONS_3D if d[0] == 0)

#: Family suffixes of the directional matrices (GLCM, GLRLM), as in the IBSI tables.
AGG_2D_AVERAGED = "2D, averaged"
AGG_2D_SLICE_MERGED = "2D, slice-merged"
AGG_25D_DIRECTION_MERGED = "2.5D, direction-merged"
AGG_25D_MERGED = "2.5D, merged"
AGG_3D_AVERAGED = "3D, averaged"
AGG_3D_MERGED = "3D, merged"
DIRECTIONAL_AGGREGATIONS = (
    AGG_2D_AVERAGED,
    AGG_2D_SLICE_MERGED,
    AGG_25D_DIRECTION_MERGED,
    AGG_25D_MERGED,
    AGG_3D_AVERAGED,
    AGG_3D_MERGED,
)
#: Family suffixes of the rotation-invariant matrices (GLSZM, GLDZM, NGTDM, NGLDM).
ZONE_AGGREGATIONS = ("2D", "2.5D", "3D")

Features = dict[str, float]


def mean_features(per_matrix: list[Features]) -> Features:
    """Average features over matrices (slices and/or directions), ignoring NaN per feature."""
    if not per_matrix:
        return {}
    keys = list(per_matrix[0])
    out: Features = {}
    for k in keys:
        vals = np.array([f[k] for f in per_matrix], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        out[k] = float(finite.mean()) if finite.size else math.nan
    return out


def offset_flat(shape: tuple[int, ...], d: tuple[int, int, int]) -> int:
    """Flat-index offset of direction ``d`` in a C-ordered array of ``shape``."""
    strides = np.cumprod((1, *shape[:0:-1]))[::-1]
    return int(sum(int(s) * int(k) for s, k in zip(strides, d, strict=True)))


def size_matrix_features(
    m: NDArray[np.float64], n_voxels: float, names: Mapping[str, str]
) -> Features:
    """Features shared by run-length, size-zone and distance-zone matrices.

    Parameters
    ----------
    m
        Matrix ``(N_g, N_s)``: row ``i`` is grey level ``i + 1``, column ``j`` is run length,
        zone size or zone distance ``j + 1``.
    n_voxels
        ``N_v``: voxels that the matrix describes (summed over merged matrices).
    names
        Maps the generic keys (``short``, ``long``, ``lgl``, ``hgl``, ``s_lgl``, ``s_hgl``,
        ``l_lgl``, ``l_hgl``, ``glnu``, ``glnu_norm``, ``snu``, ``snu_norm``, ``perc``,
        ``gl_var``, ``s_var``, ``entropy``) to the family's IBSI feature names.
    """
    ns = float(m.sum())
    i = np.arange(1, m.shape[0] + 1, dtype=np.float64)[:, None]
    j = np.arange(1, m.shape[1] + 1, dtype=np.float64)[None, :]
    p = m / ns
    mi = m.sum(axis=1)
    mj = m.sum(axis=0)
    mu_i = float((i * p).sum())
    mu_j = float((j * p).sum())
    nz = p[p > 0]
    generic = {
        "short": float((m / j**2).sum() / ns),
        "long": float((m * j**2).sum() / ns),
        "lgl": float((m / i**2).sum() / ns),
        "hgl": float((m * i**2).sum() / ns),
        "s_lgl": float((m / (i**2 * j**2)).sum() / ns),
        "s_hgl": float((m * i**2 / j**2).sum() / ns),
        "l_lgl": float((m * j**2 / i**2).sum() / ns),
        "l_hgl": float((m * i**2 * j**2).sum() / ns),
        "glnu": float((mi**2).sum() / ns),
        "glnu_norm": float((mi**2).sum() / ns**2),
        "snu": float((mj**2).sum() / ns),
        "snu_norm": float((mj**2).sum() / ns**2),
        "perc": ns / n_voxels,
        "gl_var": float(((i - mu_i) ** 2 * p).sum()),
        "s_var": float(((j - mu_j) ** 2 * p).sum()),
        "entropy": float(-(nz * np.log2(nz)).sum()),
    }
    return {names[k]: v for k, v in generic.items()}


#: All 26 neighbour offsets in 3D and the 8 in-slice ones, ``(dz, dy, dx)``.
NEIGHBOURS_3D: tuple[tuple[int, int, int], ...] = DIRECTIONS_3D + tuple(
    (-a, -b, -c) for a, b, c in DIRECTIONS_3D
)
NEIGHBOURS_2D: tuple[tuple[int, int, int], ...] = tuple(d for d in NEIGHBOURS_3D if d[0] == 0)


def neighbour(levels: NDArray[np.int64], d: tuple[int, int, int]) -> NDArray[np.int64]:
    """Value of the neighbour at offset ``d`` for every voxel (0 beyond the array edge)."""
    padded = np.pad(levels, 1)
    z, y, x = levels.shape
    dz, dy, dx = d
    return padded[1 + dz : 1 + dz + z, 1 + dy : 1 + dy + y, 1 + dx : 1 + dx + x]
