"""``osteomics radiomics`` on the IBSI phantom NIfTI files: table, provenance, clear errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

PHANTOM_DIR = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "radiology"
    / "ibsi-digital-phantom"
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "osteomics.cli.main", "radiomics", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_cli_writes_table_and_provenance(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"phantom{suffix}"
    res = _run(
        str(PHANTOM_DIR / "phantom.nii.gz"),
        "--mask", str(PHANTOM_DIR / "mask.nii.gz"),
        "--config", "ibsi-digital-phantom",
        "--out", str(out),
        "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert list(table.columns) == [
        "patient", "study", "series", "modality", "roi", "family", "feature", "ibsi_id", "value",
    ]  # fmt: skip
    assert len(table) == summary["n_features"] == 482
    row = table[
        (table.family == "Co-occurrence matrix (3D, merged)") & (table.feature == "Joint maximum")
    ]
    assert row.value.iloc[0] == pytest.approx(0.509, abs=5e-4)
    assert row.ibsi_id.iloc[0] == "GYBY"
    assert table.ibsi_id.notna().all()
    prov = json.loads(Path(summary["provenance"]).read_text())
    assert prov["parameters"]["name"] == "ibsi-digital-phantom"
    inputs = {i["role"]: i for i in prov["inputs"]}
    assert inputs.keys() == {"image", "mask"}
    for role, name in (("image", "phantom.nii.gz"), ("mask", "mask.nii.gz")):
        data = (PHANTOM_DIR / name).read_bytes()
        assert inputs[role]["sha256"] == hashlib.sha256(data).hexdigest()
        assert inputs[role]["bytes"] == len(data)


def test_cli_folder_without_dicom_is_a_clear_error(tmp_path: Path) -> None:
    res = _run(str(tmp_path), "--config", "ibsi-digital-phantom", "--out", str(tmp_path / "x.csv"))
    assert res.returncode == 1
    assert "no CT, MR or PET image series" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_store_input_without_node_config_is_a_clear_error(tmp_path: Path) -> None:
    res = _run("store:1.2.3", "--config", "ct", "--out", str(tmp_path / "x.csv"))
    assert res.returncode == 1
    assert "--node-config" in res.stderr and "Traceback" not in res.stderr


def test_cli_unknown_config_lists_shipped(tmp_path: Path) -> None:
    res = _run(
        str(PHANTOM_DIR / "phantom.nii.gz"),
        "--mask", str(PHANTOM_DIR / "mask.nii.gz"),
        "--config", "nope",
        "--out", str(tmp_path / "x.csv"),
    )  # fmt: skip
    assert res.returncode == 1
    assert "ibsi-digital-phantom" in res.stderr
