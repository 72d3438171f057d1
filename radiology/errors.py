"""Errors of the radiology room.

Each also inherits the matching builtin, so ``except ValueError`` or ``except OSError`` still
works. Messages name the file, UID or AE title concerned and say what to do.
"""

from __future__ import annotations

from osteomics import OsteomicsError


class RadiologyError(OsteomicsError):
    """Base of radiology errors."""


class InvalidUIDError(RadiologyError, ValueError):
    """A DICOM UID that does not follow the UI value representation (PS3.5 9.1)."""


class InvalidAETitleError(RadiologyError, ValueError):
    """An Application Entity title that does not follow the AE value representation."""


class InvalidDatasetError(RadiologyError, ValueError):
    """A received or imported dataset that cannot be stored (undecodable, missing UIDs)."""


class InconsistentDatasetError(InvalidDatasetError):
    """A dataset that contradicts what the store already holds (a series under two studies)."""


class StoreError(RadiologyError, OSError):
    """The study store could not write or index an instance."""


class StorageFullError(StoreError):
    """The storage device is full (ENOSPC/EDQUOT); nothing was half-written."""


class NodeConfigError(RadiologyError, ValueError):
    """A ``node.toml`` that is missing, unreadable or has invalid values."""


class UnknownRemoteError(NodeConfigError, LookupError):
    """A remote name that ``node.toml`` does not define under ``[remotes.NAME]``."""


class AssociationFailedError(RadiologyError, ConnectionError):
    """An association with a remote AE could not be established or was refused."""


class JobLeaseLostError(RadiologyError, RuntimeError):
    """A worker completed or failed a job whose lease had expired (it was re-queued)."""


class PacsQueryError(RadiologyError, ConnectionError):
    """A C-FIND or C-MOVE to a remote PACS failed (refused, timed out, or an error status)."""
