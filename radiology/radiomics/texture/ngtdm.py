"""Neighbourhood grey tone difference matrix (NGTDM), IBSI 1 section 3.10.

For each ROI voxel, the neighbourhood average is the mean grey level of its neighbours at
Chebyshev distance 1 (8 in-slice for 2D/2.5D, 26 in 3D) that lie in the ROI; voxels without
any such neighbour are left out. ``s_i`` sums ``|i - average|`` over voxels of grey level
``i``; ``n_i`` counts them. ``2D``: per slice, averaged; ``2.5D``: ``s_i`` and ``n_i`` summed
over slices; ``3D``: one volume matrix.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from osteomics.radiology.radiomics.texture._common import (
    NEIGHBOURS_2D,
    NEIGHBOURS_3D,
    Features,
    mean_features,
    neighbour,
)

FAMILY = "Neighbourhood grey tone difference matrix"
FEATURES = ("Coarseness", "Contrast", "Busyness", "Complexity", "Strength")


def ngtdm_per_slice(
    levels: NDArray[np.int64], n_levels: int, *, in_slice: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``s`` and ``n`` per slice: two arrays ``(n_slices, N_g)``."""
    offsets = NEIGHBOURS_2D if in_slice else NEIGHBOURS_3D
    total = np.zeros(levels.shape, dtype=np.float64)
    count = np.zeros(levels.shape, dtype=np.float64)
    for d in offsets:
        nb = neighbour(levels, d)
        total += nb
        count += nb > 0
    valid = (levels > 0) & (count > 0)
    diff = np.abs(levels - np.divide(total, count, out=np.zeros_like(total), where=count > 0))
    z = np.nonzero(valid)[0]
    g = levels[valid] - 1
    n_slices = levels.shape[0]
    idx = z * n_levels + g
    s = np.bincount(idx, weights=diff[valid], minlength=n_slices * n_levels)
    n = np.bincount(idx, minlength=n_slices * n_levels).astype(np.float64)
    return (
        np.asarray(s, dtype=np.float64).reshape(n_slices, n_levels),
        n.reshape(n_slices, n_levels),
    )


def ngtdm_features(s: NDArray[np.float64], n: NDArray[np.float64]) -> Features:
    """The five IBSI NGTDM features from ``s_i`` and ``n_i`` (length ``N_g``)."""
    n_vc = float(n.sum())
    if n_vc == 0:
        return {f: math.nan for f in FEATURES}
    p = n / n_vc
    g = np.arange(1, s.size + 1, dtype=np.float64)
    keep = p > 0
    p, s, g = p[keep], s[keep], g[keep]
    n_gp = p.size
    ps = p * s
    sum_ps = float(ps.sum())
    dg = g[:, None] - g[None, :]
    pp = p[:, None] * p[None, :]
    coarseness = 1.0 / sum_ps if sum_ps > 0 else math.nan  # IBSI: undefined when 0
    contrast = (
        float((pp * dg**2).sum()) / (n_gp * (n_gp - 1)) * float(s.sum()) / n_vc if n_gp > 1 else 0.0
    )
    busy_den = float(np.abs(g[:, None] * p[:, None] - g[None, :] * p[None, :]).sum())
    busyness = sum_ps / busy_den if busy_den > 0 else 0.0
    complexity = (
        float((np.abs(dg) * (ps[:, None] + ps[None, :]) / (p[:, None] + p[None, :])).sum()) / n_vc
    )
    s_sum = float(s.sum())
    strength = float(((p[:, None] + p[None, :]) * dg**2).sum()) / s_sum if s_sum > 0 else 0.0
    return {
        "Coarseness": coarseness,
        "Contrast": contrast,
        "Busyness": busyness,
        "Complexity": complexity,
        "Strength": strength,
    }


def ngtdm_families(levels: NDArray[np.int64], n_levels: int) -> dict[str, Features]:
    """NGTDM features for the IBSI 2D, 2.5D and 3D variants."""
    s2, n2 = ngtdm_per_slice(levels, n_levels, in_slice=True)
    slices = [z for z in range(levels.shape[0]) if n2[z].sum() > 0]
    s3, n3 = ngtdm_per_slice(levels, n_levels, in_slice=False)
    res = {
        "2D": mean_features([ngtdm_features(s2[z], n2[z]) for z in slices]),
        "2.5D": ngtdm_features(s2.sum(axis=0), n2.sum(axis=0)),
        "3D": ngtdm_features(s3.sum(axis=0), n3.sum(axis=0)),
    }
    return {f"{FAMILY} ({agg})": f for agg, f in res.items()}
