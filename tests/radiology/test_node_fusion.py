"""``[fusion]`` in node.toml: a study whose radiomics job is done gets its signature score
written next to its radiomics, with provenance, by the running `osteomics node serve`.

The signature is fitted here on real data: the CT radiomics (``osteomics radiomics``, ``ct``
configuration) of the 12 STS patients with CT, plus their histological type, predicting a
high histological grade (8 of 12; too few lung metastases among these 12 to fit one). The
node's score must equal ``osteomics signature apply`` on the node's own feature table.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port, write_node_toml

from osteomics.core.provenance import utc_now
from osteomics.fusion.cohort import load_cohort_spec
from osteomics.fusion.model import FitSettings
from osteomics.fusion.signature import fit_signature, write_signature
from osteomics.radiology.config import load_node_config
from osteomics.radiology.store import DicomStore

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "osteomics.cli.main"]
SMALL = FitSettings(
    folds=3, repeats=1, inner_folds=2, permutations=2, bootstraps=50, model_bootstraps=5
)


def cohort_toml(folder: Path, features: Path, outcome: Path, clinical: Path) -> Path:
    path = folder / "cohort.toml"
    path.write_text(
        f'[outcome]\ntable = "{outcome}"\nevent = "high_grade"\n'
        f'[[block]]\nname = "ct"\ntable = "{features}"\nformat = "radiomics"\n'
        f'[[block]]\nname = "pathology"\ntable = "{clinical}"\n'
        'columns = ["mskcc_type"]\ncategorical = ["mskcc_type"]\n'
    )
    return path


@pytest.fixture(scope="module")
def ct_signature(sts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signature fitted on the CT radiomics of the 12 STS patients with CT."""
    folder = tmp_path_factory.mktemp("ct-signature")
    tables = []
    patients = sorted(p.name for p in sts_dir.glob("STS_*") if (p / "CT" / "mask").is_dir())
    assert len(patients) == 12, patients
    for patient in patients:
        out = folder / f"{patient}.parquet"
        done = subprocess.run(
            [*CLI, "radiomics", str(sts_dir / patient / "CT" / "image"),
             "--mask", str(sts_dir / patient / "CT" / "mask" / "RS.dcm"),
             "--roi", "GTV_Mass_CT", "--config", "ct", "--out", str(out)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        tables.append(pd.read_parquet(out))
    features = folder / "ct-features.parquet"
    pd.concat(tables).to_parquet(features, index=False)
    clinical = pd.read_csv(sts_dir.parent / "sts-clinical.csv")
    outcome = folder / "high-grade.csv"
    clinical.assign(high_grade=(clinical["grade"] == "High").astype(int))[
        ["patient_id", "high_grade"]
    ].to_csv(outcome, index=False)
    cohort = cohort_toml(folder, features, outcome, sts_dir.parent / "sts-clinical.csv")
    result = fit_signature(load_cohort_spec(cohort), SMALL)
    assert len(result.cohort.patients) == 12
    write_signature(folder / "sig", result, utc_now())
    return folder / "sig"


def test_node_serve_scores_a_study_with_the_fusion_signature(
    tmp_path: Path, ct_signature: Path, sts_dir: Path
) -> None:
    clinical = sts_dir.parent / "sts-clinical.csv"
    toml = write_node_toml(
        tmp_path, free_port(), (), quiet_seconds=0.2,
        extra=(
            '[radiomics]\nenabled = true\nmodalities = ["CT"]\npoll_seconds = 0.1\n'
            f'[fusion]\nsignature = "{ct_signature}"\n'
            f'[fusion.tables]\npathology = "{clinical}"\n'
        ),
    )  # fmt: skip
    config = load_node_config(toml)
    assert config.fusion.signature == ct_signature
    files = [*sorted((sts_dir / "STS_001" / "CT" / "image").glob("*.dcm")),
             sts_dir / "STS_001" / "CT" / "mask" / "RS.dcm"]  # fmt: skip
    with DicomStore(config.storage) as store:
        results = [store.store(f.read_bytes(), source=f.name) for f in files]
        study_uid = results[0].record.attributes.study_uid
        result_folder = store.result_folder("radiomics", study_uid)
    serving = subprocess.Popen(
        [*CLI, "node", "serve", "--config", str(toml)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    scores_csv = result_folder / "signature.csv"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and serving.poll() is None:
            if scores_csv.is_file():
                break
            time.sleep(0.2)
    finally:
        serving.send_signal(signal.SIGINT)
        _, stderr = serving.communicate(timeout=60)
    assert scores_csv.is_file(), stderr
    assert "fusion: study" in stderr and "scored" in stderr
    assert "STS_001" not in stderr  # the log names the study, never the patient
    scores = pd.read_csv(scores_csv)
    assert list(scores["patient_id"]) == ["STS_001"]
    record = json.loads((result_folder / "signature.provenance.json").read_text())
    assert record["command"] == "signature apply"
    assert {i["role"] for i in record["inputs"]} >= {"signature", "block:ct", "block:pathology"}
    # The same score through `osteomics signature apply` on the node's own feature table.
    cohort = cohort_toml(
        tmp_path, result_folder / "features.parquet", tmp_path / "none.csv", clinical
    )
    text = cohort.read_text().split("[[block]]", 1)
    cohort.write_text(  # apply needs no outcome
        f'[outcome]\ntable = "{clinical}"\nevent = "lung_mets"\n[[block]]' + text[1]
    )
    applied = tmp_path / "applied.csv"
    done = subprocess.run(
        [*CLI, "signature", "apply", str(ct_signature), str(cohort), "--out", str(applied)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = pd.read_csv(applied).set_index("patient_id").loc["STS_001"]
    assert scores["score"].iloc[0] == pytest.approx(expected["score"], rel=1e-6)
    assert scores["risk_group"].iloc[0] == expected["risk_group"]
