"""Classification metrics and temperature scaling (Guo et al., 2017)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

log = logging.getLogger(__name__)

#: Temperatures are searched in this range (log-uniform bounds).
TEMPERATURE_BOUNDS = (0.05, 20.0)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of integer ``labels`` (n,) under softmax(``logits`` (n, k) / temperature)."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T).

    Fitted on held-out (out-of-fold) logits; T > 1 softens over-confident predictions. It
    does not change which class is predicted.

    Parameters
    ----------
    logits:
        (n, n_classes) float.
    labels:
        (n,) integer class indices.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(labels) != logits.shape[0] or len(labels) == 0:
        raise ValueError("logits must be (n, k) with one label per row, n > 0")
    lo, hi = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-4},
    )
    temperature = float(np.exp(result.x))
    log.info("temperature %.3f (NLL %.4f at T=1)", temperature, result.fun)
    return temperature


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature), rows summing to 1."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 10
) -> float:
    """ECE: bin-weighted |accuracy - confidence| over equal-width confidence bins.

    Parameters
    ----------
    probabilities:
        (n, n_classes), rows summing to 1.
    labels:
        (n,) integer class indices.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


@dataclass(frozen=True)
class ClassificationMetrics:
    """Accuracy, macro-F1, per-class recall, confusion matrix and ECE of one set of predictions.

    Attributes
    ----------
    classes:
        Class names, the order of rows and columns of ``confusion``.
    confusion:
        ``confusion[i][j]``: images of true class i predicted as class j.
    recall:
        Per class with at least one true image.
    macro_f1:
        Mean F1 over classes that occur as truth or prediction.
    ece:
        Expected calibration error (10 bins).
    n:
        Number of images.
    """

    classes: tuple[str, ...]
    accuracy: float
    macro_f1: float
    recall: dict[str, float]
    confusion: list[list[int]]
    ece: float
    n: int

    def to_dict(self) -> dict[str, object]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "recall": self.recall,
            "confusion": self.confusion,
            "classes": list(self.classes),
            "ece": self.ece,
            "n": self.n,
        }


def classification_metrics(
    probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> ClassificationMetrics:
    """Metrics of (n, k) probabilities against (n,) integer labels."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    recall = {}
    f1s = []
    for i, name in enumerate(classes):
        tp = confusion[i, i]
        support, called = confusion[i].sum(), confusion[:, i].sum()
        if support:
            recall[name] = float(tp / support)
        if support or called:
            f1s.append(2.0 * tp / (support + called))
    return ClassificationMetrics(
        classes=tuple(classes),
        accuracy=float((predicted == labels).mean()) if len(labels) else float("nan"),
        macro_f1=float(np.mean(f1s)) if f1s else float("nan"),
        recall=recall,
        confusion=confusion.tolist(),
        ece=expected_calibration_error(probabilities, labels) if len(labels) else float("nan"),
        n=len(labels),
    )
