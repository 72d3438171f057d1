"""The necrosis SR codes an uncertain grade and responder status (the case interval crosses
a cut-off), passes dciodvfy, and reads back to the same values."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from osteomics.plugins.dicom_sr import (
    OSTEO,
    ModelIdentity,
    NecrosisCaseResult,
    case_study_stub,
    necrosis_report,
    read_necrosis_report,
)


@pytest.mark.parametrize(
    ("grade", "responder"),
    [("uncertain", "poor"), ("III", "uncertain"), ("uncertain", "uncertain")],
)
def test_uncertain_grade_and_response_are_coded_and_valid(
    grade: str, responder: str, tmp_path: Path
) -> None:
    result = NecrosisCaseResult(
        case="C-7", necrosis_rate=88.0, ci_low=80.0, ci_high=93.0, huvos_grade=grade,
        responder=responder, viable_mm2=12.0, necrotic_mm2=88.0, non_tumour_mm2=40.0,
    )  # fmt: skip
    sr = necrosis_report(
        result,
        ModelIdentity("osteosarcoma-necrosis-v2", "ab" * 32),
        study_stub=case_study_stub("C-7", "2026-11-30T18:00:00+00:00"),
    )
    path = tmp_path / "c7.sr.dcm"
    sr.save_as(path)
    back = read_necrosis_report(pydicom.dcmread(path))
    assert (back["huvos_grade"], back["responder"]) == (grade, responder)
    assert back["necrosis_rate"] == pytest.approx(88.0)
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.fail("dciodvfy is missing: run .ci/system-packages (apt-get install dicom3tools)")
    done = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    assert [x for x in lines if x.startswith("Error")] == []
    warnings = [x for x in lines if x.startswith("Warn") and f"<{OSTEO}>" not in x]
    assert [w for w in warnings if "Retired Person Name" not in w] == []
