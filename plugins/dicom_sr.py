"""Exporter: results as DICOM TID 1500 measurement reports (Comprehensive 3D SR), highdicom.

Two reports:

- :func:`necrosis_report`, one per case of a necrosis run: a Measurement Group (TID 1501)
  holding the necrosis rate, the lower and upper limits of its interval, and the
  viable / necrotic / non-tumour areas in mm²; the Huvos grade and the responder status as
  qualitative evaluations; the model (name, weights sha256) as algorithm identification
  (TID 4019) and the osteomics device as observer. When the case's slides are DICOM WSI, the
  report joins their study (patient and study module copied from the first slide), references
  each slide's level-0 image as a source image of the group, and lists them as evidence. For
  slides that are not DICOM there is nothing to reference: the report opens a *new study*
  whose patient ID and name are the case name, its Study Instance UID derived from the case
  and the run's start time (so exporting the same run again gives the same study), and the
  slide files' sha256 go in as algorithm parameters.
- :func:`radiomics_report`, one per (image series, ROI) of a radiomics table: every IBSI
  feature as a measurement whose concept is its IBSI identifier (coding scheme ``IBSI``,
  e.g. ``GYBY`` Joint maximum) where one exists, else a code of ours (``99OSTEO``); the
  feature family as the measurement's method. A SEG ROI is referenced as the segment itself
  (TID 1411); an RTSTRUCT ROI as the image series' instances (TID 1501 source images), the
  RTSTRUCT being listed as evidence.

Concepts that no standard terminology holds (necrosis rate, Huvos grade) use the private
coding scheme ``99OSTEO`` (:data:`OSTEO`); its codes are listed in docs/pacs.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    RTStructureSetStorage,
    SegmentationStorage,
    VLWholeSlideMicroscopyImageStorage,
    generate_uid,
)

from osteomics import __version__
from osteomics.plugins.errors import DicomExportError

#: The private coding scheme of concepts no standard terminology holds.
OSTEO = "99OSTEO"
#: The coding scheme designator of IBSI feature identifiers.
IBSI = "IBSI"
#: Manufacturer of the objects we write (General Equipment module).
MANUFACTURER = "osteomics"


def osteo_code(value: str, meaning: str) -> hd.sr.CodedConcept:
    """A concept of our private coding scheme :data:`OSTEO`."""
    return hd.sr.CodedConcept(value, OSTEO, meaning)


NECROSIS_RATE = osteo_code("necrosis-rate", "Necrosis rate")
NECROSIS_RATE_LOW = osteo_code("necrosis-rate-ci-low", "Necrosis rate, lower confidence limit")
NECROSIS_RATE_HIGH = osteo_code("necrosis-rate-ci-high", "Necrosis rate, upper confidence limit")
VIABLE_AREA = osteo_code("viable-tumour-area", "Viable tumour area")
NECROTIC_AREA = osteo_code("necrotic-tumour-area", "Necrotic tumour area")
NON_TUMOUR_AREA = osteo_code("non-tumour-area", "Non-tumour tissue area")
HUVOS_GRADE = osteo_code("huvos-grade", "Huvos grade")
RESPONSE = osteo_code("chemotherapy-response", "Histological response to chemotherapy")
HUVOS_VALUES = {g: osteo_code(f"huvos-{g}", f"Huvos grade {g}") for g in ("I", "II", "III", "IV")}
# The rate's interval crosses a Huvos cut-off (50 %, 90 %): no single grade is called.
HUVOS_VALUES["uncertain"] = osteo_code(
    "huvos-uncertain", "Huvos grade uncertain: the interval crosses a cut-off"
)
RESPONSE_VALUES = {
    "good": osteo_code("good-responder", "Good responder"),
    "poor": osteo_code("poor-responder", "Poor responder"),
    "uncertain": osteo_code("response-uncertain", "Response uncertain: the interval crosses 90 %"),
}
CASE_TRACKING = "osteomics necrosis case"

VL_WSI = str(VLWholeSlideMicroscopyImageStorage)
SEG_SOP_CLASS = str(SegmentationStorage)
RTSTRUCT_SOP_CLASS = str(RTStructureSetStorage)


def derived_uid(*parts: object) -> str:
    """A UID derived from ``parts`` (same parts, same UID; pydicom's root with the parts as
    entropy): re-exporting a run gives the same series and instances, so a PACS replaces
    rather than duplicates them."""
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


@dataclass(frozen=True)
class NecrosisCaseResult:
    """The numbers of one case (``necrosis_cases.csv`` / ``run.json`` ``cases``).

    Rates are percent, areas mm²; ``huvos_grade`` is ``I``..``IV`` or ``uncertain`` (the
    interval crosses a cut-off), ``responder`` ``good``/``poor``/``uncertain``.
    """

    case: str
    necrosis_rate: float
    ci_low: float | None
    ci_high: float | None
    huvos_grade: str | None
    responder: str | None
    viable_mm2: float
    necrotic_mm2: float
    non_tumour_mm2: float

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> NecrosisCaseResult:
        if record.get("status") != "ok" or record.get("necrosis_rate") is None:
            raise DicomExportError(
                f"case {record.get('case')!r} has no necrosis rate "
                f"({record.get('reason') or record.get('status')}): nothing to report; "
                "score its slides again"
            )
        return cls(
            case=str(record["case"]),
            necrosis_rate=float(record["necrosis_rate"]),
            ci_low=None if record.get("ci_low") is None else float(record["ci_low"]),
            ci_high=None if record.get("ci_high") is None else float(record["ci_high"]),
            huvos_grade=record.get("huvos_grade"),
            responder=record.get("responder"),
            viable_mm2=float(record["viable_mm2"]),
            necrotic_mm2=float(record["necrotic_mm2"]),
            non_tumour_mm2=float(record["non_tumour_mm2"]),
        )


@dataclass(frozen=True)
class ModelIdentity:
    """What scored the slides: the model card's name and its weights' sha256."""

    name: str
    weights_sha256: str

    def algorithm(self, parameters: Sequence[str] = ()) -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(
            name=self.name[:64] or "unnamed model",
            version=self.weights_sha256[:64] or "unknown",
            parameters=[f"weights sha256 {self.weights_sha256}", *parameters],
        )


def _observation_context(device_name: str, specimen: Dataset | None) -> hd.sr.ObservationContext:
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("osteomics device", device_name),
            name=device_name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=f"osteomics {__version__}",
        ),
    )
    subject = None
    if specimen is not None and specimen.get("SpecimenUID"):
        subject = hd.sr.SubjectContext(
            subject_class=codes.DCM.Specimen,
            subject_class_specific_context=hd.sr.SubjectContextSpecimen(
                uid=str(specimen.SpecimenUID),
                identifier=str(specimen.get("SpecimenIdentifier", "")) or None,
            ),
        )
    return hd.sr.ObservationContext(observer_device_context=device, subject_context=subject)


def _specimen(slide: Dataset) -> Dataset | None:
    items = slide.get("SpecimenDescriptionSequence")
    return items[0] if items else None


def case_study_stub(case: str, started: str) -> Dataset:
    """Patient and study of a case whose slides are not DICOM: a new study, patient ID and
    name the case name (see the module docstring)."""
    stub = Dataset()
    stub.PatientID = case[:64]
    stub.PatientName = case[:63].replace("^", " ") + "^"  # one component: the family name
    stub.PatientBirthDate = ""
    stub.PatientSex = ""
    stub.StudyInstanceUID = derived_uid("osteomics necrosis study", case, started)
    stub.StudyID = "necrosis"
    stub.StudyDate = started[:10].replace("-", "") if started else ""
    stub.StudyTime = started[11:19].replace(":", "") if started else ""
    stub.AccessionNumber = ""
    stub.ReferringPhysicianName = ""
    # highdicom reads the UIDs of every evidence dataset; the stub is never recorded as
    # evidence (record_evidence=False), so these name nothing that exists.
    stub.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    stub.SOPInstanceUID = derived_uid("osteomics necrosis study stub", case, started)
    stub.SeriesInstanceUID = derived_uid("osteomics necrosis series stub", case, started)
    return stub


def necrosis_report(
    result: NecrosisCaseResult,
    model: ModelIdentity,
    *,
    slides: Sequence[Dataset] = (),
    study_stub: Dataset | None = None,
    slide_hashes: Sequence[str] = (),
    instance_uid: str | None = None,
    series_uid: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of one necrosis case.

    Parameters
    ----------
    result:
        The case's numbers.
    model:
        The model that scored it.
    slides:
        Level-0 image datasets (headers suffice) of the case's DICOM slides; empty for slides
        that are not DICOM, then ``study_stub`` gives patient and study.
    slide_hashes:
        sha256 of the slide files, recorded as algorithm parameters.
    instance_uid, series_uid:
        Default: derived from the case, the model and the numbers.

    Raises
    ------
    DicomExportError
        Neither slides nor a study stub; or highdicom refuses the content.
    """
    if not slides and study_stub is None:
        raise DicomExportError(f"case {result.case!r}: no DICOM slide and no study to report in")
    measurements = [
        hd.sr.Measurement(NECROSIS_RATE, result.necrosis_rate, codes.UCUM.Percent),
        hd.sr.Measurement(VIABLE_AREA, result.viable_mm2, codes.UCUM.SquareMillimeter),
        hd.sr.Measurement(NECROTIC_AREA, result.necrotic_mm2, codes.UCUM.SquareMillimeter),
        hd.sr.Measurement(NON_TUMOUR_AREA, result.non_tumour_mm2, codes.UCUM.SquareMillimeter),
    ]
    if result.ci_low is not None and result.ci_high is not None:
        measurements[1:1] = [
            hd.sr.Measurement(NECROSIS_RATE_LOW, result.ci_low, codes.UCUM.Percent),
            hd.sr.Measurement(NECROSIS_RATE_HIGH, result.ci_high, codes.UCUM.Percent),
        ]
    evaluations = []
    if result.huvos_grade in HUVOS_VALUES:
        evaluations.append(
            hd.sr.QualitativeEvaluation(HUVOS_GRADE, HUVOS_VALUES[result.huvos_grade])
        )
    if result.responder in RESPONSE_VALUES:
        evaluations.append(hd.sr.QualitativeEvaluation(RESPONSE, RESPONSE_VALUES[result.responder]))
    key = (result.case, model.weights_sha256, result.necrosis_rate, *slide_hashes)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("tracking", *key), identifier=f"{CASE_TRACKING} {result.case}"[:64]
        ),
        algorithm_id=model.algorithm([f"slide sha256 {h}" for h in slide_hashes]),
        finding_type=codes.SCT.Necrosis,
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(s) for s in slides]
        or None,
    )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(
            model.name, _specimen(slides[0]) if slides else None
        ),
        procedure_reported=codes.SCT.HistopathologyTest,
        imaging_measurements=[group],
    )
    evidence = list(slides) if slides else [study_stub]
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,  # type: ignore[arg-type]
            content=report,
            series_instance_uid=series_uid or derived_uid("sr series", *key),
            series_number=900,
            sop_instance_uid=instance_uid or derived_uid("sr instance", *key),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            record_evidence=bool(slides),
            series_description=f"osteomics necrosis {result.case}"[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomExportError(
            f"case {result.case!r}: highdicom refused the measurement report ({exc})"
        ) from exc
    if not slides:  # the stub names no instance: the report rests on no DICOM evidence
        del sr.CurrentRequestedProcedureEvidenceSequence
    _identify_coding_schemes(sr)
    conform_copied_values(sr)
    return sr


# -- reading a report back -----------------------------------------------------------------


def _value_name(values: dict[str, hd.sr.CodedConcept], code: str) -> str:
    """The result value (``II``, ``good``, ``uncertain``) of one of our codes."""
    for name, concept in values.items():
        if concept.value == code:
            return name
    return code


def read_necrosis_report(sr: Dataset) -> dict[str, Any]:
    """The numbers of a necrosis report (as :func:`necrosis_report` wrote them), by concept:
    ``necrosis_rate``, ``ci_low``, ``ci_high``, ``viable_mm2``, ``necrotic_mm2``,
    ``non_tumour_mm2`` (floats), ``huvos_grade``, ``responder`` (strings) and ``model``,
    ``weights_sha256`` from the algorithm identification."""
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    report = parsed.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise DicomExportError("not a TID 1500 measurement report")
    groups = report.get_image_measurement_groups()
    if len(groups) != 1:
        raise DicomExportError(f"{len(groups)} measurement groups; a necrosis report has one")
    group = groups[0]
    names = {
        NECROSIS_RATE.value: "necrosis_rate",
        NECROSIS_RATE_LOW.value: "ci_low",
        NECROSIS_RATE_HIGH.value: "ci_high",
        VIABLE_AREA.value: "viable_mm2",
        NECROTIC_AREA.value: "necrotic_mm2",
        NON_TUMOUR_AREA.value: "non_tumour_mm2",
    }
    out: dict[str, Any] = {}
    for m in group.get_measurements():
        if m.name.value in names:
            out[names[m.name.value]] = float(m.value)
    for q in group.get_qualitative_evaluations():
        value: Any = q.value  # a CodedConcept for a CODE item
        if q.name.value == HUVOS_GRADE.value:
            out["huvos_grade"] = _value_name(HUVOS_VALUES, str(value.value))
        elif q.name.value == RESPONSE.value:
            out["responder"] = _value_name(RESPONSE_VALUES, str(value.value))
    wanted = {
        codes.DCM.AlgorithmName.value: "model",
        codes.DCM.AlgorithmVersion.value: "weights_sha256",
    }
    for item in group[0].ContentSequence:
        code = item.name.value
        if code in wanted and "TextValue" in item:
            out[wanted[code]] = str(item.TextValue)
    return out


# -- radiomics -----------------------------------------------------------------------------


def feature_concept(family: str, feature: str, ibsi_id: str | None) -> hd.sr.CodedConcept:
    """The concept of a radiomics feature: its IBSI identifier (scheme ``IBSI``) where one
    exists, else a ``99OSTEO`` code derived from family and feature (stable across runs)."""
    meaning = feature[:64]
    if ibsi_id:
        return hd.sr.CodedConcept(str(ibsi_id), IBSI, meaning)
    digest = derived_uid("feature", family, feature).rsplit(".", 1)[-1][-12:]
    return osteo_code(f"F{digest}", meaning)


def family_concept(family: str) -> hd.sr.CodedConcept:
    """The feature family (with its aggregation, e.g. ``Co-occurrence matrix (3D, merged)``)
    as the measurement's method: IBSI features of one id differ by it."""
    digest = derived_uid("family", family).rsplit(".", 1)[-1][-12:]
    return osteo_code(f"M{digest}", family[:64])


@dataclass(frozen=True)
class RadiomicsFeature:
    """One row of a radiomics long table."""

    family: str
    feature: str
    ibsi_id: str | None
    value: float


def radiomics_report(
    features: Sequence[RadiomicsFeature],
    *,
    roi: str,
    images: Sequence[Dataset],
    mask: Dataset,
    config: str,
    input_hashes: Sequence[str] = (),
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of the IBSI features of one ROI on one image series.

    Parameters
    ----------
    features:
        The ROI's rows (non-finite values are left out: SR numeric values must be numbers).
    roi:
        The RTSTRUCT ROI name or SEG segment label.
    images:
        Headers of the image series' instances.
    mask:
        Header of the RTSTRUCT or SEG holding the ROI.
    config:
        Name of the radiomics configuration (an algorithm parameter).

    Raises
    ------
    DicomExportError
        No image, a mask that is neither RTSTRUCT nor SEG, a SEG without that segment, no
        finite feature value, or content highdicom refuses.
    """
    if not images:
        raise DicomExportError(f"ROI {roi!r}: no image instance of its series to reference")
    measurements = [
        hd.sr.Measurement(
            name=feature_concept(f.family, f.feature, f.ibsi_id),
            value=float(f.value),
            unit=codes.UCUM.NoUnits,
            method=family_concept(f.family),
        )
        for f in features
        if np.isfinite(f.value)
    ]
    if not measurements:
        raise DicomExportError(f"ROI {roi!r}: no finite feature value to report")
    series_uid = str(images[0].SeriesInstanceUID)
    algorithm = hd.sr.AlgorithmIdentification(
        name="osteomics radiomics",
        version=__version__,
        parameters=[f"configuration {config}", *(f"input sha256 {h}" for h in input_hashes)],
    )
    key = (series_uid, str(mask.SOPInstanceUID), roi, config, *input_hashes)
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid("roi tracking", *key), identifier=f"ROI {roi}"[:64]
    )
    group: Any
    sop_class = str(mask.get("SOPClassUID", ""))
    if sop_class == SEG_SOP_CLASS:
        numbers = [
            int(s.SegmentNumber)
            for s in mask.get("SegmentSequence", [])
            if str(s.get("SegmentLabel", "")) == roi
        ]
        if not numbers:
            raise DicomExportError(f"the SEG {mask.SOPInstanceUID} has no segment labelled {roi!r}")
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=SEG_SOP_CLASS,
                sop_instance_uid=str(mask.SOPInstanceUID),
                segment_number=numbers[0],
                source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
            ),
            algorithm_id=algorithm,
            measurements=measurements,
        )
    elif sop_class == RTSTRUCT_SOP_CLASS:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            algorithm_id=algorithm,
            measurements=measurements,
            source_images=[
                hd.sr.SourceImageForMeasurementGroup.from_source_image(i) for i in images
            ],
        )
    else:
        raise DicomExportError(
            f"mask {mask.get('SOPInstanceUID')}: SOP class {sop_class} is neither RTSTRUCT nor SEG"
        )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context("osteomics radiomics", None),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[group],
    )
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*images, mask],
            content=report,
            series_instance_uid=derived_uid("radiomics sr series", series_uid, config),
            series_number=902,
            sop_instance_uid=derived_uid("radiomics sr instance", *key),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description=f"osteomics radiomics {roi}"[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomExportError(
            f"ROI {roi!r}: highdicom refused the measurement report ({exc})"
        ) from exc
    _identify_coding_schemes(sr)
    conform_copied_values(sr)
    return sr


def read_radiomics_report(sr: Dataset) -> list[tuple[str, str, str, float]]:
    """``(family, code value, coding scheme, value)`` of every feature of a radiomics report
    written by :func:`radiomics_report`."""
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    report = parsed.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise DicomExportError("not a TID 1500 measurement report")
    groups: list[Any] = [
        *report.get_image_measurement_groups(),
        *report.get_volumetric_roi_measurement_groups(),
    ]
    out = []
    for group in groups:
        for m in group.get_measurements():
            method = m.method.meaning if m.method is not None else ""
            out.append((method, m.name.value, m.name.scheme_designator, float(m.value)))
    return out


def _identify_coding_schemes(sr: Dataset) -> None:
    """List the non-standard coding schemes used (SOP Common, Coding Scheme Identification
    Sequence), as PS3.3 C.12.1.1.2 asks of private schemes."""
    items = []
    for designator, name, organisation in (
        (OSTEO, "osteomics concepts (docs/pacs.md)", "osteomics project"),
        (IBSI, "Image Biomarker Standardisation Initiative feature identifiers", "IBSI"),
    ):
        item = Dataset()
        item.CodingSchemeDesignator = designator
        item.CodingSchemeName = name
        item.CodingSchemeResponsibleOrganization = organisation
        items.append(item)
    sr.CodingSchemeIdentificationSequence = items


#: Maximum lengths of the text VRs that the patient and study modules copy from the source.
_MAX_LENGTH = {"SH": 16, "LO": 64, "CS": 16, "AE": 16}


def conform_copied_values(ds: Dataset) -> list[str]:
    """Truncate top-level text values longer than their VR allows (a source's Study ID of 17
    characters, copied into our object, would make it fail validation). Returns the keywords
    changed (never their values: they may identify the patient)."""
    changed = []
    for element in ds:
        limit = _MAX_LENGTH.get(element.VR)
        if limit is None or element.VM != 1 or not isinstance(element.value, str):
            continue
        if len(element.value) > limit:
            element.value = element.value[:limit]
            changed.append(element.keyword)
    return changed
