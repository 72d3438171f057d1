"""DICOM reading on the real STS data: series geometry, RTSTRUCT rasterisation, PET SUV, bad
inputs (modified copies of real files), IBSI interpolation, and configurations A-E end to end."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from osteomics.radiology.radiomics import Mask, Volume, extract_features, load_config
from osteomics.radiology.radiomics.dicom import (
    RoiNotFoundError,
    SeriesGeometryError,
    SuvError,
    read_dicom_series,
    read_dicom_study,
    read_rtstruct_mask,
    read_study_mask,
    suv_factor,
)
from osteomics.radiology.radiomics.errors import (
    EmptyMaskError,
    GeometryMismatchError,
    ImageReadError,
)
from osteomics.radiology.radiomics.interpolate import Interpolation, resample
from osteomics.radiology.radiomics.morphology import (
    mesh,
    mesh_volume_area,
    moran_geary,
    moran_geary_grid,
    voxel_positions,
)

STS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "radiology" / "sts"
CT = STS / "STS_001" / "CT"
PET = STS / "STS_001" / "PET"
ROI = "GTV_Mass_CT"  # the STS structure sets name the ROI per modality: GTV_Mass_<modality>


@pytest.fixture(autouse=True, scope="module")
def _sts_data_present() -> None:
    """Missing shared data fails these tests loudly (it used to skip them silently)."""
    if not CT.is_dir():
        pytest.fail(f"the STS test data is missing: {CT.resolve()} (see ../shared/data/README)")


@pytest.fixture(scope="module")
def ct():
    return read_dicom_series(CT / "image")


@pytest.fixture(scope="module")
def ct_mask(ct):
    return read_rtstruct_mask(CT / "mask" / "RS.dcm", ct, ROI)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rs_copy(tmp_path: Path) -> tuple[Path, pydicom.Dataset]:
    path = tmp_path / "RS.dcm"
    shutil.copy(CT / "mask" / "RS.dcm", path)
    return path, pydicom.dcmread(path)


# --- geometry ------------------------------------------------------------------------------


def test_ct_series_geometry(ct) -> None:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in (CT / "image").glob("*.dcm")]
    z = np.sort([float(h.ImagePositionPatient[2]) for h in headers])
    vol = ct.volume
    assert vol.shape == (59, int(headers[0].Rows), int(headers[0].Columns))
    assert vol.spacing_mm[0] == pytest.approx(float(np.diff(z).mean()), abs=1e-6)
    assert vol.spacing_mm[1:] == pytest.approx([float(v) for v in headers[0].PixelSpacing])
    assert vol.origin_mm[2] == pytest.approx(z[0])
    np.testing.assert_allclose(vol.direction, np.eye(3)[:, ::-1], atol=1e-6)
    assert -1100 <= vol.array.min() < -500 and 500 < vol.array.max() <= 4000  # HU
    assert ct.info.modality == "CT" and ct.info.units == "HU" and ct.info.patient == "STS_001"


def test_slice_order_comes_from_positions_not_file_names(tmp_path: Path, ct) -> None:
    folder = tmp_path / "shuffled"
    folder.mkdir()
    files = sorted((CT / "image").glob("*.dcm"))
    rng = np.random.default_rng(1)
    for i, f in zip(rng.permutation(len(files)), files, strict=True):
        shutil.copy(f, folder / f"slice{i:03d}.dcm")
    np.testing.assert_array_equal(read_dicom_series(folder).volume.array, ct.volume.array)


def test_rtstruct_mask_matches_mesh_volume(ct, ct_mask) -> None:
    assert ct_mask.name == ROI
    assert ct_mask.array.shape == ct.volume.shape
    assert 0 < ct_mask.n_voxels < ct_mask.array.size
    voxel_volume = ct_mask.n_voxels * ct.volume.voxel_volume_mm3
    mesh_volume, _ = mesh_volume_area(*mesh(ct_mask.array, ct_mask.spacing_mm))
    assert voxel_volume == pytest.approx(mesh_volume, rel=0.02)
    # the ROI does not touch the border of the (5 cm cropped) image
    zs, ys, xs = np.nonzero(ct_mask.array)
    assert zs.min() > 0 and ys.min() > 0 and xs.min() > 0
    assert xs.max() < ct.volume.shape[2] - 1


def test_same_roi_volume_on_ct_pet_mr() -> None:
    volumes = []
    for modality in ("CT", "PET", "MR_T1"):
        image = read_dicom_series(STS / "STS_001" / modality / "image")
        mask = read_rtstruct_mask(STS / "STS_001" / modality / "mask" / "RS.dcm", image)
        volumes.append(mask.n_voxels * image.volume.voxel_volume_mm3)
    assert max(volumes) / min(volumes) < 1.03


# --- bad series ------------------------------------------------------------------------------


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    folder = _copy(CT / "image", tmp_path / "image")
    (folder / "000030.dcm").unlink()
    with pytest.raises(SeriesGeometryError, match=r"1 missing slice\(s\).*gap of 6\.5"):
        read_dicom_series(folder)


def test_non_uniform_spacing_is_refused(tmp_path: Path) -> None:
    folder = _copy(CT / "image", tmp_path / "image")
    path = folder / "000030.dcm"
    ds = pydicom.dcmread(path)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 1.0]
    ds.save_as(path)
    with pytest.raises(SeriesGeometryError, match="non-uniform slice spacing"):
        read_dicom_series(folder)


def test_mixed_pixel_spacing_is_refused(tmp_path: Path) -> None:
    folder = _copy(CT / "image", tmp_path / "image")
    path = folder / "000030.dcm"
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = [float(v) * 2 for v in ds.PixelSpacing]
    ds.save_as(path)
    with pytest.raises(SeriesGeometryError, match="different PixelSpacing"):
        read_dicom_series(folder)


def test_folder_without_series(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no CT, MR or PET image series"):
        read_dicom_series(tmp_path)


# --- bad RTSTRUCT ----------------------------------------------------------------------------


def test_absent_roi_lists_names(tmp_path: Path, ct) -> None:
    path, ds = _rs_copy(tmp_path)
    ds.StructureSetROISequence[0].ROIName = "Tumour"
    ds.save_as(path)
    with pytest.raises(RoiNotFoundError, match=r"no ROI named 'GTV_Mass'.*holds: Tumour"):
        read_rtstruct_mask(path, ct, "GTV_Mass")


def test_contour_outside_image(tmp_path: Path, ct) -> None:
    path, ds = _rs_copy(tmp_path)
    contour = ds.ROIContourSequence[0].ContourSequence[5]
    pts = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
    pts[:, 0] += 500.0
    contour.ContourData = [f"{v:.4f}" for v in pts.ravel()]
    ds.save_as(path)
    with pytest.raises(GeometryMismatchError, match="outside the image"):
        read_rtstruct_mask(path, ct, ROI)


def test_frame_of_reference_mismatch(tmp_path: Path, ct) -> None:
    path, ds = _rs_copy(tmp_path)
    ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = "1.2.3.4.5"
    ds.save_as(path)
    with pytest.raises(GeometryMismatchError, match="frame of reference"):
        read_rtstruct_mask(path, ct, ROI)


def _set_contours(ds: pydicom.Dataset, polygons: list[np.ndarray], z: float) -> None:
    seq = ds.ROIContourSequence[0].ContourSequence
    template = seq[0]
    items = []
    for poly in polygons:
        item = pydicom.Dataset()
        item.ContourGeometricType = "CLOSED_PLANAR"
        pts = np.column_stack([poly, np.full(len(poly), z)])
        item.NumberOfContourPoints = len(pts)
        item.ContourData = [f"{v:.4f}" for v in pts.ravel()]
        if "ContourImageSequence" in template:
            item.ContourImageSequence = template.ContourImageSequence
        items.append(item)
    ds.ROIContourSequence[0].ContourSequence = items


def _square(vol: Volume, row0: float, col0: float, size: float) -> np.ndarray:
    """Square with corners at (row, col) index positions, in patient x, y (axial image)."""
    ox, oy, _ = vol.origin_mm
    dy, dx = vol.spacing_mm[1:]
    rows = np.array([row0, row0, row0 + size, row0 + size])
    cols = np.array([col0, col0 + size, col0 + size, col0])
    return np.column_stack([ox + cols * dx, oy + rows * dy])


def test_empty_mask(tmp_path: Path, ct) -> None:
    path, ds = _rs_copy(tmp_path)
    vol = ct.volume
    # a square 0.4 voxel wide between pixel centres encloses none of them
    _set_contours(ds, [_square(vol, 10.3, 10.3, 0.4)], vol.origin_mm[2] + 3 * vol.spacing_mm[0])
    ds.save_as(path)
    with pytest.raises(EmptyMaskError, match="enclose no voxel"):
        read_rtstruct_mask(path, ct, ROI)


def test_holes_and_islands_even_odd(tmp_path: Path, ct) -> None:
    path, ds = _rs_copy(tmp_path)
    vol = ct.volume
    outer = _square(vol, 9.5, 9.5, 20)  # 20 x 20 pixel centres (10..29)
    hole = _square(vol, 14.5, 14.5, 10)  # 10 x 10 inside it
    island = _square(vol, 49.5, 49.5, 5)  # separate 5 x 5
    _set_contours(ds, [outer, hole, island], vol.origin_mm[2] + 3 * vol.spacing_mm[0])
    ds.save_as(path)
    mask = read_rtstruct_mask(path, ct, ROI)
    assert mask.n_voxels == 400 - 100 + 25
    assert mask.array[3].sum() == mask.n_voxels
    assert not mask.array[3, 20, 20] and mask.array[3, 10, 10] and mask.array[3, 52, 52]


def test_one_slice_roi_follows_ibsi(tmp_path: Path, ct) -> None:
    """An ROI contoured on one slice is valid input (IBSI 1 defines every feature on it).

    Without interpolation across slices the mask is one voxel thick: the mesh of the padded mask
    is closed (morphology defined), the least PCA axis is 0 and the approximate enclosing
    ellipsoid flat (both AEE densities NaN, the only undefined values); 2D and 2.5D variants
    coincide (one slice), and so do the 3D variants whose out-of-plane neighbours all lie
    outside the ROI. 3D interpolation to 2 mm makes it two slices thick, every value defined.
    """
    path, ds = _rs_copy(tmp_path)
    contours = ds.ROIContourSequence[0].ContourSequence
    planes = sorted({float(c.ContourData[2]) for c in contours})
    middle = planes[len(planes) // 2]
    ds.ROIContourSequence[0].ContourSequence = [
        c for c in contours if float(c.ContourData[2]) == middle
    ]
    ds.save_as(path)
    mask = read_rtstruct_mask(path, ct, ROI)
    assert np.unique(np.nonzero(mask.array)[0]).size == 1 and mask.n_voxels > 1000

    rows = extract_features(ct.volume, mask, load_config("ibsi-config-a"))
    values = {(r.family, r.feature): r.value for r in rows}
    undefined = {k for k, v in values.items() if not math.isfinite(v)}
    assert undefined == {
        ("Morphology", "Volume density (AEE)"),
        ("Morphology", "Area density (AEE)"),
    }
    morph = {f: v for (fam, f), v in values.items() if fam == "Morphology"}
    assert morph["Volume (mesh)"] == pytest.approx(morph["Volume (voxel counting)"], rel=0.02)
    assert morph["Least axis length"] == 0.0 and morph["Flatness"] == 0.0
    assert morph["Minor axis length"] > 0

    def same(family_a: str, family_b: str) -> None:
        a = {f: v for (fam, f), v in values.items() if fam == family_a}
        b = {f: v for (fam, f), v in values.items() if fam == family_b}
        assert a and a.keys() == b.keys()
        for feature in a:
            assert a[feature] == pytest.approx(b[feature], rel=1e-9), (family_a, feature)

    for stem in ("Co-occurrence matrix", "Run length matrix"):
        same(f"{stem} (2D, averaged)", f"{stem} (2.5D, direction-merged)")
        same(f"{stem} (2D, slice-merged)", f"{stem} (2.5D, merged)")
    same("Co-occurrence matrix (2.5D, merged)", "Co-occurrence matrix (3D, merged)")
    for stem in ("Size zone matrix", "Neighbourhood grey tone difference matrix",
                 "Neighbouring grey level dependence matrix"):  # fmt: skip
        same(f"{stem} (2D)", f"{stem} (2.5D)")
        same(f"{stem} (2.5D)", f"{stem} (3D)")
    same("Distance zone matrix (2D)", "Distance zone matrix (2.5D)")
    # in 3D every voxel of a one-voxel-thick ROI is at distance 1 from its border
    assert values[("Distance zone matrix (3D)", "Small distance emphasis")] == 1.0
    assert values[("Distance zone matrix (2D)", "Small distance emphasis")] < 1.0

    config = load_config("ct")
    assert config.interpolation is not None and config.interpolation.slice_mm == 2.0
    _, resampled = resample(ct.volume, mask, config.interpolation)
    assert np.unique(np.nonzero(resampled.array)[0]).size == 2  # 3.27 mm slice -> 2 x 2 mm
    rows = extract_features(ct.volume, mask, config)
    assert all(math.isfinite(r.value) for r in rows)


def test_study_folder_finds_series_and_rtstruct() -> None:
    study = read_dicom_study(STS / "STS_001" / "CT")
    mask = read_study_mask(study, None)
    assert mask.name == ROI and study.image.info.modality == "CT"
    with pytest.raises(ImageReadError, match="several image series"):
        read_dicom_study(STS / "STS_001")
    pet = read_dicom_study(STS / "STS_001", modality="PT")
    assert read_study_mask(pet, "GTV_Mass_PET").n_voxels > 0
    with pytest.raises(RoiNotFoundError, match="GTV_Mass_PET"):
        read_study_mask(pet, "GTV_Mass")


# --- PET SUV ---------------------------------------------------------------------------------


def test_pet_gml_is_read_as_suv() -> None:
    image = read_dicom_series(PET / "image")
    assert image.info.units == "SUVbw"
    assert image.volume.array.min() >= 0 and 1 < image.volume.array.max() < 100


def test_pet_bqml_converted_to_suv(tmp_path: Path) -> None:
    folder = _copy(PET / "image", tmp_path / "image")
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.Units = "BQML"
        ds.save_as(f)
    bqml = read_dicom_series(folder)
    gml = read_dicom_series(PET / "image")
    ds = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    factor = (
        float(ds.PatientWeight)
        * 1000
        / float(ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose)
    )  # DecayCorrection ADMIN: no decay
    np.testing.assert_allclose(bqml.volume.array, gml.volume.array * factor, rtol=1e-12)
    ds.DecayCorrection = "START"
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    elapsed = 60 * 45 + 11  # injection 10:35:00 -> SeriesTime 11:20:11
    decay = math.exp(-math.log(2) * elapsed / float(rp.RadionuclideHalfLife))
    assert suv_factor(ds, "test") == pytest.approx(factor / decay, rel=1e-9)


def test_pet_missing_suv_tags(tmp_path: Path) -> None:
    folder = _copy(PET / "image", tmp_path / "image")
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.Units = "BQML"
        del ds.PatientWeight
        ds.save_as(f)
    with pytest.raises(SuvError, match="PatientWeight"):
        read_dicom_series(folder)


# --- interpolation and Moran/Geary ------------------------------------------------------------


def test_interpolation_grid_alignment() -> None:
    array = np.arange(5 * 6 * 7, dtype=np.float64).reshape(5, 6, 7)
    vol = Volume(array, (1.0, 1.0, 1.0), origin_mm=(10.0, 20.0, 30.0))
    mask = Mask(np.ones_like(array, dtype=bool), (1.0, 1.0, 1.0), origin_mm=(10.0, 20.0, 30.0))
    new_vol, new_mask = resample(vol, mask, Interpolation(in_plane_mm=2.0, slice_mm=2.0))
    # ceil(n / 2) voxels, centred on the original grid centre
    assert new_vol.shape == (3, 3, 4)
    assert new_vol.spacing_mm == (2.0, 2.0, 2.0)
    # x: 7 voxels -> 4 new ones at original index 3 + (j - 1.5) * 2 = 0, 2, 4, 6
    assert new_vol.origin_mm == pytest.approx((10.0, 20.5, 30.0))
    assert new_vol.array[0, 0, 0] == pytest.approx((array[0, 0, 0] + array[0, 1, 0]) / 2)
    assert new_mask.array.all()
    # 2D: slices kept
    flat_vol, _ = resample(vol, mask, Interpolation(in_plane_mm=2.0))
    assert flat_vol.shape == (5, 3, 4) and flat_vol.spacing_mm[0] == 1.0


def test_mask_partial_volume_threshold() -> None:
    array = np.zeros((1, 1, 4))
    roi = np.array([[[True, True, False, False]]])
    vol = Volume(array, (1.0, 1.0, 1.0))
    new = Interpolation(in_plane_mm=0.5, mask_threshold=0.5)
    _, mask = resample(vol, Mask(roi, (1.0, 1.0, 1.0)), new)
    # 2 x 8 new voxels at index y = -0.25, 0.25 and x = -0.25, 0.25, ..., 3.25; zero beyond the
    # grid, so fractions 0.75 * (0.75, 1, 1, 0.75, 0.25, 0, 0, 0) = 0.56, 0.75, ...
    assert mask.array.shape == (1, 2, 8)
    assert mask.array[0, 0].tolist() == [True] * 4 + [False] * 4


def test_moran_geary_fft_equals_pairwise() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(5, 8, 9)).cumsum(axis=2)
    roi = rng.random(image.shape) > 0.3
    spacing = (3.27, 0.98, 0.98)
    exact = moran_geary(image[roi], voxel_positions(roi, spacing))
    assert moran_geary_grid(image, roi, spacing) == pytest.approx(exact, rel=1e-9)


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["a", "b", "c", "d", "e"])
def test_ibsi_configs_on_sts_ct(ct, ct_mask, name: str) -> None:
    t0 = time.perf_counter()
    rows = extract_features(ct.volume, ct_mask, load_config(f"ibsi-config-{name}"))
    seconds = time.perf_counter() - t0
    assert len(rows) == 482
    assert all(math.isfinite(r.value) for r in rows)
    values = {(r.family, r.feature): r.value for r in rows}
    assert values[("Morphology", "Volume (mesh)")] == pytest.approx(365_000, rel=0.01)
    assert seconds < 60


def test_default_configs_parse() -> None:
    for name in ("ct", "mr", "pet"):
        assert load_config(name).interpolation is not None


def test_cli_study_folder_fills_identity(tmp_path: Path) -> None:
    study = _copy(CT, tmp_path / "study")
    out = tmp_path / "f.csv"
    cmd = [sys.executable, "-m", "osteomics.cli.main", "radiomics", str(study),
           "--config", "ibsi-config-c", "--out", str(out), "--json"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(out)
    first = table.iloc[0]
    assert (first.patient, first.modality, first.roi) == ("STS_001", "CT", ROI)
    assert table.study.nunique() == table.series.nunique() == 1
    assert "STS_001" not in res.stdout + res.stderr  # patient IDs never logged
    prov = json.loads(Path(json.loads(res.stdout)["provenance"]).read_text())
    (image,) = prov["inputs"]
    assert image["role"] == "image" and len(image["sha256"]) == 64


def test_cli_series_folder_with_rtstruct_and_roi_errors(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "osteomics.cli.main", "radiomics", str(CT / "image"),
            "--mask", str(CT / "mask" / "RS.dcm"), "--config", "ibsi-config-a",
            "--out", str(tmp_path / "f.csv")]  # fmt: skip
    res = subprocess.run([*base, "--roi", "GTV_Mass"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "GTV_Mass_CT" in res.stderr and "Traceback" not in res.stderr


# --- DICOM SEG --------------------------------------------------------------------------------


def _save_seg(sources: list, pixels: np.ndarray, path: Path, label: str = ROI) -> None:
    """A binary DICOM SEG (highdicom) of ``pixels`` on ``sources``, one segment ``label``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="osteomics tests",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(path)


def _write_seg(ct, mask: Mask, path: Path, label: str = ROI) -> None:
    """A binary DICOM SEG of ``mask`` on the real CT slices."""
    by_uid = {}
    for f in (CT / "image").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        by_uid[str(ds.SOPInstanceUID)] = ds
    _save_seg([by_uid[u] for u in ct.sop_instance_uids], mask.array, path, label)


def test_seg_mask_equals_rtstruct_mask(tmp_path: Path, ct, ct_mask) -> None:
    from osteomics.radiology.radiomics.dicom import read_seg_mask

    path = tmp_path / "seg.dcm"
    _write_seg(ct, ct_mask, path)
    seg_mask = read_seg_mask(path, ct)
    assert seg_mask.name == ROI
    np.testing.assert_array_equal(seg_mask.array, ct_mask.array)
    with pytest.raises(RoiNotFoundError, match=ROI):
        read_seg_mask(path, ct, "GTV_Mass")
    # a study folder with the image series and the SEG (no RTSTRUCT)
    study_dir = tmp_path / "study"
    shutil.copytree(CT / "image", study_dir / "image")
    shutil.copy(path, study_dir / "seg.dcm")
    study = read_dicom_study(study_dir)
    assert study.segs and not study.rtstructs
    np.testing.assert_array_equal(read_study_mask(study, None).array, ct_mask.array)


# --- multi-frame (enhanced) images ------------------------------------------------------------


def _legacy_converted_ct(folder: Path, shuffle_frames: bool = False) -> Path:
    """The real STS_001 CT as one Legacy Converted Enhanced CT instance (highdicom), in
    ``folder``; with ``shuffle_frames`` its frames are stored out of anatomical order."""
    import highdicom as hd

    sources = [pydicom.dcmread(f) for f in sorted((CT / "image").glob("*.dcm"))]
    if shuffle_frames:
        rng = np.random.default_rng(0)
        sources = [sources[i] for i in rng.permutation(len(sources))]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        sources,
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    folder.mkdir(parents=True)
    path = folder / "enhanced-ct.dcm"
    enhanced.save_as(path)
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")  # highdicom on the STS headers
def test_multi_frame_ct_reads_as_the_single_frame_series(tmp_path: Path, ct, ct_mask) -> None:
    """Frames sorted by position (not storage order), geometry and HU from the functional
    groups: the same volume as the 59 single-frame files, and the same RTSTRUCT mask."""
    path = _legacy_converted_ct(tmp_path / "image", shuffle_frames=True)
    enhanced = read_dicom_series(tmp_path / "image")
    assert enhanced.volume.shape == ct.volume.shape
    np.testing.assert_array_equal(enhanced.volume.array, ct.volume.array)
    np.testing.assert_allclose(enhanced.volume.spacing_mm, ct.volume.spacing_mm, atol=1e-6)
    np.testing.assert_allclose(enhanced.volume.origin_mm, ct.volume.origin_mm, atol=1e-6)
    np.testing.assert_allclose(enhanced.volume.direction, ct.volume.direction, atol=1e-9)
    assert (enhanced.info.modality, enhanced.info.units) == ("CT", "HU")
    assert enhanced.info.frame_of_reference == ct.info.frame_of_reference
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert set(enhanced.sop_instance_uids) == {uid}
    assert sorted(enhanced.frame_numbers) == list(range(1, 60))
    assert enhanced.frame_numbers != tuple(range(1, 60))  # stored shuffled, read sorted
    mask = read_rtstruct_mask(CT / "mask" / "RS.dcm", enhanced, ROI)
    np.testing.assert_array_equal(mask.array, ct_mask.array)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_seg_on_a_multi_frame_ct_matches_frames(tmp_path: Path, ct_mask) -> None:
    """A SEG made on the enhanced CT references its frames; read back onto that image it is
    the RTSTRUCT mask; in a study folder it is found and read the same way."""
    from osteomics.radiology.radiomics.dicom import read_seg_mask

    path = _legacy_converted_ct(tmp_path / "study" / "image", shuffle_frames=True)
    enhanced = read_dicom_series(tmp_path / "study" / "image")
    source = pydicom.dcmread(path)
    # The SEG's pixel array is in the source's frame order (frame k = pixel_array[k - 1]).
    in_frame_order = np.zeros_like(ct_mask.array)
    for slice_index, frame in enumerate(enhanced.frame_numbers):
        in_frame_order[frame - 1] = ct_mask.array[slice_index]
    _save_seg([source], in_frame_order, tmp_path / "study" / "seg.dcm")
    np.testing.assert_array_equal(
        read_seg_mask(tmp_path / "study" / "seg.dcm", enhanced).array, ct_mask.array
    )
    study = read_dicom_study(tmp_path / "study")
    assert study.segs and not study.rtstructs
    np.testing.assert_array_equal(read_study_mask(study, ROI).array, ct_mask.array)
