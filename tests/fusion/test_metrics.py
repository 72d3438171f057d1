"""Our vectorised metrics against scikit-learn / scikit-survival on real outcomes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osteomics.fusion.metrics import auc, c_index, calibration, km_curve, net_benefit


@pytest.fixture(scope="module")
def tcga(tcga_patients: Path) -> pd.DataFrame:
    return pd.read_csv(tcga_patients).dropna(subset=["pfi", "pfi_days"])


def test_auc_matches_scikit_learn(sts_clinical: Path) -> None:
    from sklearn.metrics import roc_auc_score

    table = pd.read_csv(sts_clinical)
    y = table["lung_mets"].to_numpy()
    for column in ("age_years", "days_diagnosis_to_mri", "chemotherapy"):  # ties included
        score = table[column].fillna(0).to_numpy(dtype=float)
        assert auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)


def test_c_index_matches_scikit_survival(tcga: pd.DataFrame) -> None:
    from sksurv.metrics import concordance_index_censored

    event = tcga["pfi"].to_numpy(dtype=bool)
    time = tcga["pfi_days"].to_numpy(dtype=float)
    for column in ("mean_slide_percent_necrosis", "age_at_diagnosis_years"):
        risk = tcga[column].fillna(0).to_numpy(dtype=float)
        ref = concordance_index_censored(event, time, risk)[0]
        assert c_index(time, event, risk) == pytest.approx(ref, abs=1e-12)


def test_calibration_of_calibrated_probabilities() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 20000)
    y = rng.uniform(size=p.size) < p
    slope, intercept = calibration(y, p)
    assert slope == pytest.approx(1.0, abs=0.05)
    assert intercept == pytest.approx(0.0, abs=0.05)
    over_slope, _ = calibration(y, 1 / (1 + np.exp(-3 * np.log(p / (1 - p)))))  # overconfident
    assert over_slope < 0.5


def test_net_benefit_of_a_perfect_model() -> None:
    y = np.r_[np.ones(10), np.zeros(30)]
    model, treat_all = net_benefit(y, y, np.array([0.2, 0.5]))
    np.testing.assert_allclose(model, 0.25)  # every event found, no false positive
    np.testing.assert_allclose(treat_all, [0.25 - 0.75 * 0.25, 0.25 - 0.75])


def test_kaplan_meier_against_scikit_survival(tcga: pd.DataFrame) -> None:
    from sksurv.nonparametric import kaplan_meier_estimator

    event = tcga["pfi"].to_numpy(dtype=bool)
    time = tcga["pfi_days"].to_numpy(dtype=float)
    t, s = km_curve(time, event)
    ref_t, ref_s = kaplan_meier_estimator(event, time)
    at = ref_t[np.isin(ref_t, t)]
    np.testing.assert_allclose(np.interp(at, t, s), ref_s[np.isin(ref_t, t)], atol=1e-12)
