"""One runner for every slide job: plan on a worker, batches of tiles on the workers, finish
on the client.

A job (tiling, necrosis scoring) gives the runner its worker tasks (:class:`SlideTasks`) and
what to do on the client when a slide is finished or has failed; the runner does the driving,
once for all jobs:

- per slide, a *plan* task (thumbnail, tissue, tile grid) on a worker, then one *batch* task
  per ``batch_tiles`` consecutive tiles and one *side* task (files written beside the tiles,
  input hashes), each on whichever worker is free;
- results are gathered in completion order; when a slide's last task is in, the job's
  ``finish`` callback runs on the client;
- failures: a task's explained failure (an :class:`~osteomics.OsteomicsError`: corrupt
  slide, missing mpp, no tissue, full disk), an unexpected exception, a worker lost more often
  than Dask retries (``KilledWorker``), or an error in ``finish`` makes that slide an error
  row with its reason; its other tasks are cancelled and the job's ``discard`` cleans up;
  the other slides go on;
- Ctrl-C cancels everything, makes every unfinished slide an error row and marks the run
  interrupted.

A worker that dies mid-slide (killed, out of memory, node lost) has its tasks re-run by Dask
on another worker; batch tasks are idempotent, so the slide comes out whole or as an error row,
never with a hole.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from osteomics import OsteomicsError
from osteomics.wsi.cluster import (
    TaskFailure,
    dask_client,
    explained_failures,
    failure_reason,
    peak_rss_mb,
)
from osteomics.wsi.grid import SlidePlan
from osteomics.wsi.sources import SlideSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideProgress:
    """Progress event for the CLI's progress bar."""

    slide: str
    tiles_done: int
    tiles_total: int
    status: str
    """``running``, ``ok`` or ``error``."""


ProgressCallback = Callable[[SlideProgress], None]


@dataclass(frozen=True)
class TileBatch:
    """Consecutive tiles of one slide's grid, read by one task."""

    first_tile: int
    x_px: np.ndarray
    y_px: np.ndarray
    read_level: int
    read_px: int


@dataclass
class SlideOutcome:
    """What the runner gathered for one slide; the job turns it into its result row."""

    source: SlideSource
    status: str = "pending"
    """``ok`` or ``error`` when the run is over."""
    reason: str = ""
    plan: SlidePlan | None = None
    batch_results: list[Any] = field(default_factory=list)
    """One entry per batch, in tile order."""
    side_result: Any = None
    seconds: float = 0.0
    peak_worker_rss_mb: float | None = None

    @property
    def n_tiles(self) -> int:
        return len(self.plan.grid) if self.plan is not None else 0


class SlideTasks(Protocol):
    """The worker side of a slide job: sent to the workers with every task, so keep it small
    (parameters and paths, never results)."""

    @property
    def batch_tiles(self) -> int: ...

    def plan(self, source: SlideSource) -> SlidePlan:
        """Thumbnail, tissue and tile grid. No side effects: Dask may run it again when the
        worker holding its result dies (prepare outputs in the job's ``prepare`` instead)."""
        ...

    def plan_summary(self, plan: SlidePlan) -> Any:
        """What every batch task needs of the plan besides its tiles (small, or None)."""
        ...

    def run_batch(self, source: SlideSource, plan_summary: Any, batch: TileBatch) -> Any:
        """Read and process one batch of tiles; the returned value should be small."""
        ...

    def side_task(self, source: SlideSource, plan: SlidePlan) -> Any:
        """Work done once per slide beside the batches (files, input hashes)."""
        ...


OutcomeCallback = Callable[[SlideOutcome], None]


# --------------------------------------------------------------------------------------
# Tasks, on the workers
# --------------------------------------------------------------------------------------
@explained_failures
def _plan_task(job: SlideTasks, source: SlideSource) -> SlidePlan:
    return job.plan(source)


@explained_failures
def _batch_task(
    job: SlideTasks, source: SlideSource, plan_summary: Any, batch: TileBatch
) -> tuple[Any, float]:
    return job.run_batch(source, plan_summary, batch), peak_rss_mb()


@explained_failures
def _side_task(job: SlideTasks, source: SlideSource, plan: SlidePlan) -> Any:
    return job.side_task(source, plan)


# --------------------------------------------------------------------------------------
# The driver, on the client
# --------------------------------------------------------------------------------------
@dataclass
class _Slide:
    outcome: SlideOutcome
    started: float
    batches_done: int = 0
    side_done: bool = False
    futures: list[Any] = field(default_factory=list)


@dataclass
class RunOutcome:
    """Every slide's outcome, and whether Ctrl-C cut the run short."""

    slides: list[SlideOutcome]
    interrupted: bool = False
    workers: int | None = None


def run_slide_job(
    job: SlideTasks,
    sources: Sequence[SlideSource],
    *,
    prepare: OutcomeCallback | None = None,
    finish: OutcomeCallback | None = None,
    discard: OutcomeCallback | None = None,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
) -> RunOutcome:
    """Run ``job`` on every slide of ``sources``.

    Parameters
    ----------
    job:
        The worker tasks of the slide job.
    sources:
        Slides to process (names must be unique).
    prepare:
        Called on the client once a slide is planned, before its batches are submitted (to
        create the outputs the batches write into); may raise like ``finish``.
    finish:
        Called on the client when all of a slide's tasks are in; it makes the slide's result
        and may raise :class:`~osteomics.OsteomicsError` or ``OSError`` to fail the slide.
    discard:
        Called on the client after a slide failed, to clean up what its tasks left.
    client:
        A ``dask.distributed.Client``; otherwise one is made from ``workers`` / ``scheduler``
        (see :func:`~osteomics.wsi.cluster.dask_client`) and closed at the end.
    progress:
        Called as batches complete and at each slide's end.

    Returns
    -------
    RunOutcome
        One outcome per source, in order; ``finish`` has run for every ``ok`` one.
    """
    slides = [_Slide(SlideOutcome(s), time.perf_counter()) for s in sources]
    if not slides:
        return RunOutcome([])
    if client is not None:
        return _drive(client, job, slides, (prepare, finish, discard), progress)
    with dask_client(workers, scheduler) as own_client:
        return _drive(own_client, job, slides, (prepare, finish, discard), progress)


def _drive(
    client: Any,
    job: SlideTasks,
    slides: list[_Slide],
    callbacks: tuple[OutcomeCallback | None, OutcomeCallback | None, OutcomeCallback | None],
    progress: ProgressCallback | None,
) -> RunOutcome:
    from dask.distributed import as_completed

    prepare, finish, discard = callbacks

    run = RunOutcome(
        [s.outcome for s in slides], workers=len(client.scheduler_info().get("workers", {}))
    )
    owner: dict[str, tuple[_Slide, str, int]] = {}
    completed = as_completed()

    def submit(slide: _Slide, kind: str, index: int, fn: Any, *args: Any) -> None:
        name = slide.outcome.source.name
        fut = client.submit(fn, *args, key=f"{kind}-{name}-{uuid.uuid4().hex}", pure=False)
        slide.futures.append(fut)
        owner[fut.key] = (slide, kind, index)
        completed.add(fut)

    def report(slide: _Slide, done: int, status: str) -> None:
        if progress is not None:
            outcome = slide.outcome
            progress(SlideProgress(outcome.source.name, done, outcome.n_tiles, status))

    def fail(slide: _Slide, reason: str) -> None:
        outcome = slide.outcome
        outcome.status, outcome.reason = "error", reason
        outcome.seconds = round(time.perf_counter() - slide.started, 3)
        client.cancel([f for f in slide.futures if not f.done()])
        log.info("%s: %s", outcome.source.name, reason)  # the CLI reports it once, at the end
        try:
            if discard is not None:
                discard(outcome)
        except OSError as exc:
            log.warning("%s: cleaning up failed: %s", outcome.source.name, exc)
        report(slide, 0, "error")

    for slide in slides:
        submit(slide, "plan", 0, _plan_task, job, slide.outcome.source)

    try:
        for fut in completed:
            slide, kind, index = owner.pop(fut.key)
            outcome = slide.outcome
            if outcome.status != "pending":
                continue  # a sibling task already failed this slide
            try:
                value = fut.result()
                if isinstance(value, TaskFailure):
                    raise OsteomicsError(value.reason)
            except Exception as exc:
                fail(slide, failure_reason(exc))
                continue
            # Forget the result on the cluster: a key still wanted would be computed again
            # when the worker holding it dies (a re-run plan or batch after the slide moved on).
            slide.futures.remove(fut)
            fut.release()
            if kind == "plan":
                outcome.plan = value
                try:
                    if prepare is not None:
                        prepare(outcome)
                except (OsteomicsError, OSError) as exc:
                    fail(slide, failure_reason(exc))
                    continue
                summary = job.plan_summary(value)
                grid = value.grid
                starts = range(0, len(grid), job.batch_tiles)
                outcome.batch_results = [None] * len(starts)
                for i, first in enumerate(starts):
                    sl = slice(first, first + job.batch_tiles)
                    batch = TileBatch(
                        first, grid.x_px[sl], grid.y_px[sl], grid.read_level, grid.read_px
                    )
                    submit(slide, "batch", i, _batch_task, job, outcome.source, summary, batch)
                submit(slide, "side", 0, _side_task, job, outcome.source, value)
                report(slide, 0, "running")
                continue
            if kind == "side":
                outcome.side_result, slide.side_done = value, True
            else:
                result, peak_mb = value
                outcome.batch_results[index] = result
                slide.batches_done += 1
                outcome.peak_worker_rss_mb = max(outcome.peak_worker_rss_mb or 0.0, peak_mb)
                done = min(slide.batches_done * job.batch_tiles, outcome.n_tiles)
                report(slide, done, "running")
            if slide.side_done and slide.batches_done == len(outcome.batch_results):
                outcome.seconds = round(time.perf_counter() - slide.started, 3)
                try:
                    if finish is not None:
                        finish(outcome)
                except (OsteomicsError, OSError) as exc:
                    fail(slide, failure_reason(exc))
                    continue
                outcome.status = "ok"
                report(slide, outcome.n_tiles, "ok")
    except KeyboardInterrupt:
        run.interrupted = True
        client.cancel([f for s in slides for f in s.futures if not f.done()])
        for slide in slides:
            if slide.outcome.status == "pending":
                fail(
                    slide,
                    "interrupted (Ctrl-C) before this slide finished; nothing of it was kept. "
                    "Run the same command again to resume.",
                )
    return run
