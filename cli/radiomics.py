"""``osteomics radiomics INPUT --mask MASK --config NAME --out FILE``: IBSI features of one ROI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from osteomics.radiology.radiomics import (
    extract_features,
    load_config,
    read_nifti_mask,
    read_nifti_volume,
)
from osteomics.radiology.radiomics.errors import RadiomicsError
from osteomics.radiology.radiomics.provenance import run_provenance

COLUMNS = ("patient", "study", "series", "modality", "roi", "family", "feature", "ibsi_id", "value")


def _is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def radiomics(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="NIfTI image (.nii/.nii.gz)."),
    mask: Path | None = typer.Option(None, "--mask", help="NIfTI mask (non-zero = ROI)."),
    roi: str | None = typer.Option(
        None, "--roi", help="ROI name for the table (default: mask file name)."
    ),
    config: str = typer.Option(..., "--config", help="Shipped configuration name or a .toml file."),
    out: Path = typer.Option(..., "--out", help="Output table: .csv or .parquet."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Compute IBSI features; write the long table and FILE's provenance JSON next to it.

    For now INPUT must be a NIfTI image with --mask a NIfTI mask; DICOM series, study folders
    with RTSTRUCT/SEG and store:<StudyInstanceUID> inputs are not implemented yet.
    """
    if not _is_nifti(input_path):
        raise RadiomicsError(
            f"{input_path}: only NIfTI inputs (.nii, .nii.gz) are supported so far; DICOM "
            "series/study folders and store: inputs are not implemented yet"
        )
    if mask is None or not _is_nifti(mask):
        raise RadiomicsError("a NIfTI image needs --mask pointing at a NIfTI mask (.nii/.nii.gz)")
    if out.suffix not in (".csv", ".parquet"):
        raise RadiomicsError(f"{out}: the output must end in .csv or .parquet")
    cfg = load_config(config)
    t0 = time.perf_counter()
    volume = read_nifti_volume(input_path)
    roi_mask = read_nifti_mask(mask, name=roi)
    values = extract_features(volume, roi_mask, cfg)
    seconds = time.perf_counter() - t0

    import pandas as pd

    table = pd.DataFrame(
        [
            (None, None, None, None, roi_mask.name, v.family, v.feature, v.ibsi_id, v.value)
            for v in values
        ],
        columns=list(COLUMNS),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        table.to_csv(out, index=False)
    else:
        table.to_parquet(out, index=False)
    prov = run_provenance(
        cfg, {"image": input_path, "mask": mask}, n_features=len(values), seconds=seconds
    )
    prov["output"] = str(out)
    prov_path = out.with_name(out.name.removesuffix(out.suffix) + ".provenance.json")
    prov_path.write_text(json.dumps(prov, indent=2) + "\n")
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
