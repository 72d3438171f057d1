"""The case interval (spatial block bootstrap x classifier error) and the grade read with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from osteomics.wsi.interval import (
    METHOD_BLOCKS_ONLY,
    METHOD_WITH_CONFUSION,
    block_ids,
    confusion_from_card,
    necrosis_rate_interval,
)
from osteomics.wsi.necrosis import bootstrap_rate_interval, grade_call

MODELS = Path(__file__).resolve().parents[2] / "wsi" / "models"
SIDE = 512.0


def grid(rows: int, cols: int) -> np.ndarray:
    """(rows*cols, 2) tile corners in level-0 pixels, row-major."""
    ys, xs = np.mgrid[0:rows, 0:cols]
    return np.stack([xs.ravel(), ys.ravel()], axis=1) * SIDE


def halves(rows: int, cols: int, viable_share: float = 0.5) -> np.ndarray:
    """Necrosis in regions: the left columns all viable, the rest all necrotic, 1 mm² each."""
    xy = grid(rows, cols)
    areas = np.zeros((len(xy), 3))
    viable = xy[:, 0] < cols * viable_share * SIDE
    areas[viable, 0] = 1.0
    areas[~viable, 1] = 1.0
    return areas


def test_v2_card_confusion_is_reordered_into_tissue_classes() -> None:
    card = json.loads((MODELS / "osteosarcoma-necrosis-v2" / "model_card.json").read_text())
    matrix = confusion_from_card(card)
    assert matrix is not None
    # Card order Non-Tumor, Non-Viable-Tumor, Viable -> viable, necrotic, non-tumour.
    assert card["cross_validation"]["classes"] == ["Non-Tumor", "Non-Viable-Tumor", "Viable"]
    order = [2, 1, 0]
    expected = np.asarray(card["cross_validation"]["confusion"])[order][:, order]
    np.testing.assert_array_equal(matrix, expected)
    assert matrix[0, 0] > 150 and matrix[1, 1] > 150  # rows true viable / necrotic
    assert matrix.sum() == np.sum(card["cross_validation"]["confusion"])
    assert confusion_from_card({"classes": ["a", "b"], "tissue_classes": {}}) is None


def test_blocks_stay_within_a_slide_and_shrink_on_small_slides() -> None:
    xy = np.concatenate([grid(12, 12), grid(12, 12)])
    slide = np.repeat([0, 1], 144)
    ids = block_ids(xy, SIDE, slide, block_tiles=3, min_blocks=10)
    assert len(np.unique(ids)) == 2 * 16  # 4 x 4 blocks of 3 x 3 tiles per slide
    assert not set(ids[slide == 0]) & set(ids[slide == 1])
    # 4 x 4 tiles would give 4 blocks of 3 x 3: smaller blocks until at least 10.
    small = block_ids(grid(4, 4), SIDE, None, block_tiles=3, min_blocks=10)
    assert len(np.unique(small)) == 16  # blocks of 2 x 2 give only 4, so single tiles


def test_block_bootstrap_is_wider_than_a_tile_bootstrap_on_regional_necrosis() -> None:
    areas = halves(20, 20, viable_share=0.3)
    tiles = bootstrap_rate_interval(areas, 2000, seed=1)
    blocks = necrosis_rate_interval(grid(20, 20), SIDE, areas, None, 1, block_tiles=5)
    assert tiles is not None and blocks is not None
    assert blocks.method == METHOD_BLOCKS_ONLY
    assert blocks.high_percent - blocks.low_percent > 1.5 * (tiles[1] - tiles[0])
    assert blocks.low_percent < 70.0 < blocks.high_percent


def test_classifier_error_moves_the_interval_onto_the_true_rate() -> None:
    # True tissue: half viable, half necrotic. The classifier calls 30 % of necrotic tissue
    # viable (as cross-validation measured on 1000 tiles per class), so it sees 37.5 %.
    true_rate = 50.0
    confusion = np.array([[950, 50, 0], [300, 700, 0], [0, 0, 1000]], dtype=float)
    xy = grid(20, 20)
    given_true = confusion / confusion.sum(axis=1, keepdims=True)  # P(predicted | true)
    predicted = np.tile(np.array([0.5, 0.5, 0.0]) @ given_true, (400, 1))
    point = 100 * predicted[:, 1].sum() / predicted[:, :2].sum()
    assert point < 40.0
    corrected = necrosis_rate_interval(xy, SIDE, predicted, confusion, 0)
    naive = necrosis_rate_interval(xy, SIDE, predicted, None, 0)
    assert corrected is not None and naive is not None
    assert corrected.method == METHOD_WITH_CONFUSION
    assert corrected.low_percent < true_rate < corrected.high_percent
    assert not naive.low_percent < true_rate < naive.high_percent


def test_a_near_perfect_classifier_adds_almost_nothing() -> None:
    areas = halves(20, 20, viable_share=0.3)
    perfect = np.diag([1e6, 1e6, 1e6])
    with_error = necrosis_rate_interval(grid(20, 20), SIDE, areas, perfect, 3)
    without = necrosis_rate_interval(grid(20, 20), SIDE, areas, None, 3)
    assert with_error is not None and without is not None
    assert with_error.low_percent == pytest.approx(without.low_percent, abs=1.0)
    assert with_error.high_percent == pytest.approx(without.high_percent, abs=1.0)


def test_interval_is_reproducible_and_none_without_tumour() -> None:
    areas = halves(10, 10)
    a = necrosis_rate_interval(grid(10, 10), SIDE, areas, np.eye(3) * 50 + 1, seed=7)
    b = necrosis_rate_interval(grid(10, 10), SIDE, areas, np.eye(3) * 50 + 1, seed=7)
    assert a == b
    only_bone = np.zeros((100, 3))
    only_bone[:, 2] = 1.0
    assert necrosis_rate_interval(grid(10, 10), SIDE, only_bone, None) is None
    with pytest.raises(ValueError, match="negative"):
        necrosis_rate_interval(grid(10, 10), SIDE, -areas, None)


@pytest.mark.parametrize(
    ("rate", "low", "high", "viable_tiles", "expected"),
    [
        (70.0, 60.0, 80.0, 5, ("II", "II", "poor")),
        (70.0, 45.0, 80.0, 5, ("uncertain", "I-II", "poor")),
        (88.0, 80.0, 93.0, 5, ("uncertain", "II-III", "uncertain")),
        (95.0, 91.0, 99.0, 2, ("III", "III", "good")),
        (97.0, 92.0, 99.5, 0, ("IV", "IV", "good")),  # IV: no tile called viable
        (97.0, 85.0, 99.5, 0, ("uncertain", "II-IV", "uncertain")),
        (40.0, 10.0, 95.0, 9, ("uncertain", "I-III", "uncertain")),
        # The corrected interval may miss the point estimate: both must agree for a grade.
        (48.0, 51.0, 60.0, 4, ("uncertain", "I-II", "poor")),
        (60.0, None, None, 4, ("II", "II", "poor")),
        (None, None, None, None, (None, None, None)),
    ],
)
def test_grade_is_uncertain_where_the_interval_crosses_a_cut_off(
    rate: float | None,
    low: float | None,
    high: float | None,
    viable_tiles: int | None,
    expected: tuple[str | None, str | None, str | None],
) -> None:
    call = grade_call(rate, low, high, viable_tiles)
    assert (call.huvos_grade, call.huvos_range, call.responder) == expected
