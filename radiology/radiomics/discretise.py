"""Intensity discretisation, IBSI 1 section 2.7 (fixed bin number, fixed bin size).

Discretised grey levels are integers ``1..n_levels``; voxels outside the ROI get ``0`` so that
texture code can treat ``0`` as "not in the ROI".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from osteomics.radiology.radiomics.errors import EmptyMaskError, RadiomicsConfigError

Method = Literal["none", "fixed_bin_number", "fixed_bin_size"]


@dataclass(frozen=True)
class Discretisation:
    """How intensities become grey levels.

    Attributes
    ----------
    method
        ``"none"``: intensities are already grey levels (positive integers, as in the IBSI
        digital phantom); ``"fixed_bin_number"``: ``n_bins`` bins between the ROI minimum and
        maximum; ``"fixed_bin_size"``: bins of ``bin_width`` intensity units from ``lower_bound``
        (the lower re-segmentation bound) or, when that is None, from the ROI minimum.
    n_bins
        Number of bins for ``fixed_bin_number``.
    bin_width
        Bin width for ``fixed_bin_size``, in intensity units (HU, SUV, ...).
    lower_bound
        Lower edge of the first bin for ``fixed_bin_size``, intensity units.
    """

    method: Method = "none"
    n_bins: int | None = None
    bin_width: float | None = None
    lower_bound: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ("none", "fixed_bin_number", "fixed_bin_size"):
            raise RadiomicsConfigError(
                f"unknown discretisation method {self.method!r}; "
                "use 'none', 'fixed_bin_number' or 'fixed_bin_size'"
            )
        if self.method == "fixed_bin_number" and (self.n_bins is None or self.n_bins < 1):
            raise RadiomicsConfigError("fixed_bin_number needs n_bins >= 1")
        if self.method == "fixed_bin_size" and (self.bin_width is None or not self.bin_width > 0):
            raise RadiomicsConfigError("fixed_bin_size needs bin_width > 0")


@dataclass(frozen=True)
class GreyLevels:
    """Discretised ROI.

    Attributes
    ----------
    levels
        int64 ``(z, y, x)``; grey level ``1..n_levels`` inside the ROI, ``0`` outside.
    n_levels
        Number of grey levels ``N_g`` used by the features (the matrix size).
    bin_width
        Intensity width of one bin (1 for ``"none"``), intensity units.
    lower_bound
        Intensity of the lower edge of grey level 1 (for ``"none"``: 0.5 below level 1 is not
        meaningful, so this is the value that maps to level 1), intensity units.
    """

    levels: NDArray[np.int64]
    n_levels: int
    bin_width: float
    lower_bound: float


def discretise(
    image: NDArray[np.float64], roi: NDArray[np.bool_], settings: Discretisation
) -> GreyLevels:
    """Discretise the intensities inside ``roi``.

    Parameters
    ----------
    image
        Intensities ``(z, y, x)``.
    roi
        Boolean ROI (the intensity mask, after re-segmentation) of the same shape.
    settings
        The method and its parameters.

    Returns
    -------
    GreyLevels
        Levels ``1..n_levels`` inside the ROI, 0 outside.

    Raises
    ------
    EmptyMaskError
        The ROI is empty.
    RadiomicsConfigError
        ``"none"`` on intensities that are not positive integers, or a ``fixed_bin_size``
        lower bound above the ROI minimum.
    """
    values = image[roi]
    if values.size == 0:
        raise EmptyMaskError("cannot discretise an empty ROI")
    levels = np.zeros(image.shape, dtype=np.int64)
    x_min, x_max = float(values.min()), float(values.max())
    if settings.method == "none":
        if np.any(values != np.round(values)) or x_min < 1:
            raise RadiomicsConfigError(
                "discretisation 'none' needs intensities that are already grey levels "
                f"(integers >= 1); this ROI spans {x_min:g}..{x_max:g}: use fixed_bin_number "
                "or fixed_bin_size"
            )
        levels[roi] = values.astype(np.int64)
        return GreyLevels(levels, int(x_max), 1.0, 1.0)
    if settings.method == "fixed_bin_number":
        n_bins = int(settings.n_bins or 1)
        if x_max == x_min:
            levels[roi] = 1
        else:
            d = np.floor(n_bins * (values - x_min) / (x_max - x_min)) + 1
            levels[roi] = np.minimum(d, n_bins).astype(np.int64)
        return GreyLevels(levels, n_bins, (x_max - x_min) / n_bins, x_min)
    width = float(settings.bin_width or 1.0)
    lower = x_min if settings.lower_bound is None else float(settings.lower_bound)
    if lower > x_min:
        raise RadiomicsConfigError(
            f"fixed_bin_size lower bound {lower:g} lies above the ROI minimum {x_min:g}; "
            "re-segment the ROI to the range first"
        )
    d = np.floor((values - lower) / width) + 1
    levels[roi] = d.astype(np.int64)
    n_levels = int(d.max())
    return GreyLevels(levels, n_levels, width, lower)


def n_bins_fixed_size(lower: float, upper: float, width: float) -> int:
    """Number of fixed-size bins covering ``[lower, upper]`` (IBSI ``N_g`` with a known range)."""
    return int(math.floor((upper - lower) / width) + 1)
