"""Not assessable: a stain check on real slides, the minimum tumour area, and what the
default model says about slides it was never made for (real slides, real models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from osteomics.cli.necrosis import case_line
from osteomics.wsi.assessability import (
    HE,
    NOT_HE,
    check_stain,
    recognised_share,
    too_little_tumour,
)
from osteomics.wsi.mosaic import MosaicComposition
from osteomics.wsi.scoring import NecrosisParameters, score_slides
from osteomics.wsi.slide import open_slide
from osteomics.wsi.tissue import detect_tissue


def thumbnail_and_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    slide = open_slide(path, "auto")
    thumbnail, downsample = slide.read_thumbnail(1024)
    return thumbnail, detect_tissue(thumbnail, downsample, slide.info.mpp).mask


def test_fluorescence_slide_is_not_he(ndpi: Path) -> None:
    check = check_stain(*thumbnail_and_mask(ndpi))
    assert check.stain == NOT_HE
    assert check.reason.startswith("not an H&E stain")
    assert check.brightness < 0.1


@pytest.mark.slow
def test_real_he_slides_pass(cmu_svs: Path, mosaic_2um: MosaicComposition) -> None:
    for path in (cmu_svs, Path(mosaic_2um.path)):
        check = check_stain(*thumbnail_and_mask(path))
        assert check.stain == HE, (path, check)
        assert check.he_hue_share is not None and check.he_hue_share > 0.8


@pytest.mark.slow
def test_real_tcia_he_tiles_pass(data_dir: Path) -> None:
    # Whole-tissue fields without glass: the hardest case for the brightness rule. Every 8th
    # of the 867 tiles and the darkest one (median brightness 0.32); all 867 passed when
    # the thresholds were set.
    from PIL import Image

    files = sorted((data_dir / "osteosarcoma-tcia").glob("*/*.jpg"))
    assert len(files) == 867
    darkest = data_dir / "osteosarcoma-tcia" / "Non-Tumor" / "Case-48-P5-C15-16934-23981.jpg"
    failed = []
    for path in [*files[::8], darkest]:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
        check = check_stain(rgb, detect_tissue(rgb, 1.0, 2.0).mask)
        if not check.is_he:
            failed.append((path.name, check.reason))
    assert failed == []


def test_a_blue_green_stain_is_not_he(cmu_svs: Path) -> None:
    # The same real tissue with its colours rotated (R, G, B) -> (B, R, G): bright field, but
    # blue-green like a trichrome, not purple-pink.
    thumbnail, mask = thumbnail_and_mask(cmu_svs)
    check = check_stain(thumbnail[..., [2, 0, 1]], mask)
    assert check.stain == NOT_HE and "purple to pink" in check.reason


def test_minimum_tumour_area_and_recognised_share() -> None:
    assert too_little_tumour(2.99, 3.0).startswith("not assessable: too little tumour")
    assert too_little_tumour(3.0, 3.0) == ""
    probabilities = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.1, 0.7, 0.2]])
    recognised, total = recognised_share(probabilities, np.array([1.0, 2.0, 0.5]), 0.6)
    assert (recognised, total) == (1.5, 3.5)


@pytest.mark.slow
def test_default_model_calls_fluorescence_and_small_skin_not_assessable(
    ndpi: Path, cmu_svs: Path, client: Any, tmp_path: Path
) -> None:
    run = score_slides(
        [ndpi, cmu_svs], tmp_path, NecrosisParameters(bootstrap_resamples=100), client=client
    )
    assert run.ok
    rows = {s.slide: s for s in run.slides}
    dapi, skin = rows["test3-DAPI-2"], rows["CMU-1-Small-Region"]
    assert dapi.status == "not_assessable" and "not an H&E stain" in dapi.reason
    assert dapi.stain == NOT_HE and dapi.n_tiles == 0
    # v2's tiles are 1 mm: the 1.1 x 1.5 mm skin region holds none with half tissue.
    assert skin.status == "not_assessable" and "too little tissue" in skin.reason
    assert skin.stain == HE
    assert skin.detected_tissue_mm2 == pytest.approx(0.66, abs=0.05)
    for case in run.cases:
        assert case.status == "not_assessable"
        assert case.necrosis_rate is None and case.huvos_grade is None
        assert case.responder is None
        assert "necrosis" not in case_line(case) and "Huvos" not in case_line(case)
    assert (tmp_path / "slides" / "test3-DAPI-2.thumbnail.png").is_file()


@pytest.mark.slow
def test_v1_on_normal_skin_is_stopped_by_the_tumour_area(
    cmu_svs: Path, client: Any, tmp_path: Path
) -> None:
    # The case: v1 reported this normal skin as "46 % necrosis, Huvos I".
    run = score_slides(
        [cmu_svs],
        tmp_path,
        NecrosisParameters(model="osteosarcoma-necrosis-v1", bootstrap_resamples=100),
        client=client,
    )
    (slide,) = run.slides
    (case,) = run.cases
    assert slide.status == "ok" and slide.necrosis_rate is not None  # the slide is scored
    tumour = (slide.viable_mm2 or 0) + (slide.necrotic_mm2 or 0)
    assert tumour < 3.0
    assert case.status == "not_assessable" and "too little tumour" in case.reason
    assert case.necrosis_rate is None and case.huvos_grade is None
