"""IBSI radiomics: image processing and feature families, verified on the IBSI digital phantom.

Nouns: :class:`Volume`, :class:`Mask`, :class:`RadiomicsConfig`, :class:`FeatureValue`.
Verbs: :func:`read_nifti_volume`, :func:`read_nifti_mask`, :func:`read_dicom_series`,
:func:`read_rtstruct_mask`, :func:`read_dicom_study`, :func:`read_dicom_studies`,
:func:`load_config`,
:func:`extract_features`.
"""

from __future__ import annotations

from osteomics.radiology.radiomics.config import RadiomicsConfig, load_config, shipped_configs
from osteomics.radiology.radiomics.dicom import (
    DicomImage,
    read_dicom_series,
    read_dicom_studies,
    read_dicom_study,
    read_rtstruct_mask,
    read_study_mask,
)
from osteomics.radiology.radiomics.extract import extract_features
from osteomics.radiology.radiomics.features import REGISTRY, FeatureValue
from osteomics.radiology.radiomics.image import Mask, Volume
from osteomics.radiology.radiomics.nifti import read_nifti_mask, read_nifti_volume

__all__ = [
    "REGISTRY",
    "DicomImage",
    "FeatureValue",
    "Mask",
    "RadiomicsConfig",
    "Volume",
    "extract_features",
    "load_config",
    "read_dicom_series",
    "read_dicom_studies",
    "read_dicom_study",
    "read_nifti_mask",
    "read_nifti_volume",
    "read_rtstruct_mask",
    "read_study_mask",
    "shipped_configs",
]
