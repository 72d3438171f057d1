"""Necrosis rate, Huvos grade and case aggregation against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from osteomics.wsi.necrosis import (
    NECROTIC,
    NON_TUMOUR,
    VIABLE,
    TissueAreas,
    areas_from_tiles,
    bootstrap_rate_interval,
    huvos_grade,
    necrosis_rate_percent,
    predicted_class_counts,
    responder,
    tile_areas,
)


def test_rate_excludes_non_tumour_from_the_denominator() -> None:
    areas = TissueAreas(viable_mm2=10.0, necrotic_mm2=30.0, non_tumour_mm2=500.0)
    assert areas.necrosis_rate == pytest.approx(75.0)


def test_case_rate_is_area_weighted_not_a_mean_of_slide_rates() -> None:
    # Slide A: 1 mm² viable, 9 mm² necrotic (90 %); slide B: 30 mm² viable, 10 mm² necrotic (25 %).
    slide_a = TissueAreas(1.0, 9.0, 4.0)
    slide_b = TissueAreas(30.0, 10.0, 0.5)
    case = slide_a + slide_b
    # By hand: necrotic 19 / tumour 50 = 38 %, whereas the mean of 90 % and 25 % is 57.5 %.
    assert case.necrosis_rate == pytest.approx(38.0)
    assert case.non_tumour_mm2 == pytest.approx(4.5)
    assert huvos_grade(case.necrosis_rate, viable_tiles=12) == "I"
    assert responder(case.necrosis_rate) == "poor"


@pytest.mark.parametrize(
    ("rate", "viable_tiles", "grade"),
    [
        (0.0, 5, "I"),
        (49.99, 5, "I"),
        (50.0, 5, "II"),
        (89.99, 1, "II"),
        (89.99, 0, "II"),  # no viable tile, but under 90 %: not grade IV
        (90.0, 1, "III"),
        (99.999, 1, "III"),
        (96.0, 0, "IV"),
        (100.0, 0, "IV"),
        (100.0, None, "IV"),
        (99.5, None, "III"),
    ],
)
def test_huvos_grade_boundaries(rate: float, viable_tiles: int | None, grade: str) -> None:
    assert huvos_grade(rate, viable_tiles) == grade


def test_grade_iv_is_reachable_from_softmax_areas() -> None:
    """Regression: grade IV needed viable_mm2 == 0.0, which expected areas from softmax
    probabilities never are. A case whose every tile is called necrotic is grade IV."""
    probabilities = np.array([[0.02, 0.95, 0.03], [0.01, 0.97, 0.02], [0.04, 0.06, 0.90]])
    classes = [VIABLE, NECROTIC, NON_TUMOUR]
    areas = areas_from_tiles(tile_areas(probabilities, np.full(3, 0.25), classes))
    assert areas.viable_mm2 > 0  # softmax never gives exactly zero
    counts = predicted_class_counts(probabilities, classes)
    assert counts == {VIABLE: 0, NECROTIC: 2, NON_TUMOUR: 1}
    assert areas.necrosis_rate is not None and areas.necrosis_rate > 90
    assert huvos_grade(areas.necrosis_rate, counts[VIABLE]) == "IV"
    # One tile called viable makes it grade III, whatever the rate.
    probabilities[0] = [0.6, 0.35, 0.05]
    counts = predicted_class_counts(probabilities, classes)
    assert huvos_grade(99.0, counts[VIABLE]) == "III"


def test_responder_threshold_is_ninety_percent() -> None:
    assert responder(90.0) == "good"
    assert responder(89.9) == "poor"
    assert responder(None) is None


def test_no_tumour_gives_no_rate_and_no_grade() -> None:
    assert necrosis_rate_percent(0.0, 0.0) is None
    assert huvos_grade(None) is None


def test_tile_areas_split_tissue_area_by_probability() -> None:
    probabilities = np.array([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])
    tissue_mm2 = np.array([0.4, 0.2])
    per_tile = tile_areas(probabilities, tissue_mm2, [NON_TUMOUR, VIABLE, NECROTIC])
    # Columns come back as (viable, necrotic, non-tumour).
    np.testing.assert_allclose(per_tile, [[0.1, 0.1, 0.2], [0.2, 0.0, 0.0]])
    total = areas_from_tiles(per_tile)
    assert total == TissueAreas(pytest.approx(0.3), pytest.approx(0.1), pytest.approx(0.2))


def test_bootstrap_interval_contains_the_rate_and_narrows_with_more_tiles() -> None:
    rng = np.random.default_rng(1)

    def tiles(n: int) -> np.ndarray:
        necrotic = rng.random(n) < 0.7
        areas = np.zeros((n, 3))
        areas[necrotic, 1] = 0.0625
        areas[~necrotic, 0] = 0.0625
        return areas

    few, many = tiles(40), tiles(4000)
    for per_tile in (few, many):
        rate = areas_from_tiles(per_tile).necrosis_rate
        low, high = bootstrap_rate_interval(per_tile, n_resamples=400)
        assert low <= rate <= high
    width_few = np.subtract(*bootstrap_rate_interval(few, n_resamples=400)[::-1])
    width_many = np.subtract(*bootstrap_rate_interval(many, n_resamples=400)[::-1])
    assert width_many < width_few / 3
