"""Temperature scaling and classification metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from osteomics.wsi.calibration import (
    calibrated_probabilities,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)


def _miscalibrated(n: int = 3000, temperature: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z), logits reported as z * temperature (over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, size=(n, 3))
    p = calibrated_probabilities(z, 1.0)
    labels = np.array([rng.choice(3, p=row) for row in p])
    return z * temperature, labels


def test_temperature_scaling_lowers_nll_and_recovers_the_temperature() -> None:
    logits, labels = _miscalibrated()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    assert negative_log_likelihood(logits, labels, t) < negative_log_likelihood(logits, labels, 1.0)
    before = expected_calibration_error(calibrated_probabilities(logits, 1.0), labels)
    after = expected_calibration_error(calibrated_probabilities(logits, t), labels)
    assert after < before / 2


def test_temperature_keeps_the_predicted_class() -> None:
    logits, labels = _miscalibrated(n=200)
    t = fit_temperature(logits, labels)
    assert np.array_equal(
        calibrated_probabilities(logits, t).argmax(1), calibrated_probabilities(logits, 1).argmax(1)
    )


def test_metrics_against_hand_computed_values() -> None:
    # truth: a a b b c ; predicted: a b b b a
    probs = np.array(
        [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.6, 0.2, 0.2]]
    )
    labels = np.array([0, 0, 1, 1, 2])
    m = classification_metrics(probs, labels, ["a", "b", "c"])
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m.recall == {"a": 0.5, "b": 1.0, "c": 0.0}
    # F1: a = 2*1/(2+2) = 0.5, b = 2*2/(2+3) = 0.8, c = 0
    assert m.macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # ECE, 10 bins: confidences 0.9 (right), 0.7 (wrong), 0.8 (right), 0.6 (right), 0.6 (wrong)
    expected = (abs(1 - 0.9) + abs(0 - 0.7) + abs(1 - 0.8) + 2 * abs(0.5 - 0.6)) / 5
    assert m.ece == pytest.approx(expected)
    assert m.n == 5
