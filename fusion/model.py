"""Penalised models inside nested, patient-level cross-validation.

- Binary outcome: elastic-net logistic regression (scikit-learn, ``saga``); the inverse penalty
  ``C`` is chosen by inner stratified cross-validation (AUC).
- Time to event: elastic-net Cox regression (scikit-survival ``CoxnetSurvivalAnalysis``); the
  penalty ``alpha`` is chosen by inner stratified cross-validation (Harrell's C).

Outer loop: repeated stratified K-fold over patients. In each outer fold everything data-driven
(imputation values, one-hot levels, variance filter, ComBat estimates, redundancy clusters,
scaling, the penalty and the coefficients) is fitted on the outer training patients only; the
inner folds choose the penalty on the outer-training matrix. The reported performance therefore
never saw its test patients. Scores are collected out of fold for every repeat.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from osteomics.fusion.cohort import Cohort
from osteomics.fusion.errors import OutcomeError
from osteomics.fusion.metrics import auc, c_index
from osteomics.fusion.preprocess import (
    BlockTransform,
    apply_block_transform,
    fit_block_transform,
)

logger = logging.getLogger(__name__)

#: Inverse penalties (C) tried for the logistic model, strongest penalty first.
C_GRID = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
#: Number of penalties on the Cox path and the smallest as a share of the largest.
COX_ALPHAS = 12
COX_ALPHA_MIN_RATIO = 0.05
#: Name of the model that joins every block.
FUSED = "fused"


@dataclass(frozen=True)
class FitSettings:
    """Settings of ``signature fit``.

    Attributes
    ----------
    folds: outer folds (K of the repeated stratified K-fold).
    repeats: outer repeats.
    inner_folds: inner folds that choose the penalty.
    permutations: shuffled-outcome reruns of the nested CV (one repeat each).
    bootstraps: patient bootstrap resamples for the metric's confidence interval.
    model_bootstraps: refits of the final model on bootstrap resamples (per-patient score CIs).
    l1_ratio: elastic-net mixing (1 = lasso, 0 = ridge).
    correlation: |Spearman rho| above which features are redundant.
    seed: seed of every random step.
    """

    folds: int = 5
    repeats: int = 5
    inner_folds: int = 3
    permutations: int = 20
    bootstraps: int = 1000
    model_bootstraps: int = 50
    l1_ratio: float = 0.5
    correlation: float = 0.9
    seed: int = 0


@dataclass
class LinearModel:
    """A fitted linear predictor over named standardised inputs.

    ``score = inputs @ coef + intercept``; for a binary target the probability is the logistic of
    it, for survival it is the Cox linear predictor (log relative hazard).
    """

    inputs: list[str]
    coef: np.ndarray
    intercept: float
    penalty: float

    def linear_predictor(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef + self.intercept


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def score_from_linear(target: str, lp: np.ndarray) -> np.ndarray:
    """Probability (binary) or linear predictor (survival)."""
    return _sigmoid(lp) if target == "binary" else lp


def stratified_folds(label: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(label)), label))


def _logistic(c: float, l1_ratio: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        penalty="elasticnet",
        solver="saga",
        l1_ratio=l1_ratio,
        C=c,
        max_iter=5000,
        tol=1e-4,
        random_state=seed,
    )


def _fit_logistic(x: np.ndarray, y: np.ndarray, c: float, l1_ratio: float, seed: int) -> Any:
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _logistic(c, l1_ratio, seed).fit(x, y)


def fit_binary(
    x: np.ndarray, y: np.ndarray, names: list[str], settings: FitSettings, seed: int
) -> LinearModel:
    """Elastic-net logistic regression with C chosen by inner stratified CV (pooled AUC)."""
    folds = stratified_folds(y, settings.inner_folds, seed)
    best_c, best_auc = C_GRID[0], -np.inf
    for c in C_GRID:
        pooled = np.zeros(len(y))
        for train, test in folds:
            model = _fit_logistic(x[train], y[train], c, settings.l1_ratio, seed)
            pooled[test] = model.decision_function(x[test])
        value = auc(y, pooled)
        if value > best_auc + 1e-9:  # ties keep the stronger penalty
            best_c, best_auc = c, value
    model = _fit_logistic(x, y, best_c, settings.l1_ratio, seed)
    return LinearModel(names, model.coef_[0].copy(), float(model.intercept_[0]), best_c)


def _survival_array(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    return np.array(
        list(zip(event.astype(bool), time.astype(float), strict=True)),
        dtype=[("event", bool), ("time", float)],
    )


def _coxnet(l1_ratio: float, alphas: np.ndarray | None = None) -> Any:
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    if alphas is None:
        return CoxnetSurvivalAnalysis(
            l1_ratio=l1_ratio, n_alphas=COX_ALPHAS, alpha_min_ratio=COX_ALPHA_MIN_RATIO,
            max_iter=100000,
        )  # fmt: skip
    return CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alphas=alphas, max_iter=100000)


def fit_survival(
    x: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    names: list[str],
    settings: FitSettings,
    seed: int,
) -> LinearModel:
    """Elastic-net Cox regression with alpha chosen by inner stratified CV (Harrell's C)."""
    y = _survival_array(time, event)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = _coxnet(settings.l1_ratio).fit(x, y)
        alphas = np.asarray(path.alphas_)
        folds = stratified_folds(event, settings.inner_folds, seed)
        scores = np.zeros(len(alphas))
        for train, test in folds:
            model = _coxnet(settings.l1_ratio, alphas).fit(x[train], y[train])
            coefs = np.asarray(model.coef_)  # features x alphas
            n_fit = coefs.shape[1]
            for a in range(len(alphas)):
                risk = x[test] @ coefs[:, min(a, n_fit - 1)]
                value = c_index(time[test], event[test], risk)
                scores[a] += 0.0 if np.isnan(value) else value
    best = int(np.argmax(scores))  # first maximum: the strongest penalty among ties
    coef = np.asarray(path.coef_)[:, best].copy()
    return LinearModel(names, coef, 0.0, float(alphas[best]))


def fit_linear(
    target: str,
    x: np.ndarray,
    event: np.ndarray,
    time: np.ndarray | None,
    names: list[str],
    settings: FitSettings,
    seed: int,
) -> LinearModel:
    """The target's penalised model (see the module docstring)."""
    if target == "binary":
        return fit_binary(x, event, names, settings, seed)
    assert time is not None
    return fit_survival(x, time, event, names, settings, seed)


def model_blocks(cohort: Cohort) -> dict[str, list[str]]:
    """Model name -> the blocks it uses: one model per block, plus ``fused`` (all blocks) when
    there are several."""
    names = list(cohort.blocks)
    models = {n: [n] for n in names}
    if len(names) > 1:
        models[FUSED] = names
    return models


def fit_transforms(
    cohort: Cohort, rows: np.ndarray, settings: FitSettings
) -> tuple[dict[str, BlockTransform], dict[str, np.ndarray]]:
    """Fit every block's preprocessing on ``rows``; transforms and training matrices."""
    transforms, matrices = {}, {}
    for name, block in cohort.blocks.items():
        transforms[name], matrices[name] = fit_block_transform(block, rows, settings.correlation)
    return transforms, matrices


def transform_rows(
    cohort: Cohort, transforms: dict[str, BlockTransform], rows: np.ndarray
) -> dict[str, np.ndarray]:
    """Apply fitted block transforms to ``rows`` of the cohort."""
    out = {}
    for name, block in cohort.blocks.items():
        batch = block.batch.iloc[rows] if block.batch is not None else None
        out[name] = apply_block_transform(transforms[name], block.features.iloc[rows], batch)
    return out


def stack(
    matrices: dict[str, np.ndarray], transforms: dict[str, BlockTransform], blocks: list[str]
) -> tuple[np.ndarray, list[str]]:
    """Join the blocks' matrices side by side, with ``block:feature`` names."""
    x = np.hstack([matrices[b] for b in blocks])
    names = [n for b in blocks for n in transforms[b].output_names]
    return x, names


def check_outcome(event: np.ndarray, folds: int, inner_folds: int, where: str) -> None:
    """Enough events and non-events for the folds.

    Raises
    ------
    OutcomeError
        One class only, or fewer events (or non-events) than needed to put at least one in every
        inner fold of every outer training set.
    """
    n1 = int(event.sum())
    n0 = int(len(event) - n1)
    if n1 == 0 or n0 == 0:
        raise OutcomeError(
            f"{where}: the outcome has one class only ({n1} events, {n0} without); a signature "
            "needs both"
        )
    need = max(folds, inner_folds + 1)
    if min(n1, n0) < need:
        raise OutcomeError(
            f"{where}: {n1} events and {n0} without are too few for {folds} outer x "
            f"{inner_folds} inner folds (each class needs >= {need}); lower --folds or add "
            "patients"
        )


def _outer_label(cohort: Cohort, event: np.ndarray, folds: int) -> np.ndarray:
    """Stratification label: the event, crossed with the batch when every cell is big enough."""
    label = event.astype(int).astype(str)
    for block in cohort.blocks.values():
        if block.batch is not None:
            crossed = np.char.add(np.char.add(label, "|"), block.batch.to_numpy(dtype=str))
            _, counts = np.unique(crossed, return_counts=True)
            if counts.min() >= folds:
                label = crossed
    return label


def cross_validated_scores(
    cohort: Cohort,
    settings: FitSettings,
    event: np.ndarray,
    time: np.ndarray | None,
    repeats: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Out-of-fold scores of every model, shape (repeats, patients), from nested CV.

    ``event`` and ``time`` are passed separately so that permutation runs can shuffle them.
    """
    target = cohort.target
    models = model_blocks(cohort)
    n = len(cohort.patients)
    scores = {m: np.full((repeats, n), np.nan) for m in models}
    label = _outer_label(cohort, event, settings.folds)
    for r in range(repeats):
        for k, (train, test) in enumerate(stratified_folds(label, settings.folds, seed + r)):
            transforms, train_x = fit_transforms(cohort, train, settings)
            test_x = transform_rows(cohort, transforms, test)
            inner_seed = seed + 1000 * (r + 1) + k
            for m, blocks in models.items():
                xt, names = stack(train_x, transforms, blocks)
                xv, _ = stack(test_x, transforms, blocks)
                model = fit_linear(
                    target,
                    xt,
                    event[train],
                    time[train] if time is not None else None,
                    names,
                    settings,
                    inner_seed,
                )
                scores[m][r, test] = score_from_linear(target, model.linear_predictor(xv))
    return scores


@dataclass
class FinalModel:
    """A model fitted on every patient, with bootstrap refits for per-patient score CIs."""

    name: str
    blocks: list[str]
    model: LinearModel
    bootstrap_coef: np.ndarray
    bootstrap_intercept: np.ndarray
    threshold: float
    training_scores: np.ndarray = field(repr=False)

    @property
    def selected(self) -> list[tuple[str, float]]:
        """Inputs with a non-zero coefficient, largest magnitude first."""
        pairs = [
            (n, float(c)) for n, c in zip(self.model.inputs, self.model.coef, strict=True) if c
        ]
        return sorted(pairs, key=lambda p: (-abs(p[1]), p[0]))


def fit_final(
    cohort: Cohort, settings: FitSettings
) -> tuple[dict[str, BlockTransform], dict[str, FinalModel]]:
    """Fit every block's preprocessing and every model on all patients.

    Each model is refitted ``settings.model_bootstraps`` times on bootstrap resamples of the
    preprocessed matrix (same penalty) to give per-patient score intervals; the risk-group
    threshold is the median training score.
    """
    assert cohort.event is not None
    target = cohort.target
    rows = np.arange(len(cohort.patients))
    transforms, matrices = fit_transforms(cohort, rows, settings)
    rng = np.random.default_rng(settings.seed + 7)
    out = {}
    for m, blocks in model_blocks(cohort).items():
        x, names = stack(matrices, transforms, blocks)
        model = fit_linear(target, x, cohort.event, cohort.time, names, settings, settings.seed)
        coefs, intercepts = [], []
        for _ in range(settings.model_bootstraps):
            idx = rng.integers(0, len(rows), len(rows))
            while cohort.event[idx].min() == cohort.event[idx].max():
                idx = rng.integers(0, len(rows), len(rows))
            refit = _refit_fixed(target, x[idx], cohort.event[idx], cohort.time, idx, model,
                                 settings)  # fmt: skip
            coefs.append(refit.coef)
            intercepts.append(refit.intercept)
        training = score_from_linear(target, model.linear_predictor(x))
        out[m] = FinalModel(
            m,
            blocks,
            model,
            np.asarray(coefs).reshape(len(coefs), len(names)),
            np.asarray(intercepts, dtype=float),
            float(np.median(training)),
            training,
        )
    return transforms, out


def _refit_fixed(
    target: str,
    x: np.ndarray,
    event: np.ndarray,
    time: np.ndarray | None,
    idx: np.ndarray,
    model: LinearModel,
    settings: FitSettings,
) -> LinearModel:
    """Refit with the penalty the final model chose (no inner search)."""
    if target == "binary":
        fit = _fit_logistic(x, event, model.penalty, settings.l1_ratio, settings.seed)
        return LinearModel(model.inputs, fit.coef_[0].copy(), float(fit.intercept_[0]),
                           model.penalty)  # fmt: skip
    assert time is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = _coxnet(settings.l1_ratio, np.array([model.penalty])).fit(
            x, _survival_array(time[idx], event)
        )
    return LinearModel(model.inputs, np.asarray(fit.coef_)[:, 0].copy(), 0.0, model.penalty)
