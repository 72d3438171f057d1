"""Provenance of a radiomics extraction: the house record (:mod:`osteomics.core.provenance`)
with the configuration as parameters, the image and mask as inputs, and the feature count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from osteomics.core.provenance import input_record, provenance, utc_now
from osteomics.radiology.radiomics.config import RadiomicsConfig


def run_provenance(
    config: RadiomicsConfig,
    inputs: dict[str, Path],
    *,
    n_features: int,
    seconds: float,
    started: str | None = None,
) -> dict[str, Any]:
    """Provenance record of one extraction (JSON-serialisable).

    Parameters
    ----------
    config
        The configuration used; recorded whole as ``parameters``.
    inputs
        Role (``image``, ``mask``, ``study``) -> file or folder; each is recorded with its
        size and SHA-256 (a folder: digest over its files).
    n_features
        Number of feature rows written.
    seconds
        Wall time of the extraction, s.
    started
        When the extraction started (ISO 8601); default: now.
    """
    finished = utc_now()
    record = provenance(
        "radiomics",
        parameters=config.as_dict(),
        started=started or finished,
        finished=finished,
        inputs=[input_record(Path(p), role) for role, p in inputs.items()],
    )
    record.update({"n_features": n_features, "seconds": round(seconds, 3)})
    return record
