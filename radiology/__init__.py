"""Radiology room: DICOM node, study store, volumes, ROIs and IBSI radiomics.

Not built yet: see the DICOM-node and radiomics issues.
"""
