"""Fixtures of the DICOM export and DICOMweb tests: a DICOM WSI built from real H&E, a necrosis
run scored on it, and a real Orthanc with its DICOMweb plugin (helpers: pacs_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pacs_helpers import (
    OrthancWeb,
    he_mosaic,
    osteomics_cli,
    start_orthanc,
    stop_orthanc,
    write_dicom_wsi,
)


@pytest.fixture(scope="module")
def orthanc_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancWeb]:
    """One Orthanc + DICOMweb for the tests of a module; stopped after them."""
    proc, server = start_orthanc(tmp_path_factory.mktemp("orthanc-web"))
    try:
        yield server
    finally:
        stop_orthanc(proc)


@pytest.fixture(scope="session")
def he_dicom_wsi(
    data_dir: Path, fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A DICOM WSI folder (one TILED_FULL instance, 2 µm/px, 1536 x 1024 px) of six real TCIA
    H&E tiles in a 3 x 2 grid: two necrotic (Case-3), two viable (Case-48), two non-tumour (P9),
    each 1024 px at ~1 µm/px downsampled 2x to 512 px."""
    image = he_mosaic(data_dir)
    folder = tmp_path_factory.mktemp("he-wsi") / "Case-HE"
    write_dicom_wsi(image, folder, mpp=2.0, template=fixtures_dir / "highdicom-sm_image.dcm")
    return folder


@pytest.fixture(scope="session")
def he_necrosis_run(he_dicom_wsi: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``osteomics necrosis`` on :func:`he_dicom_wsi` (one worker): the finished run folder.
    Treat as read-only."""
    out = tmp_path_factory.mktemp("he-necrosis") / "run"
    done = osteomics_cli("necrosis", he_dicom_wsi, "--out", out, "--workers", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    return out
