"""The feature registry: every IBSI feature osteomics computes, by (family, feature).

``family`` and ``feature`` are spelled exactly as in the IBSI 1 reference tables (for example
``("Co-occurrence matrix (3D, merged)", "Joint maximum")``) so that results join to any IBSI
reference table. Features are computed by *groups* (one matrix gives a whole family, or six);
:data:`REGISTRY` maps each (family, feature) to its :class:`FeatureSpec` (group and IBSI
identifier), :data:`GROUPS` maps a group to the function that computes it.

``ibsi_id`` is the IBSI permanent four-character identifier of the feature (the same for every
aggregation variant: IBSI identifies the aggregation separately), from :data:`IBSI_IDS`.
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

# IBSI permanent identifiers, by (family without its aggregation variant, feature). Sources,
# checked against each other by name for every feature:
# - MIRP 2.7.0 (by the IBSI's lead author; PyPI ``mirp==2.7.0``), ``mirp/_features/
#   *_features.py``: every feature class sets ``self.ibsi_id`` (for example
#   ``FeatureCMJointMax``: "GYBY"); the percentile and IVH classes set it for the 10 % / 90 %
#   parameters only (stat_features.py: QG58, 8DWT; ih_features.py: GPMT, OZ0C;
#   ivh_features.py: NK6P, 4279, PWN1, BOHI, WITY, JXJA).
# - tatsunidas/RadiomicsJ (commit c4beeb62356cb919da235e7564fa746f488c5ebe),
#   ``src/main/java/RadiomicsJ/*FeatureType.java`` enums ("3.6.1 Joint maximum GYBY" ...): the
#   same identifiers, except that for the IVH it lists the generic identifiers of the
#   parametrised IBSI features (BC2M, GBPN, DDTU, CNV2) where MIRP and we use the specific
#   10 % / 90 % ones, and that MIRP writes sum entropy as "P6QZ1" (a typo: the manual and
#   RadiomicsJ have P6QZ).
# - The morphology identifiers RNU0..L0JK also agree with an IBSI_code -> PyRadiomics table.
_MORPHOLOGY_IDS = {
    "Volume (mesh)": "RNU0", "Volume (voxel counting)": "YEKZ", "Surface area (mesh)": "C0JK",
    "Surface to volume ratio": "2PR5", "Compactness 1": "SKGS", "Compactness 2": "BQWJ",
    "Spherical disproportion": "KRCK", "Sphericity": "QCFX", "Asphericity": "25C7",
    "Centre of mass shift": "KLMA", "Maximum 3D diameter": "L0JK", "Major axis length": "TDIC",
    "Minor axis length": "P9VJ", "Least axis length": "7J51", "Elongation": "Q3CK",
    "Flatness": "N17B", "Volume density (AABB)": "PBX1", "Area density (AABB)": "R59B",
    "Volume density (AEE)": "6BDE", "Area density (AEE)": "RDD2",
    "Volume density (convex hull)": "R3ER", "Area density (convex hull)": "7T7F",
    "Integrated intensity": "99N0", "Moran's I index": "N365", "Geary's C measure": "NPT7",
}  # fmt: skip
_LOCAL_INTENSITY_IDS = {"Local intensity peak": "VJGA", "Global intensity peak": "0F91"}
_STATISTICS_IDS = dict(zip(STATISTICS_FEATURES, (
    "Q4LE", "ECT3", "KE2A", "IPH6", "Y12H", "1GSF", "QG58", "8DWT", "84IY", "SALO", "2OJQ",
    "4FUA", "1128", "N72L", "7TET", "9S40", "N8CA", "5ZWQ",
), strict=True))  # fmt: skip
_HISTOGRAM_IDS = dict(zip(HISTOGRAM_FEATURES, (
    "X6K6", "CH89", "88K1", "C3I7", "WIFQ", "1PR8", "GPMT", "OZ0C", "3NCY", "AMMC", "WR0O",
    "5Z3W", "D2ZX", "WRZB", "4RNL", "CWYJ", "SLWD", "TLU2", "BJ5W", "12CE", "8E6O", "VQB3",
    "RHQZ",
), strict=True))  # fmt: skip
_IVH_IDS = dict(zip(IVH_FEATURES, ("NK6P", "4279", "PWN1", "BOHI", "WITY", "JXJA"), strict=True))
_GLCM_IDS = dict(zip(glcm.FEATURES, (
    "GYBY", "60VM", "UR99", "TU9B", "TF7R", "D3YU", "NTRS", "ZGXS", "OEEB", "P6QZ", "8ZQL",
    "ACUI", "8S9J", "IB1Z", "NDRX", "WF0Z", "1QCO", "E8JP", "NI2N", "QWB0", "DG8W", "7NFM",
    "AE86", "R8DG", "JN9H",
), strict=True))  # fmt: skip
_GLRLM_IDS = dict(zip(glrlm.NAMES.values(), (
    "22OV", "W4KF", "V3SW", "G3QZ", "HTZT", "GD3A", "IVPO", "3KUM", "R5YN", "OVBL", "W92Y",
    "IC23", "9ZK5", "8CE5", "SXLW", "HJ9O",
), strict=True))  # fmt: skip
_GLSZM_IDS = dict(zip(glszm.NAMES.values(), (
    "5QRC", "48P8", "XMSY", "5GN9", "5RAI", "HW1V", "YH51", "J17V", "JNSA", "Y1RO", "4JP3",
    "VB3A", "P30P", "BYLV", "3NSA", "GU8N",
), strict=True))  # fmt: skip
_GLDZM_IDS = dict(zip(gldzm.NAMES.values(), (
    "0GBI", "MB4I", "S1RA", "K26C", "RUVG", "DKNJ", "A7WM", "KLTH", "VFT7", "7HP3", "V294",
    "IATH", "VIWW", "QK93", "7WT1", "GBDU",
), strict=True))  # fmt: skip
_NGTDM_IDS = dict(zip(ngtdm.FEATURES, ("QCDE", "65HE", "NQ30", "HDEZ", "1X9X"), strict=True))
_NGLDM_IDS = dict(zip((*ngldm.NAMES.values(), "Dependence count energy"), (
    "SODN", "IMOQ", "TL9H", "OAE7", "EQ3F", "JA6D", "NBZI", "9QMG", "FP8K", "5SPA", "Z87G",
    "OKJI", "6XV8", "1PFV", "DNX2", "FCBV", "CAS9",
), strict=True))  # fmt: skip

#: IBSI permanent identifiers by (family without aggregation variant, feature).
IBSI_IDS: dict[tuple[str, str], str] = {
    (family, feature): code
    for family, table in (
        (morphology.FAMILY, _MORPHOLOGY_IDS),
        (intensity.LOCAL_INTENSITY, _LOCAL_INTENSITY_IDS),
        (intensity.STATISTICS, _STATISTICS_IDS),
        (intensity.INTENSITY_HISTOGRAM, _HISTOGRAM_IDS),
        (intensity.IVH, _IVH_IDS),
        (glcm.FAMILY, _GLCM_IDS),
        (glrlm.FAMILY, _GLRLM_IDS),
        (glszm.FAMILY, _GLSZM_IDS),
        (gldzm.FAMILY, _GLDZM_IDS),
        (ngtdm.FAMILY, _NGTDM_IDS),
        (ngldm.FAMILY, _NGLDM_IDS),
    )
    for feature, code in table.items()
}


def family_stem(family: str) -> str:
    """``family`` without its aggregation variant: ``Co-occurrence matrix (3D, merged)`` ->
    ``Co-occurrence matrix``; families without variants are returned as they are."""
    stem, sep, rest = family.rpartition(" (")
    return stem if sep and rest.endswith(")") and rest[0] in "23" else family


REGISTRY: dict[tuple[str, str], FeatureSpec] = {
    (family, feature): FeatureSpec(
        family, feature, IBSI_IDS.get((family_stem(family), feature)), g.name
    )
    for g in GROUPS.values()
    for family, names in g.families.items()
    for feature in names
}


def families() -> list[str]:
    """Every family (with aggregation variant) the engine computes, in output order."""
    return [fam for g in GROUPS.values() for fam in g.families]
