"""Tile classifiers: the model card, the registry of shipped models, loading and prediction.

A model is a folder holding ``model.safetensors`` (the weights of a timm backbone) and
``model_card.json`` (:class:`ModelCard`: what the model expects, how it was trained, how well
it did, and the SHA-256 of the weights, verified on every load). The registry maps names to
folders shipped inside the package; ``default`` is an alias.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from osteomics.core.provenance import sha256_file
from osteomics.wsi.errors import (
    ModelCardError,
    ModelFileError,
    UnknownModelError,
    WeightsChecksumError,
)
from osteomics.wsi.necrosis import LABEL_TO_CLASS, NECROTIC, VIABLE
from osteomics.wsi.stain import normalise, stain_concentrations

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
CARD_VERSION = 1

#: Models shipped inside the package: name -> folder under ``wsi/models/``.
REGISTRY = {
    "osteosarcoma-necrosis-v1": "osteosarcoma-necrosis-v1",
    "osteosarcoma-necrosis-v2": "osteosarcoma-necrosis-v2",
    "osteosarcoma-necrosis-v2-lite0": "osteosarcoma-necrosis-v2-lite0",
}
#: Other names for registry entries.
ALIASES = {"default": "osteosarcoma-necrosis-v2"}

#: Luminance weights (ITU-R BT.601) for ``colour="gray"``.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
#: ``he``: haematoxylin and eosin concentrations (colour deconvolution with the Macenko
#: reference stains, exact after Macenko normalisation).
COLOUR_MODES = ("rgb", "gray", "he")
#: Channels of each colour mode.
COLOUR_CHANNELS = {"rgb": 3, "gray": 1, "he": 2}
#: Mean and standard deviation that put each mode's channels near 0 +- 1 (``he``: measured on
#: the Macenko-normalised TCIA training tiles, tissue and glass together).
COLOUR_NORMALISATION = {
    "rgb": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "gray": ((0.5,), (0.25,)),
    "he": ((0.2, 0.4), (0.35, 0.3)),
}


@dataclass(frozen=True)
class Preprocessing:
    """What happens to a uint8 RGB tile before the network sees it, in this order."""

    #: Stain normaliser applied to each tile: ``none``, ``macenko`` or ``reinhard``.
    stain_normalisation: str = "macenko"
    #: ``rgb`` (3 channels), ``gray`` (1 channel, BT.601 luminance) or ``he`` (2 channels,
    #: haematoxylin and eosin concentrations; see :data:`COLOUR_MODES`).
    colour: str = "gray"
    #: Per-channel mean and standard deviation of the 0-1 intensities, subtracted / divided.
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    #: Sub-tiles with a smaller tissue fraction are left out when whole images are scored.
    min_tissue: float = 0.25

    @property
    def channels(self) -> int:
        return COLOUR_CHANNELS.get(self.colour, 3)


@dataclass
class ModelCard:
    """Everything needed to use a tile classifier correctly and to judge it.

    Attributes
    ----------
    name:
        Model name (registry name for shipped models).
    classes:
        Class labels in the order of the network's outputs (training folder names).
    tissue_classes:
        Tissue class (:data:`osteomics.wsi.necrosis.TISSUE_CLASSES`) of each label, or None
        for a label that is not one of them.
    arch:
        timm architecture name.
    input_mpp:
        µm per pixel of the tiles the network takes.
    input_px:
        Side of the square input tiles in pixels.
    preprocessing:
        See :class:`Preprocessing`.
    temperature:
        Temperature dividing the logits (fitted on out-of-fold predictions).
    training:
        Data summary (cases, counts, SHA-256 of every image), parameters, command, wall time.
    cross_validation:
        Grouping, per-fold metrics and pooled out-of-fold accuracy, macro-F1, confusion, ECE.
    confound:
        What was done against a patient/stain confound in the training data, and the checks.
    robustness:
        Predictions under stain perturbations (see docs/model.md).
    experiments:
        Other configurations tried, with their numbers.
    versions:
        Software versions at training time.
    weights_sha256:
        SHA-256 of ``model.safetensors``; loading refuses weights that do not match.
    """

    name: str
    classes: list[str]
    arch: str
    input_mpp: float
    input_px: int
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    tissue_classes: dict[str, str | None] = field(default_factory=dict)
    temperature: float = 1.0
    training: dict[str, Any] = field(default_factory=dict)
    cross_validation: dict[str, Any] = field(default_factory=dict)
    confound: dict[str, Any] = field(default_factory=dict)
    robustness: dict[str, Any] = field(default_factory=dict)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        if not self.tissue_classes:
            self.tissue_classes = {c: LABEL_TO_CLASS.get(c) for c in self.classes}

    @property
    def accuracy(self) -> float | None:
        """Pooled out-of-fold accuracy of the cross-validation."""
        return self.cross_validation.get("accuracy")

    @property
    def macro_f1(self) -> float | None:
        return self.cross_validation.get("macro_f1")

    @property
    def ece(self) -> float | None:
        return self.cross_validation.get("ece")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The few fields a run records about the model it used (for run.json)."""
        return {
            "name": self.name,
            "arch": self.arch,
            "classes": list(self.classes),
            "tissue_classes": dict(self.tissue_classes),
            "input_mpp": self.input_mpp,
            "input_px": self.input_px,
            "preprocessing": asdict(self.preprocessing),
            "temperature": self.temperature,
            "cv_grouping": self.cross_validation.get("grouping"),
            "cv_accuracy": self.accuracy,
            "cv_macro_f1": self.macro_f1,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model card") -> ModelCard:
        """Build a card from its JSON object; raises :class:`ModelCardError` when invalid."""
        known = {f.name for f in fields(cls)}
        try:
            values = {k: v for k, v in data.items() if k in known}
            pre = dict(values.get("preprocessing") or {})
            for key in ("mean", "std"):
                if key in pre:
                    pre[key] = tuple(pre[key])
            values["preprocessing"] = Preprocessing(**pre)
            card = cls(**values)
        except TypeError as exc:
            raise ModelCardError(
                f"{source}: not a valid model card ({exc}); re-create it with osteomics train"
            ) from exc
        if card.card_version > CARD_VERSION:
            raise ModelCardError(
                f"{source}: card version {card.card_version} is newer than this osteomics "
                f"understands ({CARD_VERSION}); upgrade osteomics"
            )
        if card.preprocessing.colour not in COLOUR_MODES:
            raise ModelCardError(f"{source}: unknown colour mode {card.preprocessing.colour!r}")
        if len(card.classes) < 2:
            raise ModelCardError(f"{source}: a classifier needs at least two classes")
        return card

    def save(self, path: Path) -> None:
        """Write the card as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        """Read a card written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: no model card; a model folder holds {CARD_FILE}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelCardError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ModelCardError(f"{path}: a model card is a JSON object")
        return cls.from_dict(data, source=str(path))


def tissue_classes_of(card: ModelCard) -> list[str]:
    """Tissue class (viable, necrotic, non_tumour) of each network output, in output order.

    Raises
    ------
    ModelCardError
        A class maps to no tissue class, or viable or necrotic tumour is missing, so the
        model cannot give a necrosis rate.
    """
    mapped = [card.tissue_classes.get(c) for c in card.classes]
    unmapped = [c for c, t in zip(card.classes, mapped, strict=True) if t is None]
    if unmapped:
        raise ModelCardError(
            f"model {card.name}: classes {', '.join(unmapped)} have no tissue class; set "
            "tissue_classes in its model_card.json (viable, necrotic or non_tumour)"
        )
    missing = {VIABLE, NECROTIC} - set(mapped)
    if missing:
        raise ModelCardError(
            f"model {card.name}: no {' or '.join(sorted(missing))} class, so it cannot give a "
            "necrosis rate; use a model trained on viable and necrotic tumour"
        )
    return [t for t in mapped if t is not None]


def shipped_models_dir() -> Path:
    """Folder of the models shipped inside the package."""
    return Path(__file__).resolve().parent / "models"


def resolve_model(name_or_path: str | Path) -> Path:
    """The folder of a model given by registry name, alias, or path.

    Raises
    ------
    UnknownModelError
        Neither a known name nor an existing folder.
    """
    key = str(name_or_path)
    key = ALIASES.get(key, key)
    if key in REGISTRY:
        return shipped_models_dir() / REGISTRY[key]
    path = Path(name_or_path)
    if path.is_dir():
        return path
    names = ", ".join(sorted({*REGISTRY, *ALIASES}))
    raise UnknownModelError(
        f"{name_or_path}: no such model; use one of {names}, or a folder holding "
        f"{WEIGHTS_FILE} and {CARD_FILE} (made by osteomics train)"
    )


def build_network(card: ModelCard) -> torch.nn.Module:
    """An untrained network of the card's architecture, classes and input channels."""
    import timm

    return timm.create_model(
        card.arch,
        pretrained=False,
        num_classes=len(card.classes),
        in_chans=card.preprocessing.channels,
    )


def save_model(model: torch.nn.Module, card: ModelCard, folder: Path) -> ModelCard:
    """Write weights (safetensors) and card into ``folder``; the card gets the weights' hash."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    card.weights_sha256 = sha256_file(folder / WEIGHTS_FILE)
    card.save(folder / CARD_FILE)
    return card


def load_model(
    name_or_path: str | Path, device: str | None = None
) -> tuple[torch.nn.Module, ModelCard]:
    """Load a model by registry name or folder: (network in eval mode, card).

    The weights' SHA-256 must equal the card's ``weights_sha256``.

    Raises
    ------
    UnknownModelError, ModelFileError, ModelCardError, WeightsChecksumError
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = resolve_model(name_or_path)
    card = ModelCard.load(folder / CARD_FILE)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"{weights}: the model's weights are missing")
    digest = sha256_file(weights)
    if digest != card.weights_sha256:
        raise WeightsChecksumError(
            f"{weights}: SHA-256 {digest[:12]}… does not match the model card "
            f"({card.weights_sha256[:12] or 'none'}…); the file was changed or replaced. "
            "Restore the original weights or retrain with osteomics train"
        )
    network = build_network(card)
    try:
        network.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, SafetensorError) as exc:
        raise ModelCardError(
            f"{weights}: the weights do not fit a {card.arch} with {len(card.classes)} classes "
            f"({str(exc).splitlines()[0]})"
        ) from exc
    if device is not None:
        network = network.to(device)
    network.eval()
    return network, card


def preprocess_tiles(tiles: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Network input (n, channels, px, px) float32 from RGB uint8 tiles (n, px, px, 3)."""
    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
        raise ValueError(f"tiles must be uint8 (n, px, px, 3), got {tiles.dtype} {tiles.shape}")
    if pre.stain_normalisation != "none":
        tiles = np.stack([normalise(t, pre.stain_normalisation) for t in tiles])
    x: np.ndarray = tiles.astype(np.float32) / 255.0
    if pre.colour == "he":
        x = stain_concentrations(tiles)
    elif pre.colour == "gray":
        x = (x @ np.asarray(GRAY_WEIGHTS, dtype=np.float32))[..., None]
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def predict_logits(
    model: torch.nn.Module, card: ModelCard, tiles: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Raw logits (n, n_classes) of RGB uint8 tiles (n, input_px, input_px, 3)."""
    import torch

    tiles = np.asarray(tiles)
    if tiles.ndim == 4 and tiles.shape[1:3] != (card.input_px, card.input_px):
        raise ValueError(
            f"tiles are {tiles.shape[1]}x{tiles.shape[2]} px; this model takes "
            f"{card.input_px} px at {card.input_mpp} µm/px"
        )
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(tiles), batch_size):
            x = preprocess_tiles(tiles[start : start + batch_size], card.preprocessing)
            out.append(model(torch.from_numpy(x).to(device)).float().cpu().numpy())
    if not out:
        return np.zeros((0, len(card.classes)), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def predict_tiles(
    model: torch.nn.Module, card: ModelCard, tiles: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Calibrated class probabilities of tiles at the card's µm/px and size.

    Parameters
    ----------
    model, card:
        From :func:`load_model`; the model is used in whatever mode and device it is in.
    tiles:
        RGB uint8 (n, input_px, input_px, 3) at ``card.input_mpp`` µm/px.

    Returns
    -------
    numpy.ndarray
        (n, len(card.classes)) float64, softmax(logits / card.temperature); rows sum to 1.
    """
    from osteomics.wsi.calibration import calibrated_probabilities

    return calibrated_probabilities(
        predict_logits(model, card, tiles, batch_size), card.temperature
    )
