"""Durable file writes for the study store: temporary file, fsync, rename, fsync the folder.

(The pathology room has its own small helper; rooms do not import each other.)
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

#: Suffix of temporary files; :meth:`DicomStore.recover` removes leftovers with it.
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

    Returns the temporary path. On any error the temporary file is removed before the error
    propagates.
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


def write_temp_durable(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new temporary file next to ``path`` and fsync it.

    Returns the temporary path; the caller renames it into place with :func:`commit_rename`.
    On any error the temporary file is removed before the error propagates.
    """
    return write_temp(path, data, fsync=True)


def fsync_file(path: Path) -> None:
    """fsync a file's data and metadata (errors such as ENOSPC surface here too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_rename(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` over ``path`` and fsync the folder so that the rename is durable."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


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
        except FileExistsError:  # another association made it in the meantime
            continue
        fsync_dir(new.parent)
