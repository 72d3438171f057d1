"""The necrosis job: stream tissue tiles through the patch classifier, per slide and per case.

Per slide, a *plan* task reads the thumbnail, finds tissue and lays the grid at the model's
µm/px and input size; *batch* tasks read ``batch_tiles`` tiles and return only their class
probabilities (tiles are never written to disk); a *side* task records the input files
(:mod:`osteomics.wsi.runner` drives them). The model is loaded once per worker process and
kept. Slide areas per tissue class are expected
areas (tile tissue area split by calibrated probabilities); a case is the area-weighted sum
over its slides, with an interval that includes the classifier's error
(:mod:`osteomics.wsi.interval`), and is *not assessable* when its input is not what the
model was made for (:mod:`osteomics.wsi.assessability`).

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
from osteomics.wsi.assessability import (
    CONFIDENT_PROBABILITY,
    check_stain,
    recognised_share,
    too_little_tumour,
)
from osteomics.wsi.cluster import worker_slide
from osteomics.wsi.errors import NoTissueError, OutputNotWritableError, WsiError
from osteomics.wsi.grid import SlidePlan, TileGrid, choose_read_level, plan_slide, read_tiles
from osteomics.wsi.interval import RateInterval, confusion_from_card, necrosis_rate_interval
from osteomics.wsi.necrosis import (
    VIABLE,
    TissueAreas,
    areas_from_tiles,
    grade_call,
    predicted_class_counts,
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
from osteomics.wsi.tissue import detect_tissue

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


def read_case_details(path: Path) -> dict[str, dict[str, str]]:
    """Extra columns of a cases CSV per case (patient, specimen, date, ...): for each column
    other than ``slide`` and ``case``, the first non-empty value among the case's rows."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise CasesFileError(f"{path}: cannot read the cases file ({exc.strerror})") from exc
    details: dict[str, dict[str, str]] = {}
    for row in rows:
        case = (row.get("case") or "").strip()
        if not case:
            continue
        into = details.setdefault(case, {})
        for column, value in row.items():
            if column in ("slide", "case") or column is None:
                continue
            text = (value or "").strip()
            if text and column not in into:
                into[column] = text
    return details


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
        """The slide's plan; no tiles (an empty grid) when the slide is not H&E or holds too
        little tissue for one tile of the model: such a slide is *not assessable*, not an
        error, and the client says why (:func:`_fill_slide_row`)."""
        p = self.params
        slide = worker_slide(source, p.backend, p.mpp_override)
        try:
            plan = plan_slide(
                slide, self.input_mpp, self.input_px, 0, p.min_tissue, thumbnail_px=p.thumbnail_px
            )
        except NoTissueError:
            thumbnail, downsample = slide.read_thumbnail(p.thumbnail_px)
            tissue = detect_tissue(thumbnail, downsample, slide.info.mpp)
            level = choose_read_level(slide.info, self.input_mpp)
            empty = _empty_grid(slide.info.require_mpp(), self.input_mpp, self.input_px, level,
                                slide.info.levels[level].downsample)  # fmt: skip
            return SlidePlan(slide.info.backend, slide.info.require_mpp(), thumbnail, tissue, empty)
        if not check_stain(plan.thumbnail, plan.tissue.mask).is_he:
            grid = plan.grid
            empty = _empty_grid(grid.slide_mpp, grid.target_mpp, grid.tile_px, grid.read_level,
                                grid.read_downsample)  # fmt: skip
            return SlidePlan(plan.backend, plan.mpp, plan.thumbnail, plan.tissue, empty)
        return plan

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


def _empty_grid(
    slide_mpp: float, target_mpp: float, tile_px: int, level: int, downsample: float
) -> TileGrid:
    """A grid without tiles (a slide that is not scored)."""
    scale = target_mpp / (slide_mpp * downsample)
    read_px = round(tile_px * scale)
    return TileGrid(
        slide_mpp=slide_mpp,
        target_mpp=target_mpp,
        tile_px=tile_px,
        overlap_px=0,
        read_level=level,
        read_downsample=downsample,
        read_px=read_px,
        tile_um=read_px * slide_mpp * downsample,
        x_px=np.zeros(0, np.int64),
        y_px=np.zeros(0, np.int64),
        tissue_fraction=np.zeros(0, np.float32),
    )


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
        confusion=_card_confusion(card),
    )
    details = read_case_details(cases_csv) if cases_csv is not None else {}
    try:
        ensure_writable(out_dir)
    except OutputNotWritableError as exc:
        for row in run.slides:
            row.status, row.reason = "error", str(exc)
        run.cases = aggregate_cases(run, params, details)
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
    run.cases = aggregate_cases(run, params, details)
    run.finished = utc_now()
    write_necrosis_outputs(run, out_dir)
    return run


def _card_confusion(card: Any) -> list[list[float]] | None:
    """The card's cross-validated confusion in tissue-class order, or None."""
    matrix = confusion_from_card(
        {
            "cross_validation": card.cross_validation,
            "classes": list(card.classes),
            "tissue_classes": dict(card.tissue_classes),
        }
    )
    return None if matrix is None else matrix.tolist()


def _fill_slide_row(
    row: SlideNecrosis, outcome: SlideOutcome, classes: tuple[str, ...]
) -> SlideTiles:
    """Fill a finished slide's row from its outcome; return its per-tile data.

    A slide that is not H&E, or has no tile with enough tissue, is ``not_assessable`` (its
    reason says which) and has no areas or rate.
    """
    plan = outcome.plan
    assert plan is not None
    grid = plan.grid
    probabilities = (
        np.concatenate(outcome.batch_results)
        if outcome.batch_results
        else np.zeros((0, len(classes)), np.float32)
    )
    tissue_mm2 = (grid.tile_um / 1000.0) ** 2 * grid.tissue_fraction.astype(np.float64)
    per_tile = tile_areas(probabilities, tissue_mm2, classes)
    row.backend = plan.backend
    row.mpp = plan.mpp
    row.n_tiles = len(grid)
    row.tile_um = grid.tile_um
    row.inputs = outcome.side_result
    row.seconds = outcome.seconds
    row.thumbnail_downsample = plan.tissue.downsample
    row.detected_tissue_mm2 = (
        float(plan.tissue.mask.sum()) * (plan.tissue.downsample * plan.mpp / 1000.0) ** 2
    )
    row.scored_tissue_mm2 = float(tissue_mm2.sum())
    row.recognised_tissue_mm2 = recognised_share(probabilities, tissue_mm2)[0]
    stain = check_stain(plan.thumbnail, plan.tissue.mask)
    row.stain = stain.stain
    if not stain.is_he:
        row.status, row.reason = "not_assessable", f"not assessable: {stain.reason}"
        row.n_tiles = 0
    elif len(grid) == 0:
        row.status = "not_assessable"
        row.reason = (
            f"not assessable: too little tissue for one {grid.tile_um / 1000:.2f} mm tile of "
            f"the model ({row.detected_tissue_mm2:.2f} mm² of tissue detected)"
        )
    else:
        areas = areas_from_tiles(per_tile)
        row.status = "ok"
        row.viable_mm2 = areas.viable_mm2
        row.necrotic_mm2 = areas.necrotic_mm2
        row.non_tumour_mm2 = areas.non_tumour_mm2
        row.necrosis_rate = areas.necrosis_rate
        row.viable_tiles = predicted_class_counts(probabilities, classes)[VIABLE]
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
        plan.tissue.mask,
    )


def aggregate_cases(
    run: NecrosisRun,
    params: NecrosisParameters,
    details: dict[str, dict[str, str]] | None = None,
) -> list[CaseNecrosis]:
    """Area-weighted case results.

    A case with any failed slide gets no rate (``error``). A case is ``not_assessable`` (no
    rate, grade or responder; the reason says why) when a slide is not H&E or too small for
    one tile, when its tumour area is under ``params.min_tumour_mm2``, or when less than
    ``params.min_recognised`` of its scored tissue lies in tiles the model recognises.
    Otherwise the interval (:func:`osteomics.wsi.interval.necrosis_rate_interval`) decides
    whether the grade and responder status are certain.
    """
    details = details or {}
    confusion = None if run.confusion is None else np.asarray(run.confusion, np.float64)
    by_case: dict[str, list[SlideNecrosis]] = defaultdict(list)
    for row in run.slides:
        by_case[row.case].append(row)
    out = []
    for case in sorted(by_case):
        slides = by_case[case]
        names = [s.slide for s in slides]
        detected = sum(s.detected_tissue_mm2 or 0.0 for s in slides)
        scored = sum(s.scored_tissue_mm2 or 0.0 for s in slides)
        base = CaseNecrosis(
            case, "error", "", len(slides), None, None, None, None, None, None, None, None,
            names, detected_tissue_mm2=detected, scored_tissue_mm2=scored,
            details=dict(details.get(case, {})),
        )  # fmt: skip
        failed = [s for s in slides if s.status not in ("ok", "not_assessable")]
        if failed:
            base.reason = (
                "no case result: slide(s) " + ", ".join(s.slide for s in failed)
                + " failed (see their rows); the case rate needs every slide of the map"
            )  # fmt: skip
            out.append(base)
            continue
        unassessable = [s for s in slides if s.status == "not_assessable"]
        if unassessable:
            base.status = "not_assessable"
            base.reason = "; ".join(f"{s.slide}: {s.reason}" for s in unassessable)
            out.append(base)
            continue
        total = TissueAreas(0.0, 0.0, 0.0)
        for s in slides:
            total = total + TissueAreas(s.viable_mm2 or 0.0, s.necrotic_mm2 or 0.0,
                                        s.non_tumour_mm2 or 0.0)  # fmt: skip
        base.viable_mm2, base.necrotic_mm2 = total.viable_mm2, total.necrotic_mm2
        base.non_tumour_mm2 = total.non_tumour_mm2
        base.viable_tiles = sum(s.viable_tiles or 0 for s in slides)
        recognised = sum(s.recognised_tissue_mm2 or 0.0 for s in slides)
        small = too_little_tumour(total.viable_mm2 + total.necrotic_mm2, params.min_tumour_mm2)
        if small:
            base.status, base.reason = "not_assessable", small
            out.append(base)
            continue
        measured = all(s.recognised_tissue_mm2 is not None for s in slides)
        if measured and scored > 0 and recognised / scored < params.min_recognised:
            base.status = "not_assessable"
            base.reason = (
                f"not assessable: tissue the model does not recognise (only "
                f"{recognised / scored:.0%} of the scored tissue is in tiles with a top class "
                f"probability of at least {CONFIDENT_PROBABILITY:g}; a grade needs "
                f"{params.min_recognised:.0%})"
            )
            out.append(base)
            continue
        rate = total.necrosis_rate
        interval = _case_interval([run.tiles[s.slide] for s in slides], confusion, params)
        low = interval.low_percent if interval else None
        high = interval.high_percent if interval else None
        call = grade_call(rate, low, high, base.viable_tiles)
        base.status = "ok"
        base.reason = "" if rate is not None else "no tumour found on any slide of the case"
        base.necrosis_rate, base.ci_low, base.ci_high = rate, low, high
        base.huvos_grade, base.huvos_range = call.huvos_grade, call.huvos_range
        base.responder = call.responder
        base.interval_method = interval.method if interval else None
        out.append(base)
    return out


def _case_interval(
    tiles: list[SlideTiles], confusion: np.ndarray | None, params: NecrosisParameters
) -> RateInterval | None:
    """The case interval over all tiles of its slides (blocks stay within a slide)."""
    positions = np.concatenate(
        [np.stack([t.x_px, t.y_px], axis=1).astype(np.float64) for t in tiles]
    )
    sides = np.concatenate([np.full(len(t.x_px), float(t.side_px)) for t in tiles])
    slide_index = np.concatenate([np.full(len(t.x_px), i) for i, t in enumerate(tiles)])
    areas = np.concatenate([t.area_mm2 for t in tiles])
    return necrosis_rate_interval(
        positions,
        sides,
        areas,
        confusion,
        params.seed,
        slide_index=slide_index,
        block_tiles=params.block_tiles,
        n_resamples=params.bootstrap_resamples,
        confidence=params.confidence,
    )
