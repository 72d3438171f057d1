"""Read DICOM image series (CT, MR, PET) and RTSTRUCT contours into :class:`Volume`/:class:`Mask`.

Geometry (DICOM PS3.3 C.7.6.2, patient coordinates LPS, mm):

- slices are sorted along the normal ``n = row × column`` of ImageOrientationPatient by the
  projection of ImagePositionPatient on ``n``; the slice spacing is the difference of those
  projections (never SliceThickness, which is the reconstructed thickness, not the step);
- the spacing must be uniform (within 1 % or 0.01 mm): a missing slice or an irregular stack is
  refused with a :class:`SeriesGeometryError` naming the series and the gap (resample the
  series with a DICOM tool first; osteomics does not guess the missing data);
- the volume's array axes are ``(slice, row, column)``; ``direction`` columns are
  ``(n, column cosine, row cosine)`` (IOP[3:6] is the direction in which the row index grows);
- stored values are rescaled slice by slice with RescaleSlope and RescaleIntercept (PET slopes
  differ per slice).

PET: a series whose Units is ``GML`` (g/ml) is already SUV body-weight (as the STS data are).
A ``BQML`` series is converted to SUVbw = activity concentration × body weight (g) / injected
dose decayed to the reference time of the image (DecayCorrection ``START``: series time;
``ADMIN``: none). Other units (``CNTS``, ...) or missing tags are refused with the tags named.

Multi-frame (enhanced and legacy converted enhanced CT, MR, PET) instances: each frame is a
slice, with its position, orientation, pixel spacing and rescale from the per-frame functional
groups (else the shared ones); the same sorting and checks apply.

SEG (highdicom): frames matched to the image slices by their referenced SOP instances (and
frame numbers, on a multi-frame image).

RTSTRUCT: each CLOSED_PLANAR contour of the ROI is mapped into voxel indices through the volume's
affine, assigned to the nearest slice, and rasterised with pixel-centre sampling; the contours of
a slice are combined with the even-odd rule (XOR), so holes and several islands per slice are
handled. The structure set's frame of reference must be the image's.

Patient identifiers: only PatientID is kept (for the output table); it is never logged, and
names are never read.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from osteomics.radiology.radiomics.errors import (
    EmptyMaskError,
    GeometryMismatchError,
    ImageReadError,
    RadiomicsError,
)
from osteomics.radiology.radiomics.image import Mask, Volume

log = logging.getLogger(__name__)

IMAGE_MODALITIES = ("CT", "MR", "PT")
_SPACING_RTOL = 0.01
_SPACING_ATOL_MM = 0.01


class SeriesGeometryError(RadiomicsError, ValueError):
    """A DICOM series whose slices do not form a regular 3D grid (gap, uneven spacing, tilt)."""


class RoiNotFoundError(RadiomicsError, KeyError):
    """An ROI name that the structure set does not hold (the message lists the names it does)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SuvError(RadiomicsError, ValueError):
    """A PET series that cannot be converted to SUV (missing or unsupported tags)."""


@dataclass(frozen=True)
class SeriesInfo:
    """Identity of a DICOM image series, for the output table.

    Attributes
    ----------
    patient, study, series
        PatientID (never the name), StudyInstanceUID, SeriesInstanceUID.
    modality
        ``CT``, ``MR`` or ``PT``.
    frame_of_reference
        FrameOfReferenceUID, checked against the structure set's.
    units
        Intensity units after reading (``HU``, ``SUVbw``, or the MR series' arbitrary units).
    """

    patient: str
    study: str
    series: str
    modality: str
    frame_of_reference: str
    units: str


@dataclass(frozen=True)
class DicomImage:
    """A DICOM series read into a :class:`Volume`, with its identity.

    ``sop_instance_uids`` lists the slices' SOPInstanceUIDs in array (axis 0) order; for a
    multi-frame (enhanced) series ``frame_numbers`` gives each slice's frame in its instance
    (1-based; empty for single-frame series).
    """

    volume: Volume
    info: SeriesInfo
    sop_instance_uids: tuple[str, ...] = ()
    frame_numbers: tuple[int, ...] = ()


def _dcmread(path: Path, *, pixels: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable DICOM file ({exc})") from exc


def _headers(folder: Path) -> list[tuple[Path, Any]]:
    """``(path, header)`` of every DICOM file under ``folder`` (recursively); others skipped."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        if "SOPClassUID" in ds or "Modality" in ds:
            out.append((path, ds))
    return out


def _short(uid: str) -> str:
    """Last digits of a UID for messages (enough to tell series apart, not an identifier)."""
    return "…" + uid[-12:] if len(uid) > 12 else uid


def _series_label(folder: Path, ds: Any) -> str:
    uid = _short(str(ds.get("SeriesInstanceUID", "")))
    return f"{ds.get('Modality', '?')} series {uid} in {folder}"


def _parse_time(date: str | None, time: str | None) -> datetime | None:
    if not time:
        return None
    t = str(time).strip()
    hh, mm, ss = int(t[0:2]), int(t[2:4] or 0), float(t[4:] or 0)
    d = str(date).strip() if date else "19000101"
    base = datetime(int(d[0:4]), int(d[4:6]), int(d[6:8]), hh, mm, int(ss))
    return base.replace(microsecond=round((ss - int(ss)) * 1e6) % 1_000_000)


def suv_factor(ds: Any, label: str) -> float:
    """Factor turning a PET ``BQML`` series' values into SUV body-weight (g/ml).

    Raises
    ------
    SuvError
        Units other than BQML, unsupported decay correction, or a missing tag (named).
    """
    units = str(ds.get("Units", "")).upper()
    if units != "BQML":
        raise SuvError(
            f"{label}: PET Units is {units or 'missing'!r}; only BQML (or GML, already SUV) can "
            "be converted to SUV body-weight"
        )
    missing = [t for t in ("PatientWeight", "DecayCorrection") if not ds.get(t)]
    info = ds.get("RadiopharmaceuticalInformationSequence")
    rp = info[0] if info else None
    for tag in ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime"):
        if rp is None or not rp.get(tag):
            missing.append(f"RadiopharmaceuticalInformationSequence/{tag}")
    if missing:
        raise SuvError(f"{label}: cannot compute SUV body-weight, missing tags: {missing}")
    assert rp is not None
    weight_g = float(ds.PatientWeight) * 1000.0
    dose_bq = float(rp.RadionuclideTotalDose)
    decay = str(ds.DecayCorrection).upper()
    if decay == "ADMIN":
        decayed = dose_bq
    elif decay == "START":
        injected = _parse_time(
            rp.get("RadiopharmaceuticalStartDateTime", "")[:8] or ds.get("SeriesDate"),
            rp.get("RadiopharmaceuticalStartTime"),
        )
        scan = _parse_time(ds.get("SeriesDate"), ds.get("SeriesTime"))
        if injected is None or scan is None:
            raise SuvError(f"{label}: cannot compute SUV: SeriesTime missing")
        elapsed = (scan - injected).total_seconds()
        if elapsed < 0:
            raise SuvError(f"{label}: the series starts before the injection; check the times")
        decayed = dose_bq * math.exp(-math.log(2) * elapsed / float(rp.RadionuclideHalfLife))
    else:
        raise SuvError(
            f"{label}: DecayCorrection {decay!r} is not supported for SUV (START or ADMIN)"
        )
    if not (weight_g > 0 and decayed > 0):
        raise SuvError(f"{label}: PatientWeight and RadionuclideTotalDose must be > 0")
    return weight_g / decayed


@dataclass(frozen=True)
class _Frame:
    """One 2D image of a series: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    #: 1-based frame number in a multi-frame (enhanced) file; None for a single-frame file.
    number: int | None
    sop_instance_uid: str
    position: tuple[float, ...]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, ...]
    slope: float
    intercept: float
    #: SpacingBetweenSlices, else SliceThickness (mm): the step of a one-slice series only.
    thickness_mm: float | None
    rows: int
    columns: int


def _is_multi_frame(ds: Any) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds


def _group_item(per_frame: Any, shared: Any, sequence: str) -> Any:
    """The item of a functional group macro for one frame: its own, else the shared one."""
    for groups in (per_frame, shared):
        if groups is not None and groups.get(sequence):
            return groups.get(sequence)[0]
    return None


def _floats(value: Any, what: str, label: str) -> tuple[float, ...]:
    if value is None:
        raise SeriesGeometryError(f"{label}: {what} is missing")
    return tuple(float(v) for v in value)


def _frames_of(path: Path, ds: Any, label: str) -> list[_Frame]:
    """The frames of one image file (header only), with their geometry and rescale."""
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    rows, columns = int(ds.Rows), int(ds.Columns)
    if not _is_multi_frame(ds):
        return [
            _Frame(
                path=path,
                number=None,
                sop_instance_uid=sop_uid,
                position=_floats(ds.get("ImagePositionPatient"), "ImagePositionPatient", label),
                orientation=_floats(
                    ds.get("ImageOrientationPatient"), "ImageOrientationPatient", label
                ),
                pixel_spacing=_floats(ds.get("PixelSpacing"), "PixelSpacing", label),
                slope=float(ds.get("RescaleSlope", 1) or 1),
                intercept=float(ds.get("RescaleIntercept", 0) or 0),
                thickness_mm=_thickness(ds),
                rows=rows,
                columns=columns,
            )
        ]
    shared_groups = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else None
    frames = []
    for number, per_frame in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        where = f"{label}, frame {number}"
        plane = _group_item(per_frame, shared, "PlanePositionSequence")
        orientation = _group_item(per_frame, shared, "PlaneOrientationSequence")
        measures = _group_item(per_frame, shared, "PixelMeasuresSequence")
        rescale = _group_item(per_frame, shared, "PixelValueTransformationSequence")
        frames.append(
            _Frame(
                path=path,
                number=number,
                sop_instance_uid=sop_uid,
                position=_floats(
                    plane.get("ImagePositionPatient") if plane else None,
                    "PlanePositionSequence/ImagePositionPatient",
                    where,
                ),
                orientation=_floats(
                    orientation.get("ImageOrientationPatient") if orientation else None,
                    "PlaneOrientationSequence/ImageOrientationPatient",
                    where,
                ),
                pixel_spacing=_floats(
                    measures.get("PixelSpacing") if measures else None,
                    "PixelMeasuresSequence/PixelSpacing",
                    where,
                ),
                slope=float(rescale.get("RescaleSlope", 1) or 1) if rescale else 1.0,
                intercept=float(rescale.get("RescaleIntercept", 0) or 0) if rescale else 0.0,
                thickness_mm=_thickness(measures) if measures else None,
                rows=rows,
                columns=columns,
            )
        )
    return frames


def _thickness(ds: Any) -> float | None:
    value = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    return float(value) if value else None


def _frame_pixels(frames: list[_Frame]) -> list[NDArray[np.float64]]:
    """Rescaled pixel arrays of ``frames`` (each file decoded once), in ``frames`` order."""
    decoded: dict[Path, NDArray[Any]] = {}
    out = []
    for frame in frames:
        if frame.path not in decoded:
            ds = _dcmread(frame.path, pixels=True)
            try:
                decoded[frame.path] = ds.pixel_array
            except Exception as exc:  # pydicom raises many kinds for undecodable pixel data
                raise ImageReadError(f"{frame.path}: cannot decode the pixel data ({exc})") from exc
        array = decoded[frame.path]
        if frame.number is not None and array.ndim == 3:
            array = array[frame.number - 1]
        out.append(array.astype(np.float64) * frame.slope + frame.intercept)
    return out


def _volume_from_frames(frames: list[_Frame], label: str) -> tuple[Volume, list[_Frame]]:
    """Sort, check and stack the frames of one series; returns the volume and the frames in
    array (axis 0) order."""
    iops = np.array([frame.orientation for frame in frames])
    if not np.allclose(iops, iops[0], atol=1e-4):
        raise SeriesGeometryError(f"{label}: slices have different ImageOrientationPatient")
    row_cos, col_cos = iops[0, :3], iops[0, 3:]
    normal = np.cross(row_cos, col_cos)
    ipps = np.array([frame.position for frame in frames])
    proj = ipps @ normal
    order = np.argsort(proj, kind="stable")
    frames = [frames[i] for i in order]
    ipps, proj = ipps[order], proj[order]
    if len(frames) > 1:
        steps = np.diff(proj)
        if np.any(steps < _SPACING_ATOL_MM):
            k = int(np.argmin(steps))
            raise SeriesGeometryError(
                f"{label}: two slices share the position {proj[k]:.2f} mm along the normal "
                "(duplicate instances or several stacks in one series)"
            )
        dz = float(np.median(steps))
        bad = np.flatnonzero(np.abs(steps - dz) > max(_SPACING_ATOL_MM, _SPACING_RTOL * dz))
        if bad.size:
            k = int(bad[0])
            n_missing = round(steps[k] / dz) - 1
            what = (
                f"{n_missing} missing slice(s)"
                if n_missing >= 1 and abs(steps[k] - (n_missing + 1) * dz) < 0.05 * dz
                else "non-uniform slice spacing"
            )
            raise SeriesGeometryError(
                f"{label}: {what}: gap of {steps[k]:.3f} mm between slices at "
                f"{proj[k]:.2f} and {proj[k + 1]:.2f} mm along the slice normal, where the "
                f"series' spacing is {dz:.3f} mm ({bad.size} irregular gap(s)); "
                "resample the series to a regular grid first"
            )
        # Slices must stack along the normal (no gantry tilt / shear).
        lateral = (ipps - ipps[0]) - np.outer(proj - proj[0], normal)
        if np.abs(lateral).max() > max(_SPACING_ATOL_MM, 0.01 * dz):
            raise SeriesGeometryError(
                f"{label}: slice positions are not along the slice normal (gantry tilt or "
                "sheared stack); resample the series first"
            )
    else:
        dz = frames[0].thickness_mm or 1.0
    first = frames[0]
    if any((f.rows, f.columns) != (first.rows, first.columns) for f in frames):
        raise SeriesGeometryError(f"{label}: slices have different sizes")
    if not np.allclose([f.pixel_spacing for f in frames], first.pixel_spacing, rtol=1e-4):
        raise SeriesGeometryError(f"{label}: slices have different PixelSpacing")
    direction = np.column_stack([normal, col_cos, row_cos])
    volume = Volume(
        array=np.stack(_frame_pixels(frames)),
        spacing_mm=(dz, first.pixel_spacing[0], first.pixel_spacing[1]),
        origin_mm=(float(ipps[0, 0]), float(ipps[0, 1]), float(ipps[0, 2])),
        direction=direction,
    )
    return volume, frames


def _n_frames(ds: Any) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _group_series(headers: list[tuple[Path, Any]]) -> dict[str, list[tuple[Path, Any]]]:
    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for path, ds in headers:
        geometry = "ImagePositionPatient" in ds or _is_multi_frame(ds)
        if str(ds.get("Modality", "")) in IMAGE_MODALITIES and geometry:
            groups[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
    return groups


def read_dicom_series(folder: Path, *, series_uid: str | None = None) -> DicomImage:
    """Read one CT, MR or PET series from ``folder`` (searched recursively).

    Parameters
    ----------
    folder
        Folder holding the series' files (other files and non-image objects are ignored).
    series_uid
        SeriesInstanceUID to pick when the folder holds several image series.

    Returns
    -------
    DicomImage
        The volume (HU for CT, SUVbw for PET, stored units for MR) and the series identity.

    Raises
    ------
    ImageReadError
        No image series in the folder, or several and none chosen.
    SeriesGeometryError
        Missing slices, non-uniform spacing, mixed orientations, duplicate positions.
    SuvError
        A PET series that is not SUV and cannot be converted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: no such folder; give a DICOM series or study folder")
    groups = _group_series(_headers(folder))
    return _read_group(folder, groups, series_uid)


def _read_group(
    folder: Path, groups: dict[str, list[tuple[Path, Any]]], series_uid: str | None
) -> DicomImage:
    if series_uid is not None:
        if series_uid not in groups:
            raise ImageReadError(f"{folder}: no image series with that SeriesInstanceUID")
        items = groups[series_uid]
    elif len(groups) == 1:
        items = next(iter(groups.values()))
    elif not groups:
        raise ImageReadError(f"{folder}: no CT, MR or PET image series found")
    else:
        names = [
            f"{v[0][1].Modality} {_short(k)} ({sum(_n_frames(ds) for _, ds in v)} slices)"
            for k, v in groups.items()
        ]
        raise ImageReadError(f"{folder}: several image series ({', '.join(names)}); pick one")
    first = items[0][1]
    label = _series_label(folder, first)
    volume, frames = _volume_from_frames(
        [frame for path, ds in items for frame in _frames_of(path, ds, label)], label
    )
    modality = str(first.Modality)
    units = {"CT": "HU", "MR": "MR units"}.get(modality, "")
    if modality == "PT":
        pet_units = str(first.get("Units", "")).upper()
        if pet_units == "GML":
            units = "SUVbw"
        else:
            factor = suv_factor(first, label)
            volume = Volume(
                array=volume.array * factor,
                spacing_mm=volume.spacing_mm,
                origin_mm=volume.origin_mm,
                direction=volume.direction,
            )
            units = "SUVbw"
    info = SeriesInfo(
        patient=str(first.get("PatientID", "")),
        study=str(first.get("StudyInstanceUID", "")),
        series=str(first.get("SeriesInstanceUID", "")),
        modality=modality,
        frame_of_reference=str(first.get("FrameOfReferenceUID", "")),
        units=units,
    )
    log.debug("read %s: shape %s, spacing %s mm", label, volume.shape, volume.spacing_mm)
    multi_frame = any(frame.number is not None for frame in frames)
    return DicomImage(
        volume,
        info,
        tuple(frame.sop_instance_uid for frame in frames),
        tuple(frame.number or 1 for frame in frames) if multi_frame else (),
    )


def dicom_modality(path: Path) -> str:
    """Modality of a DICOM file (``RTSTRUCT``, ``SEG``, ``CT``...).

    Raises
    ------
    ImageReadError
        Missing or not DICOM.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    return str(_dcmread(path, pixels=False).get("Modality", ""))


def rtstruct_roi_names(path: Path) -> list[str]:
    """ROI names in an RTSTRUCT file, in file order."""
    ds = _dcmread(Path(path), pixels=False)
    return [str(r.ROIName) for r in ds.get("StructureSetROISequence", [])]


def _fill_polygon(
    rows: NDArray[np.float64], cols: NDArray[np.float64], shape: tuple[int, int]
) -> NDArray[np.bool_]:
    """Pixels whose centre lies inside the polygon (even-odd rule), shape ``(rows, cols)``."""
    from skimage.draw import polygon

    out = np.zeros(shape, dtype=bool)
    rr, cc = polygon(rows, cols, shape=shape)
    out[rr, cc] = True
    return out


def read_rtstruct_mask(path: Path, image: DicomImage, roi: str | None = None) -> Mask:
    """Rasterise one ROI of an RTSTRUCT onto the grid of ``image``.

    Parameters
    ----------
    path
        RTSTRUCT file.
    image
        The image series the contours were drawn on.
    roi
        ROI name; default: the only ROI of the structure set.

    Returns
    -------
    Mask
        On the image grid, named after the ROI.

    Raises
    ------
    RoiNotFoundError
        The ROI is absent (or not given when there are several): the message lists the names.
    GeometryMismatchError
        The ROI's frame of reference is not the image's, or a contour lies outside the image.
    EmptyMaskError
        The ROI has no contour, or its contours enclose no voxel centre.
    """
    path = Path(path)
    ds = _dcmread(path, pixels=False)
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise ImageReadError(f"{path}: not an RTSTRUCT (Modality {ds.get('Modality')!r})")
    rois = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", [])}
    names = [str(r.ROIName) for r in rois.values()]
    if roi is None:
        if len(names) != 1:
            raise RoiNotFoundError(
                f"{path}: the structure set holds {len(names)} ROIs; choose one with --roi: "
                f"{', '.join(names) or '(none)'}"
            )
        roi = names[0]
    matches = [n for n, r in rois.items() if str(r.ROIName) == roi]
    if not matches:
        raise RoiNotFoundError(
            f"{path}: no ROI named {roi!r}; the structure set holds: {', '.join(names) or '(none)'}"
        )
    number = matches[0]
    roi_for = str(rois[number].get("ReferencedFrameOfReferenceUID", ""))
    if roi_for and image.info.frame_of_reference and roi_for != image.info.frame_of_reference:
        raise GeometryMismatchError(
            f"{path}: ROI {roi!r} is in frame of reference {_short(roi_for)}, the image series "
            f"in {_short(image.info.frame_of_reference)}: the contours were not drawn on this "
            "image (or need a registration first)"
        )
    contours = []
    for item in ds.get("ROIContourSequence", []):
        if int(item.ReferencedROINumber) == number:
            contours = list(item.get("ContourSequence", []))
            break
    vol = image.volume
    # patient (x, y, z) -> index (z, y, x): p = origin + direction @ (spacing * idx)
    to_index = np.linalg.inv(vol.direction * np.asarray(vol.spacing_mm))
    origin = np.asarray(vol.origin_mm)
    nz, ny, nx = vol.shape
    per_slice: dict[int, list[NDArray[np.float64]]] = defaultdict(list)
    skipped = 0
    for c in contours:
        if str(c.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
            skipped += 1
            continue
        pts = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
        if len(pts) < 3:
            skipped += 1
            continue
        idx = (pts - origin) @ to_index.T
        k = np.round(idx[:, 0])
        if np.ptp(idx[:, 0]) > 0.5:
            raise GeometryMismatchError(
                f"{path}: a contour of ROI {roi!r} is not in a slice plane of the image "
                f"(spans {np.ptp(idx[:, 0]):.2f} slices)"
            )
        outside = (
            (k < 0) | (k > nz - 1) | (idx[:, 1] < -0.5) | (idx[:, 1] > ny - 0.5)
            | (idx[:, 2] < -0.5) | (idx[:, 2] > nx - 0.5)
        )  # fmt: skip
        if outside.any():
            p = pts[int(np.argmax(outside))]
            raise GeometryMismatchError(
                f"{path}: a contour of ROI {roi!r} lies outside the image (point "
                f"({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f}) mm falls at voxel index "
                f"{tuple(round(float(v), 1) for v in idx[int(np.argmax(outside))])} of a "
                f"{vol.shape} image)"
            )
        per_slice[int(k[0])].append(idx[:, 1:])
    if skipped:
        log.info("ROI %r: %d non-polygon or degenerate contour(s) ignored", roi, skipped)
    mask = np.zeros(vol.shape, dtype=bool)
    for z, polys in per_slice.items():
        acc = np.zeros((ny, nx), dtype=bool)
        for poly in polys:
            acc ^= _fill_polygon(poly[:, 0], poly[:, 1], (ny, nx))
        mask[z] = acc
    if not mask.any():
        raise EmptyMaskError(
            f"{path}: ROI {roi!r} has {len(contours)} contour(s) but they enclose no voxel "
            "centre of the image"
        )
    return Mask(
        array=mask,
        spacing_mm=vol.spacing_mm,
        origin_mm=vol.origin_mm,
        direction=vol.direction,
        name=roi,
    )


@dataclass(frozen=True)
class DicomStudy:
    """An image series and the RTSTRUCT and SEG files drawn on it, found in a study folder."""

    image: DicomImage
    rtstructs: list[Path]
    segs: list[Path] = field(default_factory=list)


def _structure_references(ds: Any, sop_series: dict[str, str]) -> set[str]:
    """SeriesInstanceUIDs of the image series an RTSTRUCT or SEG says it was drawn on.

    RTSTRUCT: ReferencedFrameOfReferenceSequence > RTReferencedStudySequence >
    RTReferencedSeriesSequence, and the series of the instances its contours name
    (ContourImageSequence). SEG: ReferencedSeriesSequence, and the series of the instances its
    SourceImageSequence and frames' DerivationImageSequence name. Instances are mapped to
    series through ``sop_series`` (the image instances of the folder).
    """
    refs: set[str] = set()
    sops: set[str] = set()

    def images(items: Any) -> None:
        for item in items or []:
            sops.add(str(item.get("ReferencedSOPInstanceUID", "")))

    if str(ds.get("Modality", "")) == "RTSTRUCT":
        for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
            for study in frame.get("RTReferencedStudySequence", []):
                for series in study.get("RTReferencedSeriesSequence", []):
                    refs.add(str(series.get("SeriesInstanceUID", "")))
                    images(series.get("ContourImageSequence"))
        for roi in ds.get("ROIContourSequence", []):
            for contour in roi.get("ContourSequence", []):
                images(contour.get("ContourImageSequence"))
    else:
        for series in ds.get("ReferencedSeriesSequence", []):
            refs.add(str(series.get("SeriesInstanceUID", "")))
        images(ds.get("SourceImageSequence"))
        groups = [*ds.get("PerFrameFunctionalGroupsSequence", [])]
        groups += [*ds.get("SharedFunctionalGroupsSequence", [])]
        for group in groups:
            for derivation in group.get("DerivationImageSequence", []):
                images(derivation.get("SourceImageSequence"))
    refs.update(sop_series[uid] for uid in sops if uid in sop_series)
    refs.discard("")
    return refs


@dataclass(frozen=True)
class _Contoured:
    """An image series (by UID) and the structure files drawn on it, before reading pixels."""

    series_uid: str
    rtstructs: list[Path]
    segs: list[Path]


def _find_contoured(
    folder: Path, modality: str | None
) -> tuple[dict[str, list[tuple[Path, Any]]], list[_Contoured]]:
    """The image groups of ``folder`` (of ``modality``) and those an RTSTRUCT/SEG was drawn on.

    An image series is contoured when a structure set or segmentation references it (see
    :func:`_structure_references`). A structure file that names no series at all is taken for
    the one series in its frame of reference (none when several share it); one that names
    other series (not in the folder, or of another modality) is not used for these.
    """
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: no such folder")
    headers = _headers(folder)
    all_groups = _group_series(headers)
    groups = all_groups
    if modality is not None:
        groups = {k: v for k, v in groups.items() if str(v[0][1].Modality) == modality}
    if not groups:
        what = modality or "CT, MR or PET"
        raise ImageReadError(f"{folder}: no {what} image series found")
    structures = [
        (p, ds) for p, ds in headers if str(ds.get("Modality", "")) in ("RTSTRUCT", "SEG")
    ]
    if not structures:
        raise ImageReadError(f"{folder}: no RTSTRUCT or SEG file found next to the image series")
    sop_series = {
        str(ds.get("SOPInstanceUID", "")): uid
        for uid, items in all_groups.items()
        for _, ds in items
    }
    frame_of = {uid: str(v[0][1].get("FrameOfReferenceUID", "")) for uid, v in groups.items()}
    found: dict[str, _Contoured] = {uid: _Contoured(uid, [], []) for uid in groups}

    def add(uid: str, path: Path, ds: Any) -> None:
        kind = found[uid].rtstructs if str(ds.Modality) == "RTSTRUCT" else found[uid].segs
        kind.append(path)

    for path, ds in structures:
        referenced = _structure_references(ds, sop_series)
        for uid in sorted(referenced & groups.keys()):
            add(uid, path, ds)
        if referenced:
            continue  # drawn on series named by UID (maybe none of those here)
        fors = {str(ds.get("FrameOfReferenceUID", ""))} | {
            str(r.get("ReferencedFrameOfReferenceUID", ""))
            for r in ds.get("StructureSetROISequence", [])
        }
        same = [uid for uid, f in frame_of.items() if f and f in fors]
        if len(same) == 1:
            add(same[0], path, ds)
        else:
            log.debug("%s: %s names no series and %d share its frame", folder, path, len(same))
    contoured = [c for c in found.values() if c.rtstructs or c.segs]
    return groups, contoured


def read_dicom_studies(folder: Path, *, modality: str | None = None) -> list[DicomStudy]:
    """Every image series of a study folder that an RTSTRUCT or SEG was drawn on.

    A study often holds several series of one modality (MR T1 and STIR, CT with and without
    contrast); the series to read are the ones the structure sets and segmentations reference
    (RTSTRUCT: RTReferencedSeriesSequence / ContourImageSequence; SEG: ReferencedSeriesSequence
    / SourceImageSequence). Series no structure file references are skipped.

    Parameters
    ----------
    folder
        Study folder (searched recursively).
    modality
        ``CT``, ``MR`` or ``PT``: only series of that modality.

    Returns
    -------
    list of DicomStudy
        One per contoured series (in SeriesInstanceUID order), each with its structure files.

    Raises
    ------
    ImageReadError
        No image series (of ``modality``), no RTSTRUCT or SEG, or none drawn on these series.
    SeriesGeometryError, SuvError
        A contoured series that cannot be read (see :func:`read_dicom_series`).
    """
    folder = Path(folder)
    groups, contoured = _find_contoured(folder, modality)
    if not contoured:
        raise ImageReadError(
            f"{folder}: no RTSTRUCT or SEG references the {len(groups)} "
            f"{modality or 'image'} series here"
        )
    return [
        DicomStudy(_read_group(folder, groups, c.series_uid), c.rtstructs, c.segs)
        for c in contoured
    ]


def read_dicom_study(
    folder: Path, *, modality: str | None = None, series_uid: str | None = None
) -> DicomStudy:
    """The one contoured image series of a study folder and its RTSTRUCT/SEG files.

    Parameters
    ----------
    folder
        Study folder (searched recursively).
    modality
        ``CT``, ``MR`` or ``PT`` to choose among several contoured image series.
    series_uid
        SeriesInstanceUID to choose among several contoured series of one modality.

    Raises
    ------
    ImageReadError
        No image series, no RTSTRUCT or SEG, or several contoured image series and no way to
        choose (see :func:`read_dicom_studies` to read each).
    """
    folder = Path(folder)
    groups, contoured = _find_contoured(folder, modality)
    if series_uid is not None:
        contoured = [c for c in contoured if c.series_uid == series_uid]
        if not contoured:
            raise ImageReadError(
                f"{folder}: no contoured image series with SeriesInstanceUID {_short(series_uid)}"
            )
    if not contoured:
        raise ImageReadError(
            f"{folder}: no RTSTRUCT or SEG references the {len(groups)} "
            f"{modality or 'image'} series here"
        )
    if len(contoured) > 1:
        names = [f"{groups[c.series_uid][0][1].Modality} {_short(c.series_uid)}" for c in contoured]
        raise ImageReadError(
            f"{folder}: several image series with a contour ({', '.join(names)}); choose one "
            "by modality (--modality) or SeriesInstanceUID"
        )
    (chosen,) = contoured
    return DicomStudy(_read_group(folder, groups, chosen.series_uid), chosen.rtstructs, chosen.segs)


def read_study_mask(study: DicomStudy, roi: str | None) -> Mask:
    """Rasterise ``roi`` from the study's RTSTRUCT (ROI name) or SEG (segment label) holding it.

    Raises
    ------
    RoiNotFoundError
        No structure set or segmentation holds ``roi`` (names listed), or ``roi`` is None and
        the study holds several.
    """
    names = {p: rtstruct_roi_names(p) for p in study.rtstructs}
    labels = {p: seg_segment_labels(p) for p in study.segs}
    every = [n for ns in (*names.values(), *labels.values()) for n in ns]
    if roi is None:
        if len(every) != 1:
            raise RoiNotFoundError(
                f"the study holds {len(every)} ROIs; choose one with --roi: "
                f"{', '.join(every) or '(none)'}"
            )
        roi = every[0]
    for p, ns in names.items():
        if roi in ns:
            return read_rtstruct_mask(p, study.image, roi)
    for p, ns in labels.items():
        if roi in ns:
            return read_seg_mask(p, study.image, roi)
    raise RoiNotFoundError(
        f"no ROI named {roi!r} in the study; it holds: {', '.join(sorted(set(every)))}"
    )


def seg_segment_labels(path: Path) -> list[str]:
    """Segment labels of a DICOM SEG file, in segment-number order."""
    ds = _dcmread(Path(path), pixels=False)
    return [str(item.SegmentLabel) for item in ds.get("SegmentSequence", [])]


def read_seg_mask(path: Path, image: DicomImage, segment: str | None = None) -> Mask:
    """Read one segment of a DICOM SEG (highdicom) onto the grid of ``image``.

    Frames are matched to the image's slices through their referenced source SOP instances
    (and source frame numbers, for a multi-frame image); slices without a frame are empty.
    Fractional segmentations are thresholded at 0.5.

    Parameters
    ----------
    path
        DICOM SEG file.
    image
        The image series the segmentation was made on.
    segment
        Segment label; default: the only segment.

    Raises
    ------
    RoiNotFoundError
        Segment absent, or not given when there are several (labels listed).
    GeometryMismatchError
        Other frame of reference, or frames that reference no slice of the image.
    EmptyMaskError
        The segment holds no voxel on this image.
    """
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except (OSError, ValueError, AttributeError) as exc:
        raise ImageReadError(f"{path}: not a readable DICOM SEG ({exc})") from exc
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    if segment is None:
        if len(labels) != 1:
            raise RoiNotFoundError(
                f"{path}: the segmentation holds {len(labels)} segments; choose one with --roi: "
                f"{', '.join(labels.values())}"
            )
        segment = next(iter(labels.values()))
    numbers = [n for n, label in labels.items() if label == segment]
    if not numbers:
        raise RoiNotFoundError(
            f"{path}: no segment named {segment!r}; the segmentation holds: "
            f"{', '.join(labels.values()) or '(none)'}"
        )
    seg_for = str(seg.get("FrameOfReferenceUID", ""))
    if seg_for and image.info.frame_of_reference and seg_for != image.info.frame_of_reference:
        raise GeometryMismatchError(
            f"{path}: segment {segment!r} is in frame of reference {_short(seg_for)}, the image "
            f"series in {_short(image.info.frame_of_reference)}"
        )
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    present = [u for u in dict.fromkeys(image.sop_instance_uids) if u in referenced]
    if not present:
        raise GeometryMismatchError(
            f"{path}: the segmentation references none of the image series' slices"
        )
    vol = image.volume
    mask = np.zeros(vol.shape, dtype=bool)
    if image.frame_numbers:  # frames of multi-frame (enhanced) instances
        for uid in present:
            slices = [i for i, u in enumerate(image.sop_instance_uids) if u == uid]
            pixels = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=uid,
                source_frame_numbers=[image.frame_numbers[i] for i in slices],
                segment_numbers=numbers[:1],
                assert_missing_frames_are_empty=True,
            )[..., 0]
            mask[slices] = pixels >= 0.5
    else:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=present,
            segment_numbers=numbers[:1],
            assert_missing_frames_are_empty=True,
        )[..., 0]
        index = {u: i for i, u in enumerate(image.sop_instance_uids)}
        for k, uid in enumerate(present):
            mask[index[uid]] = pixels[k] >= 0.5
    if not mask.any():
        raise EmptyMaskError(f"{path}: segment {segment!r} holds no voxel on this image")
    return Mask(
        array=mask,
        spacing_mm=vol.spacing_mm,
        origin_mm=vol.origin_mm,
        direction=vol.direction,
        name=segment,
    )
