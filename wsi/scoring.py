"""The necrosis job: stream tissue tiles through the patch classifier, per slide and per case.

Per slide, a *plan* task reads the thumbnail, finds tissue and lays the grid at the model's
µm/px and input size; *batch* tasks read ``batch_tiles`` tiles and return only their class
probabilities (tiles are never written to disk); a *side* task records the input files
(:mod:`osteomics.wsi.runner` drives them). The model is loaded once per worker process and
kept. Slide areas per tissue class are expected
areas (tile tissue area split by calibrated probabilities); a case is the area-weighted sum
over its slides, with a bootstrap interval over all its tiles.

A case whose slides did not all succeed gets no rate: the case necrosis rate needs the whole
specimen map, and a rate over part of it would look like a result.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from osteomics.core.files import ensure_writable
from osteomics.core.provenance import input_records, utc_now
from osteomics.wsi.cluster import worker_slide
from osteomics.wsi.errors import OutputNotWritableError, WsiError
from osteomics.wsi.grid import SlidePlan, plan_slide, read_tiles
from osteomics.wsi.necrosis import (
    VIABLE,
    TissueAreas,
    areas_from_tiles,
    bootstrap_rate_interval,
    huvos_grade,
    predicted_class_counts,
    responder,
    tile_areas,
)
from osteomics.wsi.report import write_necrosis_outputs
from osteomics.wsi.results import (
    CaseNecrosis,
    NecrosisParameters,
    NecrosisRun,
    SlideNecrosis,
    SlideTiles,
)
from osteomics.wsi.runner import ProgressCallback, SlideOutcome, TileBatch, run_slide_job
from osteomics.wsi.sources import SlideSource, find_slides

__all__ = ["CaseNecrosis", "NecrosisParameters", "NecrosisRun", "SlideNecrosis", "score_slides"]

log = logging.getLogger(__name__)


class CasesFileError(WsiError, ValueError):
    """The cases CSV is missing, unreadable or lacks the ``slide`` and ``case`` columns."""


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------
def read_slide_cases_csv(path: Path) -> dict[str, str]:
    """Map slide (file name or path, as written) to case from a CSV with ``slide``, ``case``."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise CasesFileError(f"{path}: cannot read the cases file ({exc.strerror})") from exc
    if not rows or not {"slide", "case"} <= set(rows[0]):
        raise CasesFileError(
            f"{path}: a cases file needs the columns 'slide' and 'case' "
            "(one row per slide: its file name or path, and its case)"
        )
    mapping: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        slide, case = (row["slide"] or "").strip(), (row["case"] or "").strip()
        if not slide or not case:
            raise CasesFileError(f"{path}, line {line}: empty slide or case")
        if slide in mapping and mapping[slide] != case:
            raise CasesFileError(f"{path}, line {line}: slide {slide} is listed in two cases")
        mapping[slide] = case
    return mapping


def case_of(source: SlideSource, cases: dict[str, str] | None) -> str | None:
    """The case of a slide: by path, then by file name; each slide is its own case without
    a cases file; None when a cases file is given and does not list the slide."""
    if cases is None:
        return source.name
    for key in (str(source.path), str(source.path.resolve()), source.path.name, source.name):
        if key in cases:
            return cases[key]
    return None


# --------------------------------------------------------------------------------------
# The necrosis job (see osteomics.wsi.runner for how it is driven)
# --------------------------------------------------------------------------------------
_MODELS: dict[str, Any] = {}


def _worker_model(model_dir: str) -> Any:
    """One model load per worker process."""
    from osteomics.wsi.model import load_model

    if model_dir not in _MODELS:
        import torch

        torch.set_num_threads(1)  # one worker process per core
        _MODELS[model_dir] = load_model(model_dir)
    return _MODELS[model_dir]


@dataclass(frozen=True)
class NecrosisTasks:
    """Tiles stream through the classifier; only class probabilities come back."""

    params: NecrosisParameters
    model_dir: str
    input_mpp: float
    input_px: int

    @property
    def batch_tiles(self) -> int:
        return self.params.batch_tiles

    def plan(self, source: SlideSource) -> SlidePlan:
        p = self.params
        slide = worker_slide(source, p.backend, p.mpp_override)
        return plan_slide(
            slide, self.input_mpp, self.input_px, 0, p.min_tissue, thumbnail_px=p.thumbnail_px
        )

    def plan_summary(self, plan: SlidePlan) -> None:
        return None

    def run_batch(self, source: SlideSource, plan_summary: None, batch: TileBatch) -> np.ndarray:
        from osteomics.wsi.model import predict_tiles

        model, card = _worker_model(self.model_dir)
        slide = worker_slide(source, self.params.backend, self.params.mpp_override)
        tiles = read_tiles(
            slide, batch.x_px, batch.y_px, batch.read_level, batch.read_px, card.input_px
        )
        return predict_tiles(model, card, tiles).astype(np.float32)

    def side_task(self, source: SlideSource, plan: SlidePlan) -> list[dict[str, Any]]:
        return input_records(source.files, role="slide")


# --------------------------------------------------------------------------------------
# The run, on the client
# --------------------------------------------------------------------------------------
def score_slides(
    paths: list[Path],
    out_dir: Path,
    params: NecrosisParameters | None = None,
    *,
    cases_csv: Path | None = None,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
) -> NecrosisRun:
    """Score necrosis on every slide under ``paths`` and aggregate per case.

    Parameters
    ----------
    paths:
        Slide files, DICOM WSI folders, or folders searched recursively.
    out_dir:
        Receives ``necrosis_slides.csv``, ``necrosis_cases.csv``, ``run.json``,
        ``report.html`` and per-slide heatmaps and QuPath GeoJSON.
    params:
        Model and settings.
    cases_csv:
        CSV with columns ``slide`` (file name or path) and ``case``; without it each slide is
        its own case.

    Returns
    -------
    NecrosisRun
        Slide and case rows; a failed slide is an ``error`` row and makes its case an error.
        When ``out_dir`` cannot be written every slide is an error row and nothing runs.
    """
    from osteomics.wsi.model import load_model, resolve_model, tissue_classes_of

    params = params or NecrosisParameters()
    out_dir = Path(out_dir)
    cases = read_slide_cases_csv(cases_csv) if cases_csv is not None else None
    model_dir = resolve_model(params.model)
    _model, card = load_model(model_dir)
    del _model
    sources, ignored = find_slides([Path(p) for p in paths])
    rows = []
    for s in sources:
        case = case_of(s, cases)
        row = SlideNecrosis(s.name, case or s.name, str(s.path))
        if case is None:
            row.status = "error"
            row.reason = (
                f"slide {s.path.name} is not listed in {cases_csv}; add a row "
                "'slide,case' for it (a case's rate needs every slide of its map)"
            )
        rows.append(row)
    run = NecrosisRun(
        out_dir=str(out_dir),
        parameters=params,
        model_card=card.summary(),
        slides=rows,
        ignored=ignored,
        started=utc_now(),
        workers=workers,
        scheduler=scheduler,
    )
    try:
        ensure_writable(out_dir)
    except OutputNotWritableError as exc:
        for row in run.slides:
            row.status, row.reason = "error", str(exc)
        run.cases = aggregate_cases(run, params)
        run.finished = utc_now()
        return run
    pending = [(s, r) for s, r in zip(sources, rows, strict=True) if r.status == "pending"]
    if pending:
        classes = tuple(tissue_classes_of(card))
        tasks = NecrosisTasks(params, str(model_dir), card.input_mpp, card.input_px)
        outcome = run_slide_job(
            tasks,
            [s for s, _ in pending],
            client=client,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
        )
        run.interrupted = outcome.interrupted
        run.workers = outcome.workers or run.workers
        for (_, row), slide in zip(pending, outcome.slides, strict=True):
            if slide.status == "ok":
                run.tiles[row.slide] = _fill_slide_row(row, slide, classes)
            else:
                row.status, row.reason, row.seconds = "error", slide.reason, slide.seconds
    run.cases = aggregate_cases(run, params)
    run.finished = utc_now()
    write_necrosis_outputs(run, out_dir)
    return run


def _fill_slide_row(
    row: SlideNecrosis, outcome: SlideOutcome, classes: tuple[str, ...]
) -> SlideTiles:
    """Fill a finished slide's row from its outcome; return its per-tile data."""
    plan = outcome.plan
    assert plan is not None
    grid = plan.grid
    probabilities = np.concatenate(outcome.batch_results)
    tissue_mm2 = (grid.tile_um / 1000.0) ** 2 * grid.tissue_fraction.astype(np.float64)
    per_tile = tile_areas(probabilities, tissue_mm2, classes)
    areas = areas_from_tiles(per_tile)
    row.status = "ok"
    row.backend = plan.backend
    row.mpp = plan.mpp
    row.n_tiles = len(grid)
    row.tile_um = grid.tile_um
    row.viable_mm2 = areas.viable_mm2
    row.necrotic_mm2 = areas.necrotic_mm2
    row.non_tumour_mm2 = areas.non_tumour_mm2
    row.necrosis_rate = areas.necrosis_rate
    row.viable_tiles = predicted_class_counts(probabilities, classes)[VIABLE]
    row.inputs = outcome.side_result
    row.seconds = outcome.seconds
    return SlideTiles(
        grid.x_px,
        grid.y_px,
        grid.tile_um / plan.mpp,
        grid.tissue_fraction,
        probabilities,
        classes,
        per_tile,
        plan.thumbnail,
        plan.tissue.downsample,
    )


def aggregate_cases(run: NecrosisRun, params: NecrosisParameters) -> list[CaseNecrosis]:
    """Area-weighted case results; a case with any failed slide gets no rate."""
    by_case: dict[str, list[SlideNecrosis]] = defaultdict(list)
    for row in run.slides:
        by_case[row.case].append(row)
    out = []
    for case in sorted(by_case):
        slides = by_case[case]
        names = [s.slide for s in slides]
        failed = [s for s in slides if s.status != "ok"]
        if failed:
            out.append(
                CaseNecrosis(
                    case, "error",
                    "no case result: slide(s) " + ", ".join(s.slide for s in failed)
                    + " failed (see their rows); the case rate needs every slide of the map",
                    len(slides), None, None, None, None, None, None, None, None, names,
                )
            )  # fmt: skip
            continue
        total = TissueAreas(0.0, 0.0, 0.0)
        for s in slides:
            total = total + TissueAreas(s.viable_mm2 or 0.0, s.necrotic_mm2 or 0.0,
                                        s.non_tumour_mm2 or 0.0)  # fmt: skip
        rate = total.necrosis_rate
        viable_tiles = sum(s.viable_tiles or 0 for s in slides)
        per_tile = np.concatenate([run.tiles[s.slide].area_mm2 for s in slides])
        interval = bootstrap_rate_interval(
            per_tile, params.bootstrap_resamples, params.confidence, params.seed
        )
        reason = "" if rate is not None else "no tumour found on any slide of the case"
        out.append(
            CaseNecrosis(
                case=case,
                status="ok",
                reason=reason,
                n_slides=len(slides),
                necrosis_rate=rate,
                ci_low=interval[0] if interval else None,
                ci_high=interval[1] if interval else None,
                huvos_grade=huvos_grade(rate, viable_tiles),
                responder=responder(rate),
                viable_mm2=total.viable_mm2,
                necrotic_mm2=total.necrotic_mm2,
                non_tumour_mm2=total.non_tumour_mm2,
                slides=names,
                viable_tiles=viable_tiles,
            )
        )
    return out
