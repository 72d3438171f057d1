"""Benchmark: DICOM WSI through the PACS path. Two figures (issue 12):

1. **Pull**: a DICOM WSI study from a PACS over DICOMweb (WADO-RS) vs DIMSE (C-MOVE).
   One Orthanc (own temporary storage, DICOMweb plugin, ``TCP_NODELAY=1``) holds a three-level
   DICOM WSI pyramid built from the six real TCIA H&E tiles of the tests (1, 2 and 4 µm/px,
   uncompressed: about 25 MB). Each repeat pulls the same study into a fresh, empty node store:

   - DIMSE: ``osteomics.radiology.pacs.pull`` (C-FIND, then C-MOVE to our node, which serves
     in its own process: ``osteomics node serve``; Orthanc C-STOREs each instance to it);
   - DICOMweb: ``DicomWebConnector.retrieve_study`` (QIDO-RS is not timed, WADO-RS is, each
     instance stored durably through ``DicomStore.store`` as it arrives);
   - DICOMweb through the node: ``pull`` from the node.toml remote ``protocol = "dicomweb"``
     while the node serves: QIDO-RS + WADO-RS, each instance C-STOREd to the node.

   Both end with every instance durable and indexed in a node store. The ratio is
   DICOMweb / DIMSE (time).

2. **Scoring**: tiling a DICOM WSI from the node's store vs the same slide as a pyramidal TIFF.
   One mosaic of real TCIA tiles (:mod:`osteomics.wsi.mosaic`, 1 µm/px, JPEG 256 px tiles) is
   written as a pyramidal TIFF; the very same JPEG tile bytes of each TIFF level are copied
   into the frames of a DICOM WSI (one TILED_FULL instance per level, JPEG Baseline): the
   same pixels, the same tile size, the same codec. The DICOM instances are stored in a
   ``DicomStore``, and ``osteomics.wsi.tiling.tile_slides`` (1 µm/px, 256 px tiles, one Dask
   worker process shared by all runs) tiles the store's series folder and the TIFF file,
   alternating, into fresh output folders. The ratio is DICOM / TIFF (tiles/s); the issue's
   bar is >= 0.9.

Repeats alternate the order; medians are reported. The ratios are printed last.

Usage: python bench/pacs.py [--figure pull|scoring|all] [--repeat 3] [--cells 6] [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ENV = dict(os.environ, TCP_NODELAY="1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.1)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def build_wsi(folder: Path) -> list[Path]:
    """Three pyramid levels of the H&E mosaic as one series (tests/plugins/pacs_helpers)."""
    sys.path.insert(0, str(ROOT / "tests" / "plugins"))
    from pacs_helpers import write_dicom_wsi  # type: ignore[import-not-found]
    from PIL import Image
    from pydicom.uid import generate_uid

    root = DATA / "osteosarcoma-tiles"
    picks = [
        sorted((root / label).glob("*.jpg"))[i]
        for i in (0, 1)
        for label in ("Non-Viable-Tumor", "Viable", "Non-Tumor")
    ]
    cells = [np.asarray(Image.open(p).convert("RGB")) for p in picks]  # 1024 px, ~1 µm/px
    level0 = np.concatenate([np.concatenate(cells[:3], axis=1), np.concatenate(cells[3:], axis=1)])
    study = generate_uid()
    files = []
    for k, mpp in enumerate((1.0, 2.0, 4.0)):
        image = np.asarray(
            Image.fromarray(level0).resize((level0.shape[1] >> k, level0.shape[0] >> k), Image.BOX)
        )
        files += write_dicom_wsi(
            image,
            folder / f"level{k}",
            mpp=mpp,
            template=DATA / "wsi" / "fixtures" / "highdicom-sm_image.dcm",
            study_uid=study,
        )
    return files


def start_orthanc(folder: Path, node_port: int) -> tuple[subprocess.Popen[bytes], int, int]:
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "bench-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {"osteomics": ["OSTEOMICS", "127.0.0.1", node_port]},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if binary is None or not DICOMWEB_PLUGIN.is_file():
        sys.exit("Orthanc or orthanc-dicomweb is missing: run .ci/system-packages as root")
    proc = subprocess.Popen(
        [binary, str(folder / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    wait_http(f"http://127.0.0.1:{http_port}/system", proc)
    return proc, http_port, dicom_port


def node_toml(folder: Path, port: int, orthanc_dicom_port: int, http_port: int) -> Path:
    """Remotes: ``orthanc`` (DIMSE) and ``web`` (its DICOMweb root); the node allows Orthanc
    and itself (a DICOMweb pull hands the instances to the serving node)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "node.toml"
    path.write_text(
        f'[node]\nae_title = "OSTEOMICS"\nhost = "127.0.0.1"\nport = {port}\n'
        'storage = "store"\nstudy_quiet_seconds = 3600\n\n'
        '[[node.allow]]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n\n'
        '[[node.allow]]\nae_title = "OSTEOMICS"\nhost = "127.0.0.1"\n\n'
        f'[remotes.orthanc]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc_dicom_port}\n\n"
        f'[remotes.web]\nprotocol = "dicomweb"\nurl = "http://127.0.0.1:{http_port}/dicom-web"\n',
        encoding="utf-8",
    )
    return path


def pull_via_node(
    folder: Path, node_port: int, orthanc_dicom_port: int, http_port: int, study: str, remote: str
) -> float:
    """``pull`` of the study into a fresh node serving in its own process: from ``orthanc``
    C-FIND + C-MOVE, from ``web`` QIDO-RS + WADO-RS, each instance C-STOREd to the node."""
    from osteomics.radiology.config import load_node_config
    from osteomics.radiology.pacs import pull

    config_path = node_toml(folder, node_port, orthanc_dicom_port, http_port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "osteomics.cli.main", "node", "serve", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        wait_port(node_port, proc)
        config = load_node_config(config_path)
        t0 = time.perf_counter()
        report = pull(config, remote, study_uid=study)
        elapsed = time.perf_counter() - t0
        assert report.ok and report.instances == 3, report.to_dict()
        return elapsed
    finally:
        stop(proc)


def pull_dicomweb(folder: Path, http_port: int, study: str) -> float:
    from osteomics.plugins.dicomweb_connector import DicomWebConnector, DicomWebRemote
    from osteomics.radiology.store import DicomStore

    remote = DicomWebRemote("orthanc", f"http://127.0.0.1:{http_port}/dicom-web")
    connector = DicomWebConnector(timeout_s=120)
    (match,) = connector.find_studies(remote, study_uid=study)
    with DicomStore(folder / "store") as store:
        t0 = time.perf_counter()
        outcome = connector.retrieve_study(remote, match.study_uid, store)
        elapsed = time.perf_counter() - t0
    assert outcome.ok and outcome.stored == 3, outcome
    return elapsed


def build_scoring_slides(folder: Path, cells: int) -> tuple[Path, list[Path], int]:
    """The mosaic as a pyramidal TIFF, and as a DICOM WSI with the TIFF's JPEG tiles copied
    frame by frame; returns the TIFF, the DICOM files (one per level) and the level count."""
    import pydicom
    import tifffile
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    from osteomics.wsi.labelled import read_labelled_folder
    from osteomics.wsi.mosaic import build_mosaic_slide, random_layout

    tiles = read_labelled_folder(DATA / "osteosarcoma-tiles")
    layout = random_layout(tiles, cells, cells, glass_fraction=0.25, seed=3)
    tiff = folder / "mosaic.tiff"
    composition = build_mosaic_slide(tiff, layout, source_mpp=1.0, cell_px=1024, seed=3)
    template = DATA / "wsi" / "fixtures" / "highdicom-sm_image.dcm"
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    files = []
    with tifffile.TiffFile(tiff) as tif:
        pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage) and p.is_tiled]
        for level, page in enumerate(pages):
            assert page.compression == 7 and page.photometric == 6  # JPEG, YCbCr
            assert page.jpegtables is None  # each tile a whole JPEG stream
            frames = []
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                tif.filehandle.seek(offset)
                frames.append(tif.filehandle.read(count))
            rows, cols = page.shape[:2]
            assert page.tile is not None
            tile_h, tile_w = page.tile
            ds = pydicom.dcmread(template)
            ds.PatientID = "BENCH-1"
            ds.PatientName = "Bench^Mosaic"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.FrameOfReferenceUID = frame_of_reference
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
            ds.PhotometricInterpretation = "YBR_FULL_422"
            ds.PlanarConfiguration = 0
            ds.LossyImageCompression = "01"
            ds.Rows, ds.Columns = tile_h, tile_w
            ds.NumberOfFrames = len(frames)
            ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = rows, cols
            mpp = composition.mpp * 2**level
            ds.ImagedVolumeWidth = cols * mpp / 1000.0
            ds.ImagedVolumeHeight = rows * mpp / 1000.0
            measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
            measures.PixelSpacing = [mpp / 1000.0, mpp / 1000.0]
            ds.DimensionOrganizationType = "TILED_FULL"
            kind = "ORIGINAL" if level == 0 else "DERIVED"
            ds.ImageType = [kind, "PRIMARY", "VOLUME", "NONE" if level == 0 else "RESAMPLED"]
            ds.InstanceNumber = level + 1
            ds.PixelData = encapsulate(frames)
            ds["PixelData"].VR = "OB"
            path = folder / "dicom" / f"level{level}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return tiff, files, len(pages)


def scoring_figure(tmp: Path, repeat: int, cells: int) -> dict[str, float]:
    """Median tiles/s of ``tile_slides`` on the DICOM WSI from a node store and on the TIFF."""
    from osteomics.radiology.store import DicomStore
    from osteomics.wsi.cluster import dask_client
    from osteomics.wsi.tiling import TilingParameters, tile_slides

    tiff, files, levels = build_scoring_slides(tmp / "slides", cells)
    with DicomStore(tmp / "store") as store:
        for f in files:
            store.store(f.read_bytes(), source="bench")
        (record,) = {r.path.parent for r in store.instances()}
    series_folder = record
    from osteomics.wsi.slide import open_slide

    with open_slide(series_folder) as dicom_slide, open_slide(tiff) as tiff_slide:
        size = (min(2048, dicom_slide.info.width_px), min(2048, dicom_slide.info.height_px))
        a = dicom_slide.read_region((0, 0), 0, size).astype(int)
        b = tiff_slide.read_region((0, 0), 0, size).astype(int)
        backends = f"{dicom_slide.backend} vs {tiff_slide.backend}"
    print(f"same pixels? max |DICOM - TIFF| over {size[0]}x{size[1]} px: {abs(a - b).max()} "
          f"({backends})")  # fmt: skip
    params = TilingParameters(target_mpp=1.0, tile_px=256, min_tissue=0.5)
    # the DICOM slide with the reader `auto` picks (wsidicom, first for DICOM since it decodes
    # DICOM frames faster), and with OpenSlide (auto's pick before); the TIFF with `auto`
    # (OpenSlide)
    runs = {
        "tiff": (tiff, params),
        "dicom": (series_folder, params),
        "dicom-openslide": (series_folder, replace(params, backend="openslide")),
    }
    rates: dict[str, list[float]] = {k: [] for k in runs}
    tiles: dict[str, int] = {}
    with dask_client(workers=1) as client:
        for k in range(repeat + 1):  # the first round warms the worker up, not counted
            order = list(runs) if k % 2 == 0 else list(runs)[::-1]
            for which in order:
                out = tmp / f"tiles-{k}-{which}"
                source, run_params = runs[which]
                t0 = time.perf_counter()
                run = tile_slides([source], out, run_params, client=client)
                elapsed = time.perf_counter() - t0
                (result,) = run.results
                assert result.status == "ok", result.reason
                tiles[which] = result.n_tiles
                if k > 0:
                    rates[which].append(result.n_tiles / elapsed)
                shutil.rmtree(out, ignore_errors=True)
    assert len(set(tiles.values())) == 1, tiles
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"mosaic {cells}x{cells} cells of 1024 px at 1 µm/px, {levels} levels, JPEG 256 px "
        f"tiles (DICOM {mb:.1f} MB, TIFF {tiff.stat().st_size / 1e6:.1f} MB): "
        f"{tiles['tiff']} tissue tiles, {repeat} repeats"
    )
    return {k: statistics.median(v) for k, v in rates.items()}


def pull_figure(tmp: Path, repeat: int) -> tuple[float, float]:
    """Median seconds of a DIMSE pull and a DICOMweb pull of the same WSI study."""
    files = build_wsi(tmp / "wsi")
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    node_port = free_port()
    proc, http_port, dicom_port = start_orthanc(tmp / "orthanc", node_port)
    try:
        for f in files:
            request = urllib.request.Request(
                f"http://127.0.0.1:{http_port}/instances", data=f.read_bytes(), method="POST"
            )
            urllib.request.urlopen(request, timeout=120).close()
        import pydicom

        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        times: dict[str, list[float]] = {"dimse": [], "dicomweb": [], "dicomweb-node": []}
        for k in range(repeat):
            order = list(times) if k % 2 == 0 else list(times)[::-1]
            for which in order:
                folder = tmp / f"run{k}-{which}"
                if which == "dimse":
                    t = pull_via_node(folder, node_port, dicom_port, http_port, study, "orthanc")
                elif which == "dicomweb-node":
                    t = pull_via_node(folder, node_port, dicom_port, http_port, study, "web")
                else:
                    t = pull_dicomweb(folder, http_port, study)
                times[which].append(t)
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        stop(proc)
    d, w, n = (statistics.median(times[k]) for k in ("dimse", "dicomweb", "dicomweb-node"))
    print(f"WSI study: {len(files)} instances, {size_mb:.1f} MB, {repeat} repeats")
    print(f"DIMSE C-FIND + C-MOVE to our node:      median {d:.3f} s ({size_mb / d:.0f} MB/s)")
    print(f"DICOMweb WADO-RS into the store:        median {w:.3f} s ({size_mb / w:.0f} MB/s)")
    print(f"DICOMweb node pull, C-STORE to our node: median {n:.3f} s ({size_mb / n:.0f} MB/s)")
    print(f"DICOMweb node pull / DIMSE time: {n / d:.2f}")
    return d, w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", choices=("pull", "scoring", "all"), default="all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cells", type=int, default=6, help="mosaic side, in 1024 px cells")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench-pacs-") as name:
        tmp = Path(name)
        if args.figure in ("pull", "all"):
            d, w = pull_figure(tmp / "pull", args.repeat)
            lines.append(f"DICOMweb / DIMSE time: {w / d:.2f}")
        if args.figure in ("scoring", "all"):
            rate = scoring_figure(tmp / "scoring", args.repeat, args.cells)
            tiff = rate["tiff"]
            print(f"tile_slides, pyramidal TIFF (auto: openslide):   median {tiff:.1f} tiles/s")
            for key, label in (("dicom", "auto: wsidicom"), ("dicom-openslide", "openslide")):
                print(f"tile_slides, DICOM WSI from a store ({label}): {rate[key]:.1f} tiles/s")
            lines.append(
                f"DICOM / TIFF tiles/s: {rate['dicom'] / tiff:.2f} with the auto reader "
                f"(wsidicom), {rate['dicom-openslide'] / tiff:.2f} with openslide "
                "(issue: >= 0.9)"
            )
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
