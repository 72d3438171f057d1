"""Benchmark: the full IBSI feature set, osteomics vs MIRP 2.7.0, with the same settings, same run.

Input: the ``GTV_Mass`` ROI of the 12 STS patients (../shared/data/radiology/sts/*/<MOD>/image +
mask/RS.dcm; ROI ``GTV_Mass_CT``, ``GTV_Mass_PET``, ``GTV_Mass_MR_T1``).

Settings (shared by both sides):

- CT: IBSI configuration C (osteomics ``ibsi-config-c``): 2 mm trilinear without anti-aliasing,
  HU rounded, mask trilinear >= 0.5, range -1000..400 HU, FBS 25 HU, IVH FBS 2.5 HU.
- MR_T1 (``--modalities MR_T1``): osteomics ``mr``: 2 mm trilinear, outliers 3 SD, FBN 32,
  IVH FBN 1000.
- PET (``--modalities PET``): osteomics ``pet``: 4 mm trilinear, SUV 0..1000, FBS 0.25, IVH FBS 0.1.

"Full IBSI feature set": every family, with every aggregation variant (GLCM/GLRLM: 2D averaged,
2D slice-merged, 2.5D direction-merged, 2.5D merged, 3D averaged, 3D merged; GLSZM, GLDZM,
NGTDM, NGLDM: 2D, 2.5D, 3D), which osteomics always computes and MIRP is asked for explicitly.

Timing: per patient, the wall time of "read the DICOM series and the RTSTRUCT, IBSI image
processing, every feature" on both sides (MIRP's ``extract_features`` cannot time its reading
apart from its computation, so osteomics is timed over the same work, reading included). Python
start-up and imports are excluded on both sides. MIRP runs in its own venv
(``--mirp-python``, default ../mirp-venv/bin/python next to the checkout; make it with
``python3 -m venv ../mirp-venv && ../mirp-venv/bin/pip install mirp==2.7.0``) in a
subprocess, one process for all patients, ``num_cpus=1``; osteomics runs in this process,
one thread of Python (numpy/scipy may use their own threads).

Contours given to MIRP (``--mirp-contours``): MIRP 2.7.0 rasterises an RTSTRUCT on the image grid
only when every contour lies on a slice plane and the contoured planes are adjacent slices, both
tested with ``numpy.isclose`` in voxel units (relative tolerance 1e-5;
``mirp/_data_import/dicom_file_rtstruct.py``, ``_convert_contour_using_image``). Otherwise it
rasterises on a grid of its own (z step from the contour planes, in-plane origin one pixel below
the contour's minimum, so off the image's pixel centres) and resamples that mask onto the image
(trilinear, >= 0.5), which IBSI 1 ("Segmentation": the voxel centres inside each slice's
polygon) does not describe. The STS MR_T1 and PET contours lie on the CT's 3.27 mm planes: on
the MR (3.26996 mm slices) neighbouring contour planes are 1.0000122 slices apart, on the PET
(10 of 12 patients) up to 0.012 slice (0.04 mm) off the slice planes, so MIRP re-grids them and
its masks differ from osteomics' (#12 PET at native resolution: 323 vs 365 voxels, 31 588 vs
35 696 mm³). ``image-planes`` (default) gives MIRP a copy of RS.dcm whose contour points are
moved along the slice normal onto the nearest image slice plane (at most 0.04 mm here;
osteomics assigns each contour to its nearest slice, so its own mask is the same either way):
both tools then rasterise the same contours on the image grid. ``as-stored`` gives MIRP the
file as is.

Agreement: per modality, over all patients, the fraction of (patient, shared feature) values
within 1 % relative difference ``|a - b| / max(|a|, |b|)``, and the features outside 1 %, with
the number of patients, the largest difference and the reason where known.

Patient labels are printed as indices (#01..#12), never as the data set's IDs. The speed ratio
(MIRP time / osteomics time, all patients of the CT run) is printed last, on one line.

Run: ``.venv/bin/python bench/radiomics.py [--patients 12] [--modalities CT MR_T1 PET]
[--mirp-contours image-planes|as-stored]
[--pyradiomics-python ../pyrad-venv/bin/python]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "radiology" / "sts"
MIRP_PYTHON = Path(__file__).resolve().parents[1] / ".." / "mirp-venv" / "bin" / "python"
TOLERANCE = 0.01

_DIRECTIONAL = [
    "2d_average", "2d_slice_merge", "2.5d_direction_merge", "2.5d_volume_merge", "3d_average",
    "3d_volume_merge",
]  # fmt: skip
_ZONE = ["2d", "2.5d", "3d"]


@dataclass(frozen=True)
class Setting:
    """One modality's shared settings: the osteomics configuration and the MIRP arguments."""

    modality: str  # folder name in the STS data
    roi: str
    osteomics_config: str
    mirp_kwargs: dict[str, Any]
    texture_suffix: str  # MIRP's discretisation suffix in feature names
    explanations: dict[str, str] = field(default_factory=dict)


_COMMON_MIRP = {
    "by_slice": False,
    "spline_order": 1,
    "anti_aliasing": False,
    "base_feature_families": "all",
    "glcm_spatial_method": _DIRECTIONAL,
    "glrlm_spatial_method": _DIRECTIONAL,
    "glszm_spatial_method": _ZONE,
    "gldzm_spatial_method": _ZONE,
    "ngtdm_spatial_method": _ZONE,
    "ngldm_spatial_method": _ZONE,
    "num_cpus": 1,
}

_MORAN = (
    "MIRP approximates Moran's I on large ROIs by default (a random subsample of voxel pairs); "
    "with no_approximation=True it equals osteomics' exact value (docs/radiomics.md)"
)
_GEARY = "MIRP approximates Geary's C on large ROIs by default, as Moran's I"
_COARSENESS = (
    "a slice whose ROI voxels share one grey level has sum(p*s) = 0: MIRP sets coarseness to "
    "10^6 there (mirp/_features/ngtdm_features.py) and averages it in; osteomics leaves it "
    "undefined (NaN) and averages over the other slices"
)
_CORRELATION = (
    "2D/2.5D slices with one grey level (zero marginal variance): MIRP sets correlation to 1 "
    "(cm_features.py, FeatureCMCorrelation), osteomics leaves it undefined (NaN) and averages "
    "over the other matrices"
)
_INFO_CORR = (
    "2D slices with one grey level (HX = 0): MIRP sets information correlation 1 to 1 "
    "(FeatureCMInformationCorrelation1), osteomics leaves it undefined (NaN)"
)
_INV_VAR = (
    "2D slices whose GLCM has no off-diagonal element: MIRP returns NaN and drops the slice "
    "from the average (FeatureCMInverseVariance), osteomics returns the IBSI sum over k >= 1, "
    "0, and keeps it"
)
_EXPLAIN = {
    "Moran's I index": _MORAN,
    "Geary's C measure": _GEARY,
    "Coarseness": _COARSENESS,
    "Correlation": _CORRELATION,
    "Information correlation 1": _INFO_CORR,
    "Inverse variance": _INV_VAR,
}

SETTINGS = {
    "CT": Setting(
        "CT",
        "GTV_Mass_CT",
        "ibsi-config-c",
        {
            **_COMMON_MIRP,
            "image_modality": "CT",
            "new_spacing": 2.0,
            "resegmentation_intensity_range": [-1000.0, 400.0],
            "base_discretisation_method": "fixed_bin_size",
            "base_discretisation_bin_width": 25.0,
            "ivh_discretisation_method": "fixed_bin_size",
            "ivh_discretisation_bin_width": 2.5,
        },
        "fbs_w25.0",
        _EXPLAIN,
    ),
    "MR_T1": Setting(
        "MR_T1",
        "GTV_Mass_MR_T1",
        "mr",
        {
            **_COMMON_MIRP,
            "image_modality": "MR",
            "new_spacing": 2.0,
            "resegmentation_sigma": 3.0,
            "base_discretisation_method": "fixed_bin_number",
            "base_discretisation_n_bins": 32,
            "ivh_discretisation_method": "fixed_bin_number",
            "ivh_discretisation_n_bins": 1000,
        },
        "fbn_n32",
        _EXPLAIN,
    ),
    "PET": Setting(
        "PET",
        "GTV_Mass_PET",
        "pet",
        {
            **_COMMON_MIRP,
            "image_modality": "PT",
            "new_spacing": 4.0,
            "resegmentation_intensity_range": [0.0, 1000.0],
            "base_discretisation_method": "fixed_bin_size",
            "base_discretisation_bin_width": 0.25,
            "ivh_discretisation_method": "fixed_bin_size",
            "ivh_discretisation_bin_width": 0.1,
        },
        "fbs_w0.25",
        _EXPLAIN,
    ),
}

_MIRP_DRIVER = r"""
import json, logging, sys, time, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
from mirp import extract_features

jobs = json.loads(open(sys.argv[1]).read())
timings = []
for job in jobs:
    t0 = time.perf_counter()
    res = extract_features(image=job["image"], mask=job["mask"], roi_name=job["roi"],
                           **job["kwargs"])
    timings.append(time.perf_counter() - t0)
    res[0].T.to_csv(job["out"])
open(sys.argv[2], "w").write(json.dumps(timings))
"""

_PYRADIOMICS_DRIVER = r"""
import json, logging, sys, time
logging.disable(logging.CRITICAL)
import radiomics
from radiomics import featureextractor
radiomics.setVerbosity(60)

jobs = json.loads(open(sys.argv[1]).read())
settings = jobs["settings"]
timings, counts = [], []
for job in jobs["patients"]:
    extractor = featureextractor.RadiomicsFeatureExtractor(**settings)
    extractor.disableAllFeatures()
    extractor.enableFeatureClassByName("shape")
    for name in ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"):
        extractor.enableFeatureClassByName(name)
    t0 = time.perf_counter()
    result = extractor.execute(job["image"], job["mask"])
    timings.append(time.perf_counter() - t0)
    counts.append(sum(1 for k in result if k.startswith("original_")))
open(sys.argv[2], "w").write(json.dumps({"seconds": timings, "features": counts}))
"""
#: osteomics groups matching the PyRadiomics classes enabled above (gldm ~ NGLDM).
_PYRADIOMICS_GROUPS = ("morphology", "statistics", "glcm", "glrlm", "glszm", "ngtdm", "ngldm")

_MORPH = {
    "morph_volume": "Volume (mesh)", "morph_vol_approx": "Volume (voxel counting)",
    "morph_area_mesh": "Surface area (mesh)", "morph_av": "Surface to volume ratio",
    "morph_comp_1": "Compactness 1", "morph_comp_2": "Compactness 2",
    "morph_sph_dispr": "Spherical disproportion", "morph_sphericity": "Sphericity",
    "morph_asphericity": "Asphericity", "morph_com": "Centre of mass shift",
    "morph_integ_int": "Integrated intensity", "morph_diam": "Maximum 3D diameter",
    "morph_vol_dens_conv_hull": "Volume density (convex hull)",
    "morph_area_dens_conv_hull": "Area density (convex hull)",
    "morph_vol_dens_aabb": "Volume density (AABB)", "morph_area_dens_aabb": "Area density (AABB)",
    "morph_pca_maj_axis": "Major axis length", "morph_pca_min_axis": "Minor axis length",
    "morph_pca_least_axis": "Least axis length", "morph_pca_elongation": "Elongation",
    "morph_pca_flatness": "Flatness", "morph_vol_dens_aee": "Volume density (AEE)",
    "morph_area_dens_aee": "Area density (AEE)", "morph_moran_i": "Moran's I index",
    "morph_geary_c": "Geary's C measure",
}  # fmt: skip
_IVH = {
    "ivh_v10": "Volume fraction at 10% intensity", "ivh_v90": "Volume fraction at 90% intensity",
    "ivh_i10": "Intensity at 10% volume", "ivh_i90": "Intensity at 90% volume",
    "ivh_diff_v10_v90": "Volume fraction difference between 10% and 90% intensity",
    "ivh_diff_i10_i90": "Intensity difference between 10% and 90% volume",
}  # fmt: skip
_MIRP_DIRECTIONAL = {
    "2D, averaged": "2d_avg", "2D, slice-merged": "2d_s_mrg",
    "2.5D, direction-merged": "2.5d_d_mrg",
    "2.5D, merged": "2.5d_v_mrg", "3D, averaged": "3d_avg", "3D, merged": "3d_v_mrg",
}  # fmt: skip
_MIRP_ZONE = {"2D": "2d", "2.5D": "2.5d", "3D": "3d"}


def feature_map(mirp_names: list[str], suffix: str) -> dict[str, tuple[str, str]]:
    """MIRP feature name -> osteomics (family, feature).

    Morphology, local intensity and IVH by name; statistics, histogram and texture families by
    position within a (prefix, aggregation suffix) group, which holds because MIRP and osteomics
    both list a family's features in the IBSI manual's order (checked by the group sizes).

    Raises
    ------
    RuntimeError
        A group's size differs between MIRP and osteomics (the positional mapping would be wrong).
    """
    from osteomics.radiology.radiomics.features import GROUPS

    fam_of = {fam: feats for g in GROUPS.values() for fam, feats in g.families.items()}
    pairs: dict[str, tuple[str, str]] = {k: ("Morphology", v) for k, v in _MORPH.items()}
    pairs["loc_peak_loc"] = ("Local intensity", "Local intensity peak")
    pairs["loc_peak_glob"] = ("Local intensity", "Global intensity peak")
    pairs.update({k: ("Intensity volume histogram", v) for k, v in _IVH.items()})

    def positional(prefix: str, end: str, family: str) -> None:
        keys = [k for k in mirp_names if k.startswith(prefix) and k.endswith(end)]
        feats = fam_of[family]
        if len(keys) != len(feats):
            raise RuntimeError(f"{prefix}*{end}: MIRP {len(keys)} features, {family} {len(feats)}")
        pairs.update({k: (family, f) for k, f in zip(keys, feats, strict=True)})

    positional("stat_", "", "Statistics")
    positional("ih_", "", "Intensity histogram")
    stems = {
        "cm_": "Co-occurrence matrix", "rlm_": "Run length matrix", "szm_": "Size zone matrix",
        "dzm_": "Distance zone matrix", "ngt_": "Neighbourhood grey tone difference matrix",
        "ngl_": "Neighbouring grey level dependence matrix",
    }  # fmt: skip
    for prefix, stem in stems.items():
        variants = _MIRP_DIRECTIONAL if prefix in ("cm_", "rlm_") else _MIRP_ZONE
        for variant, mirp_variant in variants.items():
            positional(prefix, f"_{mirp_variant}_{suffix}", f"{stem} ({variant})")
    return {k: v for k, v in pairs.items() if k in mirp_names}


def read_mirp_csv(path: Path) -> dict[str, float]:
    """MIRP's transposed one-row feature table -> {name: value} (non-numeric rows dropped)."""
    import csv

    out: dict[str, float] = {}
    with path.open() as fh:
        for row in csv.reader(fh):
            try:
                out[row[0]] = float(row[1])
            except (ValueError, IndexError):
                continue
    return out


def run_osteomics(
    patients: list[Path], setting: Setting
) -> tuple[list[float], list[dict[tuple[str, str], float]]]:
    """Per patient: seconds (read + process + features) and the values."""
    from osteomics.radiology.radiomics import extract_features, load_config
    from osteomics.radiology.radiomics.dicom import read_dicom_series, read_rtstruct_mask

    config = load_config(setting.osteomics_config)
    times, values = [], []
    for folder in patients:
        base = folder / setting.modality
        t0 = time.perf_counter()
        image = read_dicom_series(base / "image")
        mask = read_rtstruct_mask(base / "mask" / "RS.dcm", image, setting.roi)
        rows = extract_features(image.volume, mask, config)
        times.append(time.perf_counter() - t0)
        values.append({(r.family, r.feature): r.value for r in rows})
    return times, values


def contours_onto_image_planes(rtstruct: Path, image_folder: Path, out: Path) -> float:
    """Copy ``rtstruct`` to ``out`` with every contour point moved onto its nearest slice plane.

    Each point moves along the slice normal of ``image_folder``'s series to the plane of the
    nearest slice (ImagePositionPatient projected on the normal); in-plane coordinates are kept.

    Returns
    -------
    float
        The largest move, mm.
    """
    import numpy as np
    import pydicom
    from pydicom.valuerep import DSfloat

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in image_folder.glob("*.dcm")]
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    planes_mm = np.sort(
        [np.dot(np.asarray(h.ImagePositionPatient, dtype=np.float64), normal) for h in headers]
    )
    ds = pydicom.dcmread(rtstruct)
    largest_mm = 0.0
    for roi_contour in ds.ROIContourSequence:
        for contour in roi_contour.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            along_mm = points @ normal
            nearest = np.abs(planes_mm[None, :] - along_mm[:, None]).argmin(axis=1)
            move_mm = planes_mm[nearest] - along_mm
            largest_mm = max(largest_mm, float(np.abs(move_mm).max()))
            points += np.outer(move_mm, normal)
            contour.ContourData = [DSfloat(v, auto_format=True) for v in points.ravel()]
    ds.save_as(out)
    return largest_mm


def run_mirp(
    patients: list[Path], setting: Setting, mirp_python: Path, work: Path, contours: str
) -> tuple[list[float], list[dict[str, float]]]:
    """Per patient: MIRP seconds (its ``extract_features`` call) and the values.

    ``contours``: ``image-planes`` (MIRP gets RS.dcm with the contours moved onto the image's
    slice planes, see the module docstring) or ``as-stored``.
    """
    driver = work / "mirp_driver.py"
    driver.write_text(_MIRP_DRIVER)
    jobs = []
    largest_move_mm = 0.0
    for i, folder in enumerate(patients):
        image_folder = folder / setting.modality / "image"
        rtstruct = folder / setting.modality / "mask" / "RS.dcm"
        if contours == "image-planes":
            moved = work / f"rs_{setting.modality}_{i:02d}.dcm"
            largest_move_mm = max(
                largest_move_mm, contours_onto_image_planes(rtstruct, image_folder, moved)
            )
            rtstruct = moved
        jobs.append(
            {
                "image": str(image_folder),
                "mask": str(rtstruct),
                "roi": setting.roi,
                "kwargs": setting.mirp_kwargs,
                "out": str(work / f"mirp_{setting.modality}_{i:02d}.csv"),
            }
        )
    if contours == "image-planes":
        print(
            f"  MIRP gets the contours moved onto the {setting.modality} slice planes "
            f"(largest move {largest_move_mm:.4f} mm)"
        )
    jobs_path, timings_path = work / "jobs.json", work / "timings.json"
    jobs_path.write_text(json.dumps(jobs))
    log_path = work / f"mirp_{setting.modality}.log"
    with log_path.open("w") as log_fh:
        proc = subprocess.run(
            [str(mirp_python), str(driver), str(jobs_path), str(timings_path)],
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"MIRP failed (exit {proc.returncode}); log tail:\n{tail}")
    times = json.loads(timings_path.read_text())
    return times, [read_mirp_csv(Path(j["out"])) for j in jobs]


def run_pyradiomics_ratio(
    patients: list[Path], pyradiomics_python: Path, work: Path
) -> tuple[float, float, int]:
    """CT, configuration C settings: PyRadiomics 3.0.1 vs osteomics on the families both have.

    Both sides get the same volume and mask (read once by osteomics, the mask written as NIfTI
    for PyRadiomics, which reads no RTSTRUCT) and are timed over the extraction only
    (PyRadiomics ``execute``, NIfTI reading included; osteomics ``extract_features`` with the
    groups morphology, statistics, GLCM, GLRLM, GLSZM, NGTDM, NGLDM, all aggregation variants).
    PyRadiomics settings: 2 mm ``sitkLinear`` resampling, re-segmentation -1000..400 HU, bin
    width 25 HU, 3D, distance 1.

    Returns
    -------
    (PyRadiomics seconds, osteomics seconds, PyRadiomics features per patient)
    """
    import nibabel as nib
    import numpy as np

    from osteomics.radiology.radiomics import extract_features, load_config
    from osteomics.radiology.radiomics.dicom import read_dicom_series, read_rtstruct_mask

    config = load_config("ibsi-config-c")
    ours = 0.0
    jobs = []
    for i, folder in enumerate(patients):
        base = folder / "CT"
        image = read_dicom_series(base / "image")
        mask = read_rtstruct_mask(base / "mask" / "RS.dcm", image, "GTV_Mass_CT")
        t0 = time.perf_counter()
        extract_features(image.volume, mask, config, groups=_PYRADIOMICS_GROUPS)
        ours += time.perf_counter() - t0
        dz, dy, dx = image.volume.spacing_mm
        affine = np.diag([-dx, -dy, dz, 1.0])  # LPS -> RAS; PyRadiomics needs the same grid only
        img_path, mask_path = work / f"ct_{i:02d}.nii.gz", work / f"ct_{i:02d}_mask.nii.gz"
        nib.save(nib.Nifti1Image(image.volume.array.transpose(2, 1, 0).astype(np.float32), affine),
                 img_path)  # fmt: skip
        nib.save(nib.Nifti1Image(mask.array.transpose(2, 1, 0).astype(np.uint8), affine), mask_path)
        jobs.append({"image": str(img_path), "mask": str(mask_path)})
    settings = {
        "resampledPixelSpacing": [2.0, 2.0, 2.0], "interpolator": "sitkLinear",
        "resegmentRange": [-1000, 400], "binWidth": 25, "label": 1, "force2D": False,
        "distances": [1], "correctMask": True,
    }  # fmt: skip
    jobs_path, out_path = work / "pyradiomics_jobs.json", work / "pyradiomics_out.json"
    jobs_path.write_text(json.dumps({"settings": settings, "patients": jobs}))
    driver = work / "pyradiomics_driver.py"
    driver.write_text(_PYRADIOMICS_DRIVER)
    proc = subprocess.run(
        [str(pyradiomics_python), str(driver), str(jobs_path), str(out_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"PyRadiomics failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    out = json.loads(out_path.read_text())
    return float(sum(out["seconds"])), ours, int(max(out["features"]))


def rel_diff(a: float, b: float) -> float:
    """``|a - b| / max(|a|, |b|)``; 0 when both are 0; inf when exactly one is NaN."""
    if math.isnan(a) and math.isnan(b):
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return math.inf
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def agreement(
    setting: Setting,
    ours: list[dict[tuple[str, str], float]],
    mirp: list[dict[str, float]],
) -> tuple[int, int, int, list[str]]:
    """(values compared, within tolerance, shared features, report lines for the others)."""
    names = list(dict.fromkeys(name for m in mirp for name in m))  # MIRP's column order
    mapping = feature_map(names, setting.texture_suffix)
    n = within = 0
    outside: dict[tuple[str, str], list[tuple[int, float, float, float]]] = defaultdict(list)
    for i, (o, m) in enumerate(zip(ours, mirp, strict=True)):
        for name, key in mapping.items():
            if name not in m or key not in o:
                continue
            n += 1
            d = rel_diff(m[name], o[key])
            if d <= TOLERANCE:
                within += 1
            else:
                outside[key].append((i + 1, m[name], o[key], d))
    lines = []
    for (family, feature), bad in sorted(outside.items(), key=lambda kv: -len(kv[1])):
        worst = max(bad, key=lambda b: b[3])
        why = setting.explanations.get(feature, "not explained yet")
        lines.append(
            f"  {family} | {feature}: {len(bad)}/{len(ours)} patients; worst #{worst[0]:02d} "
            f"MIRP {worst[1]:.6g} osteomics {worst[2]:.6g} (rel {worst[3]:.3g}); {why}"
        )
    return n, within, len(mapping), lines


def main() -> None:
    """Run the benchmark and print the agreement and, last, the CT speed ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=12, help="first N STS patients")
    parser.add_argument("--modalities", nargs="+", default=["CT"], choices=sorted(SETTINGS))
    parser.add_argument("--mirp-python", type=Path, default=MIRP_PYTHON)
    parser.add_argument("--keep", type=Path, default=None, help="keep MIRP outputs here")
    parser.add_argument(
        "--mirp-contours",
        choices=["image-planes", "as-stored"],
        default="image-planes",
        help="RS.dcm given to MIRP: contours moved onto the image's slice planes (default), or "
        "as stored (MIRP then re-grids the MR and PET contours; see the module docstring)",
    )
    parser.add_argument(
        "--pyradiomics-python",
        type=Path,
        default=None,
        help="python of a venv with PyRadiomics 3.0.1 (CONVENTIONS.md recipe): also report the "
        "CT ratio to PyRadiomics on the families both have",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    patients = sorted(p for p in STS.resolve().iterdir() if p.is_dir())[: args.patients]
    # Both sides pay their import cost before timing starts (MIRP: in its driver, before the
    # loop; osteomics: here, including the modules it imports lazily).
    import pydicom  # noqa: F401
    import scipy.signal
    import scipy.special  # noqa: F401
    import skimage.draw  # noqa: F401

    import osteomics.radiology.radiomics.dicom  # noqa: F401
    from osteomics.radiology.radiomics import extract_features  # noqa: F401

    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-radiomics-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for modality in args.modalities:
            setting = SETTINGS[modality]
            o_times, o_values = run_osteomics(patients, setting)
            print(f"== {modality} ({setting.roi}, osteomics {setting.osteomics_config!r}; "
                  f"{len(patients)} patients)")  # fmt: skip
            m_times, m_values = run_mirp(
                patients, setting, args.mirp_python, work, args.mirp_contours
            )
            for i, (to, tm) in enumerate(zip(o_times, m_times, strict=True)):
                print(f"  #{i + 1:02d}: osteomics {to:6.2f} s  MIRP {tm:7.2f} s  x{tm / to:5.1f}")
            n, within, shared, lines = agreement(setting, o_values, m_values)
            median = statistics.median(m / o for m, o in zip(m_times, o_times, strict=True))
            print(f"  per-patient ratio MIRP/osteomics: median x{median:.1f}")
            print(
                f"  agreement {modality}: {within}/{n} values within 1 % "
                f"({within / n:.1%}); {shared} shared features x {len(patients)} patients"
            )
            print(f"  features outside 1 % ({len(lines)}):" if lines else "  none outside 1 %")
            for line in lines:
                print(line)
            ratios[modality] = sum(m_times) / sum(o_times)
            print(f"  {modality} total: osteomics {sum(o_times):.1f} s, MIRP {sum(m_times):.1f} s")
        if args.pyradiomics_python is not None:
            t_pyr, t_ours, n_pyr = run_pyradiomics_ratio(patients, args.pyradiomics_python, work)
            print(
                f"PyRadiomics 3.0.1 vs osteomics, CT config C, {len(patients)} patients, "
                f"extraction only ({n_pyr} PyRadiomics features: shape, first order, GLCM, GLRLM, "
                f"GLSZM, GLDM, NGTDM; osteomics the same families, all aggregation variants): "
                f"PyRadiomics {t_pyr:.1f} s, osteomics {t_ours:.1f} s: {t_pyr / t_ours:.1f}x"
            )
    for modality, ratio in ratios.items():
        if modality != "CT":
            print(f"{modality} speed ratio MIRP/osteomics: {ratio:.1f}x")
    if "CT" in ratios:
        print(
            f"CT GTV_Mass, {len(patients)} STS patients, full IBSI set, config C: osteomics is "
            f"{ratios['CT']:.1f}x faster than MIRP 2.7.0 (target >= 5x)"
        )
    else:
        sys.exit(0)


if __name__ == "__main__":
    main()
