"""Grey level co-occurrence matrix (GLCM), IBSI 1 section 3.6.

Symmetric matrices at Chebyshev distance 1: both voxels of a pair must lie in the ROI; each
pair counts once in each order. 2D and 2.5D variants use the 4 in-slice directions, 3D the 13.
"""

from __future__ import annotations

import math

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
)

FAMILY = "Co-occurrence matrix"

FEATURES = (
    "Joint maximum", "Joint average", "Joint variance", "Joint entropy", "Difference average",
    "Difference variance", "Difference entropy", "Sum average", "Sum variance", "Sum entropy",
    "Angular second moment", "Contrast", "Dissimilarity", "Inverse difference",
    "Normalised inverse difference", "Inverse difference moment",
    "Normalised inverse difference moment", "Inverse variance", "Correlation", "Autocorrelation",
    "Cluster tendency", "Cluster shade", "Cluster prominence", "Information correlation 1",
    "Information correlation 2",
)  # fmt: skip


def glcm_per_slice(levels: NDArray[np.int64], n_levels: int) -> NDArray[np.float64]:
    """Co-occurrence counts per slice and direction.

    Parameters
    ----------
    levels
        Grey levels ``(z, y, x)``, ``1..n_levels`` inside the ROI, 0 outside.
    n_levels
        ``N_g``.

    Returns
    -------
    ndarray
        ``(n_slices, 13, N_g, N_g)`` symmetric counts; the slice is that of the first voxel of
        the pair (for 3D directions crossing slices this only matters for the 3D sums).
    """
    padded = np.pad(levels, 1)
    flat = padded.ravel()
    n_slices = levels.shape[0]
    z_of = np.repeat(np.arange(-1, n_slices + 1), padded.shape[1] * padded.shape[2])
    src = np.flatnonzero(flat)
    out = np.zeros((n_slices, len(DIRECTIONS_3D), n_levels, n_levels))
    for k, d in enumerate(DIRECTIONS_3D):
        dst = src + offset_flat(padded.shape, d)
        ok = flat[dst] > 0
        a, b, z = flat[src[ok]] - 1, flat[dst[ok]] - 1, z_of[src[ok]]
        idx = (z * n_levels + a) * n_levels + b
        counts = np.bincount(idx, minlength=n_slices * n_levels * n_levels)
        c = counts.reshape(n_slices, n_levels, n_levels).astype(np.float64)
        out[:, k] = c + np.transpose(c, (0, 2, 1))
    return out


def glcm_features(matrix: NDArray[np.float64]) -> Features:
    """The 25 IBSI GLCM features of one (possibly merged) co-occurrence matrix."""
    total = matrix.sum()
    if total == 0:
        return {f: math.nan for f in FEATURES}
    p = matrix / total
    ng = p.shape[0]
    g = np.arange(1, ng + 1, dtype=np.float64)
    i, j = g[:, None], g[None, :]
    pi, pj = p.sum(axis=1), p.sum(axis=0)
    diff = np.abs(i - j).astype(np.int64)
    p_diff = np.bincount(diff.ravel(), weights=p.ravel(), minlength=ng).astype(np.float64)
    k_diff = np.arange(ng, dtype=np.float64)
    s = (i + j).astype(np.int64)
    p_sum = np.bincount(s.ravel(), weights=p.ravel(), minlength=2 * ng + 1)[2:].astype(np.float64)
    k_sum = np.arange(2, 2 * ng + 1, dtype=np.float64)

    def entropy(q: NDArray[np.float64]) -> float:
        q = q[q > 0]
        return float(-(q * np.log2(q)).sum())

    mu = float((i * p).sum())
    mu_i, mu_j = float((g * pi).sum()), float((g * pj).sum())
    sd_i = math.sqrt(float(((g - mu_i) ** 2 * pi).sum()))
    sd_j = math.sqrt(float(((g - mu_j) ** 2 * pj).sum()))
    d_avg = float((k_diff * p_diff).sum())
    s_avg = float((k_sum * p_sum).sum())
    hxy = entropy(p.ravel())
    hx = entropy(pi)
    pipj = pi[:, None] * pj[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pipj = np.where(pipj > 0, np.log2(np.where(pipj > 0, pipj, 1.0)), 0.0)
    hxy1 = float(-(p * log_pipj).sum())
    hxy2 = float(-(pipj * log_pipj).sum())
    clust = i + j - mu_i - mu_j
    out = {
        "Joint maximum": float(p.max()),
        "Joint average": mu,
        "Joint variance": float(((i - mu) ** 2 * p).sum()),
        "Joint entropy": hxy,
        "Difference average": d_avg,
        "Difference variance": float(((k_diff - d_avg) ** 2 * p_diff).sum()),
        "Difference entropy": entropy(p_diff),
        "Sum average": s_avg,
        "Sum variance": float(((k_sum - s_avg) ** 2 * p_sum).sum()),
        "Sum entropy": entropy(p_sum),
        "Angular second moment": float((p**2).sum()),
        "Contrast": float(((i - j) ** 2 * p).sum()),
        "Dissimilarity": float((np.abs(i - j) * p).sum()),
        "Inverse difference": float((p / (1 + np.abs(i - j))).sum()),
        "Normalised inverse difference": float((p / (1 + np.abs(i - j) / ng)).sum()),
        "Inverse difference moment": float((p / (1 + (i - j) ** 2)).sum()),
        "Normalised inverse difference moment": float((p / (1 + (i - j) ** 2 / ng**2)).sum()),
        "Inverse variance": float((p_diff[1:] / k_diff[1:] ** 2).sum()),
        "Correlation": float(((i - mu_i) * (j - mu_j) * p).sum()) / (sd_i * sd_j)
        if sd_i * sd_j > 0
        else math.nan,
        "Autocorrelation": float((i * j * p).sum()),
        "Cluster tendency": float((clust**2 * p).sum()),
        "Cluster shade": float((clust**3 * p).sum()),
        "Cluster prominence": float((clust**4 * p).sum()),
        "Information correlation 1": (hxy - hxy1) / hx if hx > 0 else math.nan,
        "Information correlation 2": math.sqrt(max(0.0, 1 - math.exp(-2 * (hxy2 - hxy)))),
    }
    return out


def glcm_families(levels: NDArray[np.int64], n_levels: int) -> dict[str, Features]:
    """GLCM features for the six IBSI aggregation variants.

    Returns
    -------
    dict
        ``"Co-occurrence matrix (<variant>)"`` -> feature name -> value.
    """
    m = glcm_per_slice(levels, n_levels)
    in_slice = [k for k, d in enumerate(DIRECTIONS_3D) if d[0] == 0]
    m2 = m[:, in_slice]  # (z, 4, Ng, Ng)
    slices = [z for z in range(m.shape[0]) if m2[z].sum() > 0]
    m3 = m.sum(axis=0)  # (13, Ng, Ng)
    res = {
        AGG_2D_AVERAGED: mean_features(
            [glcm_features(m2[z, k]) for z in slices for k in range(m2.shape[1]) if m2[z, k].sum()]
        ),
        AGG_2D_SLICE_MERGED: mean_features([glcm_features(m2[z].sum(axis=0)) for z in slices]),
        AGG_25D_DIRECTION_MERGED: mean_features(
            [glcm_features(m2[:, k].sum(axis=0)) for k in range(m2.shape[1]) if m2[:, k].sum()]
        ),
        AGG_25D_MERGED: glcm_features(m2.sum(axis=(0, 1))),
        AGG_3D_AVERAGED: mean_features(
            [glcm_features(m3[k]) for k in range(m3.shape[0]) if m3[k].sum()]
        ),
        AGG_3D_MERGED: glcm_features(m3.sum(axis=0)),
    }
    return {f"{FAMILY} ({agg})": feats for agg, feats in res.items()}
