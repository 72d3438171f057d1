"""``osteomics radiomics INPUT [--mask MASK] [--roi NAME] --config NAME --out FILE``: IBSI features.

Patient IDs go to the output table only, never to the log or the console.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from osteomics.core.files import write_atomic, write_json_atomic
from osteomics.radiology.radiomics import (
    Mask,
    Volume,
    extract_features,
    load_config,
    read_nifti_mask,
    read_nifti_volume,
    shipped_configs,
)
from osteomics.radiology.radiomics.dicom import (
    dicom_modality,
    read_dicom_series,
    read_dicom_study,
    read_rtstruct_mask,
    read_seg_mask,
    read_study_mask,
)
from osteomics.radiology.radiomics.errors import RadiomicsError
from osteomics.radiology.radiomics.provenance import run_provenance

COLUMNS = ("patient", "study", "series", "modality", "roi", "family", "feature", "ibsi_id", "value")


def _is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


@dataclass(frozen=True)
class _Loaded:
    volume: Volume
    mask: Mask
    identity: tuple[str | None, str | None, str | None, str | None]  # patient, study, series, mod


def store_study_folder(uid: str, node_config: Path | None) -> Path:
    """The folder of study ``uid`` in the node's store (``[node] storage`` of ``node_config``),
    as the store gives it (read-only: works while the node serves, never creates a store).

    Raises
    ------
    RadiomicsError
        No node.toml given, or no such study in the store.
    StoreNotFoundError
        No store at ``[node] storage``.
    InvalidUIDError
        ``uid`` is not a valid UID.
    """
    from osteomics.radiology.config import load_node_config
    from osteomics.radiology.store import DicomStore
    from osteomics.radiology.uids import validate_uid

    if node_config is None:
        raise RadiomicsError(
            "store:<StudyInstanceUID> needs --node-config pointing at the node's node.toml "
            "(its [node] storage is the store)"
        )
    cfg = load_node_config(node_config)
    uid = validate_uid(uid, "StudyInstanceUID")
    with DicomStore(cfg.storage, mode="read") as store:
        folder = store.study_folder(uid)
        if store.study(uid) is None or not folder.is_dir():
            raise RadiomicsError(f"no study {uid} in the store at {cfg.storage} ({node_config})")
    return folder


def load_inputs(
    input_path: Path | str,
    mask: Path | None,
    roi: str | None,
    modality: str | None = None,
    node_config: Path | None = None,
    series_uid: str | None = None,
) -> _Loaded:
    """Read INPUT (and --mask) into a volume, a mask and the DICOM identity of the series.

    - NIfTI image + ``mask`` NIfTI mask (``roi`` names it);
    - DICOM series folder + ``mask`` RTSTRUCT or SEG file (``roi``: default the only ROI);
    - DICOM study folder holding image series and RTSTRUCT/SEG files: the series a structure
      file references (``modality`` or ``series_uid`` picks one when several are contoured;
      ``roi``: default the only ROI);
    - ``store:<StudyInstanceUID>``: that study's folder in the store of ``node_config``, read as a
      study folder.

    Raises
    ------
    RadiomicsError
        Every reading error.
    """
    text = str(input_path)
    if text.startswith("store:"):
        folder = store_study_folder(text.removeprefix("store:"), node_config)
        study = read_dicom_study(folder, modality=modality, series_uid=series_uid)
        roi_mask = read_study_mask(study, roi)
        info = study.image.info
        return _Loaded(
            study.image.volume, roi_mask, (info.patient, info.study, info.series, info.modality)
        )
    input_path = Path(input_path)
    if _is_nifti(input_path):
        if mask is None or not _is_nifti(mask):
            raise RadiomicsError(
                "a NIfTI image needs --mask pointing at a NIfTI mask (.nii/.nii.gz)"
            )
        return _Loaded(read_nifti_volume(input_path), read_nifti_mask(mask, name=roi), (None,) * 4)
    if not input_path.is_dir():
        raise RadiomicsError(
            f"{input_path}: give a NIfTI image (.nii/.nii.gz), a DICOM series folder with "
            "--mask RTSTRUCT/SEG, or a DICOM study folder"
        )
    if mask is not None:
        kind = dicom_modality(mask)
        if kind not in ("RTSTRUCT", "SEG"):
            raise RadiomicsError(
                f"{mask}: --mask with a DICOM folder must be an RTSTRUCT or SEG file"
            )
        image = read_dicom_series(input_path, series_uid=series_uid)
        if kind == "SEG":
            roi_mask = read_seg_mask(mask, image, roi)
        else:
            roi_mask = read_rtstruct_mask(mask, image, roi)
    else:
        study = read_dicom_study(input_path, modality=modality, series_uid=series_uid)
        image = study.image
        roi_mask = read_study_mask(study, roi)
    info = image.info
    return _Loaded(image.volume, roi_mask, (info.patient, info.study, info.series, info.modality))


def radiomics(
    input_path: str = typer.Argument(
        ...,
        metavar="INPUT",
        help="NIfTI image, DICOM series folder (with --mask RS.dcm), DICOM study folder, or "
        "store:<StudyInstanceUID> (with --node-config).",
    ),
    mask: Path | None = typer.Option(
        None,
        "--mask",
        help="NIfTI mask (non-zero = ROI), or RTSTRUCT/SEG file for a series folder.",
    ),
    roi: str | None = typer.Option(
        None,
        "--roi",
        help="ROI name (DICOM: default the only ROI; NIfTI: name for the table).",
    ),
    modality: str | None = typer.Option(
        None,
        "--modality",
        help="CT, MR or PT: the contoured image series of a study folder holding several.",
    ),
    series_uid: str | None = typer.Option(
        None,
        "--series",
        help="SeriesInstanceUID: the image series when a folder holds several of one modality.",
    ),
    config: str = typer.Option(
        ...,
        "--config",
        metavar="NAME|FILE",
        help=f"A shipped configuration ({', '.join(shipped_configs())}) or a .toml file.",
    ),
    out: Path = typer.Option(..., "--out", help="Output table: .csv or .parquet."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
    node_config: Path | None = typer.Option(
        None,
        "--node-config",
        help="The node's node.toml, for store:<StudyInstanceUID> inputs and --send.",
    ),
    send: str | None = typer.Option(
        None,
        "--send",
        help="After the run: export the TID 1500 SR and store it on this remote of node.toml "
        "(with --node-config).",
    ),
) -> None:
    """Compute IBSI features; write the long table and FILE's provenance JSON next to it.

    INPUT: a NIfTI image with --mask a NIfTI mask; a DICOM series folder with --mask an RTSTRUCT
    or SEG file; a DICOM study folder (image series + RTSTRUCT/SEG found inside); or
    store:<StudyInstanceUID>, a study in the store of the node whose node.toml --node-config gives.

    --send REMOTE: the SR (one per ROI) is written into OUT's folder under <OUT stem>-dicom/ and
    stored on REMOTE; exit code 1 when it was not (the table and the SR stay on disk).
    """
    if out.suffix not in (".csv", ".parquet"):
        raise RadiomicsError(f"{out}: the output must end in .csv or .parquet")
    node = None
    if send is not None:
        from osteomics.core.errors import InvalidOptionError
        from osteomics.radiology.config import load_node_config

        if node_config is None:
            raise InvalidOptionError(
                f"--send {send}: give --node-config node.toml, which defines the remote"
            )
        node = load_node_config(node_config)
        node.remote(send)  # an unknown remote fails before the run
    cfg = load_config(config)
    t0 = time.perf_counter()
    loaded = load_inputs(input_path, mask, roi, modality, node_config, series_uid)
    values = extract_features(loaded.volume, loaded.mask, cfg)
    seconds = time.perf_counter() - t0
    roi_mask = loaded.mask

    import pandas as pd

    table = pd.DataFrame(
        [
            (*loaded.identity, roi_mask.name, v.family, v.feature, v.ibsi_id, v.value)
            for v in values
        ],
        columns=list(COLUMNS),
    )
    if out.suffix == ".csv":
        write_atomic(out, lambda p: table.to_csv(p, index=False))
    else:
        write_atomic(out, lambda p: table.to_parquet(p, index=False))
    image_path = (
        store_study_folder(input_path.removeprefix("store:"), node_config)
        if input_path.startswith("store:")
        else Path(input_path)
    )
    inputs = {"image": image_path} if mask is None else {"image": image_path, "mask": mask}
    prov = run_provenance(cfg, inputs, n_features=len(values), seconds=seconds)
    prov["output"] = str(out)
    prov_path = out.with_name(out.name.removesuffix(out.suffix) + ".provenance.json")
    write_json_atomic(prov_path, prov)
    summary = {
        "output": str(out),
        "provenance": str(prov_path),
        "roi": roi_mask.name,
        "config": cfg.name,
        "n_features": len(values),
        "seconds": round(seconds, 3),
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{len(values)} features of ROI {roi_mask.name!r} -> {out} ({seconds:.2f} s)")
    if send is not None and node is not None:
        from osteomics.cli.study_necrosis import send_and_report
        from osteomics.plugins.dicom_export import export_run

        dicom_dir = out.with_name(out.name.removesuffix(out.suffix) + "-dicom")
        exported = export_run(out, dicom_dir, sources=[image_path])
        files = [Path(o.path) for o in exported.objects]
        if not send_and_report(node, send, files, dicom_dir):
            raise typer.Exit(1)
