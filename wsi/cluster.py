"""Dask plumbing shared by the slide jobs: the cluster, per-worker slide handles, failures.

A task's *expected* failure (an :class:`~osteomics.OsteomicsError`: corrupt slide, missing
mpp, no tissue) comes back as a :class:`TaskFailure` value instead of an exception, so workers
do not log tracebacks for a user's problem; unexpected errors still raise.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from osteomics import OsteomicsError
from osteomics.core.provenance import quick_fingerprint
from osteomics.wsi.errors import SlideNotFoundError
from osteomics.wsi.slide import Slide, open_slide
from osteomics.wsi.sources import SlideSource

log = logging.getLogger(__name__)


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A Dask client: attached to ``scheduler`` if given, else a LocalCluster of processes.

    Parameters
    ----------
    workers:
        Worker processes of the local cluster (default: one per core). Ignored with
        ``scheduler``.
    scheduler:
        Address of an existing cluster, e.g. ``tcp://host:8786`` (its workers must have
        osteomics installed and see the same file paths).
    """
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise OsteomicsError(
                f"cannot reach the Dask scheduler at {scheduler} ({exc}); check the address, "
                "or leave out --scheduler to use a local cluster"
            ) from exc
        try:
            yield client
        finally:
            client.close()
        return
    n_workers = workers or os.cpu_count() or 1
    # Dask sets MALLOC_TRIM_THRESHOLD_=65536 for its workers, which also freezes glibc's mmap
    # threshold: every 256 KB tile buffer is then mmapped and faulted in afresh. Measured here
    # it cost a quarter of tiling throughput (510 vs 690 tiles/s), so our workers keep glibc's
    # defaults.
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # no fixed port to collide with another cluster
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


_OPEN_SLIDES: dict[tuple[Any, ...], Slide] = {}
_MAX_OPEN_SLIDES = 4


def worker_slide(source: SlideSource, backend: str, mpp_override: float | None) -> Slide:
    """One open handle per slide per worker process (small LRU), not one per task.

    The key includes each file's size and modification time, so a slide replaced at the same
    path (on a long-lived cluster) is opened afresh, never read through a stale handle.
    """
    try:
        key = (tuple(quick_fingerprint(source.files)), backend, mpp_override)
    except FileNotFoundError as exc:
        raise SlideNotFoundError(f"{exc.filename}: no such file or folder") from exc
    slide = _OPEN_SLIDES.pop(key, None)
    if slide is None:
        slide = open_slide(source, backend, mpp_override)
        while len(_OPEN_SLIDES) >= _MAX_OPEN_SLIDES:
            _OPEN_SLIDES.pop(next(iter(_OPEN_SLIDES))).close()
    _OPEN_SLIDES[key] = slide  # most recently used last
    return slide


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass(frozen=True)
class TaskFailure:
    """An expected, explained failure (an OsteomicsError) returned by a task, not raised.

    Raising would make every worker log a traceback for what is a user's problem (a corrupt
    slide, a missing mpp); the reason reaches run.json and the CLI instead.
    """

    reason: str


def explained_failures(task: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(task)
    def run(*args: Any) -> Any:
        try:
            return task(*args)
        except OsteomicsError as exc:
            return TaskFailure(str(exc))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return TaskFailure(
                    f"no space left on the device ({exc.filename or ''}); free space or "
                    "choose another --out"
                )
            raise

    return run


def failure_reason(exc: BaseException) -> str:
    """One line for a slide's error row: ours as written, anything else marked unexpected."""
    if isinstance(exc, OsteomicsError):
        return str(exc)
    if type(exc).__name__ == "KilledWorker":  # dask.distributed's, without importing it here
        return (
            "the Dask workers processing this slide died more often than Dask retries a task "
            f"({exc}); check the workers' memory limit and logs, then run the command again"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device: {exc}; free space or choose another --out"
    return f"unexpected {type(exc).__name__}: {exc} (please report this with run.json)"
