"""The node against a real, independent DICOM client: DCMTK's storescu and echoscu.

Every DCMTK call runs with TCP_NODELAY=1 (see the ``dcmtk`` fixture) and talks to 127.0.0.1.
"""

from __future__ import annotations

import logging
import struct
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from osteomics.radiology.node import RunningNode
from osteomics.radiology.store import DicomStore

Dcmtk = Callable[..., subprocess.CompletedProcess[str]]
NODE_AE = "OSTEOMICS"  # as the conftest's node.toml says


def dataset_bytes(data: bytes) -> bytes:
    """The dataset of a Part 10 file: everything after the File Meta Information group."""
    assert data[128:132] == b"DICM"
    tag, vr = struct.unpack("<I2s", data[132:138])
    assert (tag, vr) == (0x00000002, b"UL")  # (0002,0000) File Meta Information Group Length
    (group_length,) = struct.unpack("<I", data[140:144])
    return data[144 + group_length :]


def storescu(
    dcmtk: Dcmtk, node: RunningNode, *files: Path | str, aet: str = "STORESCU", aec: str = NODE_AE
) -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", "-v", "-aet", aet, "-aec", aec, "127.0.0.1", node.port, *files)


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_echoscu_gets_success(node: RunningNode, dcmtk: Dcmtk) -> None:
    done = dcmtk("echoscu", "-v", "-aet", "ECHOSCU", "-aec", NODE_AE, "127.0.0.1", node.port)
    assert done.returncode == 0, done.stderr
    assert "Received Echo Response (Success)" in done.stdout + done.stderr


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # an over-long SH in STS
def test_storescu_ct_and_rtstruct_stored_once_and_identical(
    node: RunningNode, dcmtk: Dcmtk, sts001_ct: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):  # every logger: the node's and pynetdicom's
        done = storescu(dcmtk, node, *sts001_ct)
    assert done.returncode == 0, done.stdout + done.stderr
    sent = {sop_uid(p): p for p in sts001_ct}
    # Logs name UIDs, never the patient.
    first = pydicom.dcmread(sts001_ct[0], stop_before_pixels=True)
    assert first.SOPInstanceUID in caplog.text
    assert str(first.PatientID) not in caplog.text
    assert str(first.PatientName) not in caplog.text
    status = node.store.status()
    assert status.instances == len(sent) == 60
    assert (status.patients, status.studies, status.series) == (1, 1, 2)
    for uid, path in sent.items():
        record = node.store.get(uid)
        assert record is not None, uid
        original_ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert record.attributes.transfer_syntax == original_ts  # storescu did not convert
        # storescu re-encodes what it sends (DCMTK writes sequences and items with explicit
        # lengths where the file had undefined ones), so the bytes may differ from the file;
        # every element, and the pixel data to the byte, must be the same.
        stored_ds = pydicom.dcmread(record.path)
        original_ds = pydicom.dcmread(path)
        assert stored_ds == original_ds
        if "PixelData" in original_ds:
            assert stored_ds.PixelData == original_ds.PixelData

    # Resending the same study is idempotent: nothing new, nothing rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in node.store.root.glob("*/*/*.dcm")}
    again = storescu(dcmtk, node, *sts001_ct)
    assert again.returncode == 0, again.stdout + again.stderr
    assert node.store.status().instances == 60
    assert {p: p.stat().st_mtime_ns for p in node.store.root.glob("*/*/*.dcm")} == mtimes


def test_pynetdicom_client_dataset_stored_byte_identical(
    node: RunningNode, sts001_ct: list[Path]
) -> None:
    """A client that sends a file's dataset as it is (pynetdicom sends a file path's dataset
    without re-encoding): the stored dataset is the sent one, byte for byte."""
    from pynetdicom import AE

    client = AE(ae_title="STORESCU")
    client.add_requested_context(pydicom.uid.CTImageStorage, pydicom.uid.ImplicitVRLittleEndian)
    client.add_requested_context(
        pydicom.uid.RTStructureSetStorage, pydicom.uid.ImplicitVRLittleEndian
    )
    client.acse_timeout = client.dimse_timeout = client.network_timeout = 30
    assoc = client.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        for path in (sts001_ct[0], sts001_ct[-1]):
            status = assoc.send_c_store(path)
            assert status.Status == 0x0000
    finally:
        assoc.release()
    for path in (sts001_ct[0], sts001_ct[-1]):
        record = node.store.get(sop_uid(path))
        assert record is not None
        stored = record.path.read_bytes()
        assert dataset_bytes(stored) == dataset_bytes(path.read_bytes())
        # The File Meta Information is what pynetdicom's own event.encoded_dataset() writes.
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta = create_file_meta(
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax=pydicom.uid.ImplicitVRLittleEndian,
        )
        assert stored[: -len(dataset_bytes(stored))] == b"\x00" * 128 + b"DICM" + (
            encode_file_meta(meta)
        )


def test_unknown_calling_ae_is_rejected(
    node: RunningNode, dcmtk: Dcmtk, sts001_ct: list[Path]
) -> None:
    done = storescu(dcmtk, node, sts001_ct[0], aet="INTRUDER")
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stdout + done.stderr
    assert node.store.status().instances == 0


def test_wrong_called_ae_is_rejected(
    node: RunningNode, dcmtk: Dcmtk, sts001_ct: list[Path]
) -> None:
    done = storescu(dcmtk, node, sts001_ct[0], aec="NOTUS")
    assert done.returncode != 0
    assert "Called AE Title Not Recognized" in done.stdout + done.stderr
    assert node.store.status().instances == 0


def test_allowed_ae_from_another_host_is_rejected(
    node_factory: Callable[..., RunningNode], dcmtk: Dcmtk, sts001_ct: list[Path]
) -> None:
    # STORESCU is allowed, but only from 127.0.0.2; the test connects from 127.0.0.1.
    running = node_factory((("STORESCU", "127.0.0.2"),))
    done = storescu(dcmtk, running, sts001_ct[0])
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stdout + done.stderr
    assert running.store.status().instances == 0


@pytest.mark.filterwarnings("ignore:.*VR UI:UserWarning")
@pytest.mark.parametrize("bad_uid", ["1.2.3/../../evil", "1.2." + "3" * 70, "1.02.3"])
def test_bad_sop_instance_uid_is_refused_and_the_node_keeps_serving(
    node: RunningNode, dcmtk: Dcmtk, sts001_ct: list[Path], tmp_path: Path, bad_uid: str
) -> None:
    ds = pydicom.dcmread(sts001_ct[0])
    ds.SOPInstanceUID = bad_uid
    ds.file_meta.MediaStorageSOPInstanceUID = bad_uid
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    done = storescu(dcmtk, node, bad)
    assert "Received Store Response (Error: CannotUnderstand)" in done.stdout + done.stderr
    assert node.store.status().instances == 0
    own = ("index", "store.lock")  # the index files and the writers' lock
    left = [p for p in node.store.root.rglob("*") if p.is_file() and not p.name.startswith(own)]
    assert left == []
    # the next association is served normally
    good = storescu(dcmtk, node, sts001_ct[1])
    assert good.returncode == 0, good.stdout + good.stderr
    assert node.store.status().instances == 1


@pytest.mark.slow
def test_eight_concurrent_storescu_send_all_sts_patients_each_instance_once(
    node: RunningNode, dcmtk: Dcmtk, sts_dir: Path
) -> None:
    patients = sorted(p for p in sts_dir.iterdir() if p.is_dir())
    assert len(patients) == 12
    files = sorted(sts_dir.rglob("*.dcm"))
    distinct = {sop_uid(p) for p in files}
    groups = [patients[i::8] for i in range(8)]  # 8 associations at once (max_associations)

    def send(group: list[Path]) -> subprocess.CompletedProcess[str]:
        return dcmtk(
            "storescu", "-aet", "STORESCU", "-aec", NODE_AE, "+sd", "+r",
            "127.0.0.1", node.port, *group, timeout=300,
        )  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, groups))
    for done in results:
        assert done.returncode == 0, done.stdout + done.stderr
    status = node.store.status()
    assert status.instances == len(distinct)
    assert status.patients == 12
    stored_files = list(node.store.root.glob("*/*/*.dcm"))
    assert len(stored_files) == len(distinct)
    # the index agrees with the files after a fresh open and recovery
    node.store.close()
    with DicomStore(node.store.root) as reopened:
        assert not reopened.recover().repaired
        assert reopened.status().instances == len(distinct)
    node.store = DicomStore(node.store.root)  # so that the fixture's stop() can close it


def test_full_disk_answers_out_of_resources_and_the_node_recovers(
    small_tmpfs: Path, dcmtk: Dcmtk, sts_dir: Path, port_factory: Callable[[], int]
) -> None:
    from osteomics.radiology.config import load_node_config
    from osteomics.radiology.node import start_node

    config_path = small_tmpfs / "node.toml"  # storage "store" lands on the 1 MiB tmpfs
    port = port_factory()
    config_path.write_text(
        f'[node]\nae_title = "{NODE_AE}"\nport = {port}\nstorage = "store"\n\n'
        '[[node.allow]]\nae_title = "STORESCU"\nhost = "127.0.0.1"\n',
        encoding="utf-8",
    )
    running = start_node(load_node_config(config_path))
    try:
        files = sorted((sts_dir / "STS_002" / "CT" / "image").glob("*.dcm"))  # 48 x 48 KiB
        done = storescu(dcmtk, running, *files)
        assert "OutOfResources" in done.stdout + done.stderr, done.stdout + done.stderr
        stored = running.store.status().instances
        assert 0 < stored < len(files)
        on_disk = list(running.store.root.glob("*/*/*"))
        assert len(on_disk) == stored  # no temporary or unindexed files left
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
        again = storescu(dcmtk, running, *files)
        assert again.returncode == 0, again.stdout + again.stderr
        assert running.store.status().instances == len(files)
    finally:
        running.stop()
