"""`--scheduler tcp://…`: an existing Dask cluster, tested as one.

A `dask scheduler` and two `dask worker` processes are started as separate programs (as on an
HPC or Kubernetes cluster); `osteomics tile` and `osteomics necrosis` run against them, as a
user runs them, and must give the same outputs as on their own local cluster. A worker killed
mid-slide must give a retried (whole) slide or an error row, never a slide with a hole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import zarr

from osteomics.wsi.mosaic import MosaicComposition

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "osteomics.cli.main"]
DASK = Path(sys.executable).parent / "dask"


@dataclass
class ExternalCluster:
    address: str
    scheduler: subprocess.Popen[bytes]
    nannies: list[subprocess.Popen[bytes]]


def wait_until(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def external_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExternalCluster]:
    """`dask scheduler` + 2 `dask worker` processes (one thread each), on loopback."""
    assert DASK.is_file(), f"{DASK} is missing: install dask[distributed] in this venv"
    folder = tmp_path_factory.mktemp("dask-cluster")
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "error"}
    logs = open(folder / "cluster.log", "wb")  # noqa: SIM115 (open for the cluster's life)
    scheduler = subprocess.Popen(
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(scheduler_file)],
        stdout=logs, stderr=logs, env=env,
    )  # fmt: skip
    nannies: list[subprocess.Popen[bytes]] = []
    try:
        wait_until(scheduler_file.is_file, 60, "the scheduler file")
        wait_until(lambda: "address" in scheduler_file.read_text(), 10, "the scheduler address")
        address = json.loads(scheduler_file.read_text())["address"]
        for name in ("w1", "w2"):
            command = [
                str(DASK), "worker", address, "--nthreads", "1", "--nworkers", "1",
                "--name", name, "--host", "127.0.0.1", "--no-dashboard",
            ]  # fmt: skip
            nannies.append(subprocess.Popen(command, stdout=logs, stderr=logs, env=env))
        from dask.distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield ExternalCluster(address, scheduler, nannies)
    finally:
        for proc in [*nannies, scheduler]:
            proc.terminate()
        for proc in [*nannies, scheduler]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=600, check=False
    )


def test_tile_on_an_external_cluster_equals_the_local_cluster(
    external_cluster: ExternalCluster, mosaic_2um: MosaicComposition, tmp_path: Path
) -> None:
    args = [mosaic_2um.path, "--mpp", "3", "--tile-px", "128", "--json"]
    local = run_cli("tile", *args, "--out", tmp_path / "local", "--workers", "2")
    remote = run_cli("tile", *args, "--out", tmp_path / "remote",
                     "--scheduler", external_cluster.address)  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    record = json.loads(remote.stdout)
    assert record["compute"]["scheduler"] == external_cluster.address
    assert record["compute"]["workers"] == 2
    name = Path(mosaic_2um.path).stem
    for part in ("local", "remote"):
        assert (tmp_path / part / name / "slide.json").is_file()
    tiles_local = zarr.open_array(str(tmp_path / "local" / name / "tiles.zarr"), mode="r")[:]
    tiles_remote = zarr.open_array(str(tmp_path / "remote" / name / "tiles.zarr"), mode="r")[:]
    assert tiles_local.shape[0] > 20
    np.testing.assert_array_equal(tiles_local, tiles_remote)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "local" / name / "tiles.parquet"),
        pd.read_parquet(tmp_path / "remote" / name / "tiles.parquet"),
    )


def test_necrosis_on_an_external_cluster_equals_the_local_cluster(
    external_cluster: ExternalCluster, mosaic_2um: MosaicComposition, tmp_path: Path
) -> None:
    local = run_cli("necrosis", mosaic_2um.path, "--out", tmp_path / "local", "--workers", "2")
    remote = run_cli("necrosis", mosaic_2um.path, "--out", tmp_path / "remote",
                     "--scheduler", external_cluster.address)  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    for table in ("necrosis_slides.csv", "necrosis_cases.csv"):
        a = pd.read_csv(tmp_path / "local" / table).drop(columns=["seconds"], errors="ignore")
        b = pd.read_csv(tmp_path / "remote" / table).drop(columns=["seconds"], errors="ignore")
        pd.testing.assert_frame_equal(a, b)
    cases = pd.read_csv(tmp_path / "remote" / "necrosis_cases.csv")
    assert cases["status"].tolist() == ["ok"] and cases["necrosis_rate"].notna().all()


def staged_chunks(out: Path) -> int:
    """How many tile chunks the run has written into its staging folder so far."""
    try:
        return sum(1 for p in (out / ".staging").rglob("*") if p.is_file() and "c" in p.parts[-5:])
    except OSError:
        return 0


def test_a_worker_killed_mid_slide_gives_a_whole_slide_or_an_error_row(
    external_cluster: ExternalCluster, big_mosaic: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*CLI, "tile", str(big_mosaic), "--out", str(out), "--tile-px", "128",
         "--scheduler", external_cluster.address, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: staged_chunks(out) >= 2 or proc.poll() is not None, 180, "tiles")
        assert proc.poll() is None, "the run ended before a worker could be killed"
        # Kill the worker process itself (its nanny restarts it), as the OOM killer would.
        nanny = psutil.Process(external_cluster.nannies[0].pid)
        [worker] = [  # the resource tracker is a child too: pick the spawned worker
            c for c in nanny.children() if any("spawn_main" in a for a in c.cmdline())
        ]
        os.kill(worker.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    record = json.loads(stdout)
    [row] = record["slides"]
    if row["status"] == "ok":  # Dask re-ran the lost tasks: the slide must be whole
        assert proc.returncode == 0, stderr
        local = run_cli("tile", big_mosaic, "--out", tmp_path / "local", "--tile-px", "128",
                        "--workers", "2")  # fmt: skip
        assert local.returncode == 0, local.stderr
        expected = zarr.open_array(str(tmp_path / "local" / "big" / "tiles.zarr"), mode="r")[:]
        got = zarr.open_array(str(out / "big" / "tiles.zarr"), mode="r")[:]
        np.testing.assert_array_equal(got, expected)
    else:  # or the slide is an error row that says what happened, and nothing is kept
        assert proc.returncode == 1
        assert "worker" in row["reason"].lower()
        assert not (out / "big").exists()
    assert not (out / ".staging").exists()
