"""Train a tile classifier on a folder of labelled H&E images, with grouped cross-validation.

Steps (see docs/model.md):

1. Read ``folder/<label>/*`` (case and slide from TCIA file names, or a CSV ``file,case``),
   resample every image from ``tile_mpp`` to the model's ``input_mpp``, and list the crop
   positions (stride half a tile) with enough tissue.
2. Grouped cross-validation (:mod:`osteomics.wsi.folds`): per fold, train on random augmented
   crops, stop early on an inner validation split of the training groups, and predict the
   held-out images on a regular grid of sub-tiles. Held-out images are also predicted after
   stain perturbations (robustness check).
3. Temperature scaling fitted on the pooled out-of-fold sub-tile logits.
4. Final fit on all images for the median best epoch of the folds; weights + model card.

Deterministic for a given seed, device and thread count.
"""

from __future__ import annotations

import copy
import csv
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from osteomics.core.provenance import sha256_file, software_versions, utc_now
from osteomics.wsi.augment import AugmentParameters, augment_tile
from osteomics.wsi.calibration import (
    calibrated_probabilities,
    classification_metrics,
    fit_temperature,
    negative_log_likelihood,
)
from osteomics.wsi.errors import TrainingDataError
from osteomics.wsi.folds import Grouping, choose_grouping, grouped_folds
from osteomics.wsi.labelled import LabelledTile, read_labelled_folder
from osteomics.wsi.model import ModelCard, Preprocessing, predict_logits, preprocess_tiles
from osteomics.wsi.stain import StainEstimate, estimate_stains, hed_jitter, macenko_normalise
from osteomics.wsi.stain import reinhard_normalise as reinhard
from osteomics.wsi.subtiles import grid_subtiles, read_rgb, resample_to_mpp, tissue_fraction
from osteomics.wsi.weights import LOCAL_SOURCE, load_pretrained, network_from_pretrained

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Parameters of a training run (all recorded in the model card)."""

    #: timm architecture, trained from scratch (or from ``pretrained`` / ``checkpoint``).
    arch: str = "lcnet_050"
    #: µm/px of the labelled images.
    tile_mpp: float = 1.0
    #: µm/px and side in px of the network's input.
    input_mpp: float = 2.0
    input_px: int = 128
    #: Maximum epochs per fold (early stopping may end sooner).
    epochs: int = 30
    #: Stop each fold early on an inner grouped validation split, and fit the final model for
    #: the median best epoch. False: every fold and the final model train for all ``epochs``
    #: (the one-cycle cosine schedule runs to its end) on all their training images.
    early_stopping: bool = True
    #: Epochs without a better inner-validation loss before a fold stops ...
    patience: int = 8
    #: ... but never before this many epochs (the validation split is small and noisy).
    min_epochs: int = 10
    #: Random crops drawn per image per epoch.
    crops_per_image: int = 12
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    n_folds: int = 5
    seed: int = 0
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    augment: AugmentParameters = field(default_factory=AugmentParameters)
    #: Local timm/safetensors checkpoint to start from (no download ever); read through the
    #: ``local`` weight source.
    checkpoint: str | None = None
    #: Weight source to start from (:mod:`osteomics.wsi.weights`): a source name such as
    #: ``efficientnet-lite0``, ``NAME:LOCATION``, or a local checkpoint path. Its provenance
    #: (package, version, file SHA-256) goes into the card.
    pretrained: str | None = None
    #: Predict held-out images after stain perturbations during cross-validation.
    robustness: bool = True
    #: ``cuda``/``cpu``; None picks CUDA when available.
    device: str | None = None


@dataclass
class TrainingImage:
    """One labelled image, resampled to the model's µm/px, with its crop positions."""

    tile: LabelledTile
    label: int
    image: np.ndarray
    #: (m, 2) top-left (y, x) of the crops with enough tissue (stride half a tile).
    positions: np.ndarray
    #: (n, px, px, 3) non-overlapping tissue sub-tiles, how the image is scored.
    grid: np.ndarray
    sha256: str


@dataclass
class FoldResult:
    """One cross-validation fold."""

    fold: int
    test_images: list[int]
    best_epoch: int
    #: Per held-out image: (n_subtiles, k) logits.
    logits: list[np.ndarray]
    #: Variant name -> per held-out image (k,) mean probability at T = 1.
    variants: dict[str, list[np.ndarray]]
    seconds: float


def read_image_cases_csv(path: Path) -> dict[str, str]:
    """File name -> case from a CSV with columns ``file`` and ``case``."""
    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"{path}: no such cases CSV")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"file", "case"} <= set(reader.fieldnames):
            raise TrainingDataError(
                f"{path}: a cases CSV needs the columns 'file' and 'case' "
                f"(found {', '.join(reader.fieldnames or [])})"
            )
        return {Path(row["file"]).name: row["case"] for row in reader}


def labelled_images(folder: Path, cases_csv: Path | None = None) -> list[LabelledTile]:
    """Images of ``folder/<label>/``, cases from their names or from ``cases_csv``.

    Raises
    ------
    TrainingDataError
        No images, fewer than two classes, or an image the cases CSV does not list.
    """
    try:
        tiles = read_labelled_folder(Path(folder))
    except FileNotFoundError as exc:
        raise TrainingDataError(str(exc)) from exc
    if cases_csv is not None:
        cases = read_image_cases_csv(cases_csv)
        missing = [t.path.name for t in tiles if t.path.name not in cases]
        if missing:
            raise TrainingDataError(
                f"{cases_csv}: no case for {len(missing)} image(s), e.g. {missing[0]}; "
                "add a row 'file,case' for each image"
            )
        tiles = [replace(t, case=cases[t.path.name]) for t in tiles]
    labels = sorted({t.label for t in tiles})
    if len(labels) < 2:
        raise TrainingDataError(
            f"{folder}: only one class ({labels[0]}); put each class in its own sub-folder"
        )
    return tiles


def prepare_images(
    tiles: Sequence[LabelledTile], classes: Sequence[str], config: TrainConfig
) -> list[TrainingImage]:
    """Read and resample every image; find its tissue crop positions and grid sub-tiles."""
    px = config.input_px
    out = []
    for t in tiles:
        rgb = resample_to_mpp(read_rgb(t.path), config.tile_mpp, config.input_mpp)
        if min(rgb.shape[:2]) < px:
            padded = np.full((max(rgb.shape[0], px), max(rgb.shape[1], px), 3), 255, np.uint8)
            padded[: rgb.shape[0], : rgb.shape[1]] = rgb
            rgb = padded
        h, w = rgb.shape[:2]
        stride = max(1, px // 2)
        positions = np.array(
            [(y, x) for y in range(0, h - px + 1, stride) for x in range(0, w - px + 1, stride)]
        )
        fractions = np.array([tissue_fraction(rgb[y : y + px, x : x + px]) for y, x in positions])
        keep = fractions >= config.preprocessing.min_tissue
        if not keep.any():
            keep = fractions == fractions.max()
        grid = grid_subtiles(rgb, px)
        grid_fractions = np.array([tissue_fraction(g) for g in grid])
        grid_keep = grid_fractions >= config.preprocessing.min_tissue
        if not grid_keep.any():
            grid_keep = grid_fractions == grid_fractions.max()
        out.append(
            TrainingImage(
                tile=t,
                label=list(classes).index(t.label),
                image=rgb,
                positions=positions[keep],
                grid=grid[grid_keep],
                sha256=sha256_file(t.path),
            )
        )
    return out


def pick_device(requested: str | None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _pretrained_spec(config: TrainConfig) -> str | None:
    """What to ask the weight sources for: ``pretrained``, else the local ``checkpoint``."""
    if config.pretrained:
        return config.pretrained
    if config.checkpoint:
        path = Path(config.checkpoint)
        if not path.exists():
            raise TrainingDataError(f"{path}: no such checkpoint file; give a local file")
        return f"{LOCAL_SOURCE}:{path}"
    return None


def new_network(config: TrainConfig, n_classes: int) -> torch.nn.Module:
    """A timm network, from scratch or from a weight source (``pretrained``, or the local
    ``checkpoint``); nothing is downloaded. The source's classifier is replaced and its first
    convolution adapted to the preprocessing's channels.

    Raises
    ------
    TrainingDataError
        ``checkpoint`` does not exist.
    osteomics.wsi.weights.WeightSourceError, osteomics.wsi.weights.UnknownWeightSourceError
        The source cannot give weights for ``config.arch``.
    """
    import timm

    spec = _pretrained_spec(config)
    if spec is not None:
        return network_from_pretrained(
            load_pretrained(spec), config.arch, n_classes, config.preprocessing.channels
        )
    return timm.create_model(
        config.arch,
        pretrained=False,
        num_classes=n_classes,
        in_chans=config.preprocessing.channels,
    )


def _epoch_batch(
    images: Sequence[TrainingImage], config: TrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of augmented, preprocessed crops (shuffled) and their labels."""
    px = config.input_px
    crops, labels = [], []
    for img in images:
        n = min(config.crops_per_image, len(img.positions))
        for i in rng.choice(len(img.positions), size=n, replace=False):
            y, x = img.positions[i]
            crop = img.image[y : y + px, x : x + px]
            crops.append(augment_tile(crop, rng, config.augment))
            labels.append(img.label)
    order = rng.permutation(len(crops))
    x_all = preprocess_tiles(np.stack(crops)[order], config.preprocessing)
    return x_all, np.asarray(labels, dtype=np.int64)[order]


def train_network(
    images: Sequence[TrainingImage],
    n_classes: int,
    config: TrainConfig,
    epochs: int,
    seed: int,
    validation: Sequence[TrainingImage] = (),
) -> tuple[torch.nn.Module, int, list[dict[str, float]]]:
    """Train on ``images``; with ``validation``, keep the epoch of lowest validation loss.

    Returns
    -------
    (network in eval mode, best epoch (1-based), per-epoch history)
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = pick_device(config.device)
    net = new_network(config, n_classes).to(device)
    optimiser = torch.optim.AdamW(
        net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=max(epochs, 1), pct_start=0.15
    )
    counts = np.bincount([img.label for img in images], minlength=n_classes).astype(np.float64)
    weights = torch.tensor(
        np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0),
        dtype=torch.float32,
        device=device,
    )
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    val_x = val_y = None
    if validation:
        val_x = torch.from_numpy(
            preprocess_tiles(np.concatenate([v.grid for v in validation]), config.preprocessing)
        ).to(device)
        val_y = np.concatenate([np.full(len(v.grid), v.label) for v in validation])
    best_loss, best_epoch, best_state, stale = np.inf, epochs, None, 0
    history = []
    for epoch in range(1, epochs + 1):
        net.train()
        x_np, y_np = _epoch_batch(images, config, rng)
        x_all, y_all = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
        total = 0.0
        for start in range(0, len(x_all), config.batch_size):
            xb, yb = (
                x_all[start : start + config.batch_size],
                y_all[start : start + config.batch_size],
            )
            if len(xb) < 2:  # batch norm needs two samples
                continue
            optimiser.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(xb)
        scheduler.step()
        record = {"epoch": epoch, "train_loss": total / len(x_all)}
        if val_x is not None and val_y is not None:
            net.eval()
            with torch.inference_mode():
                logits = torch.cat(
                    [net(val_x[s : s + 128]) for s in range(0, len(val_x), 128)]
                ).cpu()
            val_loss = negative_log_likelihood(logits.numpy(), val_y, 1.0)
            record["val_loss"] = val_loss
            if val_loss < best_loss - 1e-4 and epoch >= min(config.min_epochs, epochs) // 2:
                best_loss, best_epoch, stale = val_loss, epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                stale += 1
        history.append(record)
        log.info("epoch %d %s", epoch, record)
        if val_x is not None and stale >= config.patience and epoch >= config.min_epochs:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return net, best_epoch, history


def _case_stains(images: Sequence[TrainingImage]) -> dict[str, StainEstimate]:
    """Median Macenko stain estimate of each case's images."""
    per_case: dict[str, list[StainEstimate]] = {}
    for img in images:
        estimate = estimate_stains(img.image)
        if estimate is not None:
            per_case.setdefault(img.tile.case, []).append(estimate)
    return {
        case: StainEstimate(
            stains=np.median([e.stains for e in ests], axis=0),
            max_concentrations=np.median([e.max_concentrations for e in ests], axis=0),
        )
        for case, ests in per_case.items()
    }


def stain_variants(
    img: TrainingImage, case_stains: dict[str, StainEstimate], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Copies of an image with other stains: the robustness check of the model card.

    - ``hed_strong_1``, ``hed_strong_2``: HED jitter of scale 0.3, shift 0.1;
    - ``reinhard``, ``macenko``: stain-normalised to the reference;
    - ``restain_as_<case>``: re-rendered with the median stains of every other case.
    """
    variants = {
        "hed_strong_1": hed_jitter(img.image, rng, 0.3, 0.1),
        "hed_strong_2": hed_jitter(img.image, rng, 0.3, 0.1),
        "reinhard": reinhard(img.image),
        "macenko": macenko_normalise(img.image),
    }
    for case, est in sorted(case_stains.items()):
        if case != img.tile.case:
            variants[f"restain_as_{case}"] = macenko_normalise(
                img.image, est.stains, est.max_concentrations
            )
    return variants


def _variant_probabilities(
    net: torch.nn.Module, card: ModelCard, image: np.ndarray, min_tissue: float
) -> np.ndarray:
    grid = grid_subtiles(image, card.input_px)
    fractions = np.array([tissue_fraction(g) for g in grid])
    keep = fractions >= min_tissue
    if not keep.any():
        keep = fractions == fractions.max()
    return calibrated_probabilities(predict_logits(net, card, grid[keep]), 1.0).mean(axis=0)


def cross_validate(
    images: Sequence[TrainingImage],
    classes: Sequence[str],
    grouping: Grouping,
    config: TrainConfig,
    progress: Callable[[str], None] | None = None,
) -> list[FoldResult]:
    """Grouped cross-validation with early stopping on an inner grouped split."""
    labels = np.array([img.label for img in images])
    folds = grouped_folds(labels, grouping.groups, config.n_folds, config.seed)
    card = _card_stub(classes, config)
    case_stains = _case_stains(images) if config.robustness else {}
    results = []
    for fold in range(int(folds.max()) + 1):
        started = time.perf_counter()
        test = np.flatnonzero(folds == fold)
        train = np.flatnonzero(folds != fold)
        train_groups = [grouping.groups[i] for i in train]
        if config.early_stopping and len(set(train_groups)) >= 2:
            inner = grouped_folds(
                labels[train], train_groups, max(2, config.n_folds - 1), config.seed
            )
        else:  # no early stopping, or nothing to hold out: train for all epochs
            inner = np.ones(len(train), dtype=np.int64)
        fit = [images[int(i)] for i in train[inner != 0]]
        val = [images[int(i)] for i in train[inner == 0]]
        net, best_epoch, _ = train_network(
            fit, len(classes), config, config.epochs, config.seed + fold + 1, val
        )
        logits = [predict_logits(net, card, images[int(i)].grid) for i in test]
        variants: dict[str, list[np.ndarray]] = {}
        if config.robustness:
            rng = np.random.default_rng(config.seed + 1000 + fold)
            for i in test:
                for name, image in stain_variants(images[int(i)], case_stains, rng).items():
                    probs = _variant_probabilities(
                        net, card, image, config.preprocessing.min_tissue
                    )
                    key = "restain_as_other_case" if name.startswith("restain_as_") else name
                    variants.setdefault(key, []).append(probs)
        seconds = time.perf_counter() - started
        results.append(FoldResult(fold, test.tolist(), best_epoch, logits, variants, seconds))
        message = (
            f"fold {fold + 1}: {len(test)} held-out images, best epoch {best_epoch}, "
            f"{seconds:.0f} s"
        )
        log.info(message)
        if progress:
            progress(message)
    return results


def _card_stub(classes: Sequence[str], config: TrainConfig) -> ModelCard:
    return ModelCard(
        name="",
        classes=list(classes),
        arch=config.arch,
        input_mpp=config.input_mpp,
        input_px=config.input_px,
        preprocessing=config.preprocessing,
    )


def summarise_cv(
    images: Sequence[TrainingImage],
    classes: Sequence[str],
    grouping: Grouping,
    folds: Sequence[FoldResult],
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """(temperature, cross-validation section, robustness section) of the model card."""
    sub_logits = np.concatenate([lg for f in folds for lg in f.logits])
    sub_labels = np.concatenate(
        [
            np.full(len(lg), images[i].label)
            for f in folds
            for i, lg in zip(f.test_images, f.logits, strict=True)
        ]
    )
    temperature = fit_temperature(sub_logits, sub_labels)
    order = [i for f in folds for i in f.test_images]
    labels = np.array([images[i].label for i in order])
    raw = np.stack([calibrated_probabilities(lg, 1.0).mean(0) for f in folds for lg in f.logits])
    cal = np.stack(
        [calibrated_probabilities(lg, temperature).mean(0) for f in folds for lg in f.logits]
    )
    pooled = classification_metrics(cal, labels, classes)
    uncalibrated = classification_metrics(raw, labels, classes)
    per_fold = []
    for f in folds:
        fold_labels = np.array([images[i].label for i in f.test_images])
        fold_probs = np.stack(
            [calibrated_probabilities(lg, temperature).mean(0) for lg in f.logits]
        )
        m = classification_metrics(fold_probs, fold_labels, classes)
        per_fold.append(
            {
                "fold": f.fold,
                "held_out_groups": sorted({grouping.groups[i] for i in f.test_images}),
                "n": m.n,
                "accuracy": m.accuracy,
                "macro_f1": m.macro_f1,
                "confusion": m.confusion,
                "best_epoch": f.best_epoch,
                "seconds": round(f.seconds, 1),
            }
        )
    predictions = [
        {
            "file": images[i].tile.path.name,
            "label": classes[images[i].label],
            "predicted": classes[int(np.argmax(p))],
            "probabilities": [round(float(v), 4) for v in p],
        }
        for i, p in zip(order, cal, strict=True)
    ]
    cv = {
        "grouping": grouping.kind,
        "grouping_reason": grouping.reason,
        "n_folds": len(folds),
        "level": "image (mean of calibrated sub-tile probabilities)",
        **{k: v for k, v in pooled.to_dict().items()},
        "ece_before_temperature": uncalibrated.ece,
        "nll_subtiles_before_temperature": negative_log_likelihood(sub_logits, sub_labels, 1.0),
        "nll_subtiles_after_temperature": negative_log_likelihood(
            sub_logits, sub_labels, temperature
        ),
        "folds": per_fold,
        "predictions": predictions,
    }
    robustness: dict[str, Any] = {}
    if folds and folds[0].variants:
        base = raw.argmax(1)
        all_flips = []
        for name in folds[0].variants:
            probs = np.stack([p for f in folds for p in f.variants[name]])
            n_per_image = len(probs) // len(base)
            predicted = probs.argmax(1).reshape(len(base), n_per_image)
            flips = predicted != base[:, None]
            all_flips.append(flips.ravel())
            robustness[name] = {
                "n": int(flips.size),
                "flip_rate": float(flips.mean()),
                "accuracy": float((predicted == labels[:, None]).mean()),
            }
        robustness["all_variants"] = {
            "n": int(sum(len(f) for f in all_flips)),
            "flip_rate": float(np.concatenate(all_flips).mean()),
        }
    return temperature, cv, robustness


def training_summary(
    images: Sequence[TrainingImage], classes: Sequence[str], folder: Path
) -> dict[str, Any]:
    """Cases, counts and hashes of the training images."""
    counts: dict[str, dict[str, int]] = {}
    for img in images:
        per_case = counts.setdefault(img.tile.label, {})
        per_case[img.tile.case] = per_case.get(img.tile.case, 0) + 1
    return {
        "folder": Path(folder).name,
        "n_images": len(images),
        "n_crop_positions": int(sum(len(i.positions) for i in images)),
        "n_grid_subtiles": int(sum(len(i.grid) for i in images)),
        "counts": {label: sum(c.values()) for label, c in sorted(counts.items())},
        "counts_by_case": counts,
        "cases": sorted({i.tile.case for i in images}),
        "slides": sorted({f"{i.tile.case}/{i.tile.slide}" for i in images}),
        "images": [
            {
                "file": f"{i.tile.label}/{i.tile.path.name}",
                "label": i.tile.label,
                "case": i.tile.case,
                "slide": i.tile.slide,
                "sha256": i.sha256,
            }
            for i in images
        ],
    }


def pretrained_provenance(config: TrainConfig) -> dict[str, Any] | None:
    """Provenance of the weights training started from (None: from scratch)."""
    spec = _pretrained_spec(config)
    if spec is None:
        return None
    weights = load_pretrained(spec)
    return {
        **weights.provenance,
        "arch": weights.arch or config.arch,
        "input_px": weights.input_px,
        "mean": list(weights.mean),
        "std": list(weights.std),
    }


def model_versions() -> dict[str, Any]:
    from importlib import metadata

    versions = software_versions()
    for dist in ("torch", "torchvision", "timm", "safetensors"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def train(
    folder: Path,
    config: TrainConfig,
    cases_csv: Path | None = None,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[torch.nn.Module, ModelCard]:
    """Cross-validate, calibrate and fit a tile classifier on a labelled folder.

    Parameters
    ----------
    folder:
        ``folder/<label>/*`` images at ``config.tile_mpp`` µm/px.
    config:
        See :class:`TrainConfig`.
    cases_csv:
        Optional CSV ``file,case`` overriding the case parsed from file names.

    Returns
    -------
    (final network in eval mode, model card without weights hash; see
    :func:`osteomics.wsi.model.save_model`)
    """
    import torch

    started = time.perf_counter()
    tiles = labelled_images(folder, cases_csv)
    classes = sorted({t.label for t in tiles})
    images = prepare_images(tiles, classes, config)
    grouping = choose_grouping(tiles)
    if progress:
        progress(
            f"{len(images)} images, {len(classes)} classes, {grouping.kind}-grouped "
            f"{config.n_folds}-fold cross-validation on {pick_device(config.device)}"
        )
    folds = cross_validate(images, classes, grouping, config, progress)
    temperature, cv, robustness = summarise_cv(images, classes, grouping, folds)
    final_epochs = max(1, int(np.median([f.best_epoch for f in folds])))
    if progress:
        progress(
            f"cross-validation accuracy {cv['accuracy']:.3f}, macro-F1 {cv['macro_f1']:.3f}; "
            f"final fit on all images for {final_epochs} epochs"
        )
    net, _, history = train_network(images, len(classes), config, final_epochs, config.seed)
    config_dict = asdict(config)
    card = ModelCard(
        name=name or Path(folder).name,
        classes=list(classes),
        arch=config.arch,
        input_mpp=config.input_mpp,
        input_px=config.input_px,
        preprocessing=config.preprocessing,
        temperature=temperature,
        training={
            **training_summary(images, classes, folder),
            "config": config_dict,
            # The starting weights, when not from scratch (a file of the user's, so its hash).
            "checkpoint_sha256": sha256_file(Path(config.checkpoint))
            if config.checkpoint
            else None,
            # Where the starting weights came from: source, package, version, file, SHA-256.
            "pretrained": pretrained_provenance(config),
            "final_epochs": final_epochs,
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "torch_threads": torch.get_num_threads(),
            "device": pick_device(config.device),
            "seconds": round(time.perf_counter() - started, 1),
            "created": utc_now(),
        },
        cross_validation=cv,
        robustness=robustness,
        versions=model_versions(),
    )
    return net, card


# --- linear probe: frozen pretrained trunk + logistic regression (the v2 recipe) -------------

#: Regularisation strengths the inner grouped CV chooses from (sklearn's C: larger = weaker).
PROBE_C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
#: Standardisation divides by max(sd, this x the median sd of all features).
PROBE_MIN_SCALE_FRACTION = 0.01


@dataclass(frozen=True)
class LinearProbe:
    """Multinomial logistic regression on standardised features.

    ``logits(x) = ((x - mean) / scale) @ coef.T + intercept`` (``scale``: the standard
    deviation, floored at ``PROBE_MIN_SCALE_FRACTION`` x its median); :meth:`folded` gives the same
    map as one linear layer on the raw features (what goes into the network's classifier).
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    c: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        out: np.ndarray = z @ self.coef.T + self.intercept
        return out

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight (k, d), bias (k,)) with ``features @ weight.T + bias == logits``."""
        weight = self.coef / self.scale[None]
        return weight, self.intercept - weight @ self.mean


def _balanced(y: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Sample weights times balanced class weights (total weight per class equal)."""
    counts = np.bincount(y, weights=w, minlength=k)
    present = max(int((counts > 0).sum()), 1)
    return np.asarray(w * (counts.sum() / np.maximum(counts, 1e-12) / present)[y])


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, k: int) -> LinearProbe:
    """Standardise, then a multinomial logistic regression with balanced class weights."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        raise TrainingDataError(
            "a logistic regression needs images of at least two classes in its training set"
        )
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    # Nearly constant features (densenet121 has ~280 of 1024 with sd < 1e-3) are not blown up
    # to unit variance: folded into the classifier, 1 / sd would amplify rounding (fp16
    # features, another BLAS) into the logits.
    scale = np.maximum(std, PROBE_MIN_SCALE_FRACTION * float(np.median(std)) or 1.0)
    clf = LogisticRegression(C=c, max_iter=3000).fit((x - mean) / scale, y, _balanced(y, w, k))
    coef = np.zeros((k, x.shape[1]))
    intercept = np.full(k, -1e4)  # a class absent from training is never predicted
    if len(clf.classes_) == 2:  # sklearn keeps one row for two classes
        coef[clf.classes_[1]], intercept[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        coef[clf.classes_[0]], intercept[clf.classes_[0]] = 0.0, 0.0
    else:
        coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
    return LinearProbe(mean, scale, coef, intercept, float(c))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def fit_linear_probe(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    groups: Sequence[str],
    k: int,
    seed: int = 0,
    grid: Sequence[float] = PROBE_C_GRID,
) -> LinearProbe:
    """:func:`fit_logistic` with C chosen by an inner grouped 3-fold CV (weighted log-loss).

    ``w`` weighs rows (soft labels: one row per class, weight = share); with fewer than two
    groups the middle of the grid is used.
    """
    groups = list(groups)
    if len(set(groups)) < 2:
        return fit_logistic(x, y, w, float(grid[len(grid) // 2]), k)
    inner = grouped_folds(y, groups, 3, seed)
    # an inner fold whose training part lacks a class cannot rank C (e.g. one patient left)
    usable = [f for f in np.unique(inner) if len(np.unique(y[inner != f])) >= 2]
    if not usable:
        return fit_logistic(x, y, w, float(grid[len(grid) // 2]), k)
    losses = []
    for c in grid:
        loss = 0.0
        for f in usable:
            tr, va = inner != f, inner == f
            p = _softmax(fit_logistic(x[tr], y[tr], w[tr], c, k).logits(x[va]))
            loss -= float((w[va] * np.log(np.clip(p[np.arange(va.sum()), y[va]], 1e-6, 1))).sum())
        losses.append(loss)
    return fit_logistic(x, y, w, float(grid[int(np.argmin(losses))]), k)


def backbone_features(
    net: torch.nn.Module, card: ModelCard, tiles: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """Pooled pre-logit features (n, d) of RGB uint8 tiles, after the card's preprocessing:
    exactly what the network's classifier sees."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(tiles), batch_size):
            x = torch.from_numpy(
                preprocess_tiles(tiles[start : start + batch_size], card.preprocessing)
            )
            pooled = net.forward_head(net.forward_features(x), pre_logits=True)  # type: ignore[operator]
            out.append(pooled.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def fold_probe_into(net: torch.nn.Module, probe: LinearProbe) -> torch.nn.Module:
    """Write the probe into the network's classifier (a linear layer on pooled features)."""
    import torch

    weight, bias = probe.folded()
    head = net.get_classifier()  # type: ignore[operator]
    if not isinstance(head, torch.nn.Linear) or tuple(head.weight.shape) != weight.shape:
        raise TrainingDataError(
            f"{type(net).__name__}: its classifier is not one linear layer of shape "
            f"{weight.shape}; --linear-probe needs a timm network with a linear head"
        )
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight).float())
        head.bias.copy_(torch.from_numpy(bias).float())
    return net


def half_precision(net: torch.nn.Module) -> torch.nn.Module:
    """The network in float16 for storage, except its classifier: a probe folded into it
    divides by the features' standard deviations, which can exceed float16's range (65504)
    for nearly constant features (loaded models are float32 again either way)."""
    net = net.half()
    net.get_classifier().float()  # type: ignore[operator]
    return net


def parse_soft_labels(specs: Sequence[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``FOLDER=CLASS_A+CLASS_B`` -> ((FOLDER, (CLASS_A, CLASS_B)), ...)."""
    out = []
    for spec in specs:
        folder, sep, classes = spec.partition("=")
        parts = tuple(c.strip() for c in classes.split("+") if c.strip())
        if not sep or not folder.strip() or len(parts) < 2:
            raise TrainingDataError(
                f"--soft-label {spec!r}: write FOLDER=CLASS_A+CLASS_B (the folder's images "
                "count as an equal share of each class)"
            )
        out.append((folder.strip(), parts))
    return tuple(out)


@dataclass(frozen=True)
class ProbeConfig:
    """What :func:`train_linear_probe` adds to :class:`TrainConfig` (recorded in the card)."""

    #: Folder -> classes its images are an equal mixture of (soft labels, training only).
    soft_labels: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Label folders left out entirely.
    ignore_classes: tuple[str, ...] = ()
    c_grid: tuple[float, ...] = PROBE_C_GRID
    #: Restained copies (each other case's median stains) of every k-th held-out image.
    restain_every: int = 4
    #: Store the weights as float16 (half the size; probabilities move by ~1e-3).
    half_precision: bool = False
    #: ``auto`` (patient groups when every class has more than one patient, else slides, as
    #: :func:`osteomics.wsi.folds.choose_grouping`), ``patient`` or ``slide``.
    grouping: str = "auto"


def train_linear_probe(
    folder: Path,
    config: TrainConfig,
    probe_config: ProbeConfig | None = None,
    cases_csv: Path | None = None,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[torch.nn.Module, ModelCard]:
    """Frozen pretrained trunk + logistic regression, folded into the network's classifier.

    Every grid sub-tile of every image goes once through the frozen trunk (the source given by
    ``config.pretrained``); each image weighs 1 in total (its sub-tiles share it; a soft-label
    image is split over its classes). Grouped CV (as :func:`train`: by patient, else slide)
    gives the card's figures and the temperature (fitted on the out-of-fold sub-tile logits);
    C is chosen inside each fold by an inner grouped CV on the training images only. The final
    probe is fitted on all images and written into the network's linear classifier, so the
    folder is an ordinary model: the network's logits equal the probe's.

    Raises
    ------
    TrainingDataError
        No ``pretrained`` source, a soft-label folder naming an unknown class, no images.
    """
    import torch

    probe_config = probe_config or ProbeConfig()
    if not _pretrained_spec(config):
        raise TrainingDataError(
            "--linear-probe needs a frozen trunk: give --pretrained (osteomics plugins lists "
            "the weight sources)"
        )
    started = time.perf_counter()
    tiles = [
        t for t in labelled_images(folder, cases_csv) if t.label not in probe_config.ignore_classes
    ]
    soft = dict(probe_config.soft_labels)
    hard_tiles = [t for t in tiles if t.label not in soft]
    classes = sorted({t.label for t in hard_tiles})
    for name_, parts in soft.items():
        unknown = [c for c in parts if c not in classes]
        if unknown:
            raise TrainingDataError(
                f"--soft-label {name_}: no class folder {', '.join(unknown)} in {folder} "
                f"(classes: {', '.join(classes)})"
            )
    if len(classes) < 2:
        raise TrainingDataError(f"{folder}: fewer than two classes left to train on")
    soft_tiles = [t for t in tiles if t.label in soft]
    all_tiles = hard_tiles + soft_tiles
    images = prepare_images(all_tiles, classes + sorted(soft), config)
    k = len(classes)
    grouping = choose_grouping(hard_tiles)
    if probe_config.grouping not in ("auto", grouping.kind):
        if probe_config.grouping not in ("patient", "slide"):
            raise TrainingDataError(
                f"--grouping {probe_config.grouping}: choose auto, patient or slide"
            )
        grouping = Grouping(
            probe_config.grouping,
            f"{probe_config.grouping}-grouped as asked (--grouping); automatic: "
            f"{grouping.kind} ({grouping.reason})",
            (),
        )
    key = (lambda t: t.case) if grouping.kind == "patient" else (lambda t: f"{t.case}/{t.slide}")
    groups = [key(t) for t in all_tiles]
    n_hard = len(hard_tiles)

    net = new_network(config, k).eval()
    card = _card_stub(classes, config)
    if progress:
        progress(
            f"{n_hard} images (+{len(soft_tiles)} soft-labelled), {k} classes: features of "
            f"{sum(len(i.grid) for i in images)} sub-tiles through the frozen {config.arch}"
        )
    feats = [backbone_features(net, card, img.grid) for img in images]

    def rows(idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        xs, ys, ws, gs = [], [], [], []
        for i in idx:
            f = feats[i]
            targets = (
                [images[i].label]
                if i < n_hard
                else [classes.index(c) for c in soft[all_tiles[i].label]]
            )
            for cls in targets:
                xs.append(f)
                ys.append(np.full(len(f), cls))
                ws.append(np.full(len(f), 1.0 / len(f) / len(targets)))
                gs += [groups[i]] * len(f)
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), gs

    labels = np.array([img.label for img in images[:n_hard]])
    folds_hard = grouped_folds(labels, list(groups[:n_hard]), config.n_folds, config.seed)
    fold_of_group = dict(zip(groups[:n_hard], folds_hard.tolist(), strict=True))
    fold_of = np.array(
        [fold_of_group.get(g, -1) for g in groups]
    )  # soft images follow their group's fold (never held out)
    case_stains = _case_stains(images[:n_hard]) if config.robustness else {}
    fold_results: list[FoldResult] = []
    chosen_c: list[float] = []
    flips: list[bool] = []
    for fold in range(int(folds_hard.max()) + 1):
        t0 = time.perf_counter()
        train_idx = np.flatnonzero(fold_of != fold)
        test_idx = np.flatnonzero(fold_of[:n_hard] == fold)
        x, y, w, g = rows(train_idx.tolist())
        probe = fit_linear_probe(x, y, w, g, k, config.seed, probe_config.c_grid)
        chosen_c.append(probe.c)
        logits = [probe.logits(feats[i]).astype(np.float32) for i in test_idx]
        if config.robustness and probe_config.restain_every > 0:
            for j, i in enumerate(test_idx):
                if j % probe_config.restain_every:
                    continue
                img = images[int(i)]
                base = int(np.argmax(_softmax(logits[j]).mean(0)))
                for case, est in sorted(case_stains.items()):
                    if case == img.tile.case:
                        continue
                    copy = np.stack(
                        [macenko_normalise(t, est.stains, est.max_concentrations) for t in img.grid]
                    )
                    p = _softmax(probe.logits(backbone_features(net, card, copy))).mean(0)
                    flips.append(int(np.argmax(p)) != base)
        fold_results.append(
            FoldResult(fold, test_idx.tolist(), 0, logits, {}, time.perf_counter() - t0)
        )
        if progress:
            progress(f"fold {fold + 1}: {len(test_idx)} held-out images, C = {probe.c}")
    hard_grouping = Grouping(grouping.kind, grouping.reason, tuple(groups[:n_hard]))
    temperature, cv, _ = summarise_cv(images[:n_hard], classes, hard_grouping, fold_results)
    cv["logistic_regression_C_per_fold"] = chosen_c
    robustness: dict[str, Any] = {}
    if flips:
        robustness["restain_as_other_case"] = {
            "n": len(flips),
            "flip_rate": float(np.mean(flips)),
            "note": f"every {probe_config.restain_every}th held-out image re-rendered with the "
            "median Macenko stains of each other case, predicted by its fold's probe",
        }
    x, y, w, g = rows(list(range(len(images))))
    probe = fit_linear_probe(x, y, w, g, k, config.seed, probe_config.c_grid)
    fold_probe_into(net, probe)
    if probe_config.half_precision:
        net = half_precision(net).float()  # rounded as stored
    if progress:
        progress(
            f"cross-validation accuracy {cv['accuracy']:.3f}, macro-F1 {cv['macro_f1']:.3f}; "
            f"final probe on all images (C = {probe.c})"
        )
    summary = training_summary(images[:n_hard], classes, folder)
    summary["soft_labelled_images"] = [
        {"file": f"{i.tile.label}/{i.tile.path.name}", "classes": list(soft[i.tile.label]),
         "case": i.tile.case, "slide": i.tile.slide, "sha256": i.sha256}
        for i in images[n_hard:]
    ]  # fmt: skip
    card = ModelCard(
        name=name or Path(folder).name,
        classes=list(classes),
        arch=config.arch,
        input_mpp=config.input_mpp,
        input_px=config.input_px,
        preprocessing=config.preprocessing,
        temperature=temperature,
        training={
            **summary,
            "method": f"linear probe: frozen pretrained {config.arch} trunk (pooled pre-logit "
            "features of each input field) + multinomial logistic regression (standardised "
            "features, balanced class weights, C by inner grouped 3-fold CV), folded into the "
            "network's classifier (w' = w / sigma, b' = b - w' . mu)",
            "config": asdict(config),
            "linear_probe": {
                **asdict(probe_config),
                "C": probe.c,
                "weights_dtype": "float16 trunk, float32 classifier"
                if probe_config.half_precision
                else "float32",
            },
            "pretrained": pretrained_provenance(config),
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
            "seconds": round(time.perf_counter() - started, 1),
            "created": utc_now(),
        },
        cross_validation=cv,
        robustness=robustness,
        versions=model_versions(),
    )
    return net, card
