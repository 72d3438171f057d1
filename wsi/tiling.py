"""Tile slides in parallel with Dask and write tiles to zarr as they are produced.

Per slide, a *plan* task reads the thumbnail, finds tissue and lays the :class:`TileGrid`.
Then one *batch* task per zarr chunk reads ``batch_tiles`` tiles and writes that chunk itself,
so pixels never travel back through the scheduler and a task's memory is bounded by one
batch; alongside them an *extras* task writes ``thumbnail.png``, ``tissue.png`` and
``tiles.parquet`` and hashes the input, all into a staging folder. When every batch is in,
``slide.json`` (the completion marker) is written and the staging folder is renamed into
place: a folder without ``slide.json`` is never a result, and a crash or Ctrl-C leaves
nothing that looks complete.

Resume: a slide whose ``slide.json`` records the same parameters and the same input files
(path, size, modification time) is skipped.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from osteomics.core.errors import InvalidOptionError
from osteomics.core.files import ensure_writable, write_json_atomic
from osteomics.core.provenance import input_records, quick_fingerprint, utc_now
from osteomics.wsi.cluster import dask_client, worker_slide
from osteomics.wsi.errors import OutputNotWritableError
from osteomics.wsi.grid import (
    SlidePlan,
    TileGrid,
    check_grid_options,
    check_slide_job_options,
    plan_slide,
    read_tiles,
)
from osteomics.wsi.results import slide_run_record
from osteomics.wsi.runner import (
    ProgressCallback,
    SlideOutcome,
    SlideProgress,
    TileBatch,
    run_slide_job,
)
from osteomics.wsi.sources import IgnoredFile, SlideSource, find_slides
from osteomics.wsi.tilestore import COMPRESSIONS, create_tile_array, write_tile_batch

__all__ = ["SlideProgress", "TilingParameters", "TilingRun", "dask_client", "tile_slides"]

log = logging.getLogger(__name__)

COMPLETION_MARKER = "slide.json"
STAGING_DIR = ".staging"


@dataclass(frozen=True)
class TilingParameters:
    """Everything that decides which tiles come out, and how they are stored.

    Attributes
    ----------
    target_mpp:
        Output resolution, µm per pixel.
    tile_px:
        Output tile side, pixels.
    overlap_px:
        Overlap between neighbouring tiles, output pixels.
    min_tissue:
        Keep tiles with at least this tissue fraction (0..1).
    backend:
        ``auto`` or a slide reader plugin name.
    mpp_override:
        Level-0 µm/px to use instead of the file's (or where the file has none).
    thumbnail_px:
        Longer side of the thumbnail tissue detection runs on.
    batch_tiles:
        Tiles per Dask task and per zarr chunk (memory per task is about
        ``batch_tiles * tile_px² * 3`` bytes, twice over while resampling).
    compression:
        ``none`` (raw chunks) or ``zstd`` (zarr's Zstd codec: smaller files, faster where the
        disk is the bottleneck; see :mod:`osteomics.wsi.tilestore`).
    """

    target_mpp: float = 1.0
    tile_px: int = 256
    overlap_px: int = 0
    min_tissue: float = 0.5
    backend: str = "auto"
    mpp_override: float | None = None
    thumbnail_px: int = 1024
    batch_tiles: int = 64
    compression: str = "none"

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise InvalidOptionError(
                f"--compression {self.compression}: choose one of {', '.join(COMPRESSIONS)}"
            )
        check_grid_options(self.target_mpp, self.tile_px, self.overlap_px, self.min_tissue)
        check_slide_job_options(self.batch_tiles, self.mpp_override)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlideTilingResult:
    """One row of the run: what happened to one slide."""

    slide: str
    path: str
    status: str = "pending"
    """``ok`` or ``error``."""
    reason: str = ""
    """For errors: what went wrong and what to do."""
    resumed: bool = False
    """True when an up-to-date earlier result was kept instead of tiling again."""
    backend: str | None = None
    n_tiles: int = 0
    mpp: float | None = None
    read_level: int | None = None
    tile_um: float | None = None
    tissue_fraction: float | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    output: str | None = None
    peak_worker_rss_mb: float | None = None


@dataclass
class TilingRun:
    """A whole ``osteomics tile`` run: parameters, provenance, one result per slide."""

    out_dir: str
    parameters: TilingParameters
    results: list[SlideTilingResult]
    ignored: list[IgnoredFile]
    started: str
    finished: str | None = None
    interrupted: bool = False
    workers: int | None = None
    scheduler: str | None = None
    run_json: str | None = None

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.results) and not self.interrupted

    @property
    def n_tiles(self) -> int:
        return sum(r.n_tiles for r in self.results if r.status == "ok")

    def to_dict(self) -> dict[str, Any]:
        return slide_run_record(
            "tile",
            parameters=self.parameters.to_dict(),
            started=self.started,
            finished=self.finished,
            rows=self.results,
            ignored=self.ignored,
            out_dir=self.out_dir,
            interrupted=self.interrupted,
            workers=self.workers,
            scheduler=self.scheduler,
            summary={
                "resumed": sum(r.resumed for r in self.results),
                "tiles": self.n_tiles,
            },
        )


# --------------------------------------------------------------------------------------
# The tiling job (see osteomics.wsi.runner for how it is driven)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TilingTasks:
    """Tiles to zarr in a staging folder per slide (the worker side of the tiling job)."""

    params: TilingParameters
    staging: dict[str, Path]
    """Slide name -> its staging folder (under ``out_dir/.staging``)."""

    @property
    def batch_tiles(self) -> int:
        return self.params.batch_tiles

    def plan(self, source: SlideSource) -> SlidePlan:
        p = self.params
        slide = worker_slide(source, p.backend, p.mpp_override)
        return plan_slide(
            slide, p.target_mpp, p.tile_px, p.overlap_px, p.min_tissue, p.thumbnail_px
        )

    def plan_summary(self, plan: SlidePlan) -> None:
        return None

    def run_batch(self, source: SlideSource, plan_summary: None, batch: TileBatch) -> int:
        p = self.params
        slide = worker_slide(source, p.backend, p.mpp_override)
        tiles = read_tiles(slide, batch.x_px, batch.y_px, batch.read_level, batch.read_px,
                           p.tile_px)  # fmt: skip
        write_tile_batch(self.staging[source.name] / "tiles.zarr", batch.first_tile, tiles)
        return len(tiles)

    def side_task(self, source: SlideSource, plan: SlidePlan) -> list[dict[str, Any]]:
        """PNGs, tile table and input hashes, in parallel with the tile batches."""
        from PIL import Image

        staging = self.staging[source.name]
        Image.fromarray(plan.thumbnail).save(staging / "thumbnail.png")
        Image.fromarray(plan.tissue.mask.astype(np.uint8) * 255).save(staging / "tissue.png")
        _tile_table(plan.grid).to_parquet(staging / "tiles.parquet", index=False)
        return input_records(source.files, role="slide")


def _create_tile_array(outcome: SlideOutcome, params: TilingParameters, staging: Path) -> None:
    """The slide's empty tiles.zarr, made on the client once the slide is planned (never by a
    task that Dask could run again over batches already written)."""
    plan = outcome.plan
    assert plan is not None
    grid = plan.grid
    create_tile_array(
        staging / "tiles.zarr",
        len(grid),
        params.tile_px,
        params.batch_tiles,
        {
            "slide": outcome.source.name,
            "mpp": params.target_mpp,
            "tile_px": params.tile_px,
            "tile_um": grid.tile_um,
            "read_level": grid.read_level,
            "backend": plan.backend,
            "index": "row i is row i of tiles.parquet",
        },
        compression=params.compression,
    )


def _finish_slide(
    outcome: SlideOutcome, params: TilingParameters, staging: Path, final: Path
) -> None:
    """Write the completion marker and move the finished staging folder into place."""
    marker = {
        "slide": outcome.source.name,
        "parameters": params.to_dict(),
        "input_fingerprint": quick_fingerprint(outcome.source.files),
        "result": asdict(slide_result(outcome, final)),
        "finished": utc_now(),
    }
    try:
        write_json_atomic(staging / COMPLETION_MARKER, marker)
        _replace_dir(staging, final)
    except OSError as exc:
        raise OutputNotWritableError(
            f"cannot write results to {final}: {exc}; free space or choose another --out"
        ) from exc


def slide_result(outcome: SlideOutcome, final: Path) -> SlideTilingResult:
    """The run.json row of a slide that came out whole."""
    plan = outcome.plan
    assert plan is not None
    grid = plan.grid
    return SlideTilingResult(
        slide=outcome.source.name,
        path=str(outcome.source.path),
        status="ok",
        backend=plan.backend,
        n_tiles=len(grid),
        mpp=plan.mpp,
        read_level=grid.read_level,
        tile_um=grid.tile_um,
        tissue_fraction=plan.tissue.tissue_fraction,
        inputs=outcome.side_result,
        seconds=outcome.seconds,
        output=str(final),
        peak_worker_rss_mb=outcome.peak_worker_rss_mb,
    )


def _tile_table(grid: TileGrid) -> Any:
    import pandas as pd

    return pd.DataFrame(
        {
            "tile": np.arange(len(grid), dtype=np.int64),
            "x_px": grid.x_px,
            "y_px": grid.y_px,
            "x_um": grid.x_px * grid.slide_mpp,
            "y_um": grid.y_px * grid.slide_mpp,
            "tile_um": np.full(len(grid), grid.tile_um),
            "tissue_fraction": grid.tissue_fraction,
        }
    )


# --------------------------------------------------------------------------------------
# The run, on the client
# --------------------------------------------------------------------------------------
def tile_slides(
    paths: list[Path],
    out_dir: Path,
    params: TilingParameters | None = None,
    *,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
) -> TilingRun:
    """Tile every slide found under ``paths`` into ``out_dir``.

    Parameters
    ----------
    paths:
        Slide files, DICOM WSI folders, or folders searched recursively.
    out_dir:
        ``out_dir/<slide>/`` gets ``tiles.zarr``, ``tiles.parquet``, ``thumbnail.png``,
        ``tissue.png`` and ``slide.json``; ``out_dir/run.json`` the run's provenance.
    params:
        Tiling parameters (defaults: 1 µm/px, 256 px, no overlap, 50 % tissue).
    client:
        A ``dask.distributed.Client`` to use; otherwise one is made from ``workers`` /
        ``scheduler`` (see :func:`dask_client`) and closed at the end.
    progress:
        Called after each batch and at each slide's end.

    Returns
    -------
    TilingRun
        One result per slide; slides that fail are ``error`` rows with a reason, the others
        complete. Ctrl-C marks unfinished slides as errors and sets ``interrupted``.
    """
    params = params or TilingParameters()
    out_dir = Path(out_dir)
    sources, ignored = find_slides([Path(p) for p in paths])
    run = TilingRun(
        out_dir=str(out_dir),
        parameters=params,
        results=[SlideTilingResult(s.name, str(s.path)) for s in sources],
        ignored=ignored,
        started=utc_now(),
        workers=workers,
        scheduler=scheduler,
    )
    try:
        ensure_writable(out_dir)
    except OutputNotWritableError as exc:
        for r in run.results:
            r.status, r.reason = "error", str(exc)
        run.finished = utc_now()
        return run

    pending: list[tuple[SlideSource, int]] = []
    for i, (source, result) in enumerate(zip(sources, run.results, strict=True)):
        if _is_up_to_date(out_dir / source.name, source, params, result):
            log.info("%s: up to date, skipped", source.name)
            if progress:
                progress(SlideProgress(source.name, result.n_tiles, result.n_tiles, "ok"))
            continue
        pending.append((source, i))

    if pending:
        staging_root = out_dir / STAGING_DIR
        staging_root.mkdir(exist_ok=True)
        staging = {s.name: staging_root / f"{s.name}-{uuid.uuid4().hex[:8]}" for s, _ in pending}
        for folder in staging.values():
            folder.mkdir()
        try:
            outcome = run_slide_job(
                TilingTasks(params, staging),
                [s for s, _ in pending],
                prepare=lambda o: _create_tile_array(o, params, staging[o.source.name]),
                finish=lambda o: _finish_slide(
                    o, params, staging[o.source.name], out_dir / o.source.name
                ),
                discard=lambda o: shutil.rmtree(staging[o.source.name], ignore_errors=True),
                client=client,
                workers=workers,
                scheduler=scheduler,
                progress=progress,
            )
        finally:
            for folder in staging.values():
                shutil.rmtree(folder, ignore_errors=True)
            if staging_root.exists() and not any(staging_root.iterdir()):
                staging_root.rmdir()
        run.interrupted = outcome.interrupted
        run.workers = outcome.workers or run.workers
        for (source, i), slide in zip(pending, outcome.slides, strict=True):
            if slide.status == "ok":
                run.results[i] = slide_result(slide, out_dir / source.name)
            else:
                r = run.results[i]
                r.status, r.reason, r.seconds = "error", slide.reason, slide.seconds
    run.finished = utc_now()
    run_json = out_dir / "run.json"
    write_json_atomic(run_json, run.to_dict())
    run.run_json = str(run_json)
    return run


def _is_up_to_date(
    final: Path, source: SlideSource, params: TilingParameters, result: SlideTilingResult
) -> bool:
    marker_path = final / COMPLETION_MARKER
    if not marker_path.is_file():
        return False
    try:
        marker = json.loads(marker_path.read_text())
        if marker["parameters"] != params.to_dict():
            return False
        current = [list(f) for f in quick_fingerprint(source.files)]
        if marker["input_fingerprint"] != current:
            return False
        kept = marker["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for key, value in kept.items():
        if hasattr(result, key):
            setattr(result, key, value)
    result.status, result.reason, result.resumed = "ok", "", True
    return True


def _replace_dir(new: Path, final: Path) -> None:
    """Move a finished staging folder into place, replacing an older result."""
    if final.exists() or final.is_symlink():
        if not final.is_dir():
            raise OSError(f"{final} exists and is not a folder")
        old = new.parent / f"{final.name}-old-{uuid.uuid4().hex[:8]}"
        final.rename(old)  # the old result loses its place before the new one takes it
        new.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(final)
