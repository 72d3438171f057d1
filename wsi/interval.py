"""An interval for a case's necrosis rate that includes the classifier's own error.

Two methods (``method=`` of :func:`necrosis_rate_interval`).

``"classifier"`` (the default, :data:`METHOD_CLASSIFIER`): **the classifier's error only,
spatially correlated**. When every tile of the specimen map is scored, the estimand is the
map's own necrosis rate; the sampling variance of the tissue composition is not an error of
the measurement, and only the classifier's calls are uncertain. In each resample every tile's
true class is drawn from its calibrated class probabilities (its class areas / its tissue
area: the temperature-calibrated softmax), by inverse CDF in the order viable, non-tumour,
necrotic, with ONE uniform number shared by all tiles of a block of ``block_tiles`` x
``block_tiles`` neighbouring tiles: the errors of neighbouring tiles move together, all
towards more necrosis or all towards less (the comonotone, most conservative coupling within
a block; blocks are independent).
Blocks are NOT shrunk on small slides here (the error's correlation length is physical, not a
matter of how many blocks a slide has). All of a tile's tissue area goes to its drawn class;
the drawn rate is necrotic / (necrotic + viable) area. Calibrated probabilities are
calibrated for the class mix of the cross-validation folds, so on a case of another mix the
estimate is pulled towards the folds' mix (a bias that does not shrink with more tiles);
with a confusion matrix each resample's rate is therefore shifted by (adjusted count - point
estimate): the hard calls' class areas corrected with one Dirichlet draw of
``P(predicted | true)`` (as below), which does not depend on the mix. Without that shift
coverage on slide-held-out tiles fell from 0.98 on 27-tile cases to 0.35 on 972-tile ones;
with it, 0.975-1.0 (bench/interval_coverage.py). Without a confusion matrix only the
tile draws are made and :attr:`RateInterval.method` says so. It assumes the probabilities and
the confusion hold on the new case (same stain, scanner and tissue as the folds); on a
patient unlike the training patients they do not, and no interval built from cross-validation
can know it.

``"bootstrap"`` (:data:`METHOD_WITH_CONFUSION`, the first method): two sources of
uncertainty are drawn together in every resample:

1. **Sampling, with spatial dependence** (a spatial block bootstrap): the tiles of each slide
   are grouped into square blocks of ``block_tiles`` x ``block_tiles`` neighbouring tiles (by
   level-0 position; smaller blocks on a slide that would have fewer than
   :data:`MIN_BLOCKS`); each slide's blocks are resampled with replacement, as many as it has.
   Neighbouring tiles are not independent (necrosis comes in regions, and a misclassified
   region misclassifies many tiles at once), so a bootstrap over independent tiles is too
   narrow; resampling whole blocks keeps the short-range dependence inside each draw.
2. **The classifier's misclassification rates**: from the model's cross-validated confusion
   matrix (counts, rows true class, columns predicted class), for each true class ``t`` the
   rates ``R[t, p] = P(predicted = p | true = t)`` are drawn from
   ``Dirichlet(counts[t, :] + 0.5)`` (Jeffreys prior). Predicted areas are ``true @ R``, so
   the resample's predicted class areas are mapped to true-class areas by
   ``true = predicted @ inv(R)`` (adjusted classify-and-count; negative parts set to 0), and
   the rate is taken from those. ``P(predicted | true)`` is used rather than
   ``P(true | predicted)`` because the latter also carries the class mix of the
   cross-validation folds: it pulled a synthetic 87 % case to an interval of 76-85 % that
   did not contain its own estimate.

The percentile interval of the resampled rates is returned. Without a confusion matrix (a
model card that has none) only the block bootstrap is drawn and :attr:`RateInterval.method`
says so.

Assumptions (docs/necrosis.md states them for users): the confusion matrix's error rates hold
on the new case (the same stain, scanner and tissue mix as the cross-validation folds; a
case's class mix unlike the folds' shifts ``P(true | predicted)``); blocks of
``block_tiles`` tiles are large enough that blocks are roughly independent; the tiles of
a case stand for its whole specimen map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from osteomics.wsi.necrosis import NECROTIC, NON_TUMOUR, TISSUE_CLASSES, VIABLE

#: Default block side, in tiles (3 x 3 tiles: about 3 mm for 1 mm tiles).
BLOCK_TILES = 3
#: Fewest blocks per slide: a smaller slide gets smaller blocks (see :func:`block_ids`).
MIN_BLOCKS = 10
#: ``method=`` values of :func:`necrosis_rate_interval`; the first is the default.
METHODS = ("classifier", "bootstrap")
#: Resamples drawn at once by the classifier method (bounds memory on large maps).
_CHUNK = 100
#: Pseudo-count added to every confusion cell before the Dirichlet draw (Jeffreys prior).
DIRICHLET_PRIOR = 0.5

METHOD_CLASSIFIER = (
    "classifier error only: each tile's true class drawn from its calibrated probabilities "
    "(one draw per block of neighbouring tiles), shifted by the cross-validated confusion's "
    "adjusted count for this case's class mix"
)
METHOD_CLASSIFIER_NO_CONFUSION = (
    "classifier error only: each tile's true class drawn from its calibrated probabilities "
    "(one draw per block of neighbouring tiles); the model card has no confusion matrix, so "
    "the bias of the probabilities on a case whose class mix differs from the training "
    "folds' is NOT in the interval"
)
METHOD_WITH_CONFUSION = "spatial block bootstrap + classifier error (cross-validated confusion)"
METHOD_BLOCKS_ONLY = (
    "spatial block bootstrap only: the model card has no confusion matrix, so the "
    "classifier's own error is NOT in the interval"
)


@dataclass(frozen=True)
class RateInterval:
    """A percentile interval of the necrosis rate, percent.

    Attributes
    ----------
    low_percent, high_percent:
        Interval bounds.
    method:
        :data:`METHOD_CLASSIFIER`, :data:`METHOD_CLASSIFIER_NO_CONFUSION`,
        :data:`METHOD_WITH_CONFUSION` or :data:`METHOD_BLOCKS_ONLY`.
    block_tiles, n_resamples, confidence:
        Settings it was drawn with.
    n_blocks:
        Blocks over all slides (the number of independent units the draws rest on).
    """

    low_percent: float
    high_percent: float
    method: str
    block_tiles: int
    n_resamples: int
    confidence: float
    n_blocks: int

    def spans(self, cut_percent: float) -> bool:
        """True when the cut-off lies strictly inside the interval (the interval crosses it)."""
        return self.low_percent < cut_percent <= self.high_percent


def block_ids(
    positions_px: np.ndarray,
    side_px: np.ndarray | float,
    slide_index: np.ndarray | None,
    block_tiles: int = BLOCK_TILES,
    min_blocks: int = MIN_BLOCKS,
) -> np.ndarray:
    """Block number of every tile: tiles of one slide whose positions fall in the same square
    of ``b`` tile sides share a block; blocks never span two slides.

    ``b`` is ``block_tiles``, made smaller on a slide that would otherwise have fewer than
    ``min_blocks`` blocks (down to 1 tile: a plain tile bootstrap on a very small slide), so
    that a small slide is not resampled from a handful of blocks.

    Parameters
    ----------
    positions_px:
        (n_tiles, 2) level-0 x, y of each tile's top-left corner, pixels.
    side_px:
        Tile side in level-0 pixels, one value or (n_tiles,).
    slide_index:
        (n_tiles,) integer slide of each tile; None for one slide.
    block_tiles:
        Largest block side, in tiles.
    min_blocks:
        Fewest blocks per slide before the block side is reduced.

    Returns
    -------
    numpy.ndarray
        (n_tiles,) int64 block numbers 0..n_blocks-1.
    """
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    n = pos.shape[0]
    side = np.broadcast_to(np.asarray(side_px, dtype=np.float64), (n,))
    if np.any(side <= 0):
        raise ValueError("tile sides must be positive")
    if block_tiles < 1:
        raise ValueError("block_tiles must be at least 1")
    slides = np.zeros(n, np.int64) if slide_index is None else np.asarray(slide_index, np.int64)
    keys = np.zeros((n, 3), np.int64)
    keys[:, 0] = slides
    for s in np.unique(slides):
        members = slides == s
        for b in range(block_tiles, 0, -1):
            span = side[members] * b
            bx = np.floor(pos[members, 0] / span).astype(np.int64)
            by = np.floor(pos[members, 1] / span).astype(np.int64)
            if b == 1 or len(np.unique(np.stack([bx, by], axis=1), axis=0)) >= min_blocks:
                keys[members, 1], keys[members, 2] = bx, by
                break
    _, ids = np.unique(keys, axis=0, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def confusion_in_tissue_order(
    confusion: Sequence[Sequence[float]] | np.ndarray,
    classes: Sequence[str],
    tissue_classes: Mapping[str, str],
) -> np.ndarray:
    """Re-order a model card's confusion matrix (its own class names and order) into
    :data:`~osteomics.wsi.necrosis.TISSUE_CLASSES` order (viable, necrotic, non-tumour);
    model classes mapped to the same tissue class are summed."""
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion is {matrix.shape}, expected {len(classes)} x {len(classes)}")
    index = [TISSUE_CLASSES.index(tissue_classes[c]) for c in classes]
    out = np.zeros((len(TISSUE_CLASSES), len(TISSUE_CLASSES)))
    for i, ti in enumerate(index):
        for j, tj in enumerate(index):
            out[ti, tj] += matrix[i, j]
    return out


def confusion_from_card(card: Mapping[str, Any]) -> np.ndarray | None:
    """The cross-validated confusion of a model card (its JSON object) in tissue-class order,
    or None when the card has none."""
    cv = card.get("cross_validation") or {}
    confusion = cv.get("confusion")
    if not confusion:
        return None
    classes = list(cv.get("classes") or card.get("classes") or [])
    return confusion_in_tissue_order(confusion, classes, card["tissue_classes"])


def necrosis_rate_interval(
    positions_px: np.ndarray,
    side_px: np.ndarray | float,
    class_area_mm2: np.ndarray,
    confusion: np.ndarray | None,
    seed: int = 0,
    *,
    slide_index: np.ndarray | None = None,
    block_tiles: int = BLOCK_TILES,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    min_blocks: int = MIN_BLOCKS,
    method: str = METHODS[0],
) -> RateInterval | None:
    """Interval of a case's necrosis rate (the module docstring describes both methods).

    Parameters
    ----------
    positions_px:
        (n_tiles, 2) level-0 x, y of each tile (top-left corner), pixels.
    side_px:
        Tile side in level-0 pixels: one value, or (n_tiles,) when slides differ.
    class_area_mm2:
        (n_tiles, 3) area of each tile per class, mm², in
        :data:`~osteomics.wsi.necrosis.TISSUE_CLASSES` order (viable, necrotic, non-tumour):
        expected areas (tissue area x class probabilities) or hard ones (all of a tile's
        tissue area in its predicted class).
    confusion:
        (3, 3) cross-validated confusion counts in the same class order, rows true class,
        columns predicted class (:func:`confusion_from_card`); None: ``"classifier"`` draws
        the tiles only, ``"bootstrap"`` the blocks only (the method label says so).
    seed:
        Random seed (the same inputs and seed give the same interval).
    slide_index:
        (n_tiles,) slide of each tile (blocks are resampled within each slide); None: one slide.
    block_tiles:
        Block side in tiles (the largest; see ``min_blocks``).
    n_resamples, confidence:
        Resamples and two-sided confidence level.
    min_blocks:
        ``"bootstrap"``: a slide with fewer blocks of ``block_tiles`` gets smaller blocks
        (:func:`block_ids`). ``"classifier"`` never shrinks blocks.
    method:
        ``"classifier"`` (default): the classifier's error only, one draw per block, shifted
        by the confusion's adjusted count;
        ``"bootstrap"``: spatial block bootstrap x the confusion's misclassification rates.

    Returns
    -------
    RateInterval or None
        None when the tiles hold no tumour area at all.

    Raises
    ------
    ValueError
        Inconsistent shapes, negative areas or counts, a confidence outside (0, 1), an
        unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown interval method {method!r}; use one of {', '.join(METHODS)}")
    areas = np.asarray(class_area_mm2, dtype=np.float64)
    if areas.ndim != 2 or areas.shape[1] != len(TISSUE_CLASSES):
        raise ValueError("class_area_mm2 must be (n_tiles, 3)")
    if np.any(areas < 0):
        raise ValueError("areas cannot be negative")
    if not 0.0 < confidence < 1.0 or n_resamples < 1:
        raise ValueError("need n_resamples >= 1 and confidence in (0, 1)")
    iv, inec = TISSUE_CLASSES.index(VIABLE), TISSUE_CLASSES.index(NECROTIC)
    if areas.shape[0] == 0 or areas[:, [iv, inec]].sum() <= 0:
        return None
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    if pos.shape[0] != areas.shape[0]:
        raise ValueError("positions_px and class_area_mm2 have different numbers of tiles")
    slides = np.zeros(len(areas), np.int64) if slide_index is None else np.asarray(slide_index)
    rng = np.random.default_rng(seed)
    if method == "classifier":
        blocks = block_ids(pos, side_px, slides, block_tiles, min_blocks=1)
        rate = _classifier_error_rates(areas, blocks, n_resamples, rng)
        label = METHOD_CLASSIFIER_NO_CONFUSION
        if confusion is not None:
            rate = np.clip(rate + _mix_shift(areas, confusion, n_resamples, rng), 0.0, 100.0)
            label = METHOD_CLASSIFIER
        return _percentile_interval(
            rate, label, block_tiles, n_resamples, confidence, int(blocks.max()) + 1
        )
    blocks = block_ids(pos, side_px, slides, block_tiles, min_blocks)
    n_blocks = int(blocks.max()) + 1
    block_area = np.zeros((n_blocks, areas.shape[1]))
    np.add.at(block_area, blocks, areas)
    block_slide = np.zeros(n_blocks, np.int64)
    block_slide[blocks] = slides
    # Resample each slide's blocks with replacement and add up their class areas.
    predicted = np.zeros((n_resamples, areas.shape[1]))  # predicted class areas per resample
    for s in np.unique(block_slide):
        members = np.flatnonzero(block_slide == s)
        picks = rng.integers(0, len(members), size=(n_resamples, len(members)))
        predicted += block_area[members][picks].sum(axis=1)
    if confusion is not None:
        true_area = _correct_for_classifier_error(predicted, confusion, rng)
        label = METHOD_WITH_CONFUSION
    else:
        true_area = predicted
        label = METHOD_BLOCKS_ONLY
    tumour = true_area[:, iv] + true_area[:, inec]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(tumour > 0, 100.0 * true_area[:, inec] / tumour, np.nan)
    return _percentile_interval(
        np.clip(rate, 0.0, 100.0), label, block_tiles, n_resamples, confidence, n_blocks
    )


def _percentile_interval(
    rate: np.ndarray,
    label: str,
    block_tiles: int,
    n_resamples: int,
    confidence: float,
    n_blocks: int,
) -> RateInterval | None:
    """Percentile interval of the resampled rates (NaN: a resample without tumour)."""
    if np.all(np.isnan(rate)):
        return None
    alpha = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(rate, [alpha, 1.0 - alpha])
    return RateInterval(
        float(low), float(high), label, block_tiles, n_resamples, confidence, n_blocks
    )


def _mix_shift(
    areas: np.ndarray, confusion: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Per resample, adjusted-count rate minus the point estimate (percentage points).

    The calibrated probabilities are calibrated for the class mix of the cross-validation
    folds; on a case of another mix the expected-area estimate is pulled towards the folds'
    mix (on slide-held-out tiles about 10 % of the distance: bench/interval_coverage.py).
    The hard calls (all of a tile's tissue in its most probable class) are corrected with
    one Dirichlet draw of ``R = P(predicted | true)`` per resample
    (:func:`_correct_for_classifier_error`), which does not depend on the class mix; the
    difference to the point estimate shifts that resample's rate. Where the hard calls hold no
    tumour after correction (every tile called non-tumour) there is no adjusted rate and the
    shift is 0: the tile draws alone.
    """
    iv, inec = TISSUE_CLASSES.index(VIABLE), TISSUE_CLASSES.index(NECROTIC)
    tissue = areas.sum(axis=1)
    hard = np.zeros_like(areas)
    hard[np.arange(len(areas)), areas.argmax(axis=1)] = tissue
    predicted = np.broadcast_to(hard.sum(axis=0), (n_resamples, areas.shape[1]))
    true_area = _correct_for_classifier_error(predicted, confusion, rng)
    tumour = true_area[:, iv] + true_area[:, inec]
    point = 100.0 * areas[:, inec].sum() / (areas[:, iv].sum() + areas[:, inec].sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        adjusted = np.where(tumour > 0, 100.0 * true_area[:, inec] / tumour, np.nan)
    return np.nan_to_num(adjusted - point, nan=0.0)


def _classifier_error_rates(
    areas: np.ndarray, blocks: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Necrosis rate (%) of each resample when every tile's true class is drawn from its
    class probabilities (areas / tissue area), one uniform number per block.

    Inverse CDF in the order viable, non-tumour, necrotic: a tile is viable when
    ``u < p_viable``, non-tumour when ``u < p_viable + p_non_tumour``, else necrotic; tiles of
    a block share ``u``. In that order every tile's necrotic area rises and its viable area
    falls with ``u``, so the rate is monotone in each block's ``u`` and sharing it is the
    comonotone (largest-variance) coupling of the tiles' errors. NaN where a resample draws
    no tumour at all.
    """
    iv, int_ = TISSUE_CLASSES.index(VIABLE), TISSUE_CLASSES.index(NON_TUMOUR)
    tissue = areas.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = np.where(tissue[:, None] > 0, areas / tissue[:, None], 0.0)
    cdf = np.cumsum(probs[:, [iv, int_]], axis=1)  # (n_tiles, 2): viable, + non-tumour
    n_blocks = int(blocks.max()) + 1
    rate = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        stop = min(start + _CHUNK, n_resamples)
        u = rng.random((stop - start, n_blocks))[:, blocks]  # (chunk, n_tiles)
        drawn = (u[:, :, None] >= cdf[None, :, :]).sum(axis=2)  # 0 viable, 1 NT, 2 necrotic
        necrotic = ((drawn == 2) * tissue).sum(axis=1)
        viable = ((drawn == 0) * tissue).sum(axis=1)
        tumour = necrotic + viable
        with np.errstate(invalid="ignore", divide="ignore"):
            rate[start:stop] = np.where(tumour > 0, 100.0 * necrotic / tumour, np.nan)
    return rate


def _correct_for_classifier_error(
    predicted: np.ndarray, confusion: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """True-class areas behind each resample's predicted areas, under one draw of the
    classifier's error rates per resample.

    ``R[t, p] = P(predicted p | true t)`` is drawn row by row from
    ``Dirichlet(confusion[t, :] + prior)``; the predicted areas are ``true @ R``, so the true
    areas are ``predicted @ inv(R)`` (adjusted classify-and-count), negative parts set to 0.
    ``P(predicted | true)`` describes the classifier alone; ``P(true | predicted)`` would
    also carry the class mix of the cross-validation folds into every case.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    k = len(TISSUE_CLASSES)
    if counts.shape != (k, k) or np.any(counts < 0):
        raise ValueError("confusion must be a (3, 3) matrix of non-negative counts")
    n = predicted.shape[0]
    given_true = np.stack(
        [rng.dirichlet(counts[t] + DIRICHLET_PRIOR, size=n) for t in range(k)], axis=1
    )  # (n, true, predicted)
    inverse = np.linalg.pinv(given_true)  # (n, predicted, true)
    true_area = np.einsum("rp,rpt->rt", predicted, inverse)
    return np.clip(true_area, 0.0, None)
