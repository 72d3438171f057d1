"""What ``signature fit`` produces: each model's nested-CV performance and the fit result.

The nouns the report and the signature file read; :mod:`osteomics.fusion.signature` makes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osteomics.fusion.cohort import Cohort
from osteomics.fusion.model import FinalModel, FitSettings
from osteomics.fusion.preprocess import BlockTransform


@dataclass
class ModelPerformance:
    """Nested-CV performance of one model.

    Attributes
    ----------
    metric: ``auc`` (binary) or ``c_index`` (survival).
    value: the metric, mean over outer repeats of the pooled out-of-fold scores.
    ci: 95 % patient-bootstrap interval of ``value``.
    per_repeat: the metric of each repeat.
    permutation: mean metric of the nested CV rerun on shuffled outcomes.
    permutation_values: each shuffled run's metric.
    permutation_p: (1 + shuffled runs >= value) / (1 + runs).
    brier, calibration_slope, calibration_intercept: binary only (mean out-of-fold probability).
    net_benefit: binary only: thresholds, model, treat-all.
    logrank_chisq, logrank_p: survival only: high vs low risk (median out-of-fold risk).
    """

    metric: str
    value: float
    ci: tuple[float, float]
    per_repeat: list[float]
    permutation: float | None
    permutation_values: list[float]
    permutation_p: float | None
    brier: float | None = None
    calibration_slope: float | None = None
    calibration_intercept: float | None = None
    net_benefit: dict[str, list[float]] | None = None
    logrank_chisq: float | None = None
    logrank_p: float | None = None


@dataclass
class FitResult:
    """Everything ``signature fit`` produces."""

    cohort: Cohort
    settings: FitSettings
    transforms: dict[str, BlockTransform]
    models: dict[str, FinalModel]
    performance: dict[str, ModelPerformance]
    scores: dict[str, np.ndarray]
    seconds: float
