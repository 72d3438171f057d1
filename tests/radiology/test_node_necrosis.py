"""The node's necrosis jobs on real data: DICOM WSI built from real TCIA H&E (and the real
STS_001 CT for a mixed study) in a real store and SQLite queue, the real default model, a real
pynetdicom SCP as a remote that refuses the SEG SOP class.

Fast: which studies get a necrosis job, how a study is split, bad input refused before any tile
is read (a slide at 16 µm/px, a slide without pixel spacing), a refused SEG failing the job with
the reason while the results stay. Slow: a node scores a stored study on its own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import free_port, write_node_toml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, evt

from osteomics.cli.node import job_handlers
from osteomics.cli.study_necrosis import necrosis_handler
from osteomics.radiology.config import load_node_config
from osteomics.radiology.jobs import NECROSIS, STUDY_COMPLETE, JobQueue
from osteomics.radiology.necrosis_job import (
    JOB_RECORD_NAME,
    StudyJobResult,
    StudyWork,
    process_next,
    record_of,
    study_parts,
)
from osteomics.radiology.node import start_node
from osteomics.radiology.pacs import send_files
from osteomics.radiology.store import DicomStore


def _pacs_helpers() -> Any:
    """tests/plugins/pacs_helpers.py (the DICOM WSI writer), importable from here too."""
    if "pacs_helpers" in sys.modules:
        return sys.modules["pacs_helpers"]
    path = Path(__file__).parents[1] / "plugins" / "pacs_helpers.py"
    spec = importlib.util.spec_from_file_location("pacs_helpers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pacs_helpers"] = module
    spec.loader.exec_module(module)
    return module


helpers = _pacs_helpers()


@pytest.fixture(scope="module")
def he_image(data_dir: Path) -> np.ndarray:
    """1024 x 1536 RGB of six real TCIA H&E tiles at 2 µm/px (pacs_helpers.he_mosaic)."""
    image: np.ndarray = helpers.he_mosaic(data_dir)
    return image


def write_wsi(
    folder: Path, image: np.ndarray, fixtures_dir: Path, *, mpp: float, study_uid: str
) -> Path:
    (path,) = helpers.write_dicom_wsi(
        image,
        folder,
        mpp=mpp,
        template=fixtures_dir / "highdicom-sm_image.dcm",
        study_uid=study_uid,
    )
    return Path(path)


def ct_in_study(ct: Path, folder: Path, study_uid: str) -> Path:
    """A real CT slice of STS_001 moved into ``study_uid`` (a study that mixes WSI and CT)."""
    ds = pydicom.dcmread(ct)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = "OSTEO-TEST-1"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ct.dcm"
    ds.save_as(path)
    return path


def node_toml(folder: Path, extra: str = "", port: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_node_toml(
        folder, port or free_port(), (("STORESCU", "127.0.0.1"),), extra, quiet_seconds=0.5
    )


def store_files(root: Path, files: Sequence[Path]) -> None:
    with DicomStore(root) as store:
        for f in files:
            store.store_file(f)


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every stored DICOM file (to show a job touched none)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.dcm"))
        if "results" not in p.relative_to(root).parts
    }


NECROSIS_TOML = "\n[necrosis]\nenabled = true\nworkers = 1\npoll_seconds = 0.2\n"


# -- which studies get a job, and how a study is split -----------------------------------


def test_necrosis_job_only_for_quiet_studies_holding_wsi_and_both_kinds_for_a_mixed_study(
    tmp_path: Path, he_image: np.ndarray, fixtures_dir: Path, sts001_ct: list[Path]
) -> None:
    wsi_study, mixed_study = generate_uid(), generate_uid()
    wsi = write_wsi(tmp_path / "a", he_image, fixtures_dir, mpp=2.0, study_uid=wsi_study)
    mixed_wsi = write_wsi(tmp_path / "b", he_image, fixtures_dir, mpp=2.0, study_uid=mixed_study)
    mixed_ct = ct_in_study(sts001_ct[0], tmp_path / "c", mixed_study)
    root = tmp_path / "store"
    store_files(root, [wsi, mixed_wsi, mixed_ct, sts001_ct[1]])  # + a CT-only study
    (ct_study,) = {pydicom.dcmread(sts001_ct[1], stop_before_pixels=True).StudyInstanceUID}

    with JobQueue(root) as queue:
        queued = queue.queue_quiet_studies(0.0, kinds=(STUDY_COMPLETE, NECROSIS))
        by_kind = {
            k: sorted(j.study_uid or "" for j in queued if j.kind == k)
            for k in (STUDY_COMPLETE, NECROSIS)
        }
        assert by_kind[NECROSIS] == sorted([wsi_study, mixed_study])
        assert by_kind[STUDY_COMPLETE] == sorted([wsi_study, mixed_study, ct_study])
        # idempotent: nothing new while the studies stay quiet
        assert queue.queue_quiet_studies(0.0, kinds=(STUDY_COMPLETE, NECROSIS)) == []
        # the radiomics-only default queues no necrosis job
        assert all(j.kind == STUDY_COMPLETE for j in queue.jobs(kind=STUDY_COMPLETE))

    with DicomStore(root, mode="read") as store:
        parts = study_parts(store, mixed_study)
    assert [s.modality for s in parts.wsi_series] == ["SM"]
    assert [s.modality for s in parts.other_series] == ["CT"]
    assert parts.wsi_series[0].folder == root / mixed_study / parts.wsi_series[0].series_uid
    assert "CT (1 series, 1 instances)" in parts.others_note()
    assert "left to the radiomics job" in parts.others_note()


def test_node_refuses_necrosis_enabled_without_the_pathology_handler(tmp_path: Path) -> None:
    from osteomics.radiology.errors import NodeConfigError

    cfg = load_node_config(node_toml(tmp_path / "n", NECROSIS_TOML))
    with pytest.raises(NodeConfigError, match=r"\[necrosis\] enabled = true needs"):
        start_node(cfg)
    assert set(job_handlers(cfg)) == {NECROSIS}


def test_results_send_to_must_name_a_remote(tmp_path: Path) -> None:
    from osteomics.radiology.errors import NodeConfigError

    path = node_toml(tmp_path / "n", '\n[results]\nsend_to = "pacs"\n')
    with pytest.raises(NodeConfigError, match=r"results.send_to 'pacs' is not a remote.*none"):
        load_node_config(path)


# -- bad input: refused before any tile is read, job failed with the reason ---------------


def run_necrosis_job(root: Path, cfg_path: Path) -> tuple[Any, dict[str, Any] | None]:
    cfg = load_node_config(cfg_path)
    with JobQueue(root) as queue, DicomStore(root, mode="read") as store:
        queue.queue_quiet_studies(0.0, kinds=(NECROSIS,))
        done = process_next(queue, store, NECROSIS, necrosis_handler(cfg))
    assert done is not None
    job, result = done
    return job, result


@pytest.mark.parametrize(
    "slow_cli", [False, pytest.param(True, marks=pytest.mark.slow, id="and-the-cli")]
)
def test_slide_with_only_a_16_um_level_is_refused_naming_the_levels_and_the_model(
    tmp_path: Path, he_image: np.ndarray, fixtures_dir: Path, slow_cli: bool
) -> None:
    study = generate_uid()
    coarse = he_image[::8, ::8]  # 16 µm/px: 128 x 192 px
    wsi = write_wsi(tmp_path / "w", coarse, fixtures_dir, mpp=16.0, study_uid=study)
    cfg_path = node_toml(tmp_path / "n", NECROSIS_TOML)
    root = cfg_path.parent / "store"
    store_files(root, [wsi])
    before = tree_digest(root)

    job, result = run_necrosis_job(root, cfg_path)

    assert result is None and job.state == "failed"  # the data will not change: no retry
    assert "no pyramid level near the model's 2 µm/px" in job.error
    assert "levels are at 16 µm/px" in job.error
    assert wsi.name in job.error
    assert tree_digest(root) == before
    out = root / "results" / "necrosis" / study
    assert not (out / "necrosis_cases.csv").exists()

    # the same refusal from the command line: exit code 1 (an OsteomicsError), one clear line
    if slow_cli:
        done = helpers.osteomics_cli(
            "necrosis", f"store:{study}", "--config", cfg_path, "--out", tmp_path / "out"
        )
        assert done.returncode == 1, done.stderr
        assert "levels are at 16 µm/px" in done.stderr and "Traceback" not in done.stderr


def test_slide_without_pixel_spacing_names_the_file_and_mpp_override(
    tmp_path: Path, he_image: np.ndarray, fixtures_dir: Path
) -> None:
    study = generate_uid()
    wsi = write_wsi(tmp_path / "w", he_image[:512, :512], fixtures_dir, mpp=2.0, study_uid=study)
    ds = pydicom.dcmread(wsi)
    del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    for keyword in ("ImagedVolumeWidth", "ImagedVolumeHeight"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(wsi)
    cfg_path = node_toml(tmp_path / "n", NECROSIS_TOML)
    root = cfg_path.parent / "store"
    store_files(root, [wsi])
    before = tree_digest(root)

    job, _ = run_necrosis_job(root, cfg_path)

    assert job.state == "failed"
    assert wsi.name in job.error and "--mpp-override" in job.error, job.error
    assert tree_digest(root) == before


@pytest.mark.slow  # the model is loaded, the command started
def test_store_path_errors_name_the_fix(tmp_path: Path) -> None:
    cfg_path = node_toml(tmp_path / "n")
    store_files(cfg_path.parent / "store", [])
    unknown = generate_uid()
    done = helpers.osteomics_cli(
        "necrosis", f"store:{unknown}", "--config", cfg_path, "--out", tmp_path / "o"
    )
    assert done.returncode == 1 and f"holds no study {unknown}" in done.stderr
    assert "osteomics node ls" in done.stderr
    done = helpers.osteomics_cli("necrosis", f"store:{unknown}", "--out", tmp_path / "o")
    assert done.returncode == 1 and "needs --config" in done.stderr
    done = helpers.osteomics_cli("necrosis", "store:../../etc", "--config", cfg_path, "--out", "o")
    assert done.returncode == 1 and "UID" in done.stderr and "Traceback" not in done.stderr


# -- a remote that refuses the SEG SOP class ----------------------------------------------


@pytest.fixture
def sr_only_scp() -> Iterator[tuple[int, list[str]]]:
    """A pynetdicom Storage SCP (AE SRONLY) accepting Comprehensive 3D SR only; yields its
    port and the SOP Instance UIDs it received."""
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="SRONLY")
    ae.add_supported_context(Comprehensive3DSRStorage, [ExplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield port, received
    finally:
        server.shutdown()


def minimal_sr(path: Path, study_uid: str) -> Path:
    ds = Dataset()
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_remote_refusing_seg_fails_the_job_with_the_reason_and_keeps_the_results(
    tmp_path: Path,
    he_image: np.ndarray,
    fixtures_dir: Path,
    sr_only_scp: tuple[int, list[str]],
) -> None:
    port, received = sr_only_scp
    extra = f'\n[remotes.sronly]\nae_title = "SRONLY"\nhost = "127.0.0.1"\nport = {port}\n'
    cfg_path = node_toml(tmp_path / "n", extra + '\n[results]\nsend_to = "sronly"\n')
    cfg = load_node_config(cfg_path)
    root = cfg.storage
    study = generate_uid()
    store_files(root, [write_wsi(tmp_path / "w", he_image, fixtures_dir, mpp=2.0, study_uid=study)])
    before = tree_digest(root)
    seg_fixture = fixtures_dir / "highdicom-seg_image_sm_control.dcm"

    def handler(work: StudyWork) -> StudyJobResult:  # stands in for the scoring (not under test)
        work.out_dir.mkdir(parents=True)
        sr = minimal_sr(work.out_dir / "case.sr.dcm", work.study_uid)
        seg = work.out_dir / "slide.seg.dcm"
        seg.write_bytes(seg_fixture.read_bytes())
        return StudyJobResult(work.study_uid, work.out_dir, (sr, seg), "stand-in")

    with JobQueue(root) as queue, DicomStore(root, mode="read") as store:
        queue.queue_quiet_studies(0.0, kinds=(NECROSIS,))
        done = process_next(
            queue,
            store,
            NECROSIS,
            handler,
            send=lambda files: send_files(cfg, "sronly", files),
            send_to="sronly",
        )
    assert done is not None
    job, result = done
    assert result is not None
    # failed with the reason, queued again by the normal retry rules (a remote can be fixed)
    assert job.state == "queued" and job.attempts == 1
    assert (
        "slide.seg.dcm: sronly refused SOP class 1.2.840.10008.5.1.4.1.1.66.4 "
        "(Segmentation Storage): add it to its accepted SOP classes" in job.error
    )
    assert f"results kept in {result.out_dir}" in job.error
    sr_uid = pydicom.dcmread(result.dicom_files[0]).SOPInstanceUID
    assert received == [sr_uid]  # the SR the remote accepts went through
    assert all(p.is_file() for p in result.dicom_files)
    record = record_of(result.out_dir)
    assert record is not None and record["sent"]["stored"] == [sr_uid]
    assert record["error"] == job.error
    assert tree_digest(root) == before

    # and `node status` shows it
    done_cli = helpers.osteomics_cli("node", "status", "--config", cfg_path)
    assert done_cli.returncode == 0, done_cli.stderr
    assert f"job {job.id} necrosis of study {study} queued after attempt 1" in done_cli.stdout
    assert "Segmentation Storage" in done_cli.stdout


# -- the node scores a stored study on its own (slow: the real model) ---------------------


def storescu(port: int, files: Sequence[Path]) -> None:
    """C-STORE ``files`` to the node as AE STORESCU (pynetdicom: DCMTK's storescu offers no
    VL Whole Slide Microscopy context by default)."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    ae = AE(ae_title="STORESCU")
    for sop_class in sorted({str(h.SOPClassUID) for h in headers}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="OSTEOMICS")
    assert assoc.is_established
    try:
        for f in files:
            status = assoc.send_c_store(f)
            assert status and status.Status == 0x0000, f
    finally:
        assoc.release()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_node_scores_a_mixed_study_slides_only_and_says_so(
    tmp_path: Path, he_image: np.ndarray, fixtures_dir: Path, sts001_ct: list[Path]
) -> None:
    study = generate_uid()
    wsi = write_wsi(tmp_path / "w", he_image, fixtures_dir, mpp=2.0, study_uid=study)
    ct = ct_in_study(sts001_ct[0], tmp_path / "c", study)
    cfg_path = node_toml(tmp_path / "n", NECROSIS_TOML)
    cfg = load_node_config(cfg_path)
    node = start_node(cfg, handlers=job_handlers(cfg))
    try:
        storescu(node.port, [wsi, ct])
        started = time.monotonic()

        def finished() -> bool:
            jobs = node.jobs.jobs(study_uid=study, kind=NECROSIS)
            return bool(jobs) and jobs[-1].state in ("done", "failed")

        wait_for(finished, 240, "the necrosis job")
        seconds = time.monotonic() - started
        (job,) = node.jobs.jobs(study_uid=study, kind=NECROSIS)
        assert job.state == "done", job.error
    finally:
        node.stop()
    print(f"\nnode necrosis job: stored -> done in {seconds:.1f} s")
    out = cfg.storage / "results" / "necrosis" / study
    cases = (out / "necrosis_cases.csv").read_text()
    assert study in cases  # the case is the study (no patient name anywhere)
    assert "OSTEO-TEST-1" not in cases
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "necrosis"
    record = json.loads((out / JOB_RECORD_NAME).read_text())
    assert record["other_series"][0]["modality"] == "CT"
    assert "left to the radiomics job" in record["note"]
    names = [Path(p).name for p in record["dicom"]]
    assert f"{study}.necrosis.sr.dcm" in names and len(names) == 2
    assert {pydicom.dcmread(p).Modality for p in record["dicom"]} == {"SR", "SEG"}
    # the CT series was not scored: one slide row only
    slides = (out / "necrosis_slides.csv").read_text().strip().splitlines()
    assert len(slides) == 2


def sronly_toml(folder: Path, port: int, extra: str = "") -> Path:
    remote = f'\n[remotes.sronly]\nae_title = "SRONLY"\nhost = "127.0.0.1"\nport = {port}\n'
    return node_toml(folder, remote + extra)


@pytest.mark.slow
def test_necrosis_store_study_send_to_a_remote_refusing_seg_exits_1_and_keeps_the_files(
    tmp_path: Path,
    he_image: np.ndarray,
    fixtures_dir: Path,
    sr_only_scp: tuple[int, list[str]],
) -> None:
    port, received = sr_only_scp
    cfg_path = sronly_toml(tmp_path / "n", port)
    study = generate_uid()
    wsi = write_wsi(tmp_path / "w", he_image, fixtures_dir, mpp=2.0, study_uid=study)
    store_files(cfg_path.parent / "store", [wsi])
    out = tmp_path / "run"

    done = helpers.osteomics_cli(
        "necrosis", f"store:{study}", "--config", cfg_path, "--out", out, "--send", "sronly",
        "--workers", "1",
    )  # fmt: skip

    assert done.returncode == 1, done.stderr[-3000:]
    assert f"case {study}: necrosis" in done.stdout  # the study is the one case
    assert "(Segmentation Storage): add it to its accepted SOP classes" in done.stderr
    assert "sent to sronly: 1 of 2 object(s) stored" in done.stderr
    (sr,) = (out / "dicom").glob("*.sr.dcm")
    assert received == [pydicom.dcmread(sr).SOPInstanceUID]
    assert len(list((out / "dicom").glob("*.seg.dcm"))) == 1  # kept on disk
    assert "OSTEO-TEST-1" not in done.stdout + done.stderr


@pytest.mark.slow
def test_radiomics_send_stores_the_sr_on_the_remote(
    tmp_path: Path, sts_dir: Path, sr_only_scp: tuple[int, list[str]]
) -> None:
    port, received = sr_only_scp
    cfg_path = sronly_toml(tmp_path / "n", port)
    series = sts_dir / "STS_001" / "CT" / "image"
    mask = sts_dir / "STS_001" / "CT" / "mask" / "RS.dcm"
    out = tmp_path / "rad" / "features.parquet"
    out.parent.mkdir()
    done = helpers.osteomics_cli(
        "radiomics", series, "--mask", mask, "--config", "ct", "--out", out,
        "--node-config", cfg_path, "--send", "sronly",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (sr,) = (tmp_path / "rad" / "features-dicom").glob("*.sr.dcm")
    assert received == [pydicom.dcmread(sr).SOPInstanceUID]
    assert "sent to sronly: 1 of 1 object(s) stored" in done.stderr


@pytest.mark.slow
def test_node_sends_the_radiomics_sr_of_a_completed_study(
    tmp_path: Path, sts001_ct: list[Path], sr_only_scp: tuple[int, list[str]]
) -> None:
    port, received = sr_only_scp
    extra = (
        '\n[radiomics]\nenabled = true\nmodalities = ["CT"]\npoll_seconds = 0.2\n'
        '\n[results]\nsend_to = "sronly"\n'
    )
    cfg = load_node_config(sronly_toml(tmp_path / "n", port, extra))
    study = str(pydicom.dcmread(sts001_ct[0], stop_before_pixels=True).StudyInstanceUID)
    node = start_node(cfg, handlers=job_handlers(cfg))
    try:
        assert set(node.workers) == {"radiomics_send"}
        storescu(node.port, sts001_ct)

        def sent() -> bool:
            jobs = node.jobs.jobs(study_uid=study, kind="radiomics_send")
            return bool(jobs) and jobs[-1].state in ("done", "failed")

        wait_for(sent, 240, "the radiomics_send job")
        (job,) = node.jobs.jobs(study_uid=study, kind="radiomics_send")
        assert job.state == "done", job.error
    finally:
        node.stop()
    folder = cfg.storage / "results" / "radiomics" / study
    (sr,) = (folder / "dicom").glob("*.sr.dcm")
    assert received == [pydicom.dcmread(sr).SOPInstanceUID]
    record = record_of(folder)
    assert record is not None and record["sent"]["stored"] == received


def test_necrosis_job_survives_a_restart_and_a_dead_worker_at_least_once(
    tmp_path: Path, he_image: np.ndarray, fixtures_dir: Path
) -> None:
    study = generate_uid()
    root = tmp_path / "store"
    store_files(root, [write_wsi(tmp_path / "w", he_image, fixtures_dir, mpp=2.0, study_uid=study)])
    with JobQueue(root) as queue:
        (queued,) = queue.queue_quiet_studies(0.0, kinds=(NECROSIS,))
        claimed = queue.claim(NECROSIS, lease_seconds=0.05)  # a worker that then dies
        assert claimed is not None and claimed.id == queued.id
    time.sleep(0.1)

    seen: list[tuple[int, float]] = []

    def handler(work: StudyWork) -> StudyJobResult:  # stands in for the scoring
        with JobQueue(root) as peek:
            before = peek.get(queued.id)
            work.heartbeat()
            after = peek.get(queued.id)
        assert before is not None and after is not None
        assert after.lease_until is not None and before.lease_until is not None
        seen.append((after.attempts, after.lease_until - before.lease_until))
        work.out_dir.mkdir(parents=True, exist_ok=True)
        return StudyJobResult(work.study_uid, work.out_dir, (), "stand-in")

    with JobQueue(root) as queue, DicomStore(root, mode="read") as store:  # "after a restart"
        done = process_next(queue, store, NECROSIS, handler)
    assert done is not None
    job, _ = done
    assert (job.id, job.state, job.attempts) == (queued.id, "done", 2)
    assert seen[0][0] == 2 and seen[0][1] >= 0  # the heartbeat extended the lease
    record = record_of(root / "results" / "necrosis" / study)
    assert record is not None and record["attempt"] == 2 and record["error"] is None
