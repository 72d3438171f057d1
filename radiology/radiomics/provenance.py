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


def sha256_path(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, or of a folder (digest of its files' relative paths and
    digests, sorted), bytes."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path), path.stat().st_size
    digest = hashlib.sha256()
    size = 0
    for f in sorted(q for q in path.rglob("*") if q.is_file()):
        digest.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
        size += f.stat().st_size
    return digest.hexdigest(), size


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _record(path: Path) -> dict[str, Any]:
    digest, size = sha256_path(path)
    return {"file": str(path), "bytes": size, "sha256": digest}


def run_provenance(
    config: RadiomicsConfig, inputs: dict[str, Path], *, n_features: int, seconds: float
) -> dict[str, Any]:
    """Provenance record of one extraction (JSON-serialisable).

    Parameters
    ----------
    config
        The configuration used.
    inputs
        Role (``image``, ``mask``) -> file or folder; each is recorded with its size and
        SHA-256 (see :func:`sha256_path`).
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
        "packages": {
            d: _version(d) for d in ("numpy", "scipy", "scikit-image", "nibabel", "pydicom")
        },
        "config": config.as_dict(),
        "inputs": {role: _record(p) for role, p in inputs.items()},
        "n_features": n_features,
        "seconds": round(seconds, 3),
    }
