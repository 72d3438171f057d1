"""IBSI morphological features (IBSI 1 section 3.1), family ``Morphology``.

The surface is a triangle mesh from marching cubes (level 0.5) on the morphological mask padded
with one empty voxel on each side, in mm. Volume is the sum of signed tetrahedra between the
origin and each face; area is the sum of face areas. Voxel positions are voxel centres in mm in
the array frame ``(z, y, x) * spacing`` (distances and volumes do not depend on the direction
matrix).

An ROI one voxel thick (contoured on one slice, no interpolation across slices) is valid: the
padded marching-cubes mesh is closed, so every mesh feature is defined; its voxel centres are
coplanar, so the least PCA axis is 0 (least axis length 0, flatness 0) and the approximate
enclosing ellipsoid is flat: both AEE densities are NaN (undefined).

Not standardised by IBSI, so not computed yet: oriented minimum bounding box (OMBB) and minimum
volume enclosing ellipsoid (MVEE) densities.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist
from scipy.special import eval_legendre
from skimage.measure import marching_cubes

log = logging.getLogger(__name__)

FAMILY = "Morphology"
#: PCA eigenvalues below this fraction of the largest are rounding noise, taken as 0.
_FLAT_EIGENVALUE_RTOL = 1e-12


def mesh(
    mask: NDArray[np.bool_], spacing_mm: tuple[float, float, float]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Marching-cubes surface of ``mask`` (vertices in mm, ``(z, y, x)`` frame; faces)."""
    padded = np.pad(mask.astype(np.float64), 1)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=spacing_mm)
    verts = verts - np.asarray(spacing_mm)  # undo the padding offset
    return verts.astype(np.float64), faces.astype(np.int64)


def mesh_volume_area(verts: NDArray[np.float64], faces: NDArray[np.int64]) -> tuple[float, float]:
    """Volume (mm³) and surface area (mm²) of a closed triangle mesh."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    volume = abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0)
    area = float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2.0)
    return volume, area


def voxel_positions(
    mask: NDArray[np.bool_], spacing_mm: tuple[float, float, float]
) -> NDArray[np.float64]:
    """Centres of the voxels in ``mask``, mm, shape ``(n, 3)`` in ``(z, y, x)`` order."""
    return np.argwhere(mask).astype(np.float64) * np.asarray(spacing_mm)


def _ellipsoid_area(a: float, b: float, c: float, n_terms: int = 20) -> float:
    """Surface area of an ellipsoid with semi-axes a >= b >= c (IBSI Legendre series), mm²."""
    if a <= 0:
        return 0.0
    alpha = math.sqrt(max(0.0, 1.0 - b**2 / a**2))
    beta = math.sqrt(max(0.0, 1.0 - c**2 / a**2))
    if alpha * beta == 0:
        # Degenerate (spheroid with the series undefined): exact Carlson form.
        from scipy.special import elliprg

        return float(4 * math.pi * a * b * c * elliprg(a**-2, b**-2, c**-2))
    x = (alpha**2 + beta**2) / (2 * alpha * beta)
    nu = np.arange(n_terms + 1)
    terms = (alpha * beta) ** nu / (1 - 4 * nu**2) * eval_legendre(nu, x)
    return float(4 * math.pi * a * b * terms.sum())


def moran_geary(
    values: NDArray[np.float64], positions: NDArray[np.float64], *, chunk: int = 2048
) -> tuple[float, float]:
    """Moran's I and Geary's C with inverse-distance weights over all voxel pairs.

    Exact O(n²) computation in chunks of ``chunk`` rows (memory ``chunk * n`` floats): the
    reference for :func:`moran_geary_grid`, which the features use.
    """
    n = values.size
    if n < 2:
        return math.nan, math.nan
    if n > 20_000:
        log.warning("Moran's I / Geary's C: exact O(n²) over %d voxels, this takes minutes", n)
    dev = values - values.mean()
    denom = float((dev**2).sum())
    w_sum = 0.0
    moran_num = 0.0
    geary_num = 0.0
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        d = np.linalg.norm(positions[start:stop, None, :] - positions[None, :, :], axis=2)
        with np.errstate(divide="ignore"):
            w = np.where(d > 0, 1.0 / d, 0.0)
        w_sum += float(w.sum())
        moran_num += float((w * dev[start:stop, None] * dev[None, :]).sum())
        geary_num += float((w * (values[start:stop, None] - values[None, :]) ** 2).sum())
    if denom == 0:
        return math.nan, math.nan
    moran = n / w_sum * moran_num / denom
    geary = (n - 1) / (2 * w_sum) * geary_num / denom
    return moran, geary


def moran_geary_grid(
    image: NDArray[np.float64], mask: NDArray[np.bool_], spacing_mm: tuple[float, float, float]
) -> tuple[float, float]:
    """Moran's I and Geary's C over all voxel pairs of ``mask``, exactly, by FFT convolution.

    On a regular grid the inverse-distance weight ``w_ij = 1 / |p_i - p_j|`` depends only on the
    displacement, so every pair sum is a correlation with the kernel ``K(d) = 1/|d|``
    (``K(0) = 0``) over the ROI's bounding box: with ``m`` the ROI indicator and ``d = (x -
    mean) m``, ``W = Σ m (K*m)``, ``Σ w d_i d_j = Σ d (K*d)`` and ``Σ w (x_i - x_j)² =
    2 Σ d² (K*m) - 2 Σ d (K*d)``. Same values as :func:`moran_geary` (to float rounding,
    about 1e-10 relative) in ``O(N log N)`` for ``N`` bounding-box voxels instead of ``O(n²)``.
    """
    from scipy.signal import fftconvolve

    idx = np.argwhere(mask)
    n = idx.shape[0]
    if n < 2:
        return math.nan, math.nan
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    m = mask[box].astype(np.float64)
    x = image[box]
    values = x[mask[box]]
    dev = np.where(mask[box], x - values.mean(), 0.0)
    denom = float((dev**2).sum())
    if denom == 0:
        return math.nan, math.nan
    shape = m.shape
    grids = np.meshgrid(
        *(np.arange(-(k - 1), k) * s for k, s in zip(shape, spacing_mm, strict=True)),
        indexing="ij",
        sparse=True,
    )
    dist = np.sqrt(sum(g**2 for g in grids))
    with np.errstate(divide="ignore"):
        kernel = np.where(dist > 0, 1.0 / dist, 0.0)
    k_m = fftconvolve(m, kernel, mode="same")
    k_d = fftconvolve(dev, kernel, mode="same")
    w_sum = float((m * k_m).sum())
    moran_num = float((dev * k_d).sum())
    geary_num = 2.0 * float((dev**2 * k_m).sum()) - 2.0 * moran_num
    moran = n / w_sum * moran_num / denom
    geary = (n - 1) / (2 * w_sum) * geary_num / denom
    return moran, geary


def morphology_features(
    image: NDArray[np.float64],
    morph_mask: NDArray[np.bool_],
    int_mask: NDArray[np.bool_],
    spacing_mm: tuple[float, float, float],
) -> dict[str, float]:
    """All standardised IBSI morphological features.

    Parameters
    ----------
    image
        Intensities ``(z, y, x)`` (after interpolation, before discretisation).
    morph_mask
        Morphological mask (before re-segmentation): shape features.
    int_mask
        Intensity mask (after re-segmentation): centre of mass, integrated intensity, Moran, Geary.
    spacing_mm
        Voxel size ``(dz, dy, dx)``, mm.

    Returns
    -------
    dict
        Feature name (IBSI wording) -> value; volumes mm³, areas mm², lengths mm.
    """
    verts, faces = mesh(morph_mask, spacing_mm)
    volume, area = mesh_volume_area(verts, faces)
    voxel_volume = float(np.prod(spacing_mm))
    pos = voxel_positions(morph_mask, spacing_mm)
    int_pos = voxel_positions(int_mask, spacing_mm)
    int_values = image[int_mask]

    out: dict[str, float] = {}
    out["Volume (mesh)"] = volume
    out["Volume (voxel counting)"] = float(morph_mask.sum()) * voxel_volume
    out["Surface area (mesh)"] = area
    out["Surface to volume ratio"] = area / volume
    out["Compactness 1"] = volume / (math.sqrt(math.pi) * area**1.5)
    out["Compactness 2"] = 36 * math.pi * volume**2 / area**3
    out["Spherical disproportion"] = area / (36 * math.pi * volume**2) ** (1 / 3)
    out["Sphericity"] = (36 * math.pi * volume**2) ** (1 / 3) / area
    out["Asphericity"] = (area**3 / (36 * math.pi * volume**2)) ** (1 / 3) - 1

    centre = pos.mean(axis=0)
    weighted = (int_pos * int_values[:, None]).sum(axis=0) / int_values.sum()
    out["Centre of mass shift"] = float(np.linalg.norm(centre - weighted))

    hull = ConvexHull(verts)
    hull_pts = verts[hull.vertices]
    out["Maximum 3D diameter"] = float(pdist(hull_pts).max()) if len(hull_pts) > 1 else 0.0

    eig = np.sort(np.linalg.eigvalsh(np.cov(pos.T)))[::-1] if len(pos) > 1 else np.zeros(3)
    # Eigenvalues that are rounding noise (a flat ROI, one voxel thick, has an exact 0) are 0.
    eig = np.where(eig > _FLAT_EIGENVALUE_RTOL * max(float(eig[0]), 0.0), eig, 0.0)
    l_major, l_minor, l_least = (float(e) for e in eig)
    out["Major axis length"] = 4 * math.sqrt(l_major)
    out["Minor axis length"] = 4 * math.sqrt(l_minor)
    out["Least axis length"] = 4 * math.sqrt(l_least)
    out["Elongation"] = math.sqrt(l_minor / l_major) if l_major > 0 else math.nan
    out["Flatness"] = math.sqrt(l_least / l_major) if l_major > 0 else math.nan

    extent = verts.max(axis=0) - verts.min(axis=0)
    v_aabb = float(np.prod(extent))
    a_aabb = 2 * float(extent[0] * extent[1] + extent[0] * extent[2] + extent[1] * extent[2])
    out["Volume density (AABB)"] = volume / v_aabb
    out["Area density (AABB)"] = area / a_aabb

    a, b, c = 2 * math.sqrt(l_major), 2 * math.sqrt(l_minor), 2 * math.sqrt(l_least)
    if c > 0:
        out["Volume density (AEE)"] = volume / (4 * math.pi * a * b * c / 3)
        out["Area density (AEE)"] = area / _ellipsoid_area(a, b, c)
    else:
        # The voxel centres are coplanar (for example an ROI contoured on one slice): the
        # approximate enclosing ellipsoid is flat, its volume 0; both densities are undefined.
        out["Volume density (AEE)"] = math.nan
        out["Area density (AEE)"] = math.nan

    out["Volume density (convex hull)"] = volume / float(hull.volume)
    out["Area density (convex hull)"] = area / float(hull.area)

    out["Integrated intensity"] = float(int_values.mean()) * volume
    moran, geary = moran_geary_grid(image, int_mask, spacing_mm)
    out["Moran's I index"] = moran
    out["Geary's C measure"] = geary
    return out
