"""What the necrosis job produces: slide rows, per-tile data, case rows, the run.

These are the nouns the report, the exporters and the CLI read; the job that makes them is
:mod:`osteomics.wsi.scoring`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from osteomics.core.errors import InvalidOptionError
from osteomics.core.provenance import provenance
from osteomics.wsi.grid import check_slide_job_options
from osteomics.wsi.sources import IgnoredFile


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
    bootstrap_resamples, confidence, seed, block_tiles:
        The case-rate interval (:mod:`osteomics.wsi.interval`): resamples, confidence, seed
        and block side in tiles (errors of a block's tiles are drawn together).
    min_tumour_mm2:
        A case with less tumour (viable + necrotic area over its slides) is not assessable
        (see docs/necrosis.md for why this number).
    min_recognised:
        Tissue share a case needs in tiles whose top class probability reaches
        :data:`osteomics.wsi.assessability.CONFIDENT_PROBABILITY` (tissue the model
        recognises); below it the case is not assessable.
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
    block_tiles: int = 3
    min_tumour_mm2: float = 3.0
    min_recognised: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_tissue <= 1.0:
            raise InvalidOptionError(
                f"--min-tissue {self.min_tissue}: the tissue fraction must be between 0 and 1"
            )
        check_slide_job_options(self.batch_tiles, self.mpp_override)
        if self.bootstrap_resamples < 1 or not 0.0 < self.confidence < 1.0:
            raise InvalidOptionError(
                f"interval: {self.bootstrap_resamples} resamples at confidence "
                f"{self.confidence}; need at least 1 resample and a confidence in (0, 1)"
            )
        if self.block_tiles < 1:
            raise InvalidOptionError(f"block_tiles {self.block_tiles}: must be at least 1")
        if self.min_tumour_mm2 < 0 or not 0.0 <= self.min_recognised <= 1.0:
            raise InvalidOptionError(
                f"min_tumour_mm2 {self.min_tumour_mm2} / min_recognised {self.min_recognised}: "
                "the area cannot be negative and the share must be between 0 and 1"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlideNecrosis:
    """One slide's result row (``necrosis_slides.csv``).

    ``status`` is ``ok``, ``error`` or ``not_assessable`` (with ``reason``: not an H&E stain;
    areas and rate are then left empty).
    """

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
    viable_tiles: int | None = None
    """Tiles whose most probable class is viable tumour (grade IV needs none)."""
    seconds: float = 0.0
    inputs: list[dict[str, Any]] = field(default_factory=list)
    detected_tissue_mm2: float | None = None
    """Tissue mask area on the thumbnail (all tissue found, scored or not)."""
    scored_tissue_mm2: float | None = None
    """Tissue area in the scored tiles (tile area x tissue fraction, summed)."""
    recognised_tissue_mm2: float | None = None
    """Scored tissue in tiles whose top class probability reaches the confidence level."""
    stain: str | None = None
    """Stain check of the thumbnail's tissue: ``H&E`` or ``not H&E`` (with why in reason)."""
    thumbnail_downsample: float | None = None
    """Level-0 pixels per pixel of ``slides/<slide>.thumbnail.png``."""


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
    tissue_mask: np.ndarray | None = None
    """Boolean tissue mask on the thumbnail grid (None when re-read from a run folder)."""


@dataclass
class CaseNecrosis:
    """One case's result row (``necrosis_cases.csv``).

    ``status`` is ``ok``, ``error`` or ``not_assessable`` (``reason`` says why; no rate, grade
    or responder then). ``huvos_grade`` is ``uncertain`` when the interval crosses a Huvos
    cut-off (50 %, 90 %), ``huvos_range`` then names the grades it spans (``II-III``);
    ``responder`` is ``uncertain`` when the interval crosses 90 %.
    """

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
    viable_tiles: int | None = None
    huvos_range: str | None = None
    """Grades the interval spans (``II-III``); the one grade when it is certain."""
    interval_method: str | None = None
    detected_tissue_mm2: float | None = None
    scored_tissue_mm2: float | None = None
    details: dict[str, str] = field(default_factory=dict)
    """Extra columns of the cases CSV for this case (first non-empty value per column)."""


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
    confusion: list[list[float]] | None = None
    """The model's cross-validated confusion in tissue-class order (viable, necrotic,
    non-tumour; rows true, columns predicted) that the interval used; None: the tiles'
    calibrated probabilities only, without the class-mix correction."""
    derived_from: dict[str, Any] | None = None
    """For ``--from-run``: the source run folder and the SHA-256 of its run.json."""
    notes: list[str] = field(default_factory=list)
    """Statements the report must carry about the whole run (the demo's: its tiles are
    training tiles of the model, and the per-tile agreement with the known composition)."""

    @property
    def ok(self) -> bool:
        """No slide failed and the run was not interrupted (a not-assessable slide is a
        result, not a failure)."""
        return not self.interrupted and all(
            s.status in ("ok", "not_assessable") for s in self.slides
        )

    def to_dict(self) -> dict[str, Any]:
        return slide_run_record(
            "necrosis",
            parameters=self.parameters.to_dict(),
            started=self.started,
            finished=self.finished,
            rows=self.slides,
            ignored=self.ignored,
            out_dir=self.out_dir,
            interrupted=self.interrupted,
            workers=self.workers,
            scheduler=self.scheduler,
            model=self.model_card,
            summary={
                "cases": len(self.cases),
                "cases_ok": sum(c.status == "ok" for c in self.cases),
                "cases_not_assessable": sum(c.status == "not_assessable" for c in self.cases),
            },
            cases=[asdict(c) for c in self.cases],
            interval={
                "confusion_tissue_order": self.confusion,
                "block_tiles": self.parameters.block_tiles,
                "resamples": self.parameters.bootstrap_resamples,
                "confidence": self.parameters.confidence,
            },
            derived_from=self.derived_from,
            notes=list(self.notes),
        )


def slide_run_record(
    command: str,
    *,
    parameters: dict[str, Any],
    started: str,
    finished: str | None,
    rows: Sequence[Any],
    ignored: Sequence[IgnoredFile],
    out_dir: str,
    interrupted: bool,
    workers: int | None,
    scheduler: str | None,
    summary: dict[str, Any],
    **sections: Any,
) -> dict[str, Any]:
    """``run.json`` of a slide job: the house provenance record, then the run's outcome, a
    summary (slides ok / error plus ``summary``), the job's own ``sections``, one row per
    slide (dataclasses with ``status`` and ``inputs``) and the files passed over."""
    record = provenance(
        command,
        parameters=parameters,
        started=started,
        finished=finished,
        inputs=[i for r in rows for i in r.inputs],
        workers=workers,
        scheduler=scheduler,
    )
    record.update(
        {
            "out_dir": out_dir,
            "interrupted": interrupted,
            "summary": {
                "slides": len(rows),
                "ok": sum(r.status == "ok" for r in rows),
                "error": sum(r.status == "error" for r in rows),
                **summary,
            },
            **sections,
            "slides": [asdict(r) for r in rows],
            "ignored": [{"path": str(i.path), "reason": i.reason} for i in ignored],
        }
    )
    return record
