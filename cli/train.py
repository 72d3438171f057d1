"""``osteomics train TILE_DIR --out MODEL_DIR``: a tile classifier with grouped cross-validation."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from osteomics.wsi.errors import OutputNotWritableError, TrainingDataError


def train(
    tile_dir: Path = typer.Argument(..., help="Folder with one sub-folder of images per class."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (weights + model card)."),
    arch: str | None = typer.Option(
        None,
        "--arch",
        help="timm architecture name (default: the --pretrained weights' architecture, else "
        "lcnet_050).",
    ),
    tile_mpp: float = typer.Option(1.0, "--tile-mpp", help="µm/px of the labelled images."),
    input_mpp: float = typer.Option(2.0, "--input-mpp", help="µm/px of the model's input."),
    input_px: int = typer.Option(128, "--input-px", help="Side of the model's input, px."),
    epochs: int = typer.Option(30, "--epochs", help="Maximum epochs (early stopping per fold)."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds."),
    cases: Path | None = typer.Option(
        None, "--cases", help="CSV with columns file,case (default: case from TCIA file names)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same model)."),
    stain: str = typer.Option(
        "macenko", "--stain-normalisation", help="none, macenko or reinhard (per tile)."
    ),
    colour: str | None = typer.Option(
        None,
        "--colour",
        help="Network input: gray, rgb or he (haematoxylin + eosin); default rgb with "
        "--pretrained, else gray.",
    ),
    crops: int = typer.Option(12, "--crops-per-image", help="Random crops per image per epoch."),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing", help="Label smoothing."),
    fixed_schedule: bool = typer.Option(
        False,
        "--fixed-schedule",
        help="Train every fold and the final model for all --epochs (one-cycle cosine "
        "schedule), no early stopping on an inner split.",
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Local timm checkpoint to start from (nothing is downloaded)."
    ),
    pretrained: str | None = typer.Option(
        None,
        "--pretrained",
        help="Start from a weight source (osteomics plugins lists them: efficientnet-lite0, "
        "efficientnet-lite2, densenet121, ...) or a local checkpoint file/folder; with rgb input "
        "the source's mean/std are used. Nothing is downloaded.",
    ),
    no_robustness: bool = typer.Option(
        False, "--no-robustness", help="Skip the stain-perturbation check during CV."
    ),
    name: str | None = typer.Option(None, "--name", help="Model name in the card."),
    linear_probe: bool = typer.Option(
        False,
        "--linear-probe",
        help="Keep the --pretrained trunk frozen and fit a logistic regression on its pooled "
        "features (C by inner grouped CV), folded into the classifier (the v2 recipe); "
        "--epochs, --crops-per-image, --label-smoothing and --fixed-schedule do not apply.",
    ),
    soft_label: list[str] = typer.Option(
        [],
        "--soft-label",
        help="FOLDER=CLASS_A+CLASS_B: the folder's images count as an equal share of each "
        "class (training only; with --linear-probe). Repeatable.",
    ),
    ignore_class: list[str] = typer.Option(
        [], "--ignore-class", help="A label folder to leave out (with --linear-probe). Repeatable."
    ),
    grouping: str = typer.Option(
        "auto",
        "--grouping",
        help="With --linear-probe: cross-validation groups, auto (patients when every class has "
        "more than one, else slides), patient or slide.",
    ),
    fp16: bool = typer.Option(
        False, "--fp16", help="Store the weights as float16 (half the size; with --linear-probe)."
    ),
) -> None:
    """Cross-validate (grouped by patient, or by slide when a class has one patient), calibrate,
    fit on all images, and write MODEL_DIR/model.safetensors + model_card.json."""
    from osteomics.wsi.model import COLOUR_MODES, COLOUR_NORMALISATION, Preprocessing, save_model
    from osteomics.wsi.stain import NORMALISERS
    from osteomics.wsi.train import (
        ProbeConfig,
        TrainConfig,
        half_precision,
        parse_soft_labels,
        train_linear_probe,
    )
    from osteomics.wsi.train import train as run_training
    from osteomics.wsi.weights import load_pretrained

    if (soft_label or ignore_class or fp16 or grouping != "auto") and not linear_probe:
        raise typer.BadParameter(
            "--soft-label, --ignore-class, --grouping and --fp16 go with --linear-probe",
            param_hint="--linear-probe",
        )
    try:
        soft_labels = parse_soft_labels(soft_label)
    except TrainingDataError as exc:
        raise typer.BadParameter(str(exc), param_hint="--soft-label") from exc
    if linear_probe and not (pretrained or checkpoint):
        raise typer.BadParameter(
            "--linear-probe keeps a pretrained trunk frozen: give --pretrained (osteomics "
            "plugins lists the weight sources)",
            param_hint="--pretrained",
        )
    if pretrained and checkpoint:
        raise typer.BadParameter(
            "give --pretrained or --checkpoint, not both (--pretrained PATH reads a local "
            "checkpoint too)",
            param_hint="--pretrained",
        )
    weights = load_pretrained(pretrained) if pretrained else None
    if weights is not None and weights.arch and arch and arch != weights.arch:
        raise typer.BadParameter(
            f"{pretrained} gives weights for {weights.arch}, not {arch}; pass --arch "
            f"{weights.arch} or leave --arch out",
            param_hint="--arch",
        )
    arch = arch or (weights.arch if weights and weights.arch else "lcnet_050")
    colour = colour or ("rgb" if weights else "gray")

    if stain not in NORMALISERS:
        raise typer.BadParameter(
            f"choose one of {', '.join(NORMALISERS)}", param_hint="--stain-normalisation"
        )
    if colour not in COLOUR_MODES:
        raise typer.BadParameter(f"choose one of {', '.join(COLOUR_MODES)}", param_hint="--colour")
    mean, std = COLOUR_NORMALISATION[colour]
    if weights is not None and colour == "rgb":
        mean, std = weights.mean, weights.std  # what the pretrained backbone was trained with
    config = TrainConfig(
        arch=arch,
        tile_mpp=tile_mpp,
        input_mpp=input_mpp,
        input_px=input_px,
        epochs=epochs,
        early_stopping=not fixed_schedule,
        crops_per_image=crops,
        label_smoothing=label_smoothing,
        n_folds=folds,
        seed=seed,
        preprocessing=Preprocessing(
            stain_normalisation=stain,
            colour=colour,
            mean=mean,
            std=std,
        ),
        checkpoint=str(checkpoint) if checkpoint else None,
        pretrained=pretrained,
        robustness=not no_robustness,
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritableError(f"{out}: cannot create the model folder ({exc})") from exc

    from osteomics.cli.progress import stages

    probe_config = ProbeConfig(
        soft_labels=soft_labels,
        ignore_classes=tuple(ignore_class),
        half_precision=fp16,
        grouping=grouping,
    )
    with stages("training") as say:
        if linear_probe:
            net, card = train_linear_probe(
                tile_dir, config, probe_config, cases_csv=cases, name=name, progress=say
            )
        else:
            net, card = run_training(tile_dir, config, cases_csv=cases, name=name, progress=say)
    # Every effective option, so that the command reproduces the run whatever the defaults.
    argv = ["osteomics", "train", str(tile_dir), "--out", str(out), "--arch", arch]
    argv += ["--tile-mpp", str(tile_mpp), "--input-mpp", str(input_mpp)]
    argv += ["--input-px", str(input_px), "--epochs", str(epochs), "--folds", str(folds)]
    argv += ["--seed", str(seed), "--stain-normalisation", stain, "--colour", colour]
    argv += ["--crops-per-image", str(crops), "--label-smoothing", str(label_smoothing)]
    argv += ["--fixed-schedule"] if fixed_schedule else []
    argv += ["--cases", str(cases)] if cases else []
    argv += ["--checkpoint", str(checkpoint)] if checkpoint else []
    argv += ["--pretrained", pretrained] if pretrained else []
    argv += ["--no-robustness"] if no_robustness else []
    argv += ["--name", name] if name else []
    argv += ["--linear-probe"] if linear_probe else []
    for spec in soft_label:
        argv += ["--soft-label", spec]
    for label in ignore_class:
        argv += ["--ignore-class", label]
    argv += ["--grouping", grouping] if grouping != "auto" else []
    argv += ["--fp16"] if fp16 else []
    card.training["command"] = shlex.join(argv)
    card = save_model(half_precision(net) if fp16 else net, card, out)
    cv = card.cross_validation
    typer.echo(
        json.dumps(
            {
                "model": str(out),
                "grouping": cv["grouping"],
                "accuracy": cv["accuracy"],
                "macro_f1": cv["macro_f1"],
                "ece": cv["ece"],
                "temperature": card.temperature,
                "weights_sha256": card.weights_sha256,
            },
            indent=2,
        )
    )
