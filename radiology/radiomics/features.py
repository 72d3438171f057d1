"""The feature registry: every IBSI feature osteomics computes, by (family, feature).

``family`` and ``feature`` are spelled exactly as in the IBSI 1 reference tables (for example
``("Co-occurrence matrix (3D, merged)", "Joint maximum")``) so that results join to any IBSI
reference table. Features are computed by *groups* (one matrix gives a whole family, or six);
:data:`REGISTRY` maps each (family, feature) to its :class:`FeatureSpec` (group and IBSI
identifier), :data:`GROUPS` maps a group to the function that computes it.

``ibsi_id`` (the IBSI permanent four-character identifier) is None throughout for now: the
identifiers were not available offline to transcribe and check, and a wrong join key is worse
than a missing one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from osteomics.radiology.radiomics import intensity, morphology
from osteomics.radiology.radiomics.discretise import GreyLevels
from osteomics.radiology.radiomics.texture import glcm, gldzm, glrlm, glszm, ngldm, ngtdm
from osteomics.radiology.radiomics.texture._common import (
    DIRECTIONAL_AGGREGATIONS,
    ZONE_AGGREGATIONS,
)

Features = dict[str, float]


@dataclass(frozen=True)
class FeatureValue:
    """One computed feature.

    Attributes
    ----------
    family
        IBSI family with its aggregation variant, as in the IBSI tables.
    feature
        IBSI feature name, as in the IBSI tables.
    ibsi_id
        IBSI permanent identifier, when known.
    value
        The value (units as IBSI defines them: mm, mm², mm³, intensity units, or none).
    """

    family: str
    feature: str
    ibsi_id: str | None
    value: float


@dataclass(frozen=True)
class Prepared:
    """The processed image handed to the feature groups (after IBSI image processing).

    Attributes
    ----------
    image
        Intensities ``(z, y, x)``.
    morph_mask, int_mask
        Morphological mask (before re-segmentation) and intensity mask (after).
    spacing_mm
        Voxel size ``(dz, dy, dx)``, mm.
    grey
        Discretised grey levels for the histogram and texture families.
    ivh_values, ivh_bin_width, ivh_range
        ROI values on the IVH grid, its step and its intensity range (None: ROI min/max).
    sphere_volume_mm3
        Sphere volume for the intensity peaks, mm³.
    """

    image: NDArray[np.float64]
    morph_mask: NDArray[np.bool_]
    int_mask: NDArray[np.bool_]
    spacing_mm: tuple[float, float, float]
    grey: GreyLevels
    ivh_values: NDArray[np.float64]
    ivh_bin_width: float
    ivh_range: tuple[float, float] | None
    sphere_volume_mm3: float


@dataclass(frozen=True)
class FeatureSpec:
    """Where a feature comes from: its names, IBSI identifier and computing group."""

    family: str
    feature: str
    ibsi_id: str | None
    group: str


@dataclass(frozen=True)
class Group:
    """A set of families computed together from one pass (one matrix type)."""

    name: str
    families: dict[str, tuple[str, ...]]  # family -> feature names in output order
    compute: Callable[[Prepared], dict[str, Features]]


MORPHOLOGY_FEATURES = (
    "Volume (mesh)", "Volume (voxel counting)", "Surface area (mesh)", "Surface to volume ratio",
    "Compactness 1", "Compactness 2", "Spherical disproportion", "Sphericity", "Asphericity",
    "Centre of mass shift", "Maximum 3D diameter", "Major axis length", "Minor axis length",
    "Least axis length", "Elongation", "Flatness", "Volume density (AABB)",
    "Area density (AABB)", "Volume density (AEE)", "Area density (AEE)",
    "Volume density (convex hull)", "Area density (convex hull)", "Integrated intensity",
    "Moran's I index", "Geary's C measure",
)  # fmt: skip
LOCAL_INTENSITY_FEATURES = ("Local intensity peak", "Global intensity peak")
_STATS = (
    "Mean", "Variance", "Skewness", "(Excess) kurtosis", "Median", "Minimum", "10th percentile",
    "90th percentile", "Maximum", "Interquartile range", "Range", "Mean absolute deviation",
    "Robust mean absolute deviation", "Median absolute deviation", "Coefficient of variation",
    "Quartile coefficient of dispersion",
)  # fmt: skip
STATISTICS_FEATURES = (*_STATS, "Energy", "Root mean square")
HISTOGRAM_FEATURES = (
    *_STATS[:9], "Mode", *_STATS[9:], "Entropy", "Uniformity", "Maximum histogram gradient",
    "Maximum histogram gradient intensity", "Minimum histogram gradient",
    "Minimum histogram gradient intensity",
)  # fmt: skip
IVH_FEATURES = (
    "Volume fraction at 10% intensity", "Volume fraction at 90% intensity",
    "Intensity at 10% volume", "Intensity at 90% volume",
    "Volume fraction difference between 10% and 90% intensity",
    "Intensity difference between 10% and 90% volume",
)  # fmt: skip


def _one(
    family: str, f: Callable[[Prepared], Features]
) -> Callable[[Prepared], dict[str, Features]]:
    return lambda p: {family: f(p)}


def _texture(
    fn: Callable[[NDArray[np.int64], int], dict[str, Features]],
) -> Callable[[Prepared], dict[str, Features]]:
    return lambda p: fn(p.grey.levels, p.grey.n_levels)


GROUPS: dict[str, Group] = {
    g.name: g
    for g in (
        Group(
            "morphology",
            {morphology.FAMILY: MORPHOLOGY_FEATURES},
            _one(
                morphology.FAMILY,
                lambda p: morphology.morphology_features(
                    p.image, p.morph_mask, p.int_mask, p.spacing_mm
                ),
            ),
        ),
        Group(
            "local_intensity",
            {intensity.LOCAL_INTENSITY: LOCAL_INTENSITY_FEATURES},
            _one(
                intensity.LOCAL_INTENSITY,
                lambda p: intensity.local_intensity_features(
                    p.image, p.int_mask, p.spacing_mm, p.sphere_volume_mm3
                ),
            ),
        ),
        Group(
            "statistics",
            {intensity.STATISTICS: STATISTICS_FEATURES},
            _one(
                intensity.STATISTICS, lambda p: intensity.statistics_features(p.image, p.int_mask)
            ),
        ),
        Group(
            "intensity_histogram",
            {intensity.INTENSITY_HISTOGRAM: HISTOGRAM_FEATURES},
            _one(
                intensity.INTENSITY_HISTOGRAM,
                lambda p: intensity.histogram_features(p.grey.levels[p.int_mask], p.grey.n_levels),
            ),
        ),
        Group(
            "ivh",
            {intensity.IVH: IVH_FEATURES},
            _one(
                intensity.IVH,
                lambda p: intensity.ivh_features(
                    p.ivh_values,
                    bin_width=p.ivh_bin_width,
                    lower=None if p.ivh_range is None else p.ivh_range[0],
                    upper=None if p.ivh_range is None else p.ivh_range[1],
                ),
            ),
        ),
        Group(
            "glcm",
            {f"{glcm.FAMILY} ({a})": glcm.FEATURES for a in DIRECTIONAL_AGGREGATIONS},
            _texture(glcm.glcm_families),
        ),
        Group(
            "glrlm",
            {
                f"{glrlm.FAMILY} ({a})": tuple(glrlm.NAMES.values())
                for a in DIRECTIONAL_AGGREGATIONS
            },
            _texture(glrlm.glrlm_families),
        ),
        Group(
            "glszm",
            {f"{glszm.FAMILY} ({a})": tuple(glszm.NAMES.values()) for a in ZONE_AGGREGATIONS},
            _texture(glszm.glszm_families),
        ),
        Group(
            "gldzm",
            {f"{gldzm.FAMILY} ({a})": tuple(gldzm.NAMES.values()) for a in ZONE_AGGREGATIONS},
            lambda p: gldzm.gldzm_families(p.grey.levels, p.grey.n_levels, p.morph_mask),
        ),
        Group(
            "ngtdm",
            {f"{ngtdm.FAMILY} ({a})": ngtdm.FEATURES for a in ZONE_AGGREGATIONS},
            _texture(ngtdm.ngtdm_families),
        ),
        Group(
            "ngldm",
            {
                f"{ngldm.FAMILY} ({a})": (*ngldm.NAMES.values(), "Dependence count energy")
                for a in ZONE_AGGREGATIONS
            },
            _texture(ngldm.ngldm_families),
        ),
    )
}

#: IBSI permanent identifiers by (family, feature); empty until checked against the manual.
IBSI_IDS: dict[tuple[str, str], str] = {}

REGISTRY: dict[tuple[str, str], FeatureSpec] = {
    (family, feature): FeatureSpec(family, feature, IBSI_IDS.get((family, feature)), g.name)
    for g in GROUPS.values()
    for family, names in g.families.items()
    for feature in names
}


def families() -> list[str]:
    """Every family (with aggregation variant) the engine computes, in output order."""
    return [fam for g in GROUPS.values() for fam in g.families]
