"""Durable, atomic file writes: a crash never leaves a half-written file that looks complete.

Every write goes to a hidden temporary file next to its target (same folder, same file system),
is fsynced, renamed over the target, and the folder is fsynced so that the rename itself is
durable. Leftover temporary files are recognisable by :func:`is_temp_file`.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from osteomics.core.errors import OutputNotWritableError

#: Suffix of temporary files; :func:`is_temp_file` recognises them.
TEMP_SUFFIX = ".tmp"

#: errno values that mean "the device or quota is full".
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def temp_path_for(path: Path) -> Path:
    """A unique hidden temporary name next to ``path`` (same folder, same file system)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")


def is_temp_file(path: Path) -> bool:
    """True for names :func:`temp_path_for` makes."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def write_temp(path: Path, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to a new temporary file next to ``path`` (fsynced when asked).

    Returns the temporary path; the caller renames it into place. On any error the temporary
    file is removed before the error propagates.
    """
    tmp = temp_path_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def fsync_file(path: Path) -> None:
    """fsync a file's data and metadata (errors such as ENOSPC surface here too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """fsync a folder so that entries created, renamed or removed in it are durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(folder: Path, root: Path) -> None:
    """Create ``folder`` (inside ``root``) and fsync each parent whose entries changed."""
    missing: list[Path] = []
    current = folder
    while not current.exists() and current != root:
        missing.append(current)
        current = current.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:  # another writer made it in the meantime
            continue
        fsync_dir(new.parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; on success it is fsynced and renamed
    into place (folder fsynced too); on any error it is removed and ``path`` is untouched.

    For writers that want a file name (``DataFrame.to_parquet``, ``Image.save``)::

        with atomic_path(out / "table.parquet") as tmp:
            frame.to_parquet(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` atomically through ``write(tmp)`` (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    path = Path(path)
    tmp = write_temp(path, data, fsync=True)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to ``path`` atomically and durably."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (paths and numpy scalars allowed) atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=json_default) + "\n")


def json_default(value: Any) -> Any:
    """JSON for paths, numpy scalars and arrays (``json.dumps(..., default=json_default)``)."""
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)  # numpy scalars, without importing numpy here
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def ensure_writable(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and prove a file can be written there.

    Raises
    ------
    OutputNotWritableError
        Naming the folder and the fix.
    """
    out_dir = Path(out_dir)
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
