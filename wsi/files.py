"""Writing results so that a crash never leaves a half-written file that looks complete."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from osteomics.wsi.errors import OutputNotWritableError


def ensure_writable(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and prove a file can be written there.

    Raises
    ------
    OutputNotWritableError
        Naming the folder and the fix.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritableError(
            f"output folder {out_dir} is not writable ({exc.strerror or exc}); "
            "choose another --out or fix its permissions"
        ) from exc


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=json_default))


def json_default(value: Any) -> Any:
    """JSON for paths and numpy scalars."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
