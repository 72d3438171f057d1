"""Cohort files and tables: the real STS/TCGA tables joined, and every bad input refused with a
message that names the table, column or block."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osteomics.fusion.cohort import load_cohort, load_cohort_spec, read_block
from osteomics.fusion.errors import (
    BlockDataError,
    CohortConfigError,
    CohortJoinError,
    CohortTableError,
    CohortTableNotFoundError,
    FusionError,
    OutcomeError,
)
from osteomics.fusion.model import check_outcome


def test_sts_cohort_joins_43_patients_16_events(sts_cohort: Path) -> None:
    cohort = load_cohort(load_cohort_spec(sts_cohort))
    assert len(cohort.patients) == 43
    assert cohort.n_events == 16
    assert cohort.target == "binary"
    pet = cohort.blocks["pet"].features
    assert pet.shape[0] == 43 and pet.shape[1] > 150
    # the 8 clinical-table patients without images are dropped, and the report says so
    assert len(cohort.report.dropped["no 'pet' data"]) == 8
    assert any("8 patient(s) dropped" in line for line in cohort.report.lines())
    # grade is missing for some of the 43: imputed later, counted now
    assert cohort.report.missing_values["pathology"] > 0
    assert cohort.blocks["pathology"].categorical == ("grade", "mskcc_type")


def test_survival_cohort_reads_time(tcga_cohort: Path) -> None:
    cohort = load_cohort(load_cohort_spec(tcga_cohort))
    assert cohort.target == "survival"
    assert len(cohort.patients) == 261
    assert cohort.n_events == 139  # PFI events (data README)
    assert cohort.time is not None and (cohort.time >= 0).all()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cohort.toml"
    path.write_text(text)
    return path


def test_unknown_key_refused(
    tmp_path: Path, sts_clinical: Path, ibsi_features: Path, sts_text: Callable[..., str]
) -> None:
    text = sts_text(sts_clinical, ibsi_features).replace(
        'event = "lung_mets"', 'event = "lung_mets"\nevnt = "x"'
    )
    with pytest.raises(CohortConfigError, match=r"unknown key.*evnt"):
        load_cohort_spec(_write(tmp_path, text))


def test_missing_table_named(
    tmp_path: Path, sts_clinical: Path, ibsi_features: Path, sts_text: Callable[..., str]
) -> None:
    text = sts_text(sts_clinical, tmp_path / "nowhere.csv")
    with pytest.raises(CohortTableNotFoundError, match=r"block 'pet'.*nowhere\.csv"):
        load_cohort_spec(_write(tmp_path, text))


def test_long_duplicates_suggest_a_filter(
    tmp_path: Path, sts_clinical: Path, ibsi_features: Path, sts_text: Callable[..., str]
) -> None:
    text = sts_text(sts_clinical, ibsi_features).replace(', team = "oncoray"', "")
    spec = load_cohort_spec(_write(tmp_path, text))
    with pytest.raises(CohortTableError, match=r"block 'pet'.*where filter on .*team"):
        read_block(spec.block("pet"))


def test_ids_that_do_not_match(
    tmp_path: Path, sts_clinical: Path, ibsi_features: Path, sts_text: Callable[..., str]
) -> None:
    clinical = pd.read_csv(sts_clinical)
    clinical["patient_id"] = clinical["patient_id"].str.replace("STS_", "sts-")
    renamed = tmp_path / "clinical.csv"
    clinical.to_csv(renamed, index=False)
    text = sts_text(renamed, ibsi_features, pathology=False)
    with pytest.raises(CohortJoinError, match=r"block 'pet': 0 of 43 IDs match \(e\.g\. 'STS_"):
        load_cohort(load_cohort_spec(_write(tmp_path, text)))


def test_duplicated_patients(
    tmp_path: Path, sts_clinical: Path, ibsi_features: Path, sts_text: Callable[..., str]
) -> None:
    clinical = pd.read_csv(sts_clinical)
    doubled = tmp_path / "clinical.csv"
    pd.concat([clinical, clinical.iloc[:3]]).to_csv(doubled, index=False)
    text = sts_text(doubled, ibsi_features)
    spec = load_cohort_spec(_write(tmp_path, text))
    with pytest.raises(CohortTableError, match=r"3 patient\(s\) appear on more than one row"):
        load_cohort(spec)


def test_block_all_missing(
    tmp_path: Path, sts_clinical: Path, ibsi_features: Path, sts_text: Callable[..., str]
) -> None:
    clinical = pd.read_csv(sts_clinical)
    clinical["grade"] = np.nan
    clinical["mskcc_type"] = np.nan
    empty = tmp_path / "clinical.csv"
    clinical.to_csv(empty, index=False)
    text = sts_text(sts_clinical, ibsi_features).replace(
        f'name = "pathology"\ntable = "{sts_clinical}"', f'name = "pathology"\ntable = "{empty}"'
    )
    with pytest.raises(BlockDataError, match=r"block 'pathology': every value is missing"):
        load_cohort(load_cohort_spec(_write(tmp_path, text)))


def test_text_column_must_be_declared_categorical(
    tmp_path: Path, sts_clinical: Path, ibsi_features: Path, sts_text: Callable[..., str]
) -> None:
    text = sts_text(sts_clinical, ibsi_features).replace(
        'categorical = ["grade", "mskcc_type"]', 'categorical = ["grade"]'
    )
    with pytest.raises(CohortTableError, match=r"column 'mskcc_type'.*categorical"):
        load_cohort(load_cohort_spec(_write(tmp_path, text)))


def test_one_class_and_too_few_events() -> None:
    with pytest.raises(OutcomeError, match="one class"):
        check_outcome(np.zeros(43, dtype=int), 5, 3, "cohort.toml")
    events = np.r_[np.ones(3, dtype=int), np.zeros(40, dtype=int)]
    with pytest.raises(OutcomeError, match=r"3 events .* too few for 5 outer"):
        check_outcome(events, 5, 3, "cohort.toml")


def test_negative_time_refused(tmp_path: Path, tcga_cohort: Path, tcga_patients: Path) -> None:
    table = pd.read_csv(tcga_patients)
    table.loc[5, "pfi_days"] = -3
    bad = tmp_path / "patients.csv"
    table.to_csv(bad, index=False)
    text = tcga_cohort.read_text().replace(str(tcga_patients), str(bad))
    with pytest.raises(OutcomeError, match=r"1 negative time\(s\) in column 'pfi_days'"):
        load_cohort(load_cohort_spec(_write(tmp_path, text)))


def test_event_must_be_binary(
    tmp_path: Path, sts_clinical: Path, ibsi_features: Path, sts_text: Callable[..., str]
) -> None:
    text = sts_text(sts_clinical, ibsi_features).replace(
        'event = "lung_mets"', 'event = "age_years"'
    )
    with pytest.raises(OutcomeError, match="must hold 0/1"):
        load_cohort(load_cohort_spec(_write(tmp_path, text)))


def test_every_error_is_a_fusion_error_and_a_builtin() -> None:
    for cls, builtin in (
        (CohortConfigError, ValueError),
        (CohortTableNotFoundError, FileNotFoundError),
        (CohortJoinError, ValueError),
        (OutcomeError, ValueError),
        (BlockDataError, ValueError),
    ):
        assert issubclass(cls, FusionError) and issubclass(cls, builtin)


def test_necrosis_tables_read_by_format(tmp_path: Path) -> None:
    """necrosis_cases.csv / necrosis_slides.csv as wsi/report.py writes them."""
    from osteomics.wsi.report import CASE_COLUMNS, SLIDE_COLUMNS, table_csv

    slides = [
        {"slide": "A1", "case": "C1", "status": "ok", "viable_mm2": 10.0, "necrotic_mm2": 30.0,
         "non_tumour_mm2": 5.0, "necrosis_rate": 75.0},
        {"slide": "A2", "case": "C1", "status": "ok", "viable_mm2": 30.0, "necrotic_mm2": 30.0,
         "non_tumour_mm2": 1.0, "necrosis_rate": 50.0},
        {"slide": "B1", "case": "C2", "status": "ok", "viable_mm2": 1.0, "necrotic_mm2": 99.0,
         "non_tumour_mm2": 0.0, "necrosis_rate": 99.0},
        {"slide": "B2", "case": "C2", "status": "failed", "reason": "unreadable"},
    ]  # fmt: skip
    cases = [
        {"case": "C1", "status": "ok", "n_slides": 2, "necrosis_rate": 60.0, "huvos_grade": "II",
         "viable_mm2": 40.0, "necrotic_mm2": 60.0, "non_tumour_mm2": 6.0},
        {"case": "C2", "status": "ok", "n_slides": 1, "necrosis_rate": 99.0, "huvos_grade": "III",
         "viable_mm2": 1.0, "necrotic_mm2": 99.0, "non_tumour_mm2": 0.0},
        {"case": "C3", "status": "failed", "reason": "no slide"},
    ]  # fmt: skip
    (tmp_path / "necrosis_slides.csv").write_text(table_csv(slides, SLIDE_COLUMNS))
    (tmp_path / "necrosis_cases.csv").write_text(table_csv(cases, CASE_COLUMNS))
    text = """[[block]]
name = "slides"
table = "necrosis_slides.csv"
format = "necrosis-slides"
[[block]]
name = "cases"
table = "necrosis_cases.csv"
format = "necrosis-cases"
categorical = ["huvos_grade"]
"""
    spec = load_cohort_spec(_write(tmp_path, text))
    s = read_block(spec.block("slides")).features
    assert list(s.index) == ["C1", "C2"]  # the failed slide is left out
    assert s.loc["C1", "necrosis_rate"] == pytest.approx(60.0)  # area-weighted, not 62.5
    assert s.loc["C1", "n_slides"] == 2 and s.loc["C2", "n_slides"] == 1
    assert s.loc["C1", "slide_necrosis_rate_max"] == pytest.approx(75.0)
    c = read_block(spec.block("cases"))
    assert list(c.features.index) == ["C1", "C2"]  # failed case left out
    assert c.features.loc["C2", "necrosis_rate"] == pytest.approx(99.0)
    assert c.categorical == ("huvos_grade",)
    assert c.features.loc["C1", "huvos_grade"] == "II"


def test_constant_features_dropped_and_an_all_constant_block_refused(
    tmp_path: Path, sts_clinical: Path
) -> None:
    from osteomics.fusion.preprocess import fit_block_transform

    clinical = pd.read_csv(sts_clinical)
    clinical["site_code"] = 7.0  # constant
    path = tmp_path / "clinical.csv"
    clinical.to_csv(path, index=False)
    (tmp_path / "c.toml").write_text(
        f'[[block]]\nname = "clinical"\ntable = "{path}"\ncolumns = ["age_years", "site_code"]\n'
        f'[[block]]\nname = "constant"\ntable = "{path}"\ncolumns = ["site_code", "surgery"]\n'
    )
    spec = load_cohort_spec(tmp_path / "c.toml")
    block = read_block(spec.block("clinical"))
    transform, x = fit_block_transform(block, np.arange(len(block.features)))
    assert transform.kept == ["age_years"] and transform.n_dropped["constant"] == 1
    assert x.shape == (51, 1)
    constant = read_block(spec.block("constant"))  # surgery: 1 for every patient
    with pytest.raises(BlockDataError, match=r"block 'constant': every feature is constant"):
        fit_block_transform(constant, np.arange(len(constant.features)))
