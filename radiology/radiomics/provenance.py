"""Provenance of a radiomics run: software versions, configuration, input hashes, time."""

from __future__ import annotations

import hashlib
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from osteomics.radiology.radiomics.config import RadiomicsConfig


def sha256_file(path: Path, chunk_bytes: int = 4 << 20) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def run_provenance(
    config: RadiomicsConfig, inputs: dict[str, Path], *, n_features: int, seconds: float
) -> dict[str, Any]:
    """Provenance record of one extraction (JSON-serialisable).

    Parameters
    ----------
    config
        The configuration used.
    inputs
        Role (``image``, ``mask``) -> file; each is recorded with its size and SHA-256.
    n_features
        Number of feature rows written.
    seconds
        Wall time of the extraction, s.
    """
    from osteomics import __version__

    return {
        "tool": "osteomics radiomics",
        "osteomics_version": __version__,
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {d: _version(d) for d in ("numpy", "scipy", "scikit-image", "nibabel")},
        "config": config.as_dict(),
        "inputs": {
            role: {"file": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for role, p in inputs.items()
        },
        "n_features": n_features,
        "seconds": round(seconds, 3),
    }
