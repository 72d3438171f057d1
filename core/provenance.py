"""Provenance: what produced a result. One record, one JSON shape, for every command.

Every run file osteomics writes (``run.json`` of tiling and necrosis, a radiomics table's
``.provenance.json``, a model card's training record, a signature) starts with the same keys::

    {
      "tool": "osteomics", "version": "0.2.0", "git_commit": "…" | null,
      "command": "tile", "started": "…", "finished": "…",
      "parameters": {…}, "inputs": [{"role", "file", "bytes", "sha256"}, …],
      "software": {"python", "platform", "<distribution>": "<version>" | null, …},
      "compute": {"device", "threads", "workers", "scheduler"},
      "environment": {"OSTEOMICS_DIRECT_TILE_DECODE": …}
    }

and adds its own sections (summary, slides, cases, …) after them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import osteomics

#: Distributions whose versions every record lists (``null`` when not installed).
RECORDED_DISTRIBUTIONS = (
    "numpy",
    "scipy",
    "scikit-image",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "pillow",
    "openslide-python",
    "openslide-bin",
    "tiffslide",
    "tifffile",
    "imagecodecs",
    "wsidicom",
    "zarr",
    "dask",
    "distributed",
    "torch",
    "timm",
    "safetensors",
    "pydicom",
    "pynetdicom",
    "highdicom",
    "nibabel",
)

#: Environment variables that change results or speed; recorded with their values.
RECORDED_ENVIRONMENT = ("OSTEOMICS_DIRECT_TILE_DECODE", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def utc_now() -> str:
    """Current time, ISO 8601 with timezone, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_file(path: Path, chunk_bytes: int = 4 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: Path) -> tuple[str, int]:
    """SHA-256 and size in bytes of a file, or of a folder (digest over its files' relative
    paths and digests, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path), path.stat().st_size
    digest = hashlib.sha256()
    size = 0
    for f in sorted(q for q in path.rglob("*") if q.is_file()):
        digest.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
        size += f.stat().st_size
    return digest.hexdigest(), size


def input_record(path: Path, role: str = "input") -> dict[str, Any]:
    """``{"role", "file", "bytes", "sha256"}`` of one input file or folder."""
    digest, size = sha256_path(path)
    return {"role": role, "file": str(path), "bytes": size, "sha256": digest}


def input_records(paths: Iterable[Path], role: str = "input") -> list[dict[str, Any]]:
    """:func:`input_record` of each path."""
    return [input_record(Path(p), role) for p in paths]


def quick_fingerprint(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """Path, size and modification time (ns) of each file: what resume compares before hashing."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return out


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout osteomics runs from (``+dirty`` when it has local changes),
    or None for an installed wheel or when git is not available."""
    root = Path(osteomics.__file__).resolve().parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def software_versions() -> dict[str, Any]:
    """Python, the platform, and the version of each recorded distribution."""
    versions: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for dist in RECORDED_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    versions["openslide-library"] = None
    if versions["openslide-python"] is not None:
        try:
            import openslide

            versions["openslide-library"] = openslide.__library_version__
        except Exception:  # the C library may be missing; the run then uses another reader
            pass
    return versions


def compute_record(workers: int | None = None, scheduler: str | None = None) -> dict[str, Any]:
    """Device and threads of this process (torch's, when torch is loaded), workers, scheduler.

    torch is never imported just to describe the device: a radiology-only install has none.
    """
    torch = sys.modules.get("torch")
    device = "cpu"
    threads = os.cpu_count()
    if torch is not None:
        threads = torch.get_num_threads()
        if torch.cuda.is_available():
            device = f"cuda ({torch.cuda.get_device_name(0)})"
    return {"device": device, "threads": threads, "workers": workers, "scheduler": scheduler}


def provenance(
    command: str,
    *,
    parameters: Mapping[str, Any],
    started: str,
    finished: str | None = None,
    inputs: Iterable[Mapping[str, Any]] = (),
    workers: int | None = None,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """The provenance record of one run (JSON-serialisable; see the module docstring).

    Parameters
    ----------
    command:
        The command or job (``tile``, ``necrosis``, ``radiomics``, ``train``, ``signature fit``).
    parameters:
        Every setting that shapes the result.
    started, finished:
        ISO 8601 times (:func:`utc_now`).
    inputs:
        Input records (:func:`input_record`).
    workers, scheduler:
        Dask workers and scheduler address, for distributed runs.
    """
    return {
        "tool": "osteomics",
        "version": osteomics.__version__,
        "git_commit": git_commit(),
        "command": command,
        "started": started,
        "finished": finished,
        "parameters": dict(parameters),
        "inputs": [dict(i) for i in inputs],
        "software": software_versions(),
        "compute": compute_record(workers, scheduler),
        "environment": {name: os.environ.get(name) for name in RECORDED_ENVIRONMENT},
    }
