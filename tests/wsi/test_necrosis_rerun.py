"""``osteomics necrosis --from-run``: re-aggregation from a run folder, without the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from osteomics.core.provenance import sha256_file
from osteomics.wsi.labelled import LabelledTile
from osteomics.wsi.mosaic import build_mosaic_slide, random_layout
from osteomics.wsi.rerun import RunFolderError, rerun_from
from osteomics.wsi.results import NecrosisRun
from osteomics.wsi.scoring import NecrosisParameters, score_slides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source_run(
    labelled_tiles: list[LabelledTile], client: Any, tmp_path_factory: pytest.TempPathFactory
) -> NecrosisRun:
    """Three real-tile mosaic slides scored by the default model as one case ``C1``."""
    folder = tmp_path_factory.mktemp("rerun-slides")
    paths = [
        Path(
            build_mosaic_slide(
                folder / f"block-{i}.tiff",
                random_layout(labelled_tiles, 3, 4, glass_fraction=0.25, seed=20 + i),
                cell_px=512,
                seed=i,
            ).path
        )
        for i in (1, 2, 3)
    ]
    cases = folder / "cases.csv"
    cases.write_text(
        "slide,case,patient,date\n"
        "block-1.tiff,C1,,2024-01-02\nblock-2.tiff,C1,P-7,\nblock-3.tiff,C1,P-8,\n"
    )
    out = tmp_path_factory.mktemp("rerun-source") / "run"
    return score_slides(
        paths, out, NecrosisParameters(bootstrap_resamples=200), cases_csv=cases, client=client
    )


def test_same_cases_give_identical_case_table(source_run: NecrosisRun, tmp_path: Path) -> None:
    src = Path(source_run.out_dir)
    cases = Path(source_run.slides[0].path).parent / "cases.csv"
    again = rerun_from(src, tmp_path / "again", cases)
    for name in ("necrosis_cases.csv", "necrosis_slides.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (src / name).read_bytes(), name
    assert again.cases[0].details == {"patient": "P-7", "date": "2024-01-02"}
    record = json.loads((tmp_path / "again" / "run.json").read_text())
    assert record["derived_from"]["run_json_sha256"] == sha256_file(src / "run.json")
    assert record["derived_from"]["run_dir"] == str(src.resolve())
    assert record["cases"][0]["details"] == {"patient": "P-7", "date": "2024-01-02"}
    for slide in ("block-1", "block-2", "block-3"):
        for suffix in ("tiles.parquet", "thumbnail.png", "heatmap.png", "geojson"):
            assert (tmp_path / "again" / "slides" / f"{slide}.{suffix}").is_file()
    assert (tmp_path / "again" / "report.html").is_file()


def test_new_grouping_sums_slide_areas(source_run: NecrosisRun, tmp_path: Path) -> None:
    cases = tmp_path / "regroup.csv"
    cases.write_text("slide,case\nblock-1.tiff,A\nblock-2.tiff,A\nblock-3,B\n")
    run = rerun_from(Path(source_run.out_dir), tmp_path / "regrouped", cases)
    slides = {s.slide: s for s in source_run.slides}
    by_case = {c.case: c for c in run.cases}
    assert set(by_case) == {"A", "B"}
    a, b = by_case["A"], by_case["B"]
    for column in ("viable_mm2", "necrotic_mm2", "non_tumour_mm2", "scored_tissue_mm2"):
        expected_a = getattr(slides["block-1"], column) + getattr(slides["block-2"], column)
        assert getattr(a, column) == pytest.approx(expected_a, rel=1e-9), column
        assert getattr(b, column) == pytest.approx(getattr(slides["block-3"], column), rel=1e-9)
    table = pd.read_csv(tmp_path / "regrouped" / "necrosis_cases.csv")
    assert list(table["case"]) == ["A", "B"] and list(table["n_slides"]) == [2, 1]


def test_refuses_what_it_cannot_re_aggregate(source_run: NecrosisRun, tmp_path: Path) -> None:
    src = Path(source_run.out_dir)
    with pytest.raises(RunFolderError, match="not a necrosis run folder"):
        rerun_from(tmp_path, tmp_path / "out")
    cases = tmp_path / "extra.csv"
    cases.write_text("slide,case\nblock-1.tiff,A\nblock-9.tiff,A\n")
    with pytest.raises(RunFolderError, match=r"block-9\.tiff are not in the run"):
        rerun_from(src, tmp_path / "out", cases)
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    (broken / "slides" / "block-2.tiles.parquet").unlink()
    with pytest.raises(RunFolderError, match=r"block-2\.tiles\.parquet: missing"):
        rerun_from(broken, tmp_path / "out")
    with pytest.raises(RunFolderError, match="is the source run folder"):
        rerun_from(src, src)


def osteomics(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed ``osteomics`` command (the one next to this interpreter)."""
    script = Path(sys.executable).parent / "osteomics"
    return subprocess.run(
        [str(script), *map(str, args)], capture_output=True, text=True, timeout=300,
        check=False, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip


def test_cli_from_run_prints_the_cases_and_refuses_paths(
    source_run: NecrosisRun, tmp_path: Path
) -> None:
    src = Path(source_run.out_dir)
    done = osteomics("necrosis", "--from-run", src, "--out", tmp_path / "cli")
    assert done.returncode == 0, done.stderr
    assert "case C1: necrosis" in done.stdout and "re-aggregated from" in done.stderr
    assert (tmp_path / "cli" / "necrosis_cases.csv").read_bytes() == (
        src / "necrosis_cases.csv"
    ).read_bytes()
    refused = osteomics("necrosis", "x.svs", "--from-run", src, "--out", tmp_path / "no")
    assert refused.returncode != 0 and "give no PATH" in refused.stderr
    missing = osteomics("necrosis", "--from-run", tmp_path, "--out", tmp_path / "no")
    assert missing.returncode != 0 and "not a necrosis run folder" in missing.stderr
    assert "Traceback" not in refused.stderr + missing.stderr


def test_a_run_from_before_thumbnails_and_interval_records_still_re_aggregates(
    source_run: NecrosisRun, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(Path(source_run.out_dir), old)
    record = json.loads((old / "run.json").read_text())
    del record["interval"]
    new_fields = ("stain", "detected_tissue_mm2", "scored_tissue_mm2", "recognised_tissue_mm2")
    for row in record["slides"]:
        for name in (*new_fields, "thumbnail_downsample"):
            row.pop(name, None)
    (old / "run.json").write_text(json.dumps(record))
    for thumbnail in (old / "slides").glob("*.thumbnail.png"):
        thumbnail.unlink()
    run = rerun_from(old, tmp_path / "new")
    (case,) = run.cases
    (original,) = source_run.cases
    # The confusion comes from the installed card with the same weights: the same interval.
    assert case.interval_method == original.interval_method
    assert (case.necrosis_rate, case.ci_low, case.ci_high) == (
        original.necrosis_rate, original.ci_low, original.ci_high,
    )  # fmt: skip
    assert (tmp_path / "new" / "slides" / "block-1.heatmap.png").is_file()  # on a blank canvas


def test_slide_rows_carry_detected_and_scored_tissue_and_the_thumbnail(
    source_run: NecrosisRun,
) -> None:
    from PIL import Image

    out = Path(source_run.out_dir) / "slides"
    for row in source_run.slides:
        tiles = source_run.tiles[row.slide]
        assert row.tile_um is not None and row.mpp is not None
        scored = float(((row.tile_um / 1000) ** 2 * tiles.tissue_fraction.astype(float)).sum())
        assert row.scored_tissue_mm2 == pytest.approx(scored, rel=1e-9)
        assert tiles.tissue_mask is not None
        mask_mm2 = tiles.tissue_mask.sum() * (tiles.thumbnail_downsample * row.mpp / 1000) ** 2
        assert row.detected_tissue_mm2 == pytest.approx(float(mask_mm2), rel=1e-9)
        # 3 x 4 cells of 1 mm², a quarter glass: about 9 mm² of tissue, all of it scored or
        # lost only at tile edges.
        assert 5.0 < row.scored_tissue_mm2 <= row.detected_tissue_mm2 * 1.2
        assert row.thumbnail_downsample == tiles.thumbnail_downsample
        with Image.open(out / f"{row.slide}.thumbnail.png") as image:
            assert image.size == (tiles.thumbnail.shape[1], tiles.thumbnail.shape[0])
            assert (np.asarray(image.convert("RGB")) == tiles.thumbnail[..., :3]).all()
    (case,) = source_run.cases
    assert case.scored_tissue_mm2 == pytest.approx(
        sum(s.scored_tissue_mm2 or 0 for s in source_run.slides)
    )
