"""The case interval (the classifier's error drawn per block of tiles, the default; or the
spatial block bootstrap x classifier error) and the grade read with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from osteomics.wsi.interval import (
    METHOD_BLOCKS_ONLY,
    METHOD_CLASSIFIER,
    METHOD_CLASSIFIER_NO_CONFUSION,
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


def test_bootstrap_block_bootstrap_is_wider_than_a_tile_bootstrap_on_regional_necrosis() -> None:
    areas = halves(20, 20, viable_share=0.3)
    tiles = bootstrap_rate_interval(areas, 2000, seed=1)
    blocks = necrosis_rate_interval(
        grid(20, 20), SIDE, areas, None, 1, block_tiles=5, method="bootstrap"
    )
    assert tiles is not None and blocks is not None
    assert blocks.method == METHOD_BLOCKS_ONLY
    assert blocks.high_percent - blocks.low_percent > 1.5 * (tiles[1] - tiles[0])
    assert blocks.low_percent < 70.0 < blocks.high_percent


def test_bootstrap_classifier_error_moves_the_interval_onto_the_true_rate() -> None:
    # True tissue: half viable, half necrotic. The classifier calls 30 % of necrotic tissue
    # viable (as cross-validation measured on 1000 tiles per class), so it sees 37.5 %.
    true_rate = 50.0
    confusion = np.array([[950, 50, 0], [300, 700, 0], [0, 0, 1000]], dtype=float)
    xy = grid(20, 20)
    given_true = confusion / confusion.sum(axis=1, keepdims=True)  # P(predicted | true)
    predicted = np.tile(np.array([0.5, 0.5, 0.0]) @ given_true, (400, 1))
    point = 100 * predicted[:, 1].sum() / predicted[:, :2].sum()
    assert point < 40.0
    corrected = necrosis_rate_interval(xy, SIDE, predicted, confusion, 0, method="bootstrap")
    naive = necrosis_rate_interval(xy, SIDE, predicted, None, 0, method="bootstrap")
    assert corrected is not None and naive is not None
    assert corrected.method == METHOD_WITH_CONFUSION
    assert corrected.low_percent < true_rate < corrected.high_percent
    assert not naive.low_percent < true_rate < naive.high_percent


def test_bootstrap_a_near_perfect_classifier_adds_almost_nothing() -> None:
    areas = halves(20, 20, viable_share=0.3)
    perfect = np.diag([1e6, 1e6, 1e6])
    with_error = necrosis_rate_interval(grid(20, 20), SIDE, areas, perfect, 3, method="bootstrap")
    without = necrosis_rate_interval(grid(20, 20), SIDE, areas, None, 3, method="bootstrap")
    assert with_error is not None and without is not None
    assert with_error.low_percent == pytest.approx(without.low_percent, abs=1.0)
    assert with_error.high_percent == pytest.approx(without.high_percent, abs=1.0)


@pytest.mark.parametrize("method", ["classifier", "bootstrap"])
def test_interval_is_reproducible_for_a_seed_and_none_without_tumour(method: str) -> None:
    areas = calibrated_case(10, seed=2)
    confusion = np.eye(3) * 50 + 1
    a = necrosis_rate_interval(grid(10, 10), SIDE, areas, confusion, seed=7, method=method)
    b = necrosis_rate_interval(grid(10, 10), SIDE, areas, confusion, seed=7, method=method)
    c = necrosis_rate_interval(grid(10, 10), SIDE, areas, confusion, seed=8, method=method)
    assert a is not None and c is not None
    assert a == b
    assert (a.low_percent, a.high_percent) != (c.low_percent, c.high_percent)
    only_bone = np.zeros((100, 3))
    only_bone[:, 2] = 1.0
    assert necrosis_rate_interval(grid(10, 10), SIDE, only_bone, None, method=method) is None
    with pytest.raises(ValueError, match="negative"):
        necrosis_rate_interval(grid(10, 10), SIDE, -areas, None, method=method)


def test_unknown_method_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"'exact'.*classifier, bootstrap"):
        necrosis_rate_interval(grid(4, 4), SIDE, halves(4, 4), None, method="exact")


# --- the default: the classifier's error only, one draw per block ---------------------------


def calibrated_case(n: int, seed: int, sharpness: float = 3.0) -> np.ndarray:
    """(n*n, 3) expected class areas (1 mm² tiles x class probabilities): each tile's
    probabilities drawn from a Dirichlet of concentration ``sharpness`` on viable or necrotic
    (at random) and 0.3 on the other two classes; larger ``sharpness``, more confident."""
    rng = np.random.default_rng(seed)
    alpha = np.full((n * n, 3), 0.3)
    alpha[np.arange(n * n), rng.integers(0, 2, n * n)] = sharpness
    return np.stack([rng.dirichlet(a) for a in alpha])


def test_classifier_is_the_default_method() -> None:
    iv = necrosis_rate_interval(grid(6, 6), SIDE, calibrated_case(6, 0), np.eye(3) * 9 + 1)
    assert iv is not None and iv.method == METHOD_CLASSIFIER


def test_classifier_certain_tiles_give_zero_width_at_the_truth() -> None:
    areas = halves(12, 12, viable_share=0.25)  # every tile all of one class
    areas[::7] *= 0.4  # tiles with less tissue weigh less
    truth = 100 * areas[:, 1].sum() / areas[:, :2].sum()
    # No confusion: the tile draws alone; a near-perfect confusion adjusts by almost nothing.
    iv = necrosis_rate_interval(grid(12, 12), SIDE, areas, None, seed=3)
    assert iv is not None and iv.method == METHOD_CLASSIFIER_NO_CONFUSION
    assert iv.low_percent == pytest.approx(truth) and iv.high_percent == pytest.approx(truth)
    near = necrosis_rate_interval(grid(12, 12), SIDE, areas, np.diag([1e6] * 3), seed=3)
    assert near is not None and near.method == METHOD_CLASSIFIER
    assert near.low_percent == pytest.approx(truth, abs=0.05)
    assert near.high_percent == pytest.approx(truth, abs=0.05)


def test_classifier_confusion_shift_moves_overconfident_calls_onto_the_true_rate() -> None:
    # Half viable, half necrotic tissue; the classifier calls 30 % of necrotic tiles viable,
    # with full confidence (one-hot probabilities): the tile draws alone see 37.5 %, certain.
    confusion = np.array([[950, 50, 0], [300, 700, 0], [0, 0, 1000]], dtype=float)
    areas = np.zeros((400, 3))
    areas[:190, 0] = 1.0  # true viable, called viable
    areas[190:200, 1] = 1.0  # true viable, called necrotic
    areas[200:260, 0] = 1.0  # true necrotic, called viable
    areas[260:, 1] = 1.0  # true necrotic, called necrotic
    alone = necrosis_rate_interval(grid(20, 20), SIDE, areas, None, 0)
    shifted = necrosis_rate_interval(grid(20, 20), SIDE, areas, confusion, 0)
    assert alone is not None and shifted is not None
    assert alone.high_percent < 40.0
    assert shifted.low_percent < 50.0 < shifted.high_percent


def test_classifier_case_with_every_tile_called_non_tumour_still_gets_an_interval() -> None:
    # No tumour among the hard calls: no adjusted count to shift by; the tile draws remain.
    areas = np.tile([0.2, 0.1, 0.7], (36, 1))
    iv = necrosis_rate_interval(grid(6, 6), SIDE, areas, np.eye(3) * 50 + 1, 0)
    assert iv is not None and iv.method == METHOD_CLASSIFIER
    assert 0.0 <= iv.low_percent < 100 / 3 < iv.high_percent <= 100.0


def test_classifier_uncertain_tiles_give_a_wider_interval_than_confident_ones() -> None:
    confident = calibrated_case(12, seed=5, sharpness=30.0)
    uncertain = calibrated_case(12, seed=5, sharpness=1.5)
    a = necrosis_rate_interval(grid(12, 12), SIDE, confident, None, 0)
    b = necrosis_rate_interval(grid(12, 12), SIDE, uncertain, None, 0)
    assert a is not None and b is not None
    assert b.high_percent - b.low_percent > 2 * (a.high_percent - a.low_percent)


@pytest.mark.parametrize(("alike", "factor"), [(True, 2.5), (False, 1.5)])
def test_classifier_correlated_blocks_are_wider_than_single_tiles(
    alike: bool, factor: float
) -> None:
    # 9 tiles of a block share one draw. Tiles with the same probabilities then err together
    # completely: about sqrt(9) = 3 times the width of independent tiles. Tiles with
    # different probabilities share part of it only (a viable-looking and a necrotic-looking
    # tile are not both wrong for the same u), so less, but still clearly wider.
    areas = np.tile([0.3, 0.6, 0.1], (18 * 18, 1)) if alike else calibrated_case(18, seed=1)
    blocks = necrosis_rate_interval(grid(18, 18), SIDE, areas, None, 0, block_tiles=3)
    tiles = necrosis_rate_interval(grid(18, 18), SIDE, areas, None, 0, block_tiles=1)
    assert blocks is not None and tiles is not None
    assert blocks.n_blocks == 36 and tiles.n_blocks == 324
    wide, narrow = blocks.high_percent - blocks.low_percent, tiles.high_percent - tiles.low_percent
    assert wide > factor * narrow


def test_classifier_blocks_are_not_shrunk_on_a_small_slide() -> None:
    iv = necrosis_rate_interval(grid(6, 6), SIDE, calibrated_case(6, 0), None, 0, min_blocks=10)
    assert iv is not None and iv.n_blocks == 4  # 2 x 2 blocks of 3 x 3 tiles, as asked


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classifier_interval_holds_the_point_estimate_and_the_truth_of_a_calibrated_case(
    seed: int,
) -> None:
    # Calibrated: each tile's true class IS drawn from its probabilities, so the interval
    # should hold the true rate (and the expected-area point estimate, its centre).
    rng = np.random.default_rng(100 + seed)
    areas = calibrated_case(15, seed)
    probs = areas / areas.sum(axis=1, keepdims=True)
    u = rng.random(len(areas))
    true_class = (u[:, None] >= np.cumsum(probs, axis=1)[:, :2]).sum(axis=1)
    truth = 100 * np.mean(true_class == 1) / np.mean(true_class < 2)
    point = 100 * areas[:, 1].sum() / areas[:, :2].sum()
    iv = necrosis_rate_interval(grid(15, 15), SIDE, areas, None, seed)
    assert iv is not None
    assert iv.low_percent < point < iv.high_percent
    assert iv.low_percent <= truth <= iv.high_percent


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
