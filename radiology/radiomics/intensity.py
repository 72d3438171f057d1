"""IBSI intensity families (IBSI 1 sections 3.2-3.5).

- ``Local intensity``: local and global intensity peaks (mean in a 1 cm³ sphere);
- ``Statistics``: intensity statistics on the ROI intensities;
- ``Intensity histogram``: the same statistics and histogram features on discretised grey levels;
- ``Intensity volume histogram``: volume and intensity fractions.

Conventions (IBSI): variances and moments are population moments (divide by N); percentiles
are linear-interpolation percentiles (``numpy.percentile`` default); entropies use log2.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

LOCAL_INTENSITY = "Local intensity"
STATISTICS = "Statistics"
INTENSITY_HISTOGRAM = "Intensity histogram"
IVH = "Intensity volume histogram"

#: Volume of the sphere around a voxel for the intensity peaks, mm³ (1 cm³).
PEAK_SPHERE_MM3 = 1000.0


def local_intensity_features(
    image: NDArray[np.float64],
    int_mask: NDArray[np.bool_],
    spacing_mm: tuple[float, float, float],
    sphere_mm3: float = PEAK_SPHERE_MM3,
) -> dict[str, float]:
    """Local and global intensity peaks.

    The local mean of a voxel is the mean of all image voxels (inside or outside the ROI, not
    outside the image) whose centre lies within a sphere of volume ``sphere_mm3`` around it.
    The local intensity peak is the local mean at the ROI voxel of highest intensity (the
    highest such mean when several voxels share the maximum); the global intensity peak is the
    highest local mean over the ROI.
    """
    radius = (3 * sphere_mm3 / (4 * math.pi)) ** (1 / 3)
    half = [math.floor(radius / s) for s in spacing_mm]
    grids = np.meshgrid(
        *[np.arange(-h, h + 1) * s for h, s in zip(half, spacing_mm, strict=True)], indexing="ij"
    )
    kernel = (np.sqrt(sum(g**2 for g in grids)) <= radius + 1e-9).astype(np.float64)
    sums = ndimage.correlate(image, kernel, mode="constant", cval=0.0)
    counts = ndimage.correlate(np.ones_like(image), kernel, mode="constant", cval=0.0)
    local_mean = sums / counts
    values = image[int_mask]
    means = local_mean[int_mask]
    return {
        "Local intensity peak": float(means[values == values.max()].max()),
        "Global intensity peak": float(means.max()),
    }


def _moments(x: NDArray[np.float64]) -> tuple[float, float, float, float]:
    mean = float(x.mean())
    dev = x - mean
    var = float((dev**2).mean())
    if var > 0:
        skew = float((dev**3).mean()) / var**1.5
        kurt = float((dev**4).mean()) / var**2 - 3.0
    else:
        skew = kurt = 0.0
    return mean, var, skew, kurt


def _statistics(x: NDArray[np.float64]) -> dict[str, float]:
    mean, var, skew, kurt = _moments(x)
    p10, p25, median, p75, p90 = (float(v) for v in np.percentile(x, [10, 25, 50, 75, 90]))
    robust = x[(x >= p10) & (x <= p90)]
    return {
        "Mean": mean,
        "Variance": var,
        "Skewness": skew,
        "(Excess) kurtosis": kurt,
        "Median": median,
        "Minimum": float(x.min()),
        "10th percentile": p10,
        "90th percentile": p90,
        "Maximum": float(x.max()),
        "Interquartile range": p75 - p25,
        "Range": float(x.max() - x.min()),
        "Mean absolute deviation": float(np.abs(x - mean).mean()),
        "Robust mean absolute deviation": float(np.abs(robust - robust.mean()).mean()),
        "Median absolute deviation": float(np.abs(x - median).mean()),
        "Coefficient of variation": math.sqrt(var) / mean if mean != 0 else math.nan,
        "Quartile coefficient of dispersion": (p75 - p25) / (p75 + p25)
        if (p75 + p25) != 0
        else math.nan,
    }


def statistics_features(
    image: NDArray[np.float64], int_mask: NDArray[np.bool_]
) -> dict[str, float]:
    """Intensity-based statistical features (family ``Statistics``) of the ROI intensities."""
    x = image[int_mask].astype(np.float64)
    out = _statistics(x)
    out["Energy"] = float((x**2).sum())
    out["Root mean square"] = math.sqrt(float((x**2).mean()))
    return out


def histogram_features(levels: NDArray[np.int64], n_levels: int) -> dict[str, float]:
    """Intensity histogram features on discretised grey levels.

    Parameters
    ----------
    levels
        Grey levels of the ROI voxels (1-D, values ``1..n_levels``).
    n_levels
        Number of grey levels ``N_g``; the histogram runs over ``1..N_g``.
    """
    x = levels.astype(np.float64)
    out = _statistics(x)
    counts = np.bincount(levels, minlength=n_levels + 1)[1 : n_levels + 1].astype(np.float64)
    p = counts / counts.sum()
    grey = np.arange(1, n_levels + 1, dtype=np.float64)
    out["Mode"] = float(grey[np.argmax(counts)])
    nz = p[p > 0]
    out["Entropy"] = float(-(nz * np.log2(nz)).sum())
    out["Uniformity"] = float((p**2).sum())
    # one-sided differences at the ends, central inside (IBSI)
    grad = np.gradient(counts) if n_levels > 1 else np.zeros(1)
    out["Maximum histogram gradient"] = float(grad.max())
    out["Maximum histogram gradient intensity"] = float(grey[np.argmax(grad)])
    out["Minimum histogram gradient"] = float(grad.min())
    out["Minimum histogram gradient intensity"] = float(grey[np.argmin(grad)])
    order = [
        "Mean", "Variance", "Skewness", "(Excess) kurtosis", "Median", "Minimum",
        "10th percentile", "90th percentile", "Maximum", "Mode", "Interquartile range", "Range",
        "Mean absolute deviation", "Robust mean absolute deviation", "Median absolute deviation",
        "Coefficient of variation", "Quartile coefficient of dispersion", "Entropy", "Uniformity",
        "Maximum histogram gradient", "Maximum histogram gradient intensity",
        "Minimum histogram gradient", "Minimum histogram gradient intensity",
    ]  # fmt: skip
    return {k: out[k] for k in order}


def ivh_features(
    values: NDArray[np.float64],
    *,
    bin_width: float = 1.0,
    lower: float | None = None,
    upper: float | None = None,
) -> dict[str, float]:
    """Intensity-volume histogram features.

    Parameters
    ----------
    values
        ROI intensities on the IVH grid: discrete values spaced ``bin_width`` apart (grey
        levels, or intensities already rounded to ``bin_width``).
    bin_width
        Spacing of the IVH intensities, intensity units.
    lower, upper
        Intensity range of the intensity fraction (the re-segmentation range when there is
        one); defaults to the ROI minimum and maximum.

    Notes
    -----
    ``ν(i)`` is the fraction of the ROI volume with intensity >= i; ``γ(i) = (i - lower) /
    (upper - lower)``. ``V_x`` is ``ν`` at the smallest ``i`` with ``γ >= x``; ``I_x`` is the
    smallest ``i`` with ``ν(i) <= x``. The area under the IVH curve is not standardised by
    IBSI and not computed.
    """
    lo = float(values.min()) if lower is None else float(lower)
    hi = float(values.max()) if upper is None else float(upper)
    n_steps = round((hi - lo) / bin_width)
    grid = lo + bin_width * np.arange(n_steps + 1)
    sorted_values = np.sort(values)
    # fraction of voxels with value >= grid[k] (tolerant to float error on the grid)
    below = np.searchsorted(sorted_values, grid - bin_width * 1e-6, side="left")
    nu = 1.0 - below / values.size
    gamma = (grid - lo) / (hi - lo) if hi > lo else np.ones_like(grid)

    def v_at(x: float) -> float:
        idx = np.flatnonzero(gamma >= x - 1e-12)
        return float(nu[idx[0]]) if idx.size else 0.0

    def i_at(x: float) -> float:
        idx = np.flatnonzero(nu <= x + 1e-12)
        return float(grid[idx[0]]) if idx.size else float(hi + bin_width)

    v10, v90, i10, i90 = v_at(0.1), v_at(0.9), i_at(0.1), i_at(0.9)
    return {
        "Volume fraction at 10% intensity": v10,
        "Volume fraction at 90% intensity": v90,
        "Intensity at 10% volume": i10,
        "Intensity at 90% volume": i90,
        "Volume fraction difference between 10% and 90% intensity": v10 - v90,
        "Intensity difference between 10% and 90% volume": i10 - i90,
    }
