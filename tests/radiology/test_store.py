"""The study store on real STS instances: layout, durability rules, idempotence, recovery,
and a real full disk (a small tmpfs)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from osteomics.core.files import is_temp_file
from osteomics.radiology.errors import InvalidDatasetError, StorageFullError, StoreError
from osteomics.radiology.store import (
    INDEX_NAME,
    LOCK_NAME,
    QUARANTINE_NAME,
    DicomStore,
    StoreLockedError,
    StoreNotFoundError,
    lock_holder,
    open_store,
)


def _check_consistent(store: DicomStore) -> None:
    """Invariant: every row has its file with the recorded bytes; every file has a row;
    no temporary files."""
    recorded = {}
    for record in store.instances():
        assert record.path.is_file(), record.path
        data = record.path.read_bytes()
        assert len(data) == record.size
        assert hashlib.sha256(data).hexdigest() == record.sha256
        recorded[record.path] = record
    on_disk = {p for p in store.root.glob("*/*/*") if p.parent.parent.name != QUARANTINE_NAME}
    assert not [p for p in on_disk if is_temp_file(p)]
    assert {p for p in on_disk if p.suffix == ".dcm"} == set(recorded)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DicomStore]:
    with DicomStore(tmp_path / "store") as s:
        yield s


def test_store_lays_out_files_by_uid_and_indexes_them(
    store: DicomStore, sts001_ct: list[Path]
) -> None:
    for path in sts001_ct:
        result = store.store_file(path)
        assert result.outcome == "stored"
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        expected = (
            store.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        )
        assert result.record.path == expected
        assert expected.read_bytes() == path.read_bytes()  # byte-identical
    status = store.status()
    assert (status.patients, status.studies, status.series, status.instances) == (1, 1, 2, 60)
    assert status.jobs == {}
    (study,) = store.studies()
    assert study.patient_id == "STS_001"
    assert study.study_date == "20000907"
    assert study.modalities == ("CT", "RTSTRUCT")
    assert (study.series, study.instances) == (2, 60)
    db = sqlite3.connect(store.root / INDEX_NAME)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    _check_consistent(store)


def test_duplicate_with_same_bytes_is_a_no_op(store: DicomStore, sts001_ct: list[Path]) -> None:
    first = store.store_file(sts001_ct[0])
    mtime = first.record.path.stat().st_mtime_ns
    again = store.store_file(sts001_ct[0])
    assert again.outcome == "duplicate"
    assert again.record == first.record
    assert first.record.path.stat().st_mtime_ns == mtime
    assert store.status().instances == 1
    _check_consistent(store)


def test_duplicate_with_different_bytes_keeps_the_first_and_logs_only_uids(
    store: DicomStore, sts001_ct: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = sts001_ct[0]
    first = store.store_file(original)
    ds = pydicom.dcmread(original)
    ds.SeriesDescription = "edited"
    edited = tmp_path / "edited.dcm"
    ds.save_as(edited)
    with caplog.at_level(logging.WARNING, logger="osteomics.radiology.store"):
        result = store.store_file(edited)
    assert result.outcome == "conflict"
    assert first.record.path.read_bytes() == original.read_bytes()
    assert store.status().instances == 1
    assert ds.SOPInstanceUID in caplog.text
    assert "STS_001" not in caplog.text  # no patient ID in logs
    _check_consistent(store)


@pytest.mark.filterwarnings("ignore:.*VR UI:UserWarning")
@pytest.mark.parametrize(
    "bad_uid", ["1.2.3/../../evil", "1.2." + "3" * 70, "01.2.3", "../../../tmp/x"]
)
def test_invalid_sop_instance_uid_is_refused_and_nothing_written(
    store: DicomStore, sts001_ct: list[Path], tmp_path: Path, bad_uid: str
) -> None:
    ds = pydicom.dcmread(sts001_ct[0])
    ds.SOPInstanceUID = bad_uid
    ds.file_meta.MediaStorageSOPInstanceUID = bad_uid
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    with pytest.raises(InvalidDatasetError, match="SOP Instance UID"):
        store.store_file(bad)
    left = [p.name for p in store.root.iterdir() if not p.name.startswith(INDEX_NAME)]
    assert left == [LOCK_NAME]
    assert store.status().instances == 0


def test_not_dicom_is_refused(store: DicomStore, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(InvalidDatasetError, match=r"junk\.dcm"):
        store.store_file(junk)


def test_recover_repairs_temp_files_orphan_rows_and_unindexed_files(
    tmp_path: Path, sts001_ct: list[Path]
) -> None:
    root = tmp_path / "store"
    with DicomStore(root) as store:
        records = [store.store_file(p).record for p in sts001_ct[:5]]
    series_dir = records[0].path.parent
    # 1. a temporary file left by a crash during a write
    (series_dir / f".{records[0].path.name}.0123abcd.tmp").write_bytes(b"partial")
    # 2. an index row whose file is gone
    records[1].path.unlink()
    # 3. a complete file whose row was never committed (crash between rename and commit)
    donor = tmp_path / "donor"
    with DicomStore(donor) as other:
        unindexed = other.store_file(sts001_ct[7]).record
    target = root / unindexed.path.relative_to(donor)
    shutil.copy(unindexed.path, target)
    # 4. a file in a UID-named place that is not DICOM: quarantined, not deleted
    garbage = series_dir / "1.2.3.dcm"
    garbage.write_bytes(b"not dicom")

    with DicomStore(root) as store:
        report = store.recover()
        assert report.temp_files_removed == 1
        assert report.rows_without_file_removed == 1
        assert report.files_indexed == 1
        assert report.files_quarantined == 1
        assert store.get(records[1].attributes.sop_instance_uid) is None
        recovered = store.get(unindexed.attributes.sop_instance_uid)
        assert recovered is not None and recovered.sha256 == unindexed.sha256
        assert store.status().instances == 5  # 5 stored - 1 lost + 1 recovered
        assert not garbage.exists()
        assert [p.read_bytes() for p in (root / QUARANTINE_NAME).iterdir()] == [b"not dicom"]
        _check_consistent(store)
        assert not store.recover().repaired  # idempotent


def test_recover_removes_empty_series_and_studies(tmp_path: Path, sts001_ct: list[Path]) -> None:
    root = tmp_path / "store"
    with DicomStore(root) as store:
        rs = store.store_file(sts001_ct[-1]).record  # the RTSTRUCT: its own series
        store.store_file(sts001_ct[0])
    rs.path.unlink()
    with DicomStore(root) as store:
        store.recover()
        status = store.status()
        assert (status.studies, status.series, status.instances) == (1, 1, 1)


def test_full_disk_raises_storage_full_leaves_nothing_half_written_and_recovers(
    small_tmpfs: Path, sts_dir: Path
) -> None:
    files = sorted((sts_dir / "STS_002" / "CT" / "image").glob("*.dcm"))  # 48 x 48 KiB
    root = small_tmpfs / "store"
    stored = 0
    with DicomStore(root) as store:
        with pytest.raises(StorageFullError, match="full"):
            for path in files:
                store.store_file(path)
                stored += 1
        assert 0 < stored < len(files)
        assert store.status().instances == stored
        _check_consistent(store)
        # space returns: the same store goes on
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
        for path in files[stored:]:
            assert store.store_file(path).outcome == "stored"
        assert store.status().instances == len(files)
        _check_consistent(store)


def test_concurrent_writers_of_one_uid_keep_exactly_the_first_copy(
    store: DicomStore, sts001_ct: list[Path], tmp_path: Path
) -> None:
    """Eight threads store the same SOP Instance at once, half of them with other bytes: one
    is stored, the others are duplicates or conflicts, and the file holds the stored bytes."""
    from concurrent.futures import ThreadPoolExecutor

    original = sts001_ct[0].read_bytes()
    ds = pydicom.dcmread(sts001_ct[0])
    ds.SeriesDescription = "edited"
    edited_path = tmp_path / "edited.dcm"
    ds.save_as(edited_path)
    edited = edited_path.read_bytes()
    payloads = [original, edited] * 4
    for _ in range(5):  # a few rounds, each on a fresh UID-free store state
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(store.store, payloads))
        outcomes = sorted(r.outcome for r in results)
        stored = [r for r in results if r.outcome == "stored"]
        assert len(stored) == 1, outcomes
        kept = stored[0].record.path.read_bytes()
        assert kept in (original, edited)
        for data, result in zip(payloads, results, strict=True):
            assert result.outcome == ("duplicate" if data == kept else "conflict") or (
                result is stored[0]
            )
        assert store.status().instances == 1
        _check_consistent(store)
        stored[0].record.path.unlink()  # start the next round from nothing
        store.recover()


# --- one writer per store, readers never create (bugs 3 and 6 of issue 9) -------------------

_HOLDER = """
import sys
from pathlib import Path
from osteomics.radiology.store import DicomStore
store = DicomStore(Path(sys.argv[1]))
print("holding", flush=True)
sys.stdin.readline()  # hold the store until the test closes our stdin
store.close()
"""


def test_a_second_writer_process_is_refused_with_the_holder_named_while_readers_read(
    tmp_path: Path, sts001_ct: list[Path]
) -> None:
    """Bug 6: two processes on one store could delete each other's files (recover() while a
    node serves). A writer holds an exclusive lock on the root; a second writer (another
    process, or recover()) is refused with the holder's pid and command; readers still read."""
    root = tmp_path / "store"
    with DicomStore(root) as store:
        store.store_file(sts001_ct[0])
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "holding"
        recorded = lock_holder(root)
        assert recorded is not None and recorded.pid == holder.pid
        with pytest.raises(StoreLockedError, match=rf"pid {holder.pid} on .*-c") as refused:
            DicomStore(root)
        assert "stop that one first" in str(refused.value)
        with pytest.raises(StoreLockedError), open_store(root):  # recover() while serving
            pass
        # a third process (a second node) is refused the same way, and says so on stderr
        second = subprocess.run(
            [sys.executable, "-c", _HOLDER, str(root)],
            input="",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0 and f"pid {holder.pid}" in second.stderr
        # readers work while the writer holds the store (WAL), and see what it committed
        with open_store(root, mode="read") as reader:
            assert reader.status().instances == 1
            with pytest.raises(StoreError, match="opened for reading"):
                reader.recover()
        holder.stdin.close()  # the holder closes the store: the lock is free again
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
    with DicomStore(root) as store:
        assert not store.recover().repaired


def test_the_lock_of_a_killed_writer_is_free(tmp_path: Path) -> None:
    """A writer that dies (SIGKILL) leaves its record but not its lock: the next writer opens."""
    root = tmp_path / "store"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"holding"
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with DicomStore(root) as store:
        recorded = lock_holder(store.root)
        assert recorded is not None and recorded.pid != holder.pid


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "osteomics.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_node_status_and_ls_with_a_mistyped_storage_say_so_and_create_nothing(
    tmp_path: Path,
) -> None:
    """Bug 3: `node status/ls --config` with a mistyped [node] storage created an empty store."""
    toml = tmp_path / "node.toml"
    toml.write_text('[node]\nae_title = "OSTEOMICS"\nport = 11112\nstorage = "stroe"\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    for command in ("status", "ls"):
        done = _cli("node", command, "--config", str(toml))
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"no study store at {tmp_path / 'stroe'}" in done.stderr
        assert "Traceback" not in done.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was created
    with pytest.raises(StoreNotFoundError, match="reading never does"):
        DicomStore(tmp_path / "stroe", mode="read")
    assert not (tmp_path / "stroe").exists()


def test_node_status_reads_an_existing_store(tmp_path: Path, sts001_ct: list[Path]) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('[node]\nae_title = "OSTEOMICS"\nport = 11112\nstorage = "store"\n')
    with DicomStore(tmp_path / "store") as store:  # stays open: status reads beside a writer
        for path in sts001_ct[:3]:
            store.store_file(path)
        done = _cli("node", "status", "--config", str(toml), "--json")
    assert done.returncode == 0, done.stderr
    assert '"instances": 3' in done.stdout


def test_a_second_node_serve_on_one_store_is_refused_and_status_reads_meanwhile(
    tmp_path: Path, sts001_ct: list[Path]
) -> None:
    """Bug 6 as a user meets it: two `osteomics node serve` on one storage folder."""
    from conftest import free_port, write_node_toml

    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    first = write_node_toml(first_dir, free_port(), ())
    # the second node.toml names the same storage folder (another port)
    second = write_node_toml(second_dir, free_port(), ())
    second.write_text(
        second.read_text().replace('storage = "store"', f'storage = "{first_dir}/store"')
    )
    with DicomStore(first_dir / "store") as store:
        store.store_file(sts001_ct[0])
    serving = subprocess.Popen(
        [sys.executable, "-m", "osteomics.cli.main", "node", "serve", "--config", str(first)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serving.stderr is not None
        for line in serving.stderr:  # wait for the node to say it listens
            if "listening on" in line:
                break
        else:
            pytest.fail(f"node serve ended with {serving.wait()}")
        refused = _cli("node", "serve", "--config", str(second))
        assert refused.returncode == 1
        assert f"in use by pid {serving.pid}" in refused.stderr, refused.stderr
        assert "node serve" in refused.stderr and "Traceback" not in refused.stderr
        status = _cli("node", "status", "--config", str(first), "--json")
        assert status.returncode == 0 and '"instances": 1' in status.stdout, status.stderr
    finally:
        serving.terminate()
        serving.wait(timeout=30)
    with DicomStore(first_dir / "store") as store:  # free again once it stopped
        assert store.status().instances == 1
