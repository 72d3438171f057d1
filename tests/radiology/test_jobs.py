"""The durable job queue: quiet-time queueing (in the running node, with a real storescu),
one job per quiet period, at-least-once delivery with leases (a worker really killed), and
restart survival."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_node_dcmtk import Dcmtk, sop_uid, storescu

from osteomics.radiology.config import NodeConfig
from osteomics.radiology.errors import JobLeaseLostError
from osteomics.radiology.jobs import STUDY_COMPLETE, JobQueue
from osteomics.radiology.node import RunningNode, start_node
from osteomics.radiology.store import DicomStore


def _wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.mark.slow  # whole-command run of several seconds: CI runs it
def test_node_queues_one_study_complete_job_when_the_study_is_quiet(
    node_factory: Callable[..., RunningNode], dcmtk: Dcmtk, sts001_ct: list[Path]
) -> None:
    node = node_factory((("STORESCU", "127.0.0.1"),), quiet_seconds=1.0)
    quiet = node.config.study_quiet_seconds
    done = storescu(dcmtk, node, *sts001_ct[:30])
    assert done.returncode == 0, done.stdout + done.stderr
    sent_at = time.monotonic()
    assert node.jobs.jobs() == []  # the study just received an instance: not quiet yet
    assert _wait_for(lambda: node.jobs.counts() == {"queued": 1})
    assert time.monotonic() - sent_at >= quiet * 0.9
    (job,) = node.jobs.jobs()
    assert (job.kind, job.study_uid, job.attempts) == (STUDY_COMPLETE, _study_uid(sts001_ct[0]), 0)
    assert node.store.status().jobs == {"queued": 1}

    # Resending the same instances (duplicates) is not new: still the one job, and it is not
    # moved forward, even once the scheduler looked after the resend would have gone quiet.
    again = storescu(dcmtk, node, *sts001_ct[:30])
    assert again.returncode == 0
    assert node.scheduler.wait_for_pass(since=time.time() + quiet, timeout=quiet * 5 + 10)
    assert [(j.id, j.study_received) for j in node.jobs.jobs()] == [(job.id, job.study_received)]

    # More instances while the job is still queued: the queued job covers them, no second job.
    more = storescu(dcmtk, node, *sts001_ct[30:40])
    assert more.returncode == 0
    assert _wait_for(lambda: node.jobs.jobs()[0].study_received != job.study_received)
    assert [j.id for j in node.jobs.jobs()] == [job.id]

    # Once a worker took and finished it, a new instance starts a new quiet period: a new job.
    claimed = node.jobs.claim()
    assert claimed is not None and claimed.id == job.id
    node.jobs.complete(claimed)
    more = storescu(dcmtk, node, *sts001_ct[40:])
    assert more.returncode == 0
    assert _wait_for(lambda: node.jobs.counts() == {"done": 1, "queued": 1})
    first, second = node.jobs.jobs()
    assert first.state == "done" and second.state == "queued"
    assert second.study_uid == first.study_uid
    # and it stays at that: a look after the study went quiet again queues nothing more
    assert node.scheduler.wait_for_pass(since=time.time() + quiet, timeout=quiet * 5 + 10)
    assert len(node.jobs.jobs()) == 2


def test_queue_is_idempotent_and_leases_expire(tmp_path: Path, sts001_ct: list[Path]) -> None:
    root = tmp_path / "store"
    with DicomStore(root) as store:
        store.store_file(sts001_ct[0])
    with JobQueue(root, max_attempts=2) as queue:
        now = time.time()
        assert queue.queue_quiet_studies(30, now=now) == []  # not quiet yet
        (job,) = queue.queue_quiet_studies(30, now=now + 31)
        for _ in range(3):
            assert queue.queue_quiet_studies(30, now=now + 60) == []
        first = queue.claim(lease_seconds=10, now=now + 61)
        assert first is not None and first.attempts == 1 and first.state == "running"
        assert queue.claim(now=now + 62) is None  # nothing else queued; the lease holds
        assert queue.heartbeat(first, lease_seconds=10, now=now + 65).lease_until == now + 75
        # the worker stalls past its lease: the next claim re-queues and takes the job
        second = queue.claim(lease_seconds=10, now=now + 80)
        assert second is not None and second.id == job.id and second.attempts == 2
        assert second.claim_token != first.claim_token
        with pytest.raises(JobLeaseLostError, match=f"job {job.id}"):
            queue.complete(first, now=now + 81)
        # a failure with retries left goes back to the queue; after max_attempts it stays failed
        assert queue.fail(second, "feature extraction failed", now=now + 82).state == "failed"
        third = queue.claim(now=now + 83)
        assert third is None
        assert queue.counts() == {"failed": 1}


def test_a_job_claimed_by_a_killed_worker_is_redelivered(
    tmp_path: Path, sts001_ct: list[Path]
) -> None:
    root = tmp_path / "store"
    with DicomStore(root) as store:
        store.store_file(sts001_ct[0])
    with JobQueue(root) as queue:
        (job,) = queue.queue_quiet_studies(0.0)
    worker = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from osteomics.radiology.jobs import JobQueue\n"
        "q = JobQueue(Path(sys.argv[1]))\n"
        "job = q.claim(lease_seconds=1.0)\n"
        "print(job.id, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", worker, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(job.id)
    finally:
        proc.kill()  # SIGKILL: the worker never completes
        proc.wait(timeout=10)
    with JobQueue(root) as queue:
        (held,) = queue.jobs()
        assert held.state == "running" and held.attempts == 1 and held.lease_until is not None
        assert queue.claim(now=held.lease_until) is None  # the lease still holds at its end
        after = held.lease_until + 0.01
        again = queue.claim(now=after)
        assert again is not None and again.id == job.id and again.attempts == 2
        assert again.error is not None and "lease expired" in again.error
        assert queue.complete(again, now=after + 1).state == "done"


def test_jobs_survive_a_restart_and_quiet_studies_are_queued_at_start(
    node_config: NodeConfig, sts001_ct: list[Path], sts_dir: Path
) -> None:
    config = node_config
    # Instances arrive while no node runs (imported); their study goes quiet meanwhile.
    other = sorted((sts_dir / "STS_002" / "CT" / "image").glob("*.dcm"))[:3]
    with DicomStore(config.storage) as store:
        for path in sts001_ct[:3]:
            store.store_file(path)
    with JobQueue(config.storage) as queue:
        (queued_before,) = queue.queue_quiet_studies(0.0)
        claimed = queue.claim()
        assert claimed is not None
        queue.complete(claimed)
    with DicomStore(config.storage) as store:
        for path in other:
            store.store_file(path)
    time.sleep(config.study_quiet_seconds)

    running = start_node(config)  # the start-up check queues the quiet study at once
    try:
        jobs = running.jobs.jobs()
        assert (jobs[0].id, jobs[0].state) == (queued_before.id, "done")
        assert [(j.study_uid, j.state) for j in jobs[1:]] == [(_study_uid(other[0]), "queued")]
    finally:
        running.stop()
    with JobQueue(config.storage) as queue:  # and they are still there after the node stopped
        assert queue.counts() == {"done": 1, "queued": 1}
    with DicomStore(config.storage) as store:
        stored = {r.attributes.sop_instance_uid for r in store.instances()}
    assert {sop_uid(p) for p in other} <= stored


# --- the retry and lease-lost paths, on real SQLite with explicit times ---------------------


def _one_queued_job(root: Path, sts001_ct: list[Path], **queue_options: float) -> JobQueue:
    with DicomStore(root) as store:
        store.store_file(sts001_ct[0])
    queue = JobQueue(root, **queue_options)  # type: ignore[arg-type]
    (job,) = queue.queue_quiet_studies(0.0, now=T0)
    assert job.state == "queued"
    return queue


T0 = 1_800_000_000.0  # explicit epoch seconds, later than any instance received in the test


def test_a_failure_with_retry_requeues_with_one_more_attempt_until_max_attempts_then_failed(
    tmp_path: Path, sts001_ct: list[Path]
) -> None:
    with _one_queued_job(tmp_path / "store", sts001_ct, max_attempts=3) as queue:
        for attempt in (1, 2):
            claimed = queue.claim(lease_seconds=10, now=T0 + 10 * attempt)
            assert claimed is not None and (claimed.state, claimed.attempts) == ("running", attempt)
            failed = queue.fail(claimed, f"I/O error {attempt}", now=T0 + 10 * attempt + 1)
            assert (failed.state, failed.attempts, failed.error) == (
                "queued", attempt, f"I/O error {attempt}"
            )  # fmt: skip
            assert failed.claim_token is None and failed.lease_until is None
        last = queue.claim(lease_seconds=10, now=T0 + 30)
        assert last is not None and last.attempts == 3
        assert queue.fail(last, "I/O error 3", now=T0 + 31).state == "failed"  # max reached
        assert queue.claim(now=T0 + 40) is None
        (job,) = queue.jobs()
        assert (job.state, job.attempts, job.error) == ("failed", 3, "I/O error 3")


def test_a_failure_without_retry_is_failed_at_once(tmp_path: Path, sts001_ct: list[Path]) -> None:
    with _one_queued_job(tmp_path / "store", sts001_ct, max_attempts=5) as queue:
        claimed = queue.claim(now=T0 + 1)
        assert claimed is not None
        done = queue.fail(claimed, "bad geometry", retry=False, now=T0 + 2)
        assert (done.state, done.attempts, done.error) == ("failed", 1, "bad geometry")
        assert queue.claim(now=T0 + 3) is None


def test_a_worker_whose_lease_was_lost_cannot_complete_or_fail_and_changes_nothing(
    tmp_path: Path, sts001_ct: list[Path]
) -> None:
    """Worker A's lease expires; worker B (its own connection, as another process has) claims
    the job; A's complete, fail and heartbeat raise JobLeaseLostError and leave B's row as is."""
    root = tmp_path / "store"
    with _one_queued_job(root, sts001_ct) as a, JobQueue(root) as b:
        first = a.claim(lease_seconds=10, now=T0 + 1)
        assert first is not None and first.lease_until == T0 + 11
        # past its lease, before anyone claims: A may no longer complete it either
        with pytest.raises(JobLeaseLostError, match=f"job {first.id}"):
            a.complete(first, now=T0 + 12)
        assert a.get(first.id) == first  # unchanged: still running, A's token
        second = b.claim(lease_seconds=10, now=T0 + 13)
        assert second is not None and second.id == first.id and second.attempts == 2
        assert second.claim_token != first.claim_token
        held_by_b = b.get(second.id)
        for late in (
            lambda: a.complete(first, now=T0 + 14),
            lambda: a.fail(first, "A failed late", now=T0 + 14),
            lambda: a.fail(first, "A failed late", retry=False, now=T0 + 14),
            lambda: a.heartbeat(first, now=T0 + 14),
        ):
            with pytest.raises(JobLeaseLostError):
                late()
            assert a.get(first.id) == held_by_b  # nothing changed
        assert b.complete(second, now=T0 + 15).state == "done"
        assert a.counts() == {"done": 1}


def test_jobs_table_belongs_to_the_queue_and_a_version_1_index_is_migrated(
    tmp_path: Path, sts001_ct: list[Path]
) -> None:
    """The store creates only its own tables; opening a queue creates or upgrades ``jobs``."""
    root = tmp_path / "store"
    with DicomStore(root) as store:
        store.store_file(sts001_ct[0])
        assert store.status().jobs == {}
    db = sqlite3.connect(root / "index.sqlite")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "jobs" not in tables and {"patients", "studies", "series", "instances"} <= tables
    # an index as osteomics 0.1 wrote it: jobs without the lease columns, user_version 1
    db.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,"
        " study_uid TEXT, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " created REAL NOT NULL, updated REAL NOT NULL, error TEXT);"
        "INSERT INTO jobs(kind, study_uid, state, attempts, created, updated)"
        " VALUES ('study_complete', '1.2.3', 'done', 1, 1.0, 2.0);"
        "PRAGMA user_version = 1;"
    )
    db.close()
    with JobQueue(root) as queue:
        (old,) = queue.jobs()
        assert (old.state, old.study_received, old.lease_until, old.claim_token) == (
            "done", None, None, None
        )  # fmt: skip
        (new,) = queue.queue_quiet_studies(0.0, now=T0)
        assert new.study_received is not None
    with DicomStore(root) as store:
        assert store.status().jobs == {"done": 1, "queued": 1}
    db = sqlite3.connect(root / "index.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
