"""osteomics: bone-tumour pathology and radiology.

The small public API lives here; the rooms are subpackages:

- ``osteomics.wsi``: slides in, tiles, patch predictions and necrosis out.
- ``osteomics.radiology``: DICOM node, study store, volumes, ROIs, radiomics.
- ``osteomics.fusion``: cohort tables, harmonisation, signatures.
- ``osteomics.plugins``: slide readers, PACS connectors and exporters (entry points).
- ``osteomics.cli``: the ``osteomics`` command.
"""

from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["OsteomicsError", "__version__"]


class OsteomicsError(Exception):
    """Base of every error osteomics raises on purpose.

    The message says what was wrong, with which file, and what to do about it.
    The CLI prints it as one line and exits non-zero, without a traceback.
    """
