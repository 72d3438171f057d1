"""Performance measures: AUC, Harrell's C-index, Brier score, calibration, net benefit,
log-rank test, and patient-bootstrap confidence intervals.

AUC and C-index are computed here in vectorised NumPy because the bootstrap calls them thousands
of times; the tests check them against scikit-learn's ``roc_auc_score`` and scikit-survival's
``concordance_index_censored``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN with one class."""
    y = np.asarray(y).astype(bool)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index (higher risk, earlier event); ties in risk count half.

    A pair (i, j) is comparable when i had the event and ``time[i] < time[j]``, or the times are
    equal and j did not have the event (scikit-survival's definition). NaN with no comparable
    pair.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=float)
    ti, tj = time[:, None], time[None, :]
    comparable = event[:, None] & ((ti < tj) | ((ti == tj) & ~event[None, :]))
    np.fill_diagonal(comparable, False)
    n = comparable.sum()
    if n == 0:
        return float("nan")
    ri, rj = risk[:, None], risk[None, :]
    concordant = ((ri > rj) & comparable).sum() + 0.5 * ((ri == rj) & comparable).sum()
    return float(concordant / n)


def brier(y: np.ndarray, probability: np.ndarray) -> float:
    """Mean squared difference between the 0/1 outcome and the predicted probability."""
    return float(np.mean((np.asarray(probability) - np.asarray(y)) ** 2))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def calibration(y: np.ndarray, probability: np.ndarray) -> tuple[float, float]:
    """Calibration slope (logistic regression of the outcome on logit(p)) and calibration
    intercept (calibration-in-the-large: intercept with logit(p) as offset). Perfect: (1, 0).
    """
    from scipy.optimize import brentq
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, dtype=float)
    lp = _logit(probability)
    if np.ptp(lp) == 0 or y.min() == y.max():
        slope = float("nan")
    else:
        fit = LogisticRegression(penalty=None, max_iter=1000).fit(lp[:, None], y)
        slope = float(fit.coef_[0, 0])

    def score(a: float) -> float:
        return float(np.sum(y - 1 / (1 + np.exp(-(a + lp)))))

    try:
        intercept = float(brentq(score, -20, 20))
    except ValueError:
        intercept = float("nan")
    return slope, intercept


def net_benefit(
    y: np.ndarray, probability: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Decision-curve net benefit of the model and of treating everyone, per threshold
    probability: ``TP/n - FP/n * pt / (1 - pt)``."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(probability)
    n = y.size
    odds = thresholds / (1 - thresholds)
    model = np.array([((p >= t) & y).sum() / n - ((p >= t) & ~y).sum() / n * o
                      for t, o in zip(thresholds, odds, strict=True)])  # fmt: skip
    prevalence = y.mean()
    treat_all = prevalence - (1 - prevalence) * odds
    return model, treat_all


def logrank(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    """Log-rank test between groups: (chi-square statistic, p-value)."""
    from sksurv.compare import compare_survival

    y = np.array(
        list(zip(np.asarray(event).astype(bool), np.asarray(time, dtype=float), strict=True)),
        dtype=[("event", bool), ("time", float)],
    )
    chisq, p = compare_survival(y, np.asarray(group))
    return float(chisq), float(p)


def bootstrap_ci(
    metric: Callable[[np.ndarray], float],
    n: int,
    n_bootstraps: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of ``metric(indices)`` over patient bootstrap resamples.

    ``metric`` receives the resampled row indices and returns the statistic (NaN resamples,
    e.g. one class only, are skipped).
    """
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_bootstraps):
        v = metric(rng.integers(0, n, n))
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def km_curve(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate: step times (starting at 0) and survival probabilities."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    times = np.unique(time[event])
    surv = [1.0]
    s = 1.0
    for t in times:
        at_risk = (time >= t).sum()
        d = ((time == t) & event).sum()
        s *= 1 - d / at_risk
        surv.append(s)
    return np.concatenate([[0.0], times]), np.asarray(surv)
