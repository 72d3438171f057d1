"""Necrosis rate, Huvos grade and responder status from tile class probabilities.

Definitions (see ../shared/docs/DOMAIN.md):

- necrosis rate = necrotic tumour area / (necrotic + viable tumour area), in percent;
  non-tumour tissue (bone, cartilage, marrow, fat, muscle) is not in the denominator;
- Huvos grade: I < 50 %, II 50-89 %, III 90-99 % (scattered viable foci), IV 100 % (no
  viable tumour: here, no tile classified viable; see :func:`huvos_grade`); always reported
  with the rate, never instead of it;
- good responder: necrosis >= 90 %;
- a case (resection specimen, mapped into many slides) is area-weighted over all its slides:
  areas are summed, then the rate is taken, never a mean of slide percentages.

Areas are expected areas: each tile contributes its tissue area (tile area x tissue
fraction) split by its calibrated class probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

VIABLE = "viable"
NECROTIC = "necrotic"
NON_TUMOUR = "non_tumour"
TISSUE_CLASSES = (VIABLE, NECROTIC, NON_TUMOUR)

#: How class labels of training folders map to the three tissue classes.
LABEL_TO_CLASS = {
    "Viable": VIABLE,
    "Non-Viable-Tumor": NECROTIC,
    "Non-Tumor": NON_TUMOUR,
}

GOOD_RESPONSE_PERCENT = 90.0

#: Display name and colour of each tissue class (maps, legends, QuPath classes, exports).
CLASS_STYLE: dict[str, tuple[str, tuple[int, int, int]]] = {
    VIABLE: ("Viable tumour", (214, 39, 40)),
    NECROTIC: ("Necrotic tumour", (255, 196, 0)),
    NON_TUMOUR: ("Non-tumour", (31, 119, 180)),
}


@dataclass(frozen=True)
class TissueAreas:
    """Tissue area per class, mm²."""

    viable_mm2: float
    necrotic_mm2: float
    non_tumour_mm2: float

    def __add__(self, other: TissueAreas) -> TissueAreas:
        return TissueAreas(
            self.viable_mm2 + other.viable_mm2,
            self.necrotic_mm2 + other.necrotic_mm2,
            self.non_tumour_mm2 + other.non_tumour_mm2,
        )

    @property
    def necrosis_rate(self) -> float | None:
        """Necrotic / (necrotic + viable), percent; None when there is no tumour at all."""
        return necrosis_rate_percent(self.necrotic_mm2, self.viable_mm2)


def necrosis_rate_percent(necrotic_mm2: float, viable_mm2: float) -> float | None:
    """Necrosis rate in percent; None when neither necrotic nor viable tumour is present."""
    if necrotic_mm2 < 0 or viable_mm2 < 0:
        raise ValueError("areas cannot be negative")
    tumour = necrotic_mm2 + viable_mm2
    if tumour <= 0:
        return None
    return 100.0 * necrotic_mm2 / tumour


def huvos_grade(rate_percent: float | None, viable_tiles: int | None = None) -> str | None:
    """Huvos grade (``I``..``IV``) for a necrosis rate in percent.

    Grade IV means no viable tumour. Expected areas from class probabilities are never
    exactly 0, so "no viable tumour" is decided from the *predicted classes*: grade IV when
    the rate is at least 90 % and no tile is classified viable (``viable_tiles == 0``). The
    detection limit is therefore one tile of the model's field of view: a viable focus smaller
    than a tile's tissue area can be missed (the report states the tile size). Without tile
    counts, grade IV needs a rate of exactly 100 %.

    Parameters
    ----------
    rate_percent:
        Necrosis rate, percent (0..100), or None without tumour.
    viable_tiles:
        Number of tiles whose most probable class is viable tumour.
    """
    if rate_percent is None:
        return None
    if not 0.0 <= rate_percent <= 100.0:
        raise ValueError(f"necrosis rate {rate_percent} % is outside 0-100 %")
    if rate_percent < 50.0:
        return "I"
    if rate_percent < 90.0:
        return "II"
    no_viable = viable_tiles == 0 if viable_tiles is not None else rate_percent == 100.0
    return "IV" if no_viable else "III"


def predicted_class_counts(probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    """Tiles per tissue class by most probable class, for every class of
    :data:`TISSUE_CLASSES` (0 where none)."""
    counts = dict.fromkeys(TISSUE_CLASSES, 0)
    if len(probabilities):
        winners = np.asarray(probabilities).argmax(axis=1)
        for column, name in enumerate(classes):
            counts[name] += int((winners == column).sum())
    return counts


def responder(rate_percent: float | None) -> str | None:
    """``good`` (necrosis >= 90 %) or ``poor``; None without tumour."""
    if rate_percent is None:
        return None
    return "good" if rate_percent >= GOOD_RESPONSE_PERCENT else "poor"


def tile_areas(
    probabilities: np.ndarray, tissue_area_mm2: np.ndarray, classes: Sequence[str]
) -> np.ndarray:
    """Expected area of each tissue class in each tile, mm².

    Parameters
    ----------
    probabilities:
        (n_tiles, n_classes) class probabilities, rows summing to 1.
    tissue_area_mm2:
        (n_tiles,) tissue area of each tile (tile area x tissue fraction).
    classes:
        Tissue class of each probability column (values of :data:`TISSUE_CLASSES`).

    Returns
    -------
    numpy.ndarray
        (n_tiles, 3) areas in the order of :data:`TISSUE_CLASSES`.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise ValueError("probabilities must be (n_tiles, n_classes)")
    out = np.zeros((probabilities.shape[0], len(TISSUE_CLASSES)))
    for column, name in enumerate(classes):
        out[:, TISSUE_CLASSES.index(name)] += probabilities[:, column]
    return out * np.asarray(tissue_area_mm2, dtype=np.float64)[:, None]


def areas_from_tiles(per_tile_mm2: np.ndarray) -> TissueAreas:
    """Sum (n_tiles, 3) per-tile areas into :class:`TissueAreas`."""
    total = np.asarray(per_tile_mm2, dtype=np.float64).sum(axis=0)
    return TissueAreas(float(total[0]), float(total[1]), float(total[2]))


def bootstrap_rate_interval(
    per_tile_mm2: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the necrosis rate, resampling tiles with replacement.

    Parameters
    ----------
    per_tile_mm2:
        (n_tiles, 3) expected class areas per tile (all slides of a case together).

    Returns
    -------
    (low, high) in percent, or None without tumour.
    """
    areas = np.asarray(per_tile_mm2, dtype=np.float64)
    if areas.shape[0] == 0 or areas[:, :2].sum() <= 0:
        return None
    rng = np.random.default_rng(seed)
    n = areas.shape[0]
    rates = np.empty(n_resamples)
    for i in range(n_resamples):
        pick = rng.integers(0, n, size=n)
        viable, necrotic = areas[pick, 0].sum(), areas[pick, 1].sum()
        tumour = viable + necrotic
        rates[i] = 100.0 * necrotic / tumour if tumour > 0 else np.nan
    alpha = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(rates, [alpha, 1.0 - alpha])
    return float(low), float(high)


UNCERTAIN = "uncertain"
_GRADES = ("I", "II", "III", "IV")


@dataclass(frozen=True)
class GradeCall:
    """Huvos grade and responder status read with the interval.

    Attributes
    ----------
    huvos_grade:
        One grade, or ``uncertain`` when the interval crosses 50 % or 90 %.
    huvos_range:
        The grades spanned, ``II-III``; the one grade when certain.
    responder:
        ``good``, ``poor``, or ``uncertain`` when the interval crosses 90 %.
    """

    huvos_grade: str | None
    huvos_range: str | None
    responder: str | None


def grade_call(
    rate_percent: float | None,
    low_percent: float | None,
    high_percent: float | None,
    viable_tiles: int | None = None,
) -> GradeCall:
    """Huvos grade and responder of a rate, ``uncertain`` where its interval crosses a cut-off.

    The span read is from ``min(low, rate)`` to ``max(high, rate)``: an interval that corrects
    for the classifier's error need not contain the uncorrected point estimate, and a grade is
    only called when both agree. Grade IV needs no tile called viable (:func:`huvos_grade`);
    it is not a cut-off of the interval (the detection limit is a tile, not a percentage).

    Parameters
    ----------
    rate_percent:
        Point estimate, percent; None without tumour.
    low_percent, high_percent:
        Interval bounds, percent; None: no interval (the point estimate alone decides).
    viable_tiles:
        Tiles whose most probable class is viable tumour.
    """
    point = huvos_grade(rate_percent, viable_tiles)
    if rate_percent is None or point is None:
        return GradeCall(None, None, None)
    if low_percent is None or high_percent is None:
        return GradeCall(point, point, responder(rate_percent))
    low = min(low_percent, rate_percent)
    high = max(high_percent, rate_percent)
    low_grade = huvos_grade(max(0.0, min(100.0, low)), 1)
    high_grade = point if point == "IV" else huvos_grade(max(0.0, min(100.0, high)), 1)
    assert low_grade is not None and high_grade is not None
    if point == "IV" and low_grade == "III":
        low_grade = "IV"  # IV is decided by tiles called viable, III-IV is not a cut-off
    grade = point if low_grade == high_grade else UNCERTAIN
    span = low_grade if low_grade == high_grade else f"{low_grade}-{high_grade}"
    crosses_response = low < GOOD_RESPONSE_PERCENT <= high
    return GradeCall(grade, span, UNCERTAIN if crosses_response else responder(rate_percent))
