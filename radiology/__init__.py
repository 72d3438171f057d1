"""Radiology room: DICOM node, study store, volumes, ROIs and IBSI radiomics.

- ``uids``, ``config``: validated UIDs and AE titles; ``node.toml``.
- ``store``: one durable file per SOP Instance plus an SQLite index; ``jobs``: the durable
  job queue (``study_complete`` when a study goes quiet).
- ``node``: the pynetdicom Verification/Storage SCP; ``pacs``: C-FIND/C-MOVE pulls.
- ``radiomics``: DICOM/NIfTI to volumes and masks, IBSI processing and features.
"""
