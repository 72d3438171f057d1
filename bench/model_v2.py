"""Experiments toward necrosis model v2 (issue 10): frozen ImageNet features + a linear model,
on patient/slide-grouped folds of the whole public TCIA release (osteosarcoma-tcia, 2 µm/px).

Not part of the test suite. Two steps, so that the slow part runs once:

    # 1. features (cached under bench/out/model_v2/, gitignored); time it on 20 tiles first
    HF_HUB_OFFLINE=1 .venv/bin/python bench/model_v2.py features --source efficientnet-lite0 \
        --stain none --limit 20
    HF_HUB_OFFLINE=1 .venv/bin/python bench/model_v2.py features --source efficientnet-lite0 \
        --stain macenko --restain
    # 2. every variant on the same folds; prints a JSON summary and writes it next to the cache
    .venv/bin/python bench/model_v2.py evaluate

Features: per tile (512 px at 2 µm/px), nine crops of the source's input size on a 3 x 3 grid,
each through the frozen backbone (global-average-pooled pre-logits), averaged; plus one
"context" feature of the whole tile at 4 µm/px (256 px, centre crop). ``--stain macenko``
normalises each tile (Macenko, the house reference) before cropping. ``--restain`` also
extracts the tile re-rendered with the median stains of each other patient (flip-rate check).

Folds (the same for every variant):
- ``slide5``: 5-fold CV grouped by slide (``case/slide``), ``osteomics.wsi.folds.grouped_folds``
  with seed 0, on the 836 three-class tiles of all three patients;
- ``P9-out``: train on Case-3 + Case-48, test on P9 (212 non-tumour tiles of an unseen patient);
- ``LOPO``: leave each patient out; 3-class accuracy where the training keeps every class (only
  P9), and tumour vs non-tumour accuracy on every held-out patient.
"""

from __future__ import annotations

import argparse
import json
import os
import time

# One BLAS thread: the logistic regressions are small, and several BLAS threads on 2 shared
# cores make each fit 20-50x slower (measured). Torch's threads are set per command.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "osteosarcoma-tcia"
OUT = ROOT / "bench" / "out" / "model_v2"
CLASSES = ["Non-Tumor", "Non-Viable-Tumor", "Viable"]
MIXED = "Viable-Non-Viable"
TILE_MPP = 2.0


def manifest() -> pd.DataFrame:
    m = pd.read_csv(DATA / "manifest.csv")
    m["group"] = m["patient"] + "/" + m["slide"]
    return m.sort_values("file").reset_index(drop=True)


def _crops(rgb: np.ndarray, px: int) -> np.ndarray:
    starts = np.linspace(0, rgb.shape[0] - px, 3).round().astype(int)
    return np.stack([rgb[y : y + px, x : x + px] for y in starts for x in starts])


def _context(rgb: np.ndarray, px: int) -> np.ndarray:
    from osteomics.wsi.subtiles import resample_to_mpp

    small = resample_to_mpp(rgb, TILE_MPP, 2 * TILE_MPP)
    if small.shape[0] < px:
        pad = px - small.shape[0]
        small = np.pad(small, ((0, pad), (0, pad), (0, 0)), constant_values=255)
    off = (small.shape[0] - px) // 2
    return small[off : off + px, off : off + px][None]


def _case_stains(m: pd.DataFrame) -> dict[str, Any]:
    """Median Macenko stain estimate of each patient (as the model card's restain check)."""
    from osteomics.wsi.stain import StainEstimate, estimate_stains
    from osteomics.wsi.subtiles import read_rgb

    out = {}
    for patient, rows in m.groupby("patient"):
        ests = [e for f in rows["file"] if (e := estimate_stains(read_rgb(DATA / f))) is not None]
        out[str(patient)] = StainEstimate(
            stains=np.median([e.stains for e in ests], axis=0),
            max_concentrations=np.median([e.max_concentrations for e in ests], axis=0),
        )
    return out


def extract(
    source: str,
    stain: str,
    limit: int | None,
    restain_every: int,
    threads: int,
    nine_crops: bool,
    reuse: bool = False,
) -> Path:
    import torch

    from osteomics.wsi.stain import macenko_normalise
    from osteomics.wsi.subtiles import read_rgb
    from osteomics.wsi.weights import load_pretrained, network_from_pretrained

    torch.set_num_threads(threads)
    weights = load_pretrained(source)
    assert weights.arch is not None
    net = network_from_pretrained(weights, weights.arch, num_classes=0).eval()
    px = weights.input_px
    mean = np.asarray(weights.mean, np.float32)
    std = np.asarray(weights.std, np.float32)
    m = manifest()
    if limit:
        m = m.iloc[np.random.default_rng(0).permutation(len(m))[:limit]].sort_values("file")
    restain = restain_every > 0
    stains = _case_stains(manifest()) if restain else {}
    patients = sorted(stains)

    def features(batch: np.ndarray) -> np.ndarray:
        x = (batch.astype(np.float32) / 255.0 - mean) / std
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()

    def tile_features(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(views, context): views = nine crops (n, 9, d) or the whole tile (n, 1, d)."""
        if stain == "macenko":
            rgb = macenko_normalise(rgb)
        if nine_crops:
            f = features(np.concatenate([_crops(rgb, px), _context(rgb, px)]))
            return f[:9].astype(np.float16), f[9].astype(np.float16)
        from osteomics.wsi.subtiles import resample_to_mpp

        whole = features(rgb[None])
        context = features(resample_to_mpp(rgb, TILE_MPP, 2 * TILE_MPP)[None])
        return whole.astype(np.float16), context[0].astype(np.float16)

    tag = f"{source}_{stain}_{'crops9' if nine_crops else 'whole'}" + (
        f"_limit{limit}" if limit else ""
    )
    cached: dict[str, Any] | None = None
    if reuse and (OUT / f"{tag}.npz").exists():
        # the tiles' own features are cached already: only the restained copies are new
        cached = dict(np.load(OUT / f"{tag}.npz", allow_pickle=True))
        assert list(cached["files"]) == list(m["file"]), "cache and manifest differ"
    crops, context, restained = [], [], []
    started = time.perf_counter()
    for i, file in enumerate(m["file"]):
        rgb = read_rgb(DATA / file)
        if cached is not None and (not restain or i % restain_every):
            crops.append(cached["crops"][i])
            context.append(cached["context"][i])
            if restain:
                restained.append(
                    np.full((len(stains), *cached["crops"][i].shape), np.nan, np.float16)
                )
            continue
        if cached is not None:
            c, ctx = cached["crops"][i], cached["context"][i]
        else:
            c, ctx = tile_features(rgb)
        crops.append(c)
        context.append(ctx)
        if restain and i % restain_every:
            restained.append(np.full((len(stains), *c.shape), np.nan, np.float16))
        elif restain:
            patient = m["patient"].iloc[i]
            copies = []
            for other in patients:
                if other == patient:
                    copies.append(np.full_like(c, np.nan))
                    continue
                est = stains[other]
                copy = macenko_normalise(rgb, est.stains, est.max_concentrations)
                copies.append(tile_features(copy)[0])
            restained.append(np.stack(copies))
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{len(m)} tiles, {time.perf_counter() - started:.0f} s", flush=True)
    seconds = time.perf_counter() - started
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{tag}.npz"
    arrays: dict[str, Any] = {
        "files": np.asarray(m["file"], dtype=str),
        "crops": np.stack(crops),
        "context": np.stack(context),
    }
    if restain:
        arrays["restained"] = np.stack(restained)
        arrays["restain_patients"] = np.asarray(patients)
    np.savez(path, **arrays)
    info = {
        "source": source,
        "stain": stain,
        "tiles": len(m),
        "restain": restain,
        "seconds": round(seconds, 1),
        "seconds_per_tile": round(seconds / len(m), 3),
        "views": "nine 224 px crops" if nine_crops else "whole 512 px tile",
        "restain_every": restain_every,
        "torch_threads": threads,
        "reused_tile_features": cached is not None,
        "provenance": weights.provenance,
    }
    (OUT / f"{tag}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    return path


# --- evaluation ------------------------------------------------------------------------------


def _fit_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    w_train: np.ndarray,
    groups: np.ndarray,
    x_tests: list[np.ndarray],
    seed: int = 0,
) -> tuple[list[np.ndarray], float]:
    """Standardise, then multinomial logistic regression with balanced class weights; C chosen
    by an inner slide-grouped 3-fold CV (log-loss) on the training tiles only: the recipe of
    ``osteomics train --linear-probe`` (:func:`osteomics.wsi.train.fit_linear_probe`)."""
    from osteomics.wsi.train import _softmax, fit_linear_probe

    probe = fit_linear_probe(x_train, y_train, w_train, list(groups), 3, seed)
    return [_softmax(probe.logits(x)) for x in x_tests], probe.c


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, f1_score

    from osteomics.wsi.calibration import expected_calibration_error

    pred = p.argmax(1)
    conf = confusion_matrix(y, pred, labels=[0, 1, 2])
    recall = conf.diagonal() / np.maximum(conf.sum(1), 1)
    return {
        "n": len(y),
        "accuracy": round(float((pred == y).mean()), 3),
        "macro_f1": round(float(f1_score(y, pred, average="macro", labels=[0, 1, 2])), 3),
        "recall": [round(float(r), 2) for r in recall],
        "confusion": conf.tolist(),
        "ece": round(float(expected_calibration_error(p, y)), 3),
    }


def _features(cache: dict[str, Any], kind: str) -> np.ndarray:
    crops = cache["crops"].astype(np.float32)
    if kind == "crops":
        return crops.mean(1)
    if kind == "crops+context":
        return np.concatenate([crops.mean(1), cache["context"].astype(np.float32)], axis=1)
    raise ValueError(kind)


def evaluate_variant(
    cache_path: Path, kind: str, soft_mixed: bool, m: pd.DataFrame
) -> dict[str, Any]:
    cache = dict(np.load(cache_path, allow_pickle=True))
    assert list(cache["files"]) == list(m["file"]), "cache and manifest differ"
    x = _features(cache, kind)
    is3 = m["label"].isin(CLASSES).to_numpy()
    mixed = (m["label"] == MIXED).to_numpy()
    y_all = np.array([CLASSES.index(lab) if lab in CLASSES else -1 for lab in m["label"]])
    groups = m["group"].to_numpy()
    patient = m["patient"].to_numpy()

    def train_set(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        idx = np.flatnonzero(mask & is3)
        xs, ys, ws, gs = [x[idx]], [y_all[idx]], [np.ones(len(idx))], [groups[idx]]
        if soft_mixed:  # a mixed tile counts half necrotic, half viable
            midx = np.flatnonzero(mask & mixed)
            for cls in (1, 2):
                xs.append(x[midx])
                ys.append(np.full(len(midx), cls))
                ws.append(np.full(len(midx), 0.5))
                gs.append(groups[midx])
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), np.concatenate(gs)

    result: dict[str, Any] = {
        "features": cache_path.stem,
        "kind": kind,
        "soft_mixed": soft_mixed,
    }
    # slide-grouped 5-fold CV on the three-class tiles (mixed tiles follow their slide's fold)
    idx3 = np.flatnonzero(is3)
    folds3 = _slide_folds(m)
    fold_all = {g: f for g, f in zip(groups[idx3], folds3, strict=True)}
    fold_of = np.array([fold_all.get(g, -1) for g in groups])
    probs = np.zeros((len(m), 3))
    flips: list[np.ndarray] = []
    chosen = []
    restained = cache.get("restained")
    for f in range(5):
        test = (fold_of == f) & is3
        xtr, ytr, wtr, gtr = train_set(fold_of != f)
        tests = [x[test]]
        valid = []
        if restained is not None and kind == "crops":
            for j in range(restained.shape[1]):
                copies = restained[test][:, j].astype(np.float32)
                ok = ~np.isnan(copies).any(axis=(1, 2))
                valid.append(ok)
                tests.append(copies[ok].mean(1))
        outs, c = _fit_predict(xtr, ytr, wtr, gtr, tests)
        chosen.append(c)
        probs[test] = outs[0]
        for ok, other in zip(valid, outs[1:], strict=True):
            flips.append(other.argmax(1) != outs[0][ok].argmax(1))
    result["slide5"] = _metrics(y_all[idx3], probs[idx3])
    result["slide5"]["per_fold_accuracy"] = [
        round(
            float((probs[(fold_of == f) & is3].argmax(1) == y_all[(fold_of == f) & is3]).mean()), 3
        )
        for f in range(5)
    ]
    result["slide5"]["C"] = chosen
    if flips:
        result["slide5"]["restain_flip_rate"] = round(float(np.concatenate(flips).mean()), 3)
        result["slide5"]["restain_n"] = int(sum(len(fl) for fl in flips))
    # leave one patient out
    lopo = {}
    for held in ("Case-3", "Case-48", "P9"):
        test = (patient == held) & is3
        xtr, ytr, wtr, gtr = train_set(patient != held)
        (p,), c = _fit_predict(xtr, ytr, wtr, gtr, [x[test]])
        y = y_all[test]
        tumour_true, tumour_pred = y > 0, p.argmax(1) > 0
        entry = {
            "n": int(test.sum()),
            "classes_in_training": sorted({CLASSES[i] for i in np.unique(ytr)}),
            "training_counts": np.bincount(ytr, minlength=3).tolist(),
            "tumour_vs_non_tumour_accuracy": round(float((tumour_true == tumour_pred).mean()), 3),
            "C": c,
        }
        entry.update(_metrics(y, p))
        lopo[held] = entry
    result["lopo"] = lopo
    return result


def _slide_folds(m: pd.DataFrame) -> np.ndarray:
    from osteomics.wsi.folds import grouped_folds

    three = m[m["label"].isin(CLASSES)]
    y = np.array([CLASSES.index(lab) for lab in three["label"]])
    return grouped_folds(y, three["group"].tolist(), 5, seed=0)


def evaluate_v1(m: pd.DataFrame) -> dict[str, Any]:
    """The shipped v1 model on the same tiles, scored as osteomics evaluate scores an image.
    v1 was trained on 45 of these tiles (at 1 µm/px); they are left out. The rest are not
    slide-held-out for v1 (it trained on tiles of most of these slides): optimistic for v1."""
    import hashlib

    import torch

    from osteomics.wsi.evaluate import score_image
    from osteomics.wsi.model import load_model
    from osteomics.wsi.subtiles import read_rgb

    torch.set_num_threads(2)
    net, card = load_model("osteosarcoma-necrosis-v1")
    seen = {img["sha256"] for img in card.training["images"]}
    three = m[m["label"].isin(CLASSES) & ~m["source_sha256"].isin(seen)]
    folds = dict(zip(m[m["label"].isin(CLASSES)]["file"], _slide_folds(m), strict=True))
    probs, ys, fs, pats = [], [], [], []
    started = time.perf_counter()
    for _, row in three.iterrows():
        probs.append(score_image(net, card, read_rgb(DATA / row["file"]), TILE_MPP))
        ys.append(CLASSES.index(row["label"]))
        fs.append(folds[row["file"]])
        pats.append(row["patient"])
    seconds = time.perf_counter() - started
    p, y = np.stack(probs), np.array(ys)
    order = [card.classes.index(c) for c in CLASSES]
    p = p[:, order]
    out = {"v1_left_out_training_tiles": len(m[m["label"].isin(CLASSES)]) - len(three)}
    out["all"] = _metrics(y, p)
    out["per_fold_accuracy"] = [
        round(float((p[np.array(fs) == f].argmax(1) == y[np.array(fs) == f]).mean()), 3)
        for f in range(5)
    ]
    out["P9"] = _metrics(y[np.array(pats) == "P9"], p[np.array(pats) == "P9"])
    out["seconds"] = round(seconds, 1)
    del hashlib
    return out


def ship(
    cache_path: Path,
    out: Path,
    stain: str,
    results_path: Path,
    soft_mixed: bool = False,
    name: str = "osteosarcoma-necrosis-v2",
    half: bool = True,
) -> None:
    """Fold the logistic regression of one variant (whole tile, fitted on all 836 three-class
    tiles, plus the mixed tiles as soft labels with ``soft_mixed``) into the classifier of the
    frozen backbone, and write an osteomics model folder (fp16 weights with ``half``).

    The fit is :func:`osteomics.wsi.train.fit_linear_probe` (what ``osteomics train
    --linear-probe`` runs); standardisation is folded in: w' = w / sigma, b' = b - w' . mu, so
    the network's logits are the regression's on the backbone's pooled features. The
    temperature is fitted on the slide5 out-of-fold logits.
    """
    from osteomics.wsi.calibration import fit_temperature
    from osteomics.wsi.model import ModelCard, Preprocessing, load_model, predict_logits, save_model
    from osteomics.wsi.subtiles import read_rgb
    from osteomics.wsi.train import (
        TrainConfig,
        fit_linear_probe,
        fold_probe_into,
        half_precision,
        model_versions,
        pretrained_provenance,
    )
    from osteomics.wsi.weights import load_pretrained, network_from_pretrained

    m = manifest()
    cache = dict(np.load(cache_path, allow_pickle=True))
    assert list(cache["files"]) == list(m["file"])
    info = json.loads(cache_path.with_suffix(".json").read_text())
    source = info["source"]
    x = _features(cache, "crops")
    is3 = m["label"].isin(CLASSES).to_numpy()
    mixed = (m["label"] == MIXED).to_numpy()
    y = np.array([CLASSES.index(lab) if lab in CLASSES else -1 for lab in m["label"]])
    groups = m["group"].to_numpy()

    def rows(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        idx = np.flatnonzero(mask & is3)
        xs, ys, ws, gs = [x[idx]], [y[idx]], [np.ones(len(idx))], [groups[idx]]
        if soft_mixed:
            midx = np.flatnonzero(mask & mixed)
            for cls in (1, 2):
                xs.append(x[midx])
                ys.append(np.full(len(midx), cls))
                ws.append(np.full(len(midx), 0.5))
                gs.append(groups[midx])
        return (
            np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), list(np.concatenate(gs))
        )  # fmt: skip

    # out-of-fold logits for the temperature (same folds and C search as evaluate)
    folds3 = _slide_folds(m)
    idx3 = np.flatnonzero(is3)
    fold_all = {g: f for g, f in zip(groups[idx3], folds3, strict=True)}
    fold_of = np.array([fold_all.get(g, -1) for g in groups])
    oof = np.zeros((len(idx3), 3))
    for f in range(5):
        probe_f = fit_linear_probe(*rows(fold_of != f), 3, seed=0)
        oof[folds3 == f] = probe_f.logits(x[idx3[folds3 == f]])
    temperature = fit_temperature(oof, y[idx3])
    probe = fit_linear_probe(*rows(np.ones(len(m), bool)), 3, seed=0)
    weights = load_pretrained(source)
    assert weights.arch is not None
    net = network_from_pretrained(weights, weights.arch, 3).eval()
    fold_probe_into(net, probe)
    results = json.loads(results_path.read_text())
    variant = next(
        r
        for r in results["variants"]
        if r["features"] == cache_path.stem
        and r["kind"] == "crops"
        and r["soft_mixed"] == soft_mixed
    )
    cv = dict(variant["slide5"])
    cv["recall"] = dict(zip(CLASSES, cv["recall"], strict=True))
    cv.update(
        {
            "grouping": "slide",
            "n_folds": 5,
            "level": "tile (one 512 px field at 2 µm/px per TCIA tile)",
            "classes": CLASSES,
            "folds_definition": "osteomics.wsi.folds.grouped_folds(labels, case/slide, 5, seed=0)"
            " on the 836 three-class tiles of osteosarcoma-tcia"
            + ("; a mixed tile follows its slide's fold" if soft_mixed else ""),
            "leave_one_patient_out": variant["lopo"],
            "temperature_fitted_on": "slide5 out-of-fold logits",
        }
    )
    config = TrainConfig(arch=weights.arch, pretrained=source)
    command = (
        f"python bench/model_v2.py ship --features {cache_path.name} --stain {stain}"
        + (" --soft-mixed" if soft_mixed else "")
        + f" --name {name}"
    )
    card = ModelCard(
        name=name,
        classes=list(CLASSES),
        arch=weights.arch,
        input_mpp=TILE_MPP,
        input_px=512,
        preprocessing=Preprocessing(
            stain_normalisation=stain, colour="rgb", mean=weights.mean, std=weights.std
        ),
        temperature=float(temperature),
        training={
            "folder": "osteosarcoma-tcia",
            "method": f"frozen ImageNet {weights.arch} backbone (global-average-pooled "
            "features of the whole 512 px tile at 2 µm/px) + multinomial logistic regression "
            "(standardised features, balanced class weights, C by inner slide-grouped CV), folded "
            "into the network's classifier"
            + (
                "; the 31 mixed 'Viable-Non-Viable' tiles count half necrotic, half viable"
                if soft_mixed
                else ""
            ),
            "n_images": int(is3.sum()),
            "n_soft_labelled_images": int(mixed.sum()) if soft_mixed else 0,
            "counts": {c: int((m["label"] == c).sum()) for c in CLASSES}
            | ({MIXED: int(mixed.sum())} if soft_mixed else {}),
            "counts_by_case": {
                c: m[m["label"] == c].groupby("patient").size().astype(int).to_dict()
                for c in CLASSES + ([MIXED] if soft_mixed else [])
            },
            "logistic_regression_C": probe.c,
            "pretrained": pretrained_provenance(config),
            "weights_dtype": "float16 trunk, float32 classifier" if half else "float32",
            "images": [
                {"file": f, "sha256": h}
                for f, h in zip(
                    m["file"][is3 | (mixed if soft_mixed else False)],
                    m["sha256"][is3 | (mixed if soft_mixed else False)],
                    strict=True,
                )
            ],
            "command": command,
            "reproduce": "osteomics train ../shared/data/osteosarcoma-tcia --out M --pretrained "
            f"{source} --linear-probe --grouping slide --tile-mpp 2 --input-mpp 2 --input-px 512 "
            f"--stain-normalisation {stain} "
            + (
                f"--soft-label {MIXED}=Non-Viable-Tumor+Viable"
                if soft_mixed
                else f"--ignore-class {MIXED}"
            )
            + (" --fp16" if half else ""),
        },
        cross_validation=cv,
        versions=model_versions(),
    )
    lopo = variant["lopo"]
    card.confound = {
        "problem": "Necrotic tiles come almost only from Case-3 (171 of 173) and viable tiles "
        "almost only from Case-48 (202 of 205); P9 has non-tumour only. A slide-grouped CV "
        "cannot separate 'necrotic vs viable' from 'Case-3 vs Case-48', so its "
        f"{cv['accuracy']:.2f} is an upper bound for a new patient.",
        "measures": [
            f"frozen ImageNet backbone ({weights.arch}): the features are not fitted to these "
            "patients; only a linear layer is",
            (
                "the 31 mixed tiles (30 of them Case-48) as half necrotic / half viable: "
                "necrosis gets a second patient"
            )
            if soft_mixed
            else "mixed tiles not used",
            f"stain normalisation: {stain}",
            f"L2 regularisation (C = {probe.c}, chosen by inner slide-grouped CV)",
        ],
        "checks": {
            f"{held}_left_out": f"3-class accuracy {e['accuracy']}, tumour vs non-tumour "
            f"{e['tumour_vs_non_tumour_accuracy']} on {e['n']} tiles (training counts NT / Nec "
            f"/ Via {e['training_counts']}); confusion {e['confusion']}"
            for held, e in lopo.items()
        },
    }
    if "restain_flip_rate" in variant["slide5"]:
        card.robustness = {
            "restain_as_other_case": {
                "n": variant["slide5"]["restain_n"],
                "flip_rate": variant["slide5"]["restain_flip_rate"],
                "note": "held-out tiles (every 4th) re-rendered with the median Macenko stains "
                "of each other patient, predicted by their fold's model"
                + ("" if stain == "none" else "; partly invariant by construction (the model "
                   "normalises its input)"),
            }
        }  # fmt: skip
    card.experiments = [
        {
            "features": r["features"],
            "kind": r["kind"],
            "soft_mixed": r["soft_mixed"],
            "slide5_accuracy": r["slide5"]["accuracy"],
            "slide5_macro_f1": r["slide5"]["macro_f1"],
            "restain_flip_rate": r["slide5"].get("restain_flip_rate"),
            "P9_left_out_accuracy": r["lopo"]["P9"]["accuracy"],
            "case3_left_out_accuracy": r["lopo"]["Case-3"]["accuracy"],
            "tumour_vs_non_tumour_case3_out": r["lopo"]["Case-3"]["tumour_vs_non_tumour_accuracy"],
            "tumour_vs_non_tumour_case48_out": r["lopo"]["Case-48"][
                "tumour_vs_non_tumour_accuracy"
            ],
        }
        for r in results["variants"]
    ]
    card.training["known_limits"] = [
        f"Slide-grouped CV ({cv['accuracy']:.2f}) cannot separate class from patient (see "
        "confound); the leave-one-patient-out checks are lower.",
        "Labels are per 1 mm tile (predominant tissue); the model sees the whole tile as one "
        "512 px field at 2 µm/px, so slides are scored in 1 mm tiles.",
        "Not fine-tuned: frozen ImageNet features + a linear layer. Not checked on the "
        "kept-aside patient by us (we cannot see it).",
    ]
    save_model(half_precision(net) if half else net, card, out)
    # The shipped network gives the logistic regression's probabilities (check on 3 tiles).
    net2, card2 = load_model(out)
    for i in idx3[:3]:
        rgb = read_rgb(DATA / m["file"].iloc[i])
        got = predict_logits(net2, card2, rgb[None])[0]
        want = probe.logits(x[i : i + 1])[0]
        print("check", m["file"].iloc[i], np.round(got, 3), np.round(want, 3))
    print(json.dumps({"out": str(out), "temperature": temperature, "C": probe.c}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features")
    f.add_argument("--source", default="efficientnet-lite0")
    f.add_argument("--stain", choices=["none", "macenko"], default="none")
    f.add_argument("--limit", type=int, default=None)
    f.add_argument(
        "--restain-every", type=int, default=0, help="restained copies of every k-th tile"
    )
    f.add_argument("--nine-crops", action="store_true", help="nine crops instead of the tile")
    f.add_argument("--threads", type=int, default=2)
    f.add_argument(
        "--reuse",
        action="store_true",
        help="take the tiles' own features from the existing cache (only restained copies new)",
    )
    e = sub.add_parser("evaluate")
    e.add_argument("--v1", action="store_true", help="also score the shipped v1 model")
    e.add_argument("--only", default=None, help="only caches whose name starts with this")
    sh = sub.add_parser("ship")
    sh.add_argument("--features", required=True, help="cache file name under bench/out/model_v2")
    sh.add_argument("--stain", choices=["none", "macenko"], required=True)
    sh.add_argument("--out", type=Path, default=ROOT / "wsi/models/osteosarcoma-necrosis-v2")
    sh.add_argument("--soft-mixed", action="store_true", help="mixed tiles as soft labels")
    sh.add_argument("--name", default="osteosarcoma-necrosis-v2")
    sh.add_argument("--fp32", action="store_true", help="store float32 weights (default fp16)")
    args = parser.parse_args()
    if args.command == "ship":
        ship(
            OUT / args.features,
            args.out,
            args.stain,
            OUT / "results.json",
            args.soft_mixed,
            args.name,
            not args.fp32,
        )
        return
    if args.command == "features":
        extract(
            args.source,
            args.stain,
            args.limit,
            args.restain_every,
            args.threads,
            args.nine_crops,
            args.reuse,
        )
        return
    m = manifest()
    results = []
    for cache in sorted(OUT.glob("*.npz")):
        if "_limit" in cache.stem or (args.only and not cache.stem.startswith(args.only)):
            continue
        for kind in ("crops", "crops+context"):
            for soft in (False, True):
                if soft and kind != "crops":
                    continue
                r = evaluate_variant(cache, kind, soft, m)
                results.append(r)
                s, lo = r["slide5"], r["lopo"]
                print(
                    f"{r['features']:28s} {kind:14s} soft={soft!s:5s} slide5 acc {s['accuracy']}"
                    f" F1 {s['macro_f1']} rec {s['recall']} flip {s.get('restain_flip_rate')}"
                    f" | P9-out acc {lo['P9']['accuracy']} | LOPO tumour/NT "
                    + " ".join(f"{k} {v['tumour_vs_non_tumour_accuracy']}" for k, v in lo.items()),
                    flush=True,
                )
    if args.only:  # keep the other variants' figures
        old = json.loads((OUT / "results.json").read_text())
        results = [v for v in old["variants"] if not v["features"].startswith(args.only)] + results
    document: dict[str, Any] = {"variants": results}
    if args.v1:
        document["v1"] = evaluate_v1(m)
        print("v1", json.dumps(document["v1"]))
    (OUT / "results.json").write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
