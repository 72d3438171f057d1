"""Coverage and width of the case necrosis-rate interval, both methods on the same cases.

The two methods of :func:`osteomics.wsi.interval.necrosis_rate_interval`:

- ``bootstrap``: spatial block bootstrap of the tiles x a Dirichlet draw of the cross-validated
  misclassification rates (the first method);
- ``classifier``: the classifier's error only: each tile's true class drawn from its calibrated
  probabilities, one uniform number shared by the tiles of a 3 x 3 block, shifted by the
  confusion's adjusted count for the case's class mix (``classifier:no-confusion``: the tile
  draws alone).

Tile probabilities are out-of-fold: the v2 recipe (bench/necrosis.py ``_Recipe``, cached
features of bench/model_v2.py) is fitted on the training tiles of each split and predicts the
held-out ones, exactly as ``bench/necrosis.py --accuracy`` does (its loop, without mosaics,
copied here so that bench/necrosis.py is not edited); the probabilities are cached in
bench/out/interval_oof_<recipe>.npz. Two pools: slide5 out-of-fold (slide held out, same
patients) and patient-out (each patient held out in turn).

Cases: the simulation of ``bench/necrosis.py coverage()`` (copied, generalised to n x n):
a quarter of the cells glass, necrotic share of the tumour cells uniform 5-95 %, a quarter to
a third of the tissue cells non-tumour, one 512 px tile per cell laid out by
``random_layout``; expected areas = tissue area x out-of-fold probabilities; truth =
necrotic / tumour tissue area by the tiles' labels. The same cases (same seeds) go to both
methods. Nothing is tuned on the patient-out pool. The confusion given to the intervals is the
pooled slide5 out-of-fold confusion (as in bench/necrosis.py; a shipped card's confusion comes
from an inner CV of its training tiles instead, so this is slightly optimistic for both
methods' confusion part).

Usage: python bench/interval_coverage.py [--recipe densenet121-soft] [--cases 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import necrosis as bench  # bench/necrosis.py, not edited

from osteomics.wsi.necrosis import TISSUE_CLASSES, grade_call, huvos_grade

CACHE = bench.CACHE


def out_of_fold(recipe: str) -> tuple[bench._Recipe, np.ndarray, np.ndarray, np.ndarray]:
    """(recipe, slide5 out-of-fold probabilities, patient-out probabilities, pooled slide5
    out-of-fold confusion), cached in bench/out/interval_oof_<recipe>.npz."""
    from osteomics.wsi.calibration import calibrated_probabilities
    from osteomics.wsi.train import LinearProbe

    r = bench._Recipe(recipe)
    path = CACHE / f"interval_oof_{recipe}.npz"
    if path.exists():
        z = np.load(path)
        return r, z["oof"], z["lopo"], z["confusion5"]
    oof = np.full((len(r.m), 3), np.nan)
    lopo = np.full((len(r.m), 3), np.nan)
    confusion5 = np.zeros((3, 3), int)
    t0 = time.perf_counter()
    for name, held, _cases in bench._splits(r):
        probe, _confusion, temperature = r.fit(~held & (r.slide5 >= -1))
        assert isinstance(probe, LinearProbe)
        test = held & (r.y >= 0)
        p = calibrated_probabilities(probe.logits(r.x[test]), temperature)
        (oof if name.startswith("slide5") else lopo)[test] = p
        if name.startswith("slide5"):
            np.add.at(confusion5, (r.y[test], p.argmax(1)), 1)
        print(f"{name}: {test.sum()} held-out tiles, T = {temperature:.2f}", flush=True)
    print(f"fitted in {time.perf_counter() - t0:.0f} s", flush=True)
    np.savez(path, oof=oof, lopo=lopo, confusion5=confusion5)
    return r, oof, lopo, confusion5


def simulate(
    r: bench._Recipe, probs: np.ndarray, n_side: int, n_cases: int, frac: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, float, int]]:
    """Cases (positions px, expected class areas mm² in tissue order, true rate %, tiles
    called viable) on an n_side x n_side grid, from the tiles with probabilities."""
    from osteomics.wsi.labelled import LabelledTile
    from osteomics.wsi.model import load_model
    from osteomics.wsi.mosaic import random_layout

    _, card = load_model("osteosarcoma-necrosis-v2")
    order = [TISSUE_CLASSES.index(card.tissue_classes[c]) for c in bench.CLASSES]
    ok = ~np.isnan(probs).any(1)
    by_class = {k: np.flatnonzero(ok & (r.y == k)) for k in range(3)}
    if any(len(v) == 0 for v in by_class.values()):
        return []
    rng = np.random.default_rng(0)
    scale = n_side * n_side / 36
    cases = []
    for case in range(n_cases):
        rate = rng.uniform(0.05, 0.95)
        n_cells = n_side * n_side - round(n_side * n_side * 0.25)
        n_nt = int(rng.integers(round(3 * scale), round(12 * scale)))
        n_nec = round((n_cells - n_nt) * rate)
        picks = (
            [rng.choice(by_class[1]) for _ in range(n_nec)]
            + [rng.choice(by_class[2]) for _ in range(n_cells - n_nt - n_nec)]
            + [rng.choice(by_class[0]) for _ in range(n_nt)]
        )
        tiles = [LabelledTile(Path(str(i)), bench.CLASSES[r.y[i]], "", "") for i in picks]
        layout = random_layout(tiles, n_side, n_side, glass_fraction=0.25, seed=case)
        pos, areas, true_nec, true_tum, viable_tiles = [], [], 0.0, 0.0, 0
        for row_i, row in enumerate(layout):
            for col_i, t in enumerate(row):
                if t is None:
                    continue
                i = int(str(t.path))
                a = frac[i] * (512 * bench.TCIA_MPP / 1000) ** 2
                pos.append((col_i * 512, row_i * 512))
                area = np.zeros(3)
                area[order] = a * probs[i]
                areas.append(area)
                viable_tiles += int(np.argmax(area) == TISSUE_CLASSES.index("viable"))
                true_nec += a if r.y[i] == 1 else 0.0
                true_tum += a if r.y[i] > 0 else 0.0
        cases.append(
            (np.array(pos, float), np.array(areas), 100 * true_nec / true_tum, viable_tiles)
        )
    return cases


def measure(
    cases: list[tuple[np.ndarray, np.ndarray, float, int]], confusion: np.ndarray, method: str
) -> dict[str, float]:
    """Coverage at 95 %, median width, share printed uncertain, share of printed grades
    (not uncertain) that are wrong, mean |error| of the point estimate."""
    from osteomics.wsi.interval import necrosis_rate_interval

    iv_, inec = TISSUE_CLASSES.index("viable"), TISSUE_CLASSES.index("necrotic")
    hits, widths, uncertain, wrong, errors = [], [], [], [], []
    for seed, (pos, areas, truth, viable_tiles) in enumerate(cases):
        est = 100 * areas[:, inec].sum() / (areas[:, inec].sum() + areas[:, iv_].sum())
        errors.append(abs(est - truth))
        kind, _, variant = method.partition(":")
        conf = None if variant == "no-confusion" else confusion
        iv = necrosis_rate_interval(pos, 512.0, areas, conf, seed, method=kind)
        if iv is None:
            continue
        hits.append(iv.low_percent <= truth <= iv.high_percent)
        widths.append(iv.high_percent - iv.low_percent)
        call = grade_call(est, iv.low_percent, iv.high_percent, viable_tiles)
        uncertain.append(call.huvos_grade == "uncertain")
        if call.huvos_grade != "uncertain":
            wrong.append(call.huvos_grade != huvos_grade(truth, 0 if truth >= 99.99 else 1))
    return {
        "n": len(hits),
        "coverage": float(np.mean(hits)),
        "median_width": float(np.median(widths)),
        "uncertain": float(np.mean(uncertain)),
        "printed_wrong": float(np.mean(wrong)) if wrong else float("nan"),
        "n_printed": len(wrong),
        "mean_abs_error": float(np.mean(errors)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(bench.RECIPES), default="densenet121-soft")
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--sides", type=int, nargs="*", default=[6, 12, 36])
    parser.add_argument(
        "--methods",
        nargs="*",
        default=["bootstrap", "classifier:no-confusion", "classifier"],
        help="method of necrosis_rate_interval; ':no-confusion' passes no confusion matrix",
    )
    args = parser.parse_args()
    r, oof, lopo, confusion5 = out_of_fold(args.recipe)
    frac = np.load(CACHE / "tcia-tissue-fraction.npy")
    from osteomics.wsi.interval import confusion_in_tissue_order
    from osteomics.wsi.model import load_model

    _, card = load_model("osteosarcoma-necrosis-v2")
    tissue_conf = confusion_in_tissue_order(confusion5, bench.CLASSES, card.tissue_classes)
    print(f"slide5 out-of-fold confusion (rows true NT, Nec, Via): {confusion5.tolist()}")
    print(
        "| pool | case | method | coverage at 95 % | median width | Huvos printed uncertain "
        "| printed grade wrong | point mean abs error |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for pool, probs in (("slide5 out-of-fold", oof), ("patient-out", lopo)):
        for side in args.sides:
            cases = simulate(r, probs, side, args.cases, frac)
            for method in args.methods:
                m = measure(cases, tissue_conf, method)
                print(
                    f"| {pool} | {side} x {side} ({len(cases[0][0])} tiles) | {method} | "
                    f"{m['coverage']:.3f} | {m['median_width']:.1f} | {m['uncertain']:.2f} | "
                    f"{m['printed_wrong']:.2f} ({m['n_printed']} printed) | "
                    f"{m['mean_abs_error']:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
