"""radiology/part10.py against pydicom, on the real STS files and on re-encoded and cut copies."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from osteomics.radiology.errors import InvalidDatasetError
from osteomics.radiology.part10 import (
    IncompleteDatasetError,
    encode_file_meta,
    scan_dataset,
)
from osteomics.radiology.store import read_attributes, read_dataset_attributes


def dataset_start(data: bytes) -> int:
    fp = io.BytesIO(data)
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader._read_file_meta_info(fp)
    return fp.tell()


def is_implicit(data: bytes) -> bool:
    fp = io.BytesIO(data)
    pydicom.filereader.read_preamble(fp, False)
    return pydicom.filereader._read_file_meta_info(fp).TransferSyntaxUID == ImplicitVRLittleEndian


def top_level(data: bytes, start: int, implicit: bool) -> dict[int, bytes]:
    """Tag -> raw value of every top-level element, as pydicom's generator reads them
    (``b""`` for sequences of undefined length, whose items pydicom parses)."""
    fp = io.BytesIO(data)
    fp.seek(start)
    out = {}
    for element in data_element_generator(fp, implicit, True):
        out[int(element.tag)] = element.value if isinstance(element.value, bytes) else b""
    return out


def explicit_copy(path: Path, tmp_path: Path, undefined_sequences: bool) -> bytes:
    """The file re-encoded in Explicit VR Little Endian by pydicom, sequences of undefined
    length when asked (items too)."""
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = undefined_sequences
            for item in element.value:
                item.is_undefined_length_sequence_item = undefined_sequences
    out = tmp_path / f"explicit-{undefined_sequences}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def sts_files(sts_dir: Path) -> list[Path]:
    """Every modality of one patient, its three structure sets included."""
    patient = sts_dir / "STS_001"
    files = [patient / m / "mask" / "RS.dcm" for m in ("CT", "MR_T1", "PET")]
    for modality in ("CT", "MR_T1", "PET"):
        files += sorted((patient / modality / "image").glob("*.dcm"))[:3]
    return files


def test_scan_finds_every_wanted_element_pydicom_finds(sts_files: list[Path]) -> None:
    for path in sts_files:
        data = path.read_bytes()
        start, implicit = dataset_start(data), is_implicit(data)
        expected = top_level(data, start, implicit)
        wanted = frozenset(t for t, v in expected.items() if v)  # the non-sequence elements
        found = scan_dataset(data, start, implicit_vr=implicit, wanted=wanted)
        assert {t: v.value for t, v in found.items()} == {t: expected[t] for t in wanted}
        assert all((v.vr is None) == implicit for v in found.values())


@pytest.mark.parametrize("undefined_sequences", [False, True])
def test_scan_walks_explicit_vr_and_nested_sequences(
    sts_dir: Path, tmp_path: Path, undefined_sequences: bool
) -> None:
    """The RTSTRUCT has sequences three deep; re-encoded explicit, with defined and undefined
    lengths, the walk ends exactly at the end and returns the VRs pydicom wrote."""
    data = explicit_copy(
        sts_dir / "STS_001" / "CT" / "mask" / "RS.dcm", tmp_path, undefined_sequences
    )
    start = dataset_start(data)
    expected = top_level(data, start, implicit=False)
    found = scan_dataset(data, start, implicit_vr=False, wanted=frozenset(expected))
    ds = pydicom.dcmread(io.BytesIO(data))
    sequences = {t for t in expected if ds[t].VR == "SQ"}
    assert sequences
    for tag in set(expected) - sequences:
        assert (found[tag].vr, found[tag].value) == (ds[tag].VR, expected[tag])
    # Sequences are walked, not returned, when their length is undefined; with a defined
    # length they are one value like any other.
    assert {t for t in found if t in sequences} == (set() if undefined_sequences else sequences)


def test_scan_skips_encapsulated_pixel_data(sts001_ct: list[Path], tmp_path: Path) -> None:
    """An RLE Lossless copy (pydicom's own encoder): the pixel data is a sequence of
    fragments of undefined length."""
    ds = pydicom.dcmread(sts001_ct[0])
    ds.compress(RLELossless, encoding_plugin="pydicom")
    out = tmp_path / "rle.dcm"
    ds.save_as(out, enforce_file_format=True)
    data = out.read_bytes()
    attrs = read_attributes(data)
    assert attrs.transfer_syntax == RLELossless
    assert attrs.sop_instance_uid == ds.SOPInstanceUID
    with pytest.raises(InvalidDatasetError, match="truncated"):
        read_attributes(data[:-10])  # inside the last fragment / before the delimiter


def test_every_cut_inside_the_dataset_is_refused_or_is_an_element_boundary(
    sts_dir: Path,
) -> None:
    """Cut the structure set at every 97th byte: the walk refuses every cut that is not
    between two top-level elements (where a shorter dataset is indistinguishable)."""
    data = (sts_dir / "STS_001" / "CT" / "mask" / "RS.dcm").read_bytes()
    start, implicit = dataset_start(data), is_implicit(data)
    boundaries = {start}
    fp = io.BytesIO(data)
    fp.seek(start)
    for _ in data_element_generator(fp, implicit, True):
        boundaries.add(fp.tell())
    refused = 0
    for cut in range(start + 1, len(data), 97):
        if cut in boundaries:
            scan_dataset(data[:cut], start, implicit, frozenset())
        else:
            with pytest.raises(IncompleteDatasetError):
                scan_dataset(data[:cut], start, implicit, frozenset())
            refused += 1
    assert refused > 100


def test_attributes_equal_pydicom_values(sts_files: list[Path]) -> None:
    for path in sts_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        attrs = read_attributes(path.read_bytes())
        assert attrs.sop_instance_uid == ds.SOPInstanceUID
        assert attrs.sop_class_uid == ds.SOPClassUID
        assert attrs.study_uid == ds.StudyInstanceUID
        assert attrs.series_uid == ds.SeriesInstanceUID
        assert attrs.patient_id == ds.PatientID
        assert attrs.modality == ds.Modality
        assert attrs.study_date == (ds.get("StudyDate") or None)
        assert attrs.series_number == (int(ds.SeriesNumber) if "SeriesNumber" in ds else None)


def test_patient_id_in_another_character_set_is_decoded(sts001_ct: list[Path]) -> None:
    ds = pydicom.dcmread(sts001_ct[0])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientID = "Müller-7"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert read_attributes(buffer.getvalue()).patient_id == "Müller-7"


def test_wrong_vr_of_an_index_attribute_is_refused(sts001_ct: list[Path], tmp_path: Path) -> None:
    ds = pydicom.dcmread(sts001_ct[0])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds["SOPInstanceUID"].VR = "LO"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(InvalidDatasetError, match=r"SOPInstanceUID .* VR LO, not UI"):
        read_attributes(buffer.getvalue())


def test_unknown_transfer_syntax_is_refused(sts001_ct: list[Path]) -> None:
    data = sts001_ct[0].read_bytes()
    with pytest.raises(InvalidDatasetError, match="not a known transfer syntax"):
        read_dataset_attributes(data, dataset_start(data), "1.2.840.10008.1.2.99")


@pytest.mark.parametrize(
    ("sop_class", "instance", "syntax"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", ImplicitVRLittleEndian),  # odd lengths
        ("1.2.840.10008.5.1.4.1.1.481.3", "1.2.3.45", JPEG2000Lossless),  # even lengths
    ],
)
def test_file_meta_bytes_equal_pydicom(sop_class: str, instance: str, syntax: str) -> None:
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.3811.3.0.4"
    meta.ImplementationVersionName = "PYNETDICOM_304"
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta)
    ours = encode_file_meta(
        sop_class, instance, syntax, "1.2.826.0.1.3680043.9.3811.3.0.4", "PYNETDICOM_304"
    )
    assert ours == buffer.getvalue()


def test_deflated_dataset_is_read_by_pydicom(sts001_ct: list[Path]) -> None:
    """Deflated Explicit VR Little Endian is not walked by part10; pydicom inflates it."""
    ds = pydicom.dcmread(sts001_ct[0])
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    assert len(data) < len(sts001_ct[0].read_bytes())  # it really is deflated
    attrs = read_attributes(data)
    assert attrs.transfer_syntax == DeflatedExplicitVRLittleEndian
    assert (attrs.sop_instance_uid, attrs.series_uid) == (ds.SOPInstanceUID, ds.SeriesInstanceUID)
    assert attrs.patient_id == ds.PatientID
