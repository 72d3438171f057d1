"""Fusion fixtures: cohort files over the real STS and TCGA-SARC tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from osteomics.fusion.model import FitSettings

#: Small settings for unit tests: the real pipeline, fewer folds, repeats and resamples.
QUICK = FitSettings(
    folds=4, repeats=1, inner_folds=3, permutations=0, bootstraps=200, model_bootstraps=5
)


@pytest.fixture(scope="session")
def quick() -> FitSettings:
    """:data:`QUICK`."""
    return QUICK


@pytest.fixture(scope="session")
def sts_clinical(data_dir: Path) -> Path:
    return (data_dir / "radiology" / "sts-clinical.csv").resolve()


@pytest.fixture(scope="session")
def ibsi_features(data_dir: Path) -> Path:
    return (data_dir / "radiology" / "ibsi1-validation-features" / "features_long.csv.gz").resolve()


@pytest.fixture(scope="session")
def tcga_patients(data_dir: Path) -> Path:
    return (data_dir / "tcga-sarc-clinical" / "patients.csv").resolve()


def sts_cohort_text(
    clinical: Path, features: Path, *, team: str = "oncoray", pathology: bool = True
) -> str:
    """The STS lung-metastasis cohort: PET radiomics of one IBSI team + grade and type."""
    text = f"""id_column = "patient_id"
[outcome]
table = "{clinical}"
event = "lung_mets"

[[block]]
name = "pet"
table = "{features}"
format = "long"
feature = "feature"
value = "value"
where = {{ modality = "PET", team = "{team}", value_set = 1 }}
"""
    if pathology:
        text += f"""
[[block]]
name = "pathology"
table = "{clinical}"
columns = ["grade", "mskcc_type"]
categorical = ["grade", "mskcc_type"]
"""
    return text


@pytest.fixture(scope="session")
def sts_text() -> Callable[..., str]:
    """:func:`sts_cohort_text`, for tests that edit the cohort file."""
    return sts_cohort_text


@pytest.fixture
def sts_cohort(tmp_path: Path, sts_clinical: Path, ibsi_features: Path) -> Path:
    path = tmp_path / "sts.toml"
    path.write_text(sts_cohort_text(sts_clinical, ibsi_features))
    return path


@pytest.fixture
def tcga_cohort(tmp_path: Path, tcga_patients: Path) -> Path:
    path = tmp_path / "tcga.toml"
    path.write_text(
        f"""[outcome]
table = "{tcga_patients}"
event = "pfi"
time = "pfi_days"

[[block]]
name = "pathology"
table = "{tcga_patients}"
columns = ["mean_slide_percent_necrosis", "mean_slide_percent_tumor_cells",
           "mean_slide_percent_stromal_cells", "mean_slide_percent_lymphocyte_infiltration",
           "sarc2017_mitotic_rate"]
"""
    )
    return path
