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
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from osteomics import OsteomicsError
from osteomics.core.files import ensure_writable, write_json_atomic
from osteomics.core.provenance import input_records, quick_fingerprint, software_versions, utc_now
from osteomics.wsi.cluster import (
    TaskFailure,
    dask_client,
    explained_failures,
    failure_reason,
    peak_rss_mb,
    worker_slide,
)
from osteomics.wsi.errors import OutputNotWritableError
from osteomics.wsi.grid import TileGrid, plan_slide
from osteomics.wsi.slide import Slide
from osteomics.wsi.sources import IgnoredFile, SlideSource, find_slides
from osteomics.wsi.tilestore import create_tile_array, write_tile_batch

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
    """

    target_mpp: float = 1.0
    tile_px: int = 256
    overlap_px: int = 0
    min_tissue: float = 0.5
    backend: str = "auto"
    mpp_override: float | None = None
    thumbnail_px: int = 1024
    batch_tiles: int = 64

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
        return {
            "command": "tile",
            "out_dir": self.out_dir,
            "started": self.started,
            "finished": self.finished,
            "interrupted": self.interrupted,
            "parameters": self.parameters.to_dict(),
            "workers": self.workers,
            "scheduler": self.scheduler,
            "software": software_versions(),
            "summary": {
                "slides": len(self.results),
                "ok": sum(r.status == "ok" for r in self.results),
                "error": sum(r.status == "error" for r in self.results),
                "resumed": sum(r.resumed for r in self.results),
                "tiles": self.n_tiles,
            },
            "slides": [asdict(r) for r in self.results],
            "ignored": [{"path": str(i.path), "reason": i.reason} for i in self.ignored],
        }


@dataclass(frozen=True)
class SlideProgress:
    """Progress event for the CLI's progress bar."""

    slide: str
    tiles_done: int
    tiles_total: int
    status: str


ProgressCallback = Callable[[SlideProgress], None]


# --------------------------------------------------------------------------------------
# Work done on the workers
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Planned:
    backend: str
    mpp: float
    read_level: int
    read_px: int
    tile_um: float
    tissue_fraction: float
    x_px: np.ndarray
    y_px: np.ndarray
    thumbnail: np.ndarray
    tissue_mask: np.ndarray
    tile_table: Any


@explained_failures
def _plan_slide(source: SlideSource, params: TilingParameters, staging: str) -> _Planned:
    """Thumbnail, tissue mask and tile grid; creates the empty tile array."""
    slide = worker_slide(source, params.backend, params.mpp_override)
    plan = plan_slide(
        slide,
        params.target_mpp,
        params.tile_px,
        params.overlap_px,
        params.min_tissue,
        params.thumbnail_px,
    )
    grid, tissue = plan.grid, plan.tissue
    create_tile_array(
        Path(staging) / "tiles.zarr",
        len(grid),
        params.tile_px,
        params.batch_tiles,
        {
            "slide": source.name,
            "mpp": params.target_mpp,
            "tile_px": params.tile_px,
            "tile_um": grid.tile_um,
            "read_level": grid.read_level,
            "backend": plan.backend,
            "index": "row i is row i of tiles.parquet",
        },
    )
    return _Planned(
        backend=plan.backend,
        mpp=plan.mpp,
        read_level=grid.read_level,
        read_px=grid.read_px,
        tile_um=grid.tile_um,
        tissue_fraction=tissue.tissue_fraction,
        x_px=grid.x_px,
        y_px=grid.y_px,
        thumbnail=plan.thumbnail,
        tissue_mask=tissue.mask,
        tile_table=_tile_table(grid),
    )


@explained_failures
def _write_extras(source: SlideSource, planned: _Planned, staging: str) -> list[dict[str, Any]]:
    """PNGs, tile table and input hashes, in parallel with the tile batches."""
    from PIL import Image

    staging_dir = Path(staging)
    Image.fromarray(planned.thumbnail).save(staging_dir / "thumbnail.png")
    Image.fromarray(planned.tissue_mask.astype(np.uint8) * 255).save(staging_dir / "tissue.png")
    planned.tile_table.to_parquet(staging_dir / "tiles.parquet", index=False)
    return input_records(source.files)


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


def read_tiles(
    slide: Slide,
    x_px: np.ndarray,
    y_px: np.ndarray,
    read_level: int,
    read_px: int,
    tile_px: int,
) -> np.ndarray:
    """Read tiles at their level-0 corners and resample them to ``tile_px`` (Lanczos).

    Returns
    -------
    numpy.ndarray
        uint8, shape (n, tile_px, tile_px, 3).
    """
    from PIL import Image

    out = np.empty((len(x_px), tile_px, tile_px, 3), dtype=np.uint8)
    for i, (x, y) in enumerate(zip(x_px.tolist(), y_px.tolist(), strict=True)):
        region = slide.read_region((x, y), read_level, (read_px, read_px))
        if read_px != tile_px:
            region = np.asarray(
                Image.fromarray(region).resize((tile_px, tile_px), Image.Resampling.LANCZOS)
            )
        out[i] = region
    return out


@explained_failures
def _tile_batch(
    source: SlideSource,
    params: TilingParameters,
    zarr_path: str,
    first_tile: int,
    x_px: np.ndarray,
    y_px: np.ndarray,
    read_level: int,
    read_px: int,
) -> tuple[int, float]:
    """Read one batch of tiles and write it as one zarr chunk. Returns (tiles, peak RSS MB)."""
    slide = worker_slide(source, params.backend, params.mpp_override)
    tiles = read_tiles(slide, x_px, y_px, read_level, read_px, params.tile_px)
    write_tile_batch(Path(zarr_path), first_tile, tiles)
    return len(tiles), peak_rss_mb()


# --------------------------------------------------------------------------------------
# The run, on the client
# --------------------------------------------------------------------------------------
@dataclass
class _SlideState:
    source: SlideSource
    result: SlideTilingResult
    staging: Path
    started: float
    planned: _Planned | None = None
    inputs: list[dict[str, Any]] | None = None
    tiles_done: int = 0
    futures: list[Any] = field(default_factory=list)


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

    pending = []
    for source, result in zip(sources, run.results, strict=True):
        if _is_up_to_date(out_dir / source.name, source, params, result):
            log.info("%s: up to date, skipped", source.name)
            if progress:
                progress(SlideProgress(source.name, result.n_tiles, result.n_tiles, "ok"))
            continue
        pending.append((source, result))

    if pending:
        if client is not None:
            _run_on_client(client, pending, out_dir, params, run, progress)
        else:
            with dask_client(workers, scheduler) as own_client:
                _run_on_client(own_client, pending, out_dir, params, run, progress)
    run.finished = utc_now()
    run_json = out_dir / "run.json"
    write_json_atomic(run_json, run.to_dict())
    run.run_json = str(run_json)
    return run


def _run_on_client(
    client: Any,
    pending: list[tuple[SlideSource, SlideTilingResult]],
    out_dir: Path,
    params: TilingParameters,
    run: TilingRun,
    progress: ProgressCallback | None,
) -> None:
    from dask.distributed import as_completed

    run.workers = len(client.scheduler_info().get("workers", {})) or run.workers
    staging_root = out_dir / STAGING_DIR
    staging_root.mkdir(exist_ok=True)
    states: dict[str, _SlideState] = {}
    owner: dict[str, tuple[_SlideState, str]] = {}  # key -> (slide, "plan"|"extras"|"batch")
    completed = as_completed()
    for source, result in pending:
        staging = staging_root / f"{source.name}-{uuid.uuid4().hex[:8]}"
        state = _SlideState(source, result, staging, time.perf_counter())
        states[source.name] = state
        try:
            staging.mkdir()
        except OSError as exc:
            _fail(state, f"cannot create {staging}: {exc}; check the output folder", progress)
            continue
        fut = client.submit(
            _plan_slide,
            source,
            params,
            str(staging),
            key=f"plan-{source.name}-{uuid.uuid4().hex}",
            pure=False,
        )
        state.futures.append(fut)
        owner[fut.key] = (state, "plan")
        completed.add(fut)

    try:
        for fut in completed:
            state, kind = owner.pop(fut.key)
            if state.result.status == "error":
                continue  # a sibling task already failed this slide
            try:
                value = fut.result()
                if isinstance(value, TaskFailure):
                    raise OsteomicsError(value.reason)
            except Exception as exc:
                _fail(state, failure_reason(exc), progress)
                client.cancel([f for f in state.futures if not f.done()])
                continue
            if kind == "plan":
                state.planned = value
                for fut_b in _submit_batches(client, state, params):
                    owner[fut_b.key] = (state, "batch")
                    completed.add(fut_b)
                fut_x = client.submit(
                    _write_extras,
                    state.source,
                    value,
                    str(state.staging),
                    key=f"extras-{state.source.name}-{uuid.uuid4().hex}",
                    pure=False,
                )
                state.futures.append(fut_x)
                owner[fut_x.key] = (state, "extras")
                completed.add(fut_x)
                if progress:
                    progress(SlideProgress(state.source.name, 0, len(value.x_px), "running"))
                continue
            if kind == "extras":
                state.inputs = value
            else:
                n, peak_mb = value
                state.tiles_done += n
                pr = state.result
                pr.peak_worker_rss_mb = max(pr.peak_worker_rss_mb or 0.0, peak_mb)
            assert state.planned is not None
            total = len(state.planned.x_px)
            if progress and kind == "batch":
                progress(SlideProgress(state.source.name, state.tiles_done, total, "running"))
            if state.tiles_done == total and state.inputs is not None:
                _finish(state, out_dir, params, progress)
    except KeyboardInterrupt:
        run.interrupted = True
        client.cancel([f for s in states.values() for f in s.futures if not f.done()])
        for state in states.values():
            if state.result.status == "pending":
                _fail(
                    state,
                    "interrupted (Ctrl-C) before this slide finished; nothing of it was kept. "
                    "Run the same command again to resume.",
                    progress,
                )
    finally:
        for state in states.values():
            shutil.rmtree(state.staging, ignore_errors=True)
        if staging_root.exists() and not any(staging_root.iterdir()):
            staging_root.rmdir()


def _submit_batches(client: Any, state: _SlideState, params: TilingParameters) -> list[Any]:
    planned = state.planned
    assert planned is not None
    zarr_path = str(state.staging / "tiles.zarr")
    futures = []
    for first in range(0, len(planned.x_px), params.batch_tiles):
        sl = slice(first, first + params.batch_tiles)
        fut = client.submit(
            _tile_batch,
            state.source,
            params,
            zarr_path,
            first,
            planned.x_px[sl],
            planned.y_px[sl],
            planned.read_level,
            planned.read_px,
            key=f"tiles-{state.source.name}-{first}-{uuid.uuid4().hex}",
            pure=False,
        )
        futures.append(fut)
    state.futures.extend(futures)
    return futures


def _finish(
    state: _SlideState, out_dir: Path, params: TilingParameters, progress: ProgressCallback | None
) -> None:
    planned = state.planned
    assert planned is not None and state.inputs is not None
    r = state.result
    r.status = "ok"
    r.backend = planned.backend
    r.n_tiles = len(planned.x_px)
    r.mpp = planned.mpp
    r.read_level = planned.read_level
    r.tile_um = planned.tile_um
    r.tissue_fraction = planned.tissue_fraction
    r.inputs = state.inputs
    r.seconds = round(time.perf_counter() - state.started, 3)
    final = out_dir / state.source.name
    r.output = str(final)
    marker = {
        "slide": state.source.name,
        "parameters": params.to_dict(),
        "input_fingerprint": quick_fingerprint(state.source.files),
        "result": asdict(r),
        "finished": utc_now(),
    }
    try:
        write_json_atomic(state.staging / COMPLETION_MARKER, marker)
        _replace_dir(state.staging, final)
    except OSError as exc:
        _fail(
            state,
            f"cannot write results to {final}: {exc}; free space or choose another --out",
            progress,
        )
        return
    if progress:
        progress(SlideProgress(state.source.name, r.n_tiles, r.n_tiles, "ok"))


def _fail(state: _SlideState, reason: str, progress: ProgressCallback | None) -> None:
    state.result.status = "error"
    state.result.reason = reason
    state.result.seconds = round(time.perf_counter() - state.started, 3)
    log.info("%s: %s", state.source.name, reason)  # the CLI reports it once, at the end
    shutil.rmtree(state.staging, ignore_errors=True)
    if progress:
        progress(SlideProgress(state.source.name, state.tiles_done, state.tiles_done, "error"))


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
