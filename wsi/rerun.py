"""``osteomics necrosis --from-run RUN_DIR``: re-aggregate a finished run without the model.

Reads ``RUN_DIR/run.json`` and each scored slide's ``slides/<slide>.tiles.parquet`` (and
``slides/<slide>.thumbnail.png`` for the maps), regroups the slides into cases (a new cases
CSV, or the run's own grouping), and writes the same outputs as a scoring run: CSV tables,
run.json (whose ``derived_from`` names the source run and the SHA-256 of its run.json),
report, heatmaps and exporter files. Neither the model nor the slides are opened.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from osteomics.core.provenance import sha256_file, utc_now
from osteomics.wsi.errors import WsiError
from osteomics.wsi.necrosis import TISSUE_CLASSES, tile_areas
from osteomics.wsi.report import write_necrosis_outputs
from osteomics.wsi.results import NecrosisParameters, NecrosisRun, SlideNecrosis, SlideTiles
from osteomics.wsi.scoring import aggregate_cases, read_case_details, read_slide_cases_csv
from osteomics.wsi.sources import IgnoredFile

log = logging.getLogger(__name__)


class RunFolderError(WsiError, ValueError):
    """``--from-run``: not a necrosis run folder, a missing per-tile table, or a cases file
    that names a slide the run does not have."""


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """The run.json of a necrosis run folder; raises :class:`RunFolderError` otherwise."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise RunFolderError(
            f"{run_dir}: not a necrosis run folder (no run.json); give the --out folder of an "
            "`osteomics necrosis` run"
        )
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path}: cannot read the run record ({exc})") from exc
    if record.get("command") != "necrosis" or "slides" not in record:
        raise RunFolderError(
            f"{path}: not the record of an `osteomics necrosis` run "
            f"(command {record.get('command')!r}); give a necrosis run folder"
        )
    return record


def read_slide_tiles(run_dir: Path, row: SlideNecrosis) -> SlideTiles:
    """A scored slide's per-tile data from its parquet table and thumbnail.

    Raises
    ------
    RunFolderError
        The table is missing or lacks a column.
    """
    import pandas as pd
    from PIL import Image

    slides_dir = Path(run_dir) / "slides"
    table_path = slides_dir / f"{row.slide}.tiles.parquet"
    if not table_path.is_file():
        raise RunFolderError(
            f"{table_path}: missing; the run's per-tile table of slide {row.slide} is needed "
            "to re-aggregate (score the slide again with `osteomics necrosis`)"
        )
    table = pd.read_parquet(table_path)
    classes = tuple(c.removeprefix("p_") for c in table.columns if c.startswith("p_"))
    needed = {"x_px", "y_px", "side_px", "tissue_fraction"}
    if not needed <= set(table.columns) or not set(classes) <= set(TISSUE_CLASSES) or not classes:
        raise RunFolderError(
            f"{table_path}: not a per-tile table of osteomics necrosis (needs x_px, y_px, "
            "side_px, tissue_fraction and p_<class> columns)"
        )
    assert row.tile_um is not None
    fraction = table["tissue_fraction"].to_numpy(np.float64)
    probabilities = table[[f"p_{c}" for c in classes]].to_numpy(np.float64)
    per_tile = tile_areas(probabilities, (row.tile_um / 1000.0) ** 2 * fraction, classes)
    x_px, y_px = table["x_px"].to_numpy(np.int64), table["y_px"].to_numpy(np.int64)
    side_px = float(table["side_px"].iloc[0]) if len(table) else row.tile_um / (row.mpp or 1.0)
    thumb_path = slides_dir / f"{row.slide}.thumbnail.png"
    if thumb_path.is_file() and row.thumbnail_downsample:
        with Image.open(thumb_path) as image:
            thumbnail = np.asarray(image.convert("RGB"))
        downsample = float(row.thumbnail_downsample)
    else:  # a run from before thumbnails were saved: a blank canvas under the tiles
        log.warning("%s: no thumbnail; the maps are drawn on a blank canvas", row.slide)
        downsample = max(side_px / 8.0, 1.0)
        width = int((x_px.max() + side_px) / downsample) + 1 if len(x_px) else 8
        height = int((y_px.max() + side_px) / downsample) + 1 if len(y_px) else 8
        thumbnail = np.full((height, width, 3), 255, np.uint8)
    return SlideTiles(
        x_px,
        y_px,
        side_px,
        fraction.astype(np.float32),
        probabilities,
        classes,
        per_tile,
        thumbnail,
        downsample,
    )


def _thumbnail_only(run_dir: Path, row: SlideNecrosis) -> SlideTiles | None:
    """A not-assessable slide's thumbnail (no tiles), so the new report can still show it."""
    from PIL import Image

    path = Path(run_dir) / "slides" / f"{row.slide}.thumbnail.png"
    if not path.is_file() or not row.thumbnail_downsample:
        return None
    with Image.open(path) as image:
        thumbnail = np.asarray(image.convert("RGB"))
    empty = np.zeros(0)
    return SlideTiles(
        empty.astype(np.int64), empty.astype(np.int64), (row.tile_um or 1.0) / (row.mpp or 1.0),
        empty.astype(np.float32), np.zeros((0, len(TISSUE_CLASSES))), TISSUE_CLASSES,
        np.zeros((0, len(TISSUE_CLASSES))), thumbnail, float(row.thumbnail_downsample),
    )  # fmt: skip


def _registry_confusion(model: dict[str, Any]) -> list[list[float]] | None:
    """The confusion of the run's model from its installed card (read, not loaded), when the
    card's weights are the run's; None otherwise (the interval is then blocks only)."""
    from osteomics.wsi.interval import confusion_from_card
    from osteomics.wsi.model import resolve_model

    try:
        card = json.loads((resolve_model(str(model.get("name"))) / "model_card.json").read_text())
    except (OSError, ValueError, WsiError):
        return None
    if card.get("weights_sha256") != model.get("weights_sha256"):
        return None
    matrix = confusion_from_card(card)
    return None if matrix is None else matrix.tolist()


def _case_for(row: SlideNecrosis, cases: dict[str, str]) -> str | None:
    path = Path(row.path)
    for key in (row.path, path.name, row.slide):
        if key in cases:
            return cases[key]
    return None


def rerun_from(run_dir: Path, out_dir: Path, cases_csv: Path | None = None) -> NecrosisRun:
    """Re-aggregate the run in ``run_dir`` into ``out_dir`` with a new case grouping.

    Parameters
    ----------
    run_dir:
        The ``--out`` folder of an ``osteomics necrosis`` run.
    out_dir:
        Where the new outputs go (not ``run_dir`` itself).
    cases_csv:
        ``slide,case`` CSV (slide file name, path or name as in the run); None keeps the run's
        own grouping. A slide of the run that it does not list leaves its case without a
        rate, as in a scoring run.

    Raises
    ------
    RunFolderError
        Not a run folder, a missing per-tile table, ``out_dir`` is ``run_dir``, or the cases
        file names a slide the run does not have.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    record = read_run_record(run_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise RunFolderError(
            f"--out {out_dir}: is the source run folder; give a new folder for the new outputs"
        )
    params = NecrosisParameters(**_known(NecrosisParameters, record.get("parameters", {})))
    rows = [SlideNecrosis(**_known(SlideNecrosis, r)) for r in record["slides"]]
    cases = read_slide_cases_csv(cases_csv) if cases_csv is not None else None
    details = read_case_details(cases_csv) if cases_csv is not None else {}
    if cases is not None:
        known = {k for r in rows for k in (r.path, Path(r.path).name, r.slide)}
        unknown = sorted(k for k in cases if k not in known)
        if unknown:
            raise RunFolderError(
                f"{cases_csv}: slide(s) {', '.join(unknown)} are not in the run {run_dir} "
                f"(it has {', '.join(r.slide for r in rows)}); remove them or score them first"
            )
        for row in rows:
            case = _case_for(row, cases)
            if case is None:
                row.case = row.slide
                if row.status != "error":
                    row.status = "error"
                    row.reason = (
                        f"slide {Path(row.path).name} is not listed in {cases_csv}; add a row "
                        "'slide,case' for it (a case's rate needs every slide of its map)"
                    )
            else:
                row.case = case
    if "interval" in record:
        confusion = (record.get("interval") or {}).get("confusion_tissue_order")
    else:  # a run from before the interval recorded its confusion
        confusion = _registry_confusion(record.get("model") or {})
    run = NecrosisRun(
        out_dir=str(out_dir),
        parameters=params,
        model_card=dict(record.get("model") or {}),
        slides=rows,
        ignored=[IgnoredFile(Path(i["path"]), i["reason"]) for i in record.get("ignored", [])],
        started=utc_now(),
        workers=None,
        scheduler=None,
        confusion=confusion,
        derived_from={
            "run_dir": str(run_dir.resolve()),
            "run_json_sha256": sha256_file(run_dir / "run.json"),
            "started": record.get("started"),
            "cases_csv": None if cases_csv is None else str(cases_csv),
        },
    )
    for row in rows:
        if row.status == "ok":
            run.tiles[row.slide] = read_slide_tiles(run_dir, row)
        elif row.status == "not_assessable":
            thumbnail = _thumbnail_only(run_dir, row)
            if thumbnail is not None:
                run.tiles[row.slide] = thumbnail
    out_dir.mkdir(parents=True, exist_ok=True)
    run.cases = aggregate_cases(run, params, details)
    run.finished = utc_now()
    write_necrosis_outputs(run, out_dir)
    return run
