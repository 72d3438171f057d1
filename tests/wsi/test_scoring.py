"""The necrosis job end to end on mosaic slides, with the shipped default model and real Dask."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from osteomics.core.provenance import sha256_file
from osteomics.wsi.labelled import LabelledTile
from osteomics.wsi.mosaic import MosaicComposition, build_mosaic_slide, random_layout
from osteomics.wsi.necrosis import grade_call, huvos_grade, responder
from osteomics.wsi.scoring import (
    CasesFileError,
    NecrosisParameters,
    NecrosisRun,
    read_slide_cases_csv,
    score_slides,
)

QUICK = NecrosisParameters(bootstrap_resamples=200)


def write_cases(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("slide,case\n" + "".join(f"{s},{c}\n" for s, c in rows))
    return path


@pytest.fixture(scope="module")
def two_slides(
    labelled_tiles: list[LabelledTile], tmp_path_factory: pytest.TempPathFactory
) -> list[MosaicComposition]:
    folder = tmp_path_factory.mktemp("necrosis-slides")
    return [
        build_mosaic_slide(
            folder / f"block-{i}.tiff",
            random_layout(labelled_tiles, 3, 4, glass_fraction=0.25, seed=10 + i),
            cell_px=512,
            seed=i,
        )
        for i in (1, 2)
    ]


@pytest.fixture(scope="module")
def case_run(
    two_slides: list[MosaicComposition], client: Any, tmp_path_factory: pytest.TempPathFactory
) -> NecrosisRun:
    out = tmp_path_factory.mktemp("necrosis-out")
    cases = write_cases(out.parent / "cases.csv", [("block-1.tiff", "C1"), ("block-2.tiff", "C1")])
    return score_slides(
        [Path(c.path) for c in two_slides], out, QUICK, cases_csv=cases, client=client
    )


def test_case_is_the_area_weighted_sum_of_its_slides(case_run: NecrosisRun) -> None:
    assert case_run.ok
    (case,) = case_run.cases
    slides = case_run.slides
    assert case.case == "C1" and case.n_slides == 2 and case.status == "ok"
    viable = sum(s.viable_mm2 or 0 for s in slides)
    necrotic = sum(s.necrotic_mm2 or 0 for s in slides)
    assert case.viable_mm2 == pytest.approx(viable)
    assert case.necrotic_mm2 == pytest.approx(necrotic)
    assert case.necrosis_rate == pytest.approx(100 * necrotic / (necrotic + viable))
    # Tiles called viable, counted here from the saved probabilities, decide grade IV.
    called_viable = sum(
        int((t.probabilities.argmax(axis=1) == t.classes.index("viable")).sum())
        for t in case_run.tiles.values()
    )
    assert case.viable_tiles == called_viable
    assert case.ci_low is not None and case.ci_high is not None
    # The grade is called only where the interval (which includes the classifier's error)
    # and the point estimate agree; otherwise "uncertain" with the grades spanned.
    call = grade_call(case.necrosis_rate, case.ci_low, case.ci_high, called_viable)
    assert (case.huvos_grade, case.huvos_range, case.responder) == (
        call.huvos_grade, call.huvos_range, call.responder,
    )  # fmt: skip
    if case.huvos_grade != "uncertain":
        assert case.huvos_grade == huvos_grade(case.necrosis_rate, called_viable)
    if case.responder != "uncertain":
        assert case.responder == responder(case.necrosis_rate)


def test_slide_areas_are_tissue_area_split_by_probabilities(case_run: NecrosisRun) -> None:
    for row in case_run.slides:
        tiles = case_run.tiles[row.slide]
        assert row.tile_um is not None
        tissue_mm2 = (row.tile_um / 1000) ** 2 * tiles.tissue_fraction
        np.testing.assert_allclose(tiles.probabilities.sum(axis=1), 1.0, atol=1e-5)
        total = row.viable_mm2 + row.necrotic_mm2 + row.non_tumour_mm2  # type: ignore[operator]
        assert total == pytest.approx(float(tissue_mm2.sum()), rel=1e-6)
        viable_column = tiles.classes.index("viable")
        assert row.viable_mm2 == pytest.approx(
            float((tiles.probabilities[:, viable_column] * tissue_mm2).sum()), rel=1e-5
        )


def test_outputs_are_written_and_consistent(case_run: NecrosisRun) -> None:
    out = Path(case_run.out_dir)
    cases = pd.read_csv(out / "necrosis_cases.csv")
    slides = pd.read_csv(out / "necrosis_slides.csv")
    assert list(cases.columns[:9]) == [
        "case", "status", "reason", "n_slides", "necrosis_rate", "ci_low", "ci_high",
        "huvos_grade", "responder",
    ]  # fmt: skip
    assert {"viable_mm2", "necrotic_mm2", "non_tumour_mm2"} <= set(cases.columns)
    assert cases["necrosis_rate"].iloc[0] == pytest.approx(case_run.cases[0].necrosis_rate, 1e-3)
    assert list(slides["slide"]) == ["block-1", "block-2"]
    record = json.loads((out / "run.json").read_text())
    assert record["model"]["weights_sha256"]
    for row, source in zip(record["slides"], slides["path"], strict=True):
        assert row["inputs"][0]["sha256"] == sha256_file(Path(source))
    assert record["version"] and record["command"] == "necrosis"
    assert record["software"]["torch"] and record["software"]["timm"]


def test_geojson_has_one_detection_per_tile_at_its_position(case_run: NecrosisRun) -> None:
    out = Path(case_run.out_dir) / "slides"
    for row in case_run.slides:
        tiles = case_run.tiles[row.slide]
        collection = json.loads((out / f"{row.slide}.geojson").read_text())
        features = collection["features"]
        assert len(features) == row.n_tiles
        first = features[0]
        assert first["properties"]["objectType"] == "detection"
        ring = first["geometry"]["coordinates"][0]
        assert ring[0] == [float(tiles.x_px[0]), float(tiles.y_px[0])]
        assert ring[2][0] - ring[0][0] == pytest.approx(tiles.side_px)
        measured = first["properties"]["measurements"]
        assert sum(v for k, v in measured.items() if k.startswith("p_")) == pytest.approx(1, 1e-4)


def test_heatmap_and_report(case_run: NecrosisRun) -> None:
    out = Path(case_run.out_dir)
    for row in case_run.slides:
        with Image.open(out / "slides" / f"{row.slide}.heatmap.png") as heatmap:
            thumb = case_run.tiles[row.slide].thumbnail
            assert heatmap.height == thumb.shape[0] + 22  # thumbnail + legend strip
    report = (out / "report.html").read_text()
    assert report.count("<section>") == 1 and "Case C1" in report
    assert report.count("<figure class='pane classmap'>") == 2  # one class map per slide
    assert "http://" not in report and "https://" not in report  # readable offline


@pytest.mark.slow  # 3-5 s: keeps the quick run near 3 min (CI runs it)
def test_a_failed_slide_leaves_its_case_without_a_rate(
    two_slides: list[MosaicComposition], fixtures_dir: Path, client: Any, tmp_path: Path
) -> None:
    broken = tmp_path / "block-3.svs"
    shutil.copy(fixtures_dir / "unreadable.svs", broken)
    cases = write_cases(
        tmp_path / "cases.csv",
        [("block-1.tiff", "A"), ("block-3.svs", "A"), ("block-2.tiff", "B")],
    )
    run = score_slides(
        [Path(two_slides[0].path), broken, Path(two_slides[1].path)],
        tmp_path / "out",
        QUICK,
        cases_csv=cases,
        client=client,
    )
    assert not run.ok
    by_case = {c.case: c for c in run.cases}
    assert by_case["A"].status == "error" and by_case["A"].necrosis_rate is None
    assert "block-3" in by_case["A"].reason
    assert by_case["B"].status == "ok" and by_case["B"].necrosis_rate is not None
    bad = next(s for s in run.slides if s.slide == "block-3")
    assert "damaged" in bad.reason


@pytest.mark.slow  # 3-5 s: keeps the quick run near 3 min (CI runs it)
def test_a_slide_missing_from_the_cases_file_is_an_error_row(
    two_slides: list[MosaicComposition], client: Any, tmp_path: Path
) -> None:
    cases = write_cases(tmp_path / "cases.csv", [("block-1.tiff", "A")])
    run = score_slides(
        [Path(c.path) for c in two_slides], tmp_path / "out", QUICK, cases_csv=cases,
        client=client,
    )  # fmt: skip
    missing = next(s for s in run.slides if s.slide == "block-2")
    assert missing.status == "error" and "not listed" in missing.reason
    assert {c.case: c.status for c in run.cases} == {"A": "ok", "block-2": "error"}


def test_cases_file_without_the_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    path.write_text("file,patient\na.svs,P1\n")
    with pytest.raises(CasesFileError, match="'slide' and 'case'"):
        read_slide_cases_csv(path)


@pytest.mark.slow
def test_csv_outputs_are_identical_across_runs_and_worker_counts(
    two_slides: list[MosaicComposition], tmp_path: Path
) -> None:
    from osteomics.wsi.cluster import dask_client

    outputs = []
    for workers in (1, 2, 2):
        out = tmp_path / f"w{workers}-{len(outputs)}"
        with dask_client(workers) as own:
            score_slides([Path(c.path) for c in two_slides], out, QUICK, client=own)
        outputs.append(
            ((out / "necrosis_slides.csv").read_bytes(), (out / "necrosis_cases.csv").read_bytes())
        )
    assert outputs[0] == outputs[1] == outputs[2]
