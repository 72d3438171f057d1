"""Grey level distance zone matrix (GLDZM), IBSI 1 section 3.9.

Zones as in the GLSZM. The distance of a voxel is its taxicab distance to the nearest voxel
outside the morphological mask (the image edge counts as outside), so border voxels have
distance 1; 4-connected within a slice for 2D and 2.5D, 6-connected in 3D. The distance of a
zone is the smallest distance of its voxels.
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
from osteomics.radiology.radiomics.texture.glszm import zone_matrix, zones

FAMILY = "Distance zone matrix"

NAMES = {
    "short": "Small distance emphasis",
    "long": "Large distance emphasis",
    "lgl": "Low grey level emphasis",
    "hgl": "High grey level emphasis",
    "s_lgl": "Small distance low grey level emphasis",
    "s_hgl": "Small distance high grey level emphasis",
    "l_lgl": "Large distance low grey level emphasis",
    "l_hgl": "Large distance high grey level emphasis",
    "glnu": "Grey level non-uniformity",
    "glnu_norm": "Normalised grey level non-uniformity",
    "snu": "Zone distance non-uniformity",
    "snu_norm": "Normalised zone distance non-uniformity",
    "perc": "Zone percentage",
    "gl_var": "Grey level variance",
    "s_var": "Zone distance variance",
    "entropy": "Zone distance entropy",
}


def border_distance(morph_mask: NDArray[np.bool_], *, in_slice: bool) -> NDArray[np.int64]:
    """Taxicab distance (voxels) of every ROI voxel to the ROI edge; 1 at the border, 0 outside."""
    if in_slice:
        out = np.zeros(morph_mask.shape, dtype=np.int64)
        for z in range(morph_mask.shape[0]):
            padded = np.pad(morph_mask[z], 1)
            out[z] = ndimage.distance_transform_cdt(padded, metric="taxicab")[1:-1, 1:-1]
        return out
    padded = np.pad(morph_mask, 1)
    dist = ndimage.distance_transform_cdt(padded, metric="taxicab")
    return np.asarray(dist[1:-1, 1:-1, 1:-1], dtype=np.int64)


def _zone_distances(labels: NDArray[np.int64], dist: NDArray[np.int64]) -> NDArray[np.int64]:
    n = int(labels.max())
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    mins = ndimage.minimum(dist, labels=labels, index=np.arange(1, n + 1))
    return np.asarray(mins, dtype=np.int64)


def gldzm_families(
    levels: NDArray[np.int64], n_levels: int, morph_mask: NDArray[np.bool_] | None = None
) -> dict[str, Features]:
    """GLDZM features for the IBSI 2D, 2.5D and 3D variants (``"Distance zone matrix (...)"``).

    ``morph_mask`` defaults to the intensity ROI (``levels > 0``).
    """
    mask = (levels > 0) if morph_mask is None else morph_mask
    nv_slice = (levels > 0).sum(axis=(1, 2)).astype(np.float64)
    res: dict[str, Features] = {}
    labels, zl, zs = zones(levels, n_levels, in_slice=True)
    dist = _zone_distances(labels, border_distance(mask, in_slice=True))
    n_cols = max(int(dist.max()), 1)
    per_slice = [
        (zone_matrix(zl[zs == z], dist[zs == z], n_levels, n_cols), nv_slice[z])
        for z in range(levels.shape[0])
        if nv_slice[z] > 0
    ]
    res["2D"] = mean_features([size_matrix_features(m, nv, NAMES) for m, nv in per_slice])
    res["2.5D"] = size_matrix_features(
        np.sum([m for m, _ in per_slice], axis=0), float(nv_slice.sum()), NAMES
    )
    labels3, zl3, _ = zones(levels, n_levels, in_slice=False)
    dist3 = _zone_distances(labels3, border_distance(mask, in_slice=False))
    m3 = zone_matrix(zl3, dist3, n_levels, max(int(dist3.max()), 1))
    res["3D"] = size_matrix_features(m3, float(nv_slice.sum()), NAMES)
    return {f"{FAMILY} ({agg})": f for agg, f in res.items()}
