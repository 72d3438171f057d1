"""The necrosis job: stream tissue tiles through the patch classifier, per slide and per case.

Per slide, a *plan* task reads the thumbnail, finds tissue and lays the grid at the model's
µm/px and input size; *batch* tasks read ``batch_tiles`` tiles and return only their class
probabilities (tiles are never written to disk); a *hash* task records the input files. The
model is loaded once per worker process and kept. Slide areas per tissue class are expected
areas (tile tissue area split by calibrated probabilities); a case is the area-weighted sum
over its slides, with a bootstrap interval over all its tiles.

A case whose slides did not all succeed gets no rate: the case necrosis rate needs the whole
specimen map, and a rate over part of it would look like a result.
"""

from __future__ import annotations

import csv
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from osteomics import OsteomicsError
from osteomics.core.files import ensure_writable
from osteomics.core.provenance import input_records, software_versions, utc_now
from osteomics.wsi.cluster import (
    TaskFailure,
    dask_client,
    explained_failures,
    failure_reason,
    peak_rss_mb,
    worker_slide,
)
from osteomics.wsi.errors import WsiError
from osteomics.wsi.grid import plan_slide
from osteomics.wsi.necrosis import (
    TissueAreas,
    areas_from_tiles,
    bootstrap_rate_interval,
    huvos_grade,
    responder,
    tile_areas,
)
from osteomics.wsi.sources import IgnoredFile, SlideSource, find_slides
from osteomics.wsi.tiling import ProgressCallback, SlideProgress, read_tiles

log = logging.getLogger(__name__)


class CasesFileError(WsiError, ValueError):
    """The cases CSV is missing, unreadable or lacks the ``slide`` and ``case`` columns."""


@dataclass(frozen=True)
class NecrosisParameters:
    """Settings of a necrosis run.

    Attributes
    ----------
    model:
        Registry name (``default``) or a folder with ``model.safetensors`` and
        ``model_card.json``.
    backend, mpp_override:
        Slide reader and level-0 µm/px override, as for tiling.
    min_tissue:
        Tiles with less tissue than this fraction are not scored.
    thumbnail_px, batch_tiles:
        Thumbnail size for tissue detection; tiles per Dask task.
    bootstrap_resamples, confidence, seed:
        The case-rate interval: percentile bootstrap over tiles.
    """

    model: str = "default"
    backend: str = "auto"
    mpp_override: float | None = None
    min_tissue: float = 0.5
    thumbnail_px: int = 1024
    batch_tiles: int = 64
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlideNecrosis:
    """One slide's result row (``necrosis_slides.csv``)."""

    slide: str
    case: str
    path: str
    status: str = "pending"
    reason: str = ""
    backend: str | None = None
    mpp: float | None = None
    n_tiles: int = 0
    tile_um: float | None = None
    viable_mm2: float | None = None
    necrotic_mm2: float | None = None
    non_tumour_mm2: float | None = None
    necrosis_rate: float | None = None
    seconds: float = 0.0
    inputs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SlideTiles:
    """Per-tile data of a scored slide (kept in memory for maps, exports and the interval)."""

    x_px: np.ndarray
    y_px: np.ndarray
    side_px: float
    tissue_fraction: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]
    """Tissue class of each probability column."""
    area_mm2: np.ndarray
    """(n_tiles, 3) expected viable / necrotic / non-tumour area per tile."""
    thumbnail: np.ndarray
    thumbnail_downsample: float


@dataclass
class CaseNecrosis:
    """One case's result row (``necrosis_cases.csv``)."""

    case: str
    status: str
    reason: str
    n_slides: int
    necrosis_rate: float | None
    ci_low: float | None
    ci_high: float | None
    huvos_grade: str | None
    responder: str | None
    viable_mm2: float | None
    necrotic_mm2: float | None
    non_tumour_mm2: float | None
    slides: list[str]


@dataclass
class NecrosisRun:
    out_dir: str
    parameters: NecrosisParameters
    model_card: dict[str, Any]
    slides: list[SlideNecrosis]
    ignored: list[IgnoredFile]
    started: str
    cases: list[CaseNecrosis] = field(default_factory=list)
    tiles: dict[str, SlideTiles] = field(default_factory=dict, repr=False)
    finished: str | None = None
    interrupted: bool = False
    workers: int | None = None
    scheduler: str | None = None

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(s.status == "ok" for s in self.slides)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "necrosis",
            "out_dir": self.out_dir,
            "started": self.started,
            "finished": self.finished,
            "interrupted": self.interrupted,
            "parameters": self.parameters.to_dict(),
            "model": self.model_card,
            "workers": self.workers,
            "scheduler": self.scheduler,
            "software": software_versions(),
            "summary": {
                "slides": len(self.slides),
                "ok": sum(s.status == "ok" for s in self.slides),
                "error": sum(s.status == "error" for s in self.slides),
                "cases": len(self.cases),
                "cases_ok": sum(c.status == "ok" for c in self.cases),
            },
            "cases": [asdict(c) for c in self.cases],
            "slides": [asdict(s) for s in self.slides],
            "ignored": [{"path": str(i.path), "reason": i.reason} for i in self.ignored],
        }


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
# Work done on the workers
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
class _Planned:
    backend: str
    mpp: float
    read_level: int
    read_px: int
    tile_um: float
    x_px: np.ndarray
    y_px: np.ndarray
    tissue_fraction: np.ndarray
    thumbnail: np.ndarray
    thumbnail_downsample: float


@explained_failures
def _plan(source: SlideSource, params: NecrosisParameters, input_mpp: float, input_px: int) -> Any:
    slide = worker_slide(source, params.backend, params.mpp_override)
    plan = plan_slide(
        slide, input_mpp, input_px, 0, params.min_tissue, thumbnail_px=params.thumbnail_px
    )
    grid = plan.grid
    return _Planned(
        plan.backend,
        plan.mpp,
        grid.read_level,
        grid.read_px,
        grid.tile_um,
        grid.x_px,
        grid.y_px,
        grid.tissue_fraction,
        plan.thumbnail,
        plan.tissue.downsample,
    )


@explained_failures
def _hash_inputs(source: SlideSource) -> list[dict[str, Any]]:
    return input_records(source.files)


@explained_failures
def _score_batch(
    source: SlideSource,
    params: NecrosisParameters,
    model_dir: str,
    x_px: np.ndarray,
    y_px: np.ndarray,
    read_level: int,
    read_px: int,
) -> tuple[np.ndarray, float]:
    from osteomics.wsi.model import predict_tiles

    model, card = _worker_model(model_dir)
    slide = worker_slide(source, params.backend, params.mpp_override)
    tiles = read_tiles(slide, x_px, y_px, read_level, read_px, card.input_px)
    return predict_tiles(model, card, tiles).astype(np.float32), peak_rss_mb()


# --------------------------------------------------------------------------------------
# The run, on the client
# --------------------------------------------------------------------------------------
@dataclass
class _State:
    source: SlideSource
    row: SlideNecrosis
    started: float
    planned: _Planned | None = None
    probabilities: list[np.ndarray | None] = field(default_factory=list)
    batches_done: int = 0
    futures: list[Any] = field(default_factory=list)


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
    """
    from osteomics.wsi.model import load_model, resolve_model

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
    ensure_writable(out_dir)
    pending = [(s, r) for s, r in zip(sources, rows, strict=True) if r.status == "pending"]
    if pending:
        if client is not None:
            _run_on_client(client, pending, params, str(model_dir), card, run, progress)
        else:
            with dask_client(workers, scheduler) as own_client:
                _run_on_client(own_client, pending, params, str(model_dir), card, run, progress)
    run.cases = aggregate_cases(run, params)
    run.finished = utc_now()
    from osteomics.wsi.report import write_necrosis_outputs

    write_necrosis_outputs(run, out_dir)
    return run


def _run_on_client(
    client: Any,
    pending: list[tuple[SlideSource, SlideNecrosis]],
    params: NecrosisParameters,
    model_dir: str,
    card: Any,
    run: NecrosisRun,
    progress: ProgressCallback | None,
) -> None:
    from dask.distributed import as_completed

    states: dict[str, _State] = {}
    owner: dict[str, tuple[_State, str, int]] = {}
    completed = as_completed()

    def submit(state: _State, kind: str, index: int, fn: Any, *args: Any) -> None:
        fut = client.submit(
            fn, *args, key=f"{kind}-{state.source.name}-{uuid.uuid4().hex}", pure=False
        )
        state.futures.append(fut)
        owner[fut.key] = (state, kind, index)
        completed.add(fut)

    for source, row in pending:
        state = _State(source, row, time.perf_counter())
        states[source.name] = state
        submit(state, "plan", 0, _plan, source, params, card.input_mpp, card.input_px)
        submit(state, "hash", 0, _hash_inputs, source)

    try:
        for fut in completed:
            state, kind, index = owner.pop(fut.key)
            if state.row.status == "error":
                continue
            try:
                value = fut.result()
                if isinstance(value, TaskFailure):
                    raise OsteomicsError(value.reason)
            except Exception as exc:
                _fail(state, failure_reason(exc), progress)
                client.cancel([f for f in state.futures if not f.done()])
                continue
            if kind == "hash":
                state.row.inputs = value
            elif kind == "plan":
                state.planned = value
                starts = range(0, len(value.x_px), params.batch_tiles)
                state.probabilities = [None] * len(starts)
                for i, first in enumerate(starts):
                    sl = slice(first, first + params.batch_tiles)
                    submit(
                        state,
                        "batch",
                        i,
                        _score_batch,
                        state.source,
                        params,
                        model_dir,
                        value.x_px[sl],
                        value.y_px[sl],
                        value.read_level,
                        value.read_px,
                    )
            else:
                state.probabilities[index] = value[0]
                state.batches_done += 1
            if state.planned is not None and progress:
                done = sum(len(p) for p in state.probabilities if p is not None)
                progress(SlideProgress(state.source.name, done, len(state.planned.x_px), "running"))
            if (
                state.planned is not None
                and state.row.inputs
                and state.batches_done == len(state.probabilities)
            ):
                _finish(state, card, run, progress)
    except KeyboardInterrupt:
        run.interrupted = True
        client.cancel([f for s in states.values() for f in s.futures if not f.done()])
        for state in states.values():
            if state.row.status == "pending":
                _fail(state, "interrupted (Ctrl-C) before this slide finished", progress)


def _finish(state: _State, card: Any, run: NecrosisRun, progress: ProgressCallback | None) -> None:
    from osteomics.wsi.model import tissue_classes_of

    planned = state.planned
    assert planned is not None
    probabilities = np.concatenate([p for p in state.probabilities if p is not None])
    classes = tissue_classes_of(card)
    side_px = planned.tile_um / planned.mpp
    tissue_mm2 = (planned.tile_um / 1000.0) ** 2 * planned.tissue_fraction.astype(np.float64)
    per_tile = tile_areas(probabilities, tissue_mm2, classes)
    areas = areas_from_tiles(per_tile)
    row = state.row
    row.status = "ok"
    row.backend = planned.backend
    row.mpp = planned.mpp
    row.n_tiles = len(planned.x_px)
    row.tile_um = planned.tile_um
    row.viable_mm2 = areas.viable_mm2
    row.necrotic_mm2 = areas.necrotic_mm2
    row.non_tumour_mm2 = areas.non_tumour_mm2
    row.necrosis_rate = areas.necrosis_rate
    row.seconds = round(time.perf_counter() - state.started, 3)
    run.tiles[row.slide] = SlideTiles(
        planned.x_px,
        planned.y_px,
        side_px,
        planned.tissue_fraction,
        probabilities,
        tuple(classes),
        per_tile,
        planned.thumbnail,
        planned.thumbnail_downsample,
    )
    if progress:
        progress(SlideProgress(row.slide, row.n_tiles, row.n_tiles, "ok"))


def _fail(state: _State, reason: str, progress: ProgressCallback | None) -> None:
    state.row.status = "error"
    state.row.reason = reason
    state.row.seconds = round(time.perf_counter() - state.started, 3)
    log.info("%s: %s", state.source.name, reason)
    if progress:
        progress(SlideProgress(state.source.name, 0, 0, "error"))


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
                huvos_grade=huvos_grade(rate, total.viable_mm2),
                responder=responder(rate),
                viable_mm2=total.viable_mm2,
                necrotic_mm2=total.necrotic_mm2,
                non_tumour_mm2=total.non_tumour_mm2,
                slides=names,
            )
        )
    return out
