"""The durable job queue: quiet-time queueing (in the running node, with a real storescu),
one job per quiet period, at-least-once delivery with leases (a worker really killed), and
restart survival."""

from __future__ import annotations

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

    # Resending the same instances (duplicates) is not new: still the one job.
    again = storescu(dcmtk, node, *sts001_ct[:30])
    assert again.returncode == 0
    time.sleep(quiet * 1.5)
    assert [j.id for j in node.jobs.jobs()] == [job.id]

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
    time.sleep(quiet * 1.5)
    assert len(node.jobs.jobs()) == 2  # and it stays at that


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
        assert held.state == "running" and held.attempts == 1
        assert _wait_for(lambda: time.time() > (held.lease_until or 0) + 0.01, timeout=5)
        again = queue.claim()
        assert again is not None and again.id == job.id and again.attempts == 2
        assert again.error is not None and "lease expired" in again.error
        assert queue.complete(again).state == "done"


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
