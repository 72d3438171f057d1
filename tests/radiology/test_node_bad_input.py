"""Reliability test 3, the cases a conformant DCMTK tool will not send: a pynetdicom client that
streams a file's bytes as they are (``STORE_SEND_CHUNKED_DATASET``) delivers a truncated dataset,
a wrong VR, a missing SOP Instance UID, or a dataset that contradicts its C-STORE command; an
unknown SOP class is refused at association negotiation. Each gets its status (or its context
rejected), nothing is left on disk, and the next association is served normally."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from test_node_dcmtk import NODE_AE, Dcmtk, sop_uid, storescu

from osteomics.radiology.node import RunningNode

CT = pydicom.uid.CTImageStorage
MR = pydicom.uid.MRImageStorage
US = pydicom.uid.UltrasoundImageStorage


@pytest.fixture
def raw_sender(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """pynetdicom sends a file's dataset bytes unparsed, with the command built from its meta."""
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    yield


def _send(node: RunningNode, path: Path, contexts: tuple[str, ...] = (CT, MR)) -> int:
    client = AE(ae_title="STORESCU")
    for uid in contexts:  # one context per transfer syntax, so that both are accepted
        client.add_requested_context(uid, pydicom.uid.ImplicitVRLittleEndian)
        client.add_requested_context(uid, ExplicitVRLittleEndian)
    client.acse_timeout = client.dimse_timeout = client.network_timeout = 30
    assoc = client.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)


def _only_index_left(node: RunningNode) -> None:
    assert node.store.status().instances == 0
    leftovers = [
        p
        for p in node.store.root.rglob("*")
        if p.is_file() and "index" not in p.name and p.name != "store.lock"  # the writers' lock
    ]
    assert leftovers == []


def _next_association_is_served(node: RunningNode, dcmtk: Dcmtk, good: Path) -> None:
    done = storescu(dcmtk, node, good)
    assert done.returncode == 0, done.stdout + done.stderr
    assert node.store.get(sop_uid(good)) is not None


@pytest.mark.parametrize("cut", ["pixel data", "mid header", "mid sequence"])
def test_truncated_dataset_is_refused(
    node: RunningNode,
    dcmtk: Dcmtk,
    sts001_ct: list[Path],
    tmp_path: Path,
    raw_sender: None,
    cut: str,
) -> None:
    source = sts001_ct[-1] if cut == "mid sequence" else sts001_ct[0]  # RTSTRUCT: sequences
    data = source.read_bytes()
    keep = {"pixel data": len(data) - 1000, "mid header": 803, "mid sequence": len(data) // 2}
    bad = tmp_path / "truncated.dcm"
    bad.write_bytes(data[: keep[cut]])
    assert _send(node, bad, (CT, pydicom.uid.RTStructureSetStorage)) == 0xC000
    _only_index_left(node)
    _next_association_is_served(node, dcmtk, sts001_ct[1])


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # an over-long SH in STS
def test_wrong_vr_is_refused(
    node: RunningNode, dcmtk: Dcmtk, sts001_ct: list[Path], tmp_path: Path, raw_sender: None
) -> None:
    ds = pydicom.dcmread(sts001_ct[0])
    uid = ds.SOPInstanceUID
    # SOP Instance UID written with VR LO instead of UI (explicit VR: the VR travels)
    ds[0x00080018] = DataElement(0x00080018, "LO", str(uid))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    bad = tmp_path / "wrong_vr.dcm"
    ds.save_as(bad, enforce_file_format=True)
    assert pydicom.dcmread(bad)[0x00080018].VR == "LO"
    assert _send(node, bad) == 0xC000
    _only_index_left(node)
    _next_association_is_served(node, dcmtk, sts001_ct[1])


def test_missing_sop_instance_uid_is_refused(
    node: RunningNode, dcmtk: Dcmtk, sts001_ct: list[Path], tmp_path: Path, raw_sender: None
) -> None:
    ds = pydicom.dcmread(sts001_ct[0])
    del ds.SOPInstanceUID  # the file meta still names it, so the command is well-formed
    bad = tmp_path / "no_sop_uid.dcm"
    ds.save_as(bad)
    assert _send(node, bad) == 0xC000
    _only_index_left(node)
    _next_association_is_served(node, dcmtk, sts001_ct[1])


@pytest.mark.parametrize("contradiction", ["instance", "class"])
def test_dataset_contradicting_its_command_gets_a900(
    node: RunningNode,
    dcmtk: Dcmtk,
    sts001_ct: list[Path],
    tmp_path: Path,
    raw_sender: None,
    contradiction: str,
) -> None:
    ds = pydicom.dcmread(sts001_ct[0])
    if contradiction == "instance":  # the command names another (valid) SOP Instance
        ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    else:  # the command says MR Image Storage, the dataset is a CT image
        ds.file_meta.MediaStorageSOPClassUID = MR
    bad = tmp_path / "contradiction.dcm"
    ds.save_as(bad)
    assert _send(node, bad) == 0xA900
    _only_index_left(node)
    _next_association_is_served(node, dcmtk, sts001_ct[1])


def test_unknown_sop_class_context_is_rejected(
    node: RunningNode, dcmtk: Dcmtk, sts001_ct: list[Path], tmp_path: Path
) -> None:
    client = AE(ae_title="STORESCU")
    client.add_requested_context(US)
    client.add_requested_context(CT)
    assoc = client.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        (rejected,) = assoc.rejected_contexts
        assert (rejected.abstract_syntax, rejected.result) == (US, 0x03)  # not supported
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [CT]
        ds = pydicom.dcmread(sts001_ct[0])
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US
        with pytest.raises(ValueError, match="No presentation context"):
            assoc.send_c_store(ds)
    finally:
        assoc.release()
    # DCMTK proposes the file's class, the node rejects it, storescu has nothing to send on
    us_file = tmp_path / "us.dcm"
    ds.save_as(us_file)
    done = storescu(dcmtk, node, us_file)
    assert "No presentation context" in done.stdout + done.stderr
    _only_index_left(node)
    _next_association_is_served(node, dcmtk, sts001_ct[1])
