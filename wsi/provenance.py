"""Provenance: what produced a result (versions, parameters, inputs, time)."""

from __future__ import annotations

import hashlib
import platform
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import osteomics

#: Distributions whose versions every run records.
RECORDED_DISTRIBUTIONS = (
    "numpy",
    "scipy",
    "scikit-image",
    "pillow",
    "openslide-python",
    "openslide-bin",
    "tiffslide",
    "tifffile",
    "imagecodecs",
    "wsidicom",
    "pydicom",
    "zarr",
    "dask",
    "distributed",
    "pandas",
    "pyarrow",
)


def utc_now() -> str:
    """Current time, ISO 8601 with timezone."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def software_versions() -> dict[str, Any]:
    """Versions of osteomics, Python, the OS and the libraries that shape results."""
    versions: dict[str, Any] = {
        "osteomics": osteomics.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for dist in RECORDED_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        import openslide

        versions["openslide-library"] = openslide.__library_version__
    except Exception:  # the C library may be missing; the run then uses another reader
        versions["openslide-library"] = None
    return versions


def sha256_file(path: Path, chunk_bytes: int = 4 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Name, size and SHA-256 of each file."""
    return [{"file": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in paths]


def quick_fingerprint(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """Path, size and modification time of each file: what resume compares before hashing."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return out
