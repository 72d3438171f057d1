"""ComBat: our apply step reproduces neuroCombat on the training data, removes a planted site
effect from real TCGA pathology estimates, and refuses batches it cannot handle."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osteomics.fusion.errors import BlockDataError, SignatureError
from osteomics.fusion.harmonise import ComBatParameters, apply_combat, fit_combat

#: Real features that vary inside every site kept (ComBat's empirical-Bayes priors pool over
#: features, so the comparison with neuroCombat needs all of them harmonised).
FEATURES = [
    "mean_slide_percent_tumor_cells",
    "cqcf_tumor_sample_necrosis_percent",
    "pathologic_tumor_length_cm",
    "age_at_diagnosis_years",
]


@pytest.fixture(scope="module")
def tcga_sites(tcga_patients: Path) -> tuple[np.ndarray, np.ndarray]:
    """Real TCGA-SARC values and tissue-source site (barcode letters 6-7), sites with >= 8."""
    table = pd.read_csv(tcga_patients)
    table["site"] = table["patient_id"].str[5:7]
    counts = table["site"].value_counts()
    table = table[table["site"].isin(counts.index[counts >= 8])].dropna(subset=FEATURES)
    return table[FEATURES].to_numpy(dtype=float), table["site"].to_numpy(dtype=str)


def test_apply_reproduces_neurocombat(tcga_sites: tuple[np.ndarray, np.ndarray]) -> None:
    from neuroCombat import neuroCombat

    x, site = tcga_sites
    params, harmonised = fit_combat(x, site, FEATURES)
    assert params.features == FEATURES
    with contextlib.redirect_stdout(io.StringIO()):
        reference = neuroCombat(dat=x.T, covars=pd.DataFrame({"batch": site}), batch_col="batch")[
            "data"
        ].T
    np.testing.assert_allclose(harmonised, reference, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(apply_combat(x, site, FEATURES, params), reference, atol=1e-8)
    # and the estimates survive a JSON round trip
    again = ComBatParameters.from_json(params.to_json())
    np.testing.assert_allclose(apply_combat(x, site, FEATURES, again), reference, atol=1e-8)


def test_planted_site_effect_removed(tcga_sites: tuple[np.ndarray, np.ndarray]) -> None:
    x, site = tcga_sites
    shifted = x.copy()
    first = site == sorted(set(site))[0]
    shifted[first] += 3 * x.std(axis=0)  # a strong scanner-like shift on one site
    _, harmonised = fit_combat(shifted, site, FEATURES)

    def gap(values: np.ndarray) -> np.ndarray:
        return np.abs(values[first].mean(axis=0) - values[~first].mean(axis=0)) / x.std(axis=0)

    assert (gap(shifted) > 2.5).all()
    assert (gap(harmonised) < 0.6).all()


def test_unseen_batch_refused(tcga_sites: tuple[np.ndarray, np.ndarray]) -> None:
    x, site = tcga_sites
    params, _ = fit_combat(x, site, FEATURES)
    with pytest.raises(SignatureError, match=r"batch\(es\) 'ZZ' were not seen in training"):
        apply_combat(x[:3], np.array(["ZZ"] * 3, dtype=object), FEATURES, params)


def test_batch_with_one_patient_refused(tcga_sites: tuple[np.ndarray, np.ndarray]) -> None:
    x, site = tcga_sites
    site = site.astype(object)
    site[0] = "lonely"
    with pytest.raises(BlockDataError, match=r"'lonely' have one patient"):
        fit_combat(x, site, FEATURES, "block 'pathology'")
