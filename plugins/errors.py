"""Errors of the plugins layer: the DICOM exporters and the DICOMweb connector.

Each also inherits the matching builtin (``except ValueError`` / ``except ConnectionError``
still works). Messages say what was wrong, with which file or server, and what to do.
"""

from __future__ import annotations

from osteomics import OsteomicsError
from osteomics.radiology.errors import PacsQueryError


class DicomExportError(OsteomicsError, ValueError):
    """A run folder that cannot be exported as DICOM (missing or changed files, a run that
    did not finish, a result that no DICOM object can hold)."""


class DicomWebError(PacsQueryError):
    """A DICOMweb server refused or failed a QIDO-RS, WADO-RS or STOW-RS request (401, 404,
    5xx, a timeout, an unreachable server)."""


class DicomWebAuthError(DicomWebError, PermissionError):
    """The DICOMweb server answered 401/403: wrong or missing credentials."""


class DicomWebNotFoundError(DicomWebError, LookupError):
    """The DICOMweb server answered 404: no such study (or no such DICOMweb root)."""


class DicomWebTimeoutError(DicomWebError, TimeoutError):
    """The DICOMweb server did not answer within the timeout."""
