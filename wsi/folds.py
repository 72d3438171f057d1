"""Grouped cross-validation folds: tiles of one patient (or slide) never on both sides.

Splits must be by patient. When some class comes from a single patient, a patient split
would leave that class out of training in one fold; then the split falls back to slides
(blocks), and the model card says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from osteomics.wsi.errors import TrainingDataError
from osteomics.wsi.labelled import LabelledTile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grouping:
    """How the folds are grouped.

    Attributes
    ----------
    kind:
        ``patient`` or ``slide``.
    reason:
        Why, in words (goes into the model card).
    groups:
        Group key of every tile, in the order of the tiles.
    """

    kind: str
    reason: str
    groups: tuple[str, ...]


def choose_grouping(tiles: Sequence[LabelledTile]) -> Grouping:
    """Patient groups when every class has more than one patient, else slide groups.

    A slide key is ``case/slide``: slide names (``A15``) repeat across patients.
    """
    cases_per_label: dict[str, set[str]] = {}
    for t in tiles:
        cases_per_label.setdefault(t.label, set()).add(t.case)
    single = sorted(label for label, cases in cases_per_label.items() if len(cases) < 2)
    if not single:
        return Grouping(
            "patient",
            "every class has more than one patient",
            tuple(t.case for t in tiles),
        )
    detail = ", ".join(
        f"{label} only from {next(iter(cases_per_label[label]))}" for label in single
    )
    reason = (
        f"slide-grouped: {detail}; a patient split would leave that class out of training, "
        "so tiles of one slide are never on both sides instead"
    )
    log.warning("cross-validation falls back to slides: %s", detail)
    return Grouping("slide", reason, tuple(f"{t.case}/{t.slide}" for t in tiles))


def grouped_folds(
    labels: Sequence[int] | np.ndarray, groups: Sequence[str], n_folds: int, seed: int = 0
) -> np.ndarray:
    """Fold number (0..k-1) of every sample; all samples of a group share a fold.

    Greedy stratification: groups, largest first (ties in a seeded random order), go to the
    fold where the class counts stay most even. ``k = min(n_folds, number of groups)``.

    Parameters
    ----------
    labels:
        (n,) integer class of each sample.
    groups:
        (n,) group key of each sample.
    n_folds:
        Folds wanted (>= 2).
    seed:
        Order of groups of equal size.

    Returns
    -------
    numpy.ndarray
        (n,) int fold numbers.
    """
    labels = np.asarray(labels, dtype=np.int64)
    keys = np.asarray(list(groups))
    unique = np.unique(keys)
    k = min(n_folds, len(unique))
    if k < 2:
        raise TrainingDataError(
            f"cross-validation needs at least two groups (slides or patients), got "
            f"{len(unique)}; add images of another slide or patient"
        )
    n_classes = int(labels.max()) + 1
    counts = {g: np.bincount(labels[keys == g], minlength=n_classes) for g in unique}
    totals = np.bincount(labels, minlength=n_classes).astype(np.float64)
    order = np.random.default_rng(seed).permutation(len(unique))
    ordered = sorted((unique[i] for i in order), key=lambda g: -int(counts[g].sum()))
    fold_counts = np.zeros((k, n_classes))
    assignment: dict[str, int] = {}
    for g in ordered:
        after = fold_counts + counts[g]
        cost = ((after / np.maximum(totals, 1.0)) ** 2).sum(axis=1)
        size = after.sum(axis=1)
        best = min(range(k), key=lambda f: (round(float(cost[f]), 12), size[f], f))
        assignment[str(g)] = best
        fold_counts[best] += counts[g]
    return np.array([assignment[str(g)] for g in keys], dtype=np.int64)
