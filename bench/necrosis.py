"""Benchmark and validation of the necrosis job.

Throughput (always): on a mosaic slide built from the real TCIA tiles (1 µm/px, pyramidal),
in the same run and over the same tissue tiles at the model's µm/px and input size:

- tiling ceiling: a plain OpenSlide ``read_region`` loop, split over ``--workers`` processes;
- model only: ``predict_tiles`` of the default model on tiles already in memory, one process
  per worker with one PyTorch thread each;
- osteomics: ``score_slides`` end to end (plan, reads, inference, aggregation, outputs) on a
  Dask LocalCluster of ``--workers`` processes started before the clock.

Target: osteomics >= 0.7 x min(ceiling, model only). The ratio is printed last.

Accuracy (``--accuracy``, ``--recipe``): the v2 recipe (frozen trunk + logistic regression,
C by inner grouped CV; features cached by bench/model_v2.py) fitted on the training tiles of
each split only (slide-grouped folds; each patient left out), folded into a model folder with
its inner-CV confusion, and scored end to end with ``score_slides`` on mosaics built ONLY from
that split's held-out tiles: true rate, estimate, |error|, Huvos and responder right or wrong,
and whether the case interval (osteomics.wsi.interval) covers the truth. Then the interval's
coverage on ``--simulated`` cases laid out from out-of-fold tile probabilities.

Usage: python bench/necrosis.py [--workers 2] [--cells 12] [--accuracy] [--recipe lite0]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from osteomics.wsi.cluster import dask_client
from osteomics.wsi.grid import read_tiles
from osteomics.wsi.labelled import LabelledTile, read_labelled_folder
from osteomics.wsi.mosaic import MosaicComposition, build_mosaic_slide, random_layout
from osteomics.wsi.necrosis import huvos_grade, responder
from osteomics.wsi.scoring import NecrosisParameters, score_slides
from osteomics.wsi.slide import open_slide

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "osteosarcoma-tiles"
CACHE = Path(__file__).resolve().parent / "out"

_slide = None


def _open(path: str) -> None:
    global _slide
    import openslide

    _slide = openslide.OpenSlide(path)


def _read_loop(coords: list[tuple[int, int]], level: int, size: int) -> int:
    assert _slide is not None
    for x, y in coords:
        _slide.read_region((x, y), level, (size, size))
    return len(coords)


def ceiling_tiles_per_s(
    path: Path, coords: np.ndarray, level: int, size: int, workers: int
) -> float:
    parts = [[tuple(map(int, c)) for c in p] for p in np.array_split(coords, workers * 8)]
    with mp.get_context("spawn").Pool(workers, initializer=_open, initargs=(str(path),)) as pool:
        pool.starmap(_read_loop, [([tuple(map(int, coords[0]))], level, size)] * workers)
        t0 = time.perf_counter()
        n = sum(pool.starmap(_read_loop, [(p, level, size) for p in parts]))
        return n / (time.perf_counter() - t0)


def _predict_loop(tiles_npy: str, model_name: str = "default") -> tuple[int, float]:
    import torch

    from osteomics.wsi.model import load_model, predict_tiles

    torch.set_num_threads(1)
    model, card = load_model(model_name)
    tiles = np.load(tiles_npy)
    # 512 px tiles: 48 per process keep one measurement near 20 s on a CPU core
    tiles = tiles[: 48 if card.input_px >= 384 else len(tiles)]
    predict_tiles(model, card, tiles[:4])  # warm
    t0 = time.perf_counter()
    predict_tiles(model, card, tiles)
    return len(tiles), time.perf_counter() - t0


def model_only_tiles_per_s(workers: int, tiles_npy: Path, model_name: str = "default") -> float:
    """The same real tissue tiles, already in memory, through the model in each process."""
    with mp.get_context("spawn").Pool(workers) as pool:
        results = pool.starmap(_predict_loop, [(str(tiles_npy), model_name)] * workers)
    return sum(n for n, _ in results) / max(s for _, s in results)


def other_models_tiles_per_s(
    path: Path, tiles: object, workers: int, names: list[str]
) -> dict[str, tuple[float, float]]:
    """Model-only tiles/s and mm²/s of other models (v1, candidates) on tiles read at the same
    tissue positions, each at the model's own µm/px and size (same processes, same run)."""
    from osteomics.wsi.model import load_model
    from osteomics.wsi.results import SlideTiles

    assert isinstance(tiles, SlideTiles)
    out = {}
    for name in names:
        _, card = load_model(name)
        tiles_npy = CACHE / f"necrosis-bench-tiles-{card.name}-{card.input_px}px.npy"
        if not tiles_npy.exists():
            with open_slide(path) as slide:
                mpp = slide.info.mpp or 1.0
                level = 1 if abs(card.input_mpp / mpp - 2.0) < 1e-6 else 0
                size = card.input_px if level == 1 else round(card.input_px * card.input_mpp / mpp)
                np.save(
                    tiles_npy,
                    read_tiles(slide, tiles.x_px[:384], tiles.y_px[:384], level, size,
                               card.input_px),
                )  # fmt: skip
        rate = model_only_tiles_per_s(workers, tiles_npy, name)
        out[name] = (rate, rate * (card.input_px * card.input_mpp / 1000) ** 2)
    return out


def throughput(args: argparse.Namespace) -> None:
    from osteomics.wsi.model import load_model

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"necrosis-mosaic-{args.cells}x{args.cells}.tiff"
    if not path.exists():
        tiles = read_labelled_folder(DATA)
        layout = random_layout(tiles, args.cells, args.cells, glass_fraction=0.25, seed=3)
        build_mosaic_slide(path, layout, source_mpp=1.0, cell_px=1024, seed=3)
    _model, card = load_model("default")
    ours, ceilings, models = [], [], []
    with dask_client(args.workers) as client:
        # Warm up: each worker imports PyTorch and loads the model once (a few seconds, paid
        # once per worker process, not per slide); the timed runs measure the steady state.
        warm = Path(tempfile.mkdtemp(prefix="necrosis-warm-", dir=CACHE))
        score_slides([path], warm, NecrosisParameters(), client=client)
        shutil.rmtree(warm, ignore_errors=True)
        for repeat in range(args.repeat):
            out = Path(tempfile.mkdtemp(prefix="necrosis-bench-", dir=CACHE))
            t0 = time.perf_counter()
            run = score_slides([path], out, NecrosisParameters(), client=client)
            elapsed = time.perf_counter() - t0
            row = run.slides[0]
            assert row.status == "ok", row.reason
            tiles = run.tiles[row.slide]
            level = 1 if row.mpp and abs(card.input_mpp / row.mpp - 2.0) < 1e-6 else 0
            size = card.input_px if level == 1 else round(card.input_px * card.input_mpp)
            coords = np.stack([tiles.x_px, tiles.y_px], axis=1)
            ours.append(row.n_tiles / elapsed)
            ceilings.append(ceiling_tiles_per_s(path, coords, level, size, args.workers))
            tiles_npy = CACHE / f"necrosis-bench-tiles-{card.name}-{card.input_px}px.npy"
            if not tiles_npy.exists():
                with open_slide(path) as slide:
                    np.save(
                        tiles_npy,
                        read_tiles(slide, tiles.x_px[:384], tiles.y_px[:384], level, size,
                                   card.input_px),
                    )  # fmt: skip
            models.append(model_only_tiles_per_s(args.workers, tiles_npy))
            if args.compare:
                others = other_models_tiles_per_s(path, tiles, args.workers, args.compare)
                side_mm = card.input_px * card.input_mpp / 1000
                print(
                    f"  model only, same run: default ({card.name}) {models[-1]:.1f} tiles/s = "
                    f"{models[-1] * side_mm**2:.2f} mm²/s; "
                    + "; ".join(
                        f"{n} {t:.1f} tiles/s = {a:.2f} mm²/s" for n, (t, a) in others.items()
                    )
                )
            print(
                f"repeat {repeat}: {row.n_tiles} tiles; osteomics necrosis {ours[-1]:.2f} tiles/s, "
                f"OpenSlide read loop {ceilings[-1]:.0f}, model only {models[-1]:.2f} tiles/s"
            )
            shutil.rmtree(out, ignore_errors=True)
    o, c, m = (statistics.median(v) for v in (ours, ceilings, models))
    print(
        f"osteomics necrosis: {o:.2f} tiles/s on {args.workers} CPU workers; tiling ceiling "
        f"{c:.0f}, model only {m:.2f} tiles/s (median of {args.repeat}; model {card.name}, "
        f"{card.input_px} px at {card.input_mpp} µm/px)"
    )
    print(f"ratio osteomics/min(ceiling, model) = {o / min(c, m):.2f}")


# --- accuracy: the v2 recipe on held-out patients and slides ---------------------------------

#: Recipes of the shipped v2 models: cached features (bench/model_v2.py features), weight
#: source, stain normalisation, mixed tiles as soft labels.
RECIPES = {
    "lite0": ("efficientnet-lite0_macenko_whole", "efficientnet-lite0", "macenko", False),
    "densenet121-soft": ("densenet121_none_whole", "densenet121", "none", True),
}
TCIA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "osteosarcoma-tcia"
TCIA_MPP = 2.0
CLASSES = ["Non-Tumor", "Non-Viable-Tumor", "Viable"]
MIXED = "Viable-Non-Viable"


def true_rate_by_tissue(composition: MosaicComposition, tiles: object) -> float | None:
    """Necrotic / tumour tissue area, each tile labelled by the mosaic cell it lies in."""
    from osteomics.wsi.results import SlideTiles

    assert isinstance(tiles, SlideTiles)
    cells = {(c.row, c.col): c.label for c in composition.cells}
    necrotic = viable = 0.0
    for x, y, f in zip(tiles.x_px, tiles.y_px, tiles.tissue_fraction, strict=True):
        cx = int((x + tiles.side_px / 2) // composition.cell_px)
        cy = int((y + tiles.side_px / 2) // composition.cell_px)
        label = cells.get((cy, cx))
        necrotic += f if label == "Non-Viable-Tumor" else 0.0
        viable += f if label == "Viable" else 0.0
    return 100 * necrotic / (necrotic + viable) if necrotic + viable else None


def cycle(items: list[LabelledTile], n: int) -> list[LabelledTile]:
    return [items[i % len(items)] for i in range(n)]


class _Recipe:
    """The v2 recipe on cached frozen features: fit on some tiles, write a model folder."""

    def __init__(self, recipe: str) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import model_v2

        from osteomics.wsi.weights import load_pretrained

        cache_name, self.source, self.stain, self.soft = RECIPES[recipe]
        self.recipe = recipe
        self.m = model_v2.manifest()
        cache = dict(np.load(model_v2.OUT / f"{cache_name}.npz", allow_pickle=True))
        assert list(cache["files"]) == list(self.m["file"]), "cache and manifest differ"
        self.x = cache["crops"].astype(np.float32).mean(1)
        self.y = np.array([CLASSES.index(v) if v in CLASSES else -1 for v in self.m["label"]])
        self.groups = self.m["group"].to_numpy()
        self.patient = self.m["patient"].to_numpy()
        self.weights = load_pretrained(self.source)
        self.slide5 = np.full(len(self.m), -1)
        self.slide5[self.y >= 0] = model_v2._slide_folds(self.m)
        # mixed tiles follow their slide's fold
        fold_of = {g: f for g, f in zip(self.groups, self.slide5, strict=True) if f >= 0}
        for i in np.flatnonzero(self.y < 0):
            self.slide5[i] = fold_of.get(self.groups[i], -1)

    def rows(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        idx = np.flatnonzero(mask & (self.y >= 0))
        xs, ys, ws, gs = [self.x[idx]], [self.y[idx]], [np.ones(len(idx))], [self.groups[idx]]
        if self.soft:
            midx = np.flatnonzero(mask & (self.m["label"] == MIXED).to_numpy())
            for cls in (1, 2):
                xs.append(self.x[midx])
                ys.append(np.full(len(midx), cls))
                ws.append(np.full(len(midx), 0.5))
                gs.append(self.groups[midx])
        return (
            np.concatenate(xs),
            np.concatenate(ys),
            np.concatenate(ws),
            list(np.concatenate(gs)),
        )

    def fit(self, train: np.ndarray) -> tuple[object, np.ndarray, float]:
        """(probe, inner out-of-fold confusion, temperature) on the training tiles only."""
        from osteomics.wsi.calibration import fit_temperature
        from osteomics.wsi.folds import grouped_folds
        from osteomics.wsi.train import fit_linear_probe

        x, y, w, g = self.rows(train)
        probe = fit_linear_probe(x, y, w, g, 3, seed=0)
        # the card's confusion and temperature: inner slide-grouped 3-fold CV with that C
        hard = np.flatnonzero(train & (self.y >= 0))
        inner = grouped_folds(self.y[hard], list(self.groups[hard]), 3, 0)
        logits = np.zeros((len(hard), 3))
        for f in range(int(inner.max()) + 1):
            sub = np.zeros(len(self.m), bool)
            sub[hard[inner != f]] = True
            xs, ys, ws, _ = self.rows(sub & train)
            from osteomics.wsi.train import fit_logistic

            logits[inner == f] = fit_logistic(xs, ys, ws, probe.c, 3).logits(
                self.x[hard[inner == f]]
            )
        confusion = np.zeros((3, 3), int)
        np.add.at(confusion, (self.y[hard], logits.argmax(1)), 1)
        return probe, confusion, float(fit_temperature(logits, self.y[hard]))

    def save(self, probe: object, confusion: np.ndarray, temperature: float, out: Path) -> Path:
        from osteomics.wsi.model import ModelCard, Preprocessing, load_model, save_model
        from osteomics.wsi.train import LinearProbe, fold_probe_into, half_precision
        from osteomics.wsi.weights import network_from_pretrained

        assert isinstance(probe, LinearProbe) and self.weights.arch is not None
        net = network_from_pretrained(self.weights, self.weights.arch, 3).eval()
        fold_probe_into(net, probe)
        _, shipped = load_model("osteosarcoma-necrosis-v2")
        card = ModelCard(
            name=f"held-out-{self.recipe}",
            classes=list(CLASSES),
            arch=self.weights.arch,
            input_mpp=TCIA_MPP,
            input_px=512,
            preprocessing=Preprocessing(
                stain_normalisation=self.stain,
                colour="rgb",
                mean=self.weights.mean,
                std=self.weights.std,
            ),
            tissue_classes=dict(shipped.tissue_classes),
            temperature=temperature,
            cross_validation={
                "confusion": confusion.tolist(),
                "classes": list(CLASSES),
                "level": "tile, inner slide-grouped 3-fold CV of the training tiles",
            },
        )
        save_model(half_precision(net), card, out)
        return out

    def tiles(self, mask: np.ndarray, label: str) -> list[LabelledTile]:
        idx = np.flatnonzero(mask & (self.m["label"] == label).to_numpy())
        return [
            LabelledTile(
                TCIA / self.m["file"].iloc[i],
                label,
                str(self.patient[i]),
                str(self.m["slide"].iloc[i]),
            )
            for i in idx
        ]


def _splits(r: _Recipe) -> list[tuple[str, np.ndarray, list[tuple[str, int, int, int]]]]:
    """(name, held-out mask, cases (name, necrotic, viable, non-tumour cells)) per split.

    slide5: each fold of the slide-grouped CV, one 5 x 5 case (20 tumour + 5 non-tumour
    cells) at a different necrosis share. Patient out: only what that patient has (Case-3:
    171 necrotic, 3 viable tiles; Case-48: 2 necrotic, 202 viable; P9 has no tumour)."""
    rates = [(2, 18), (7, 13), (12, 8), (16, 4), (19, 1)]
    out = []
    for f in range(5):
        nec, via = rates[f]
        out.append(
            (f"slide5 fold {f}", r.slide5 == f, [(f"s{f}-{round(100 * nec / 20)}", nec, via, 5)])
        )
    out.append(("Case-3 out", r.patient == "Case-3", [("c3-85", 17, 3, 5)]))
    out.append(("Case-48 out", r.patient == "Case-48", [("c48-10", 2, 18, 5)]))
    out.append(("P9 out", r.patient == "P9", []))
    return out


def _call(reported: str | None, truth: str) -> str:
    """right, uncertain (the interval crosses a cut-off: no single grade printed) or WRONG."""
    if reported == truth:
        return "right"
    return "uncertain" if reported == "uncertain" else "WRONG"


def accuracy(args: argparse.Namespace) -> None:
    """The v2 recipe, fitted on training tiles only, scored end to end on mosaics built only
    from held-out tiles; then the interval's coverage on simulated cases."""
    from osteomics.wsi.calibration import calibrated_probabilities

    r = _Recipe(args.recipe)
    work = Path(tempfile.mkdtemp(prefix="necrosis-accuracy-", dir=CACHE))
    oof = np.full((len(r.m), 3), np.nan)  # slide5 out-of-fold probabilities
    lopo = np.full((len(r.m), 3), np.nan)  # patient-out probabilities
    confusion5 = np.zeros((3, 3), int)
    rows = []
    t0 = time.perf_counter()
    with dask_client(args.workers) as client:
        for name, held, cases in _splits(r):
            probe, confusion, temperature = r.fit(~held & (r.slide5 >= -1))
            from osteomics.wsi.train import LinearProbe

            assert isinstance(probe, LinearProbe)
            test = held & (r.y >= 0)
            p = calibrated_probabilities(probe.logits(r.x[test]), temperature)
            (oof if name.startswith("slide5") else lopo)[test] = p
            acc = float((p.argmax(1) == r.y[test]).mean())
            tumour = float(((p.argmax(1) > 0) == (r.y[test] > 0)).mean())
            if name.startswith("slide5"):
                np.add.at(confusion5, (r.y[test], p.argmax(1)), 1)
            print(
                f"{name}: {test.sum()} held-out tiles, C = {probe.c}, T = {temperature:.2f}; "
                f"3-class accuracy {acc:.3f}, tumour vs non-tumour {tumour:.3f}",
                flush=True,
            )
            if not cases or args.no_mosaics:
                continue
            folder = r.save(probe, confusion, temperature, work / f"model-{name.replace(' ', '-')}")
            for case, n_nec, n_via, n_nt in cases:
                cells = (
                    cycle(r.tiles(held, "Non-Viable-Tumor"), n_nec)
                    + cycle(r.tiles(held, "Viable"), n_via)
                    + cycle(r.tiles(held, "Non-Tumor"), n_nt)
                )
                order = np.random.default_rng(len(rows)).permutation(len(cells))
                cells = [cells[i] for i in order]
                layout = [cells[i * 5 : (i + 1) * 5] for i in range(5)]
                composition = build_mosaic_slide(
                    work / f"{case}.tiff", layout, source_mpp=TCIA_MPP, cell_px=512, seed=1
                )
                run = score_slides(
                    [Path(composition.path)],
                    work / f"out-{case}",
                    NecrosisParameters(model=str(folder)),
                    client=client,
                )
                row = run.slides[0]
                c = run.cases[0]
                truth = true_rate_by_tissue(composition, run.tiles[row.slide])
                est = c.necrosis_rate
                if truth is None or est is None:
                    a = run.tiles[row.slide].area_mm2  # viable, necrotic, non-tumour
                    raw = 100 * a[:, 1].sum() / max(a[:, :2].sum(), 1e-9)
                    print(
                        f"  {case}: true {truth} %; {c.status}: {c.reason} (the rate its tile "
                        f"probabilities would give: {raw:.1f} %)"
                    )
                    rows.append((name, case, truth, raw, None, None, False,
                                 huvos_grade(truth or 0), "not assessable",
                                 responder(truth or 0), "not assessable"))  # fmt: skip
                    continue
                covered = (
                    c.ci_low is not None
                    and c.ci_high is not None
                    and (c.ci_low <= truth <= c.ci_high)
                )
                rows.append(
                    (
                        name,
                        case,
                        truth,
                        est,
                        c.ci_low,
                        c.ci_high,
                        covered,
                        huvos_grade(truth),
                        c.huvos_grade,
                        responder(truth),
                        c.responder,
                    )
                )
                print(
                    f"  {case}: true {truth:.1f} % (Huvos {huvos_grade(truth)}, "
                    f"{responder(truth)}); estimate {est:.1f} % [{c.ci_low:.1f}, {c.ci_high:.1f}] "
                    f"(Huvos {c.huvos_grade}, {c.responder}); |error| {abs(est - truth):.1f} "
                    f"points; Huvos {_call(c.huvos_grade, huvos_grade(truth))}, "
                    f"responder {_call(c.responder, responder(truth))}, "
                    f"interval {'covers' if covered else 'MISSES'} the truth",
                    flush=True,
                )
    print(f"fitted and scored in {time.perf_counter() - t0:.0f} s")
    if rows:
        errors = [float(abs(e - t)) for _, _, t, e, *_ in rows]
        print(
            f"mosaic cases: mean |error| {statistics.mean(errors):.1f} points, max "
            f"{max(errors):.1f}; intervals cover {sum(r_[6] for r_ in rows)} of {len(rows)}; "
            f"Huvos right {sum(r_[7] == r_[8] for r_ in rows)}, uncertain "
            f"{sum(r_[8] == 'uncertain' for r_ in rows)} of {len(rows)}; responder right "
            f"{sum(r_[9] == r_[10] for r_ in rows)}, uncertain "
            f"{sum(r_[10] == 'uncertain' for r_ in rows)} of {len(rows)}"
        )
    print(f"slide5 out-of-fold confusion (rows true NT, Nec, Via): {confusion5.tolist()}")
    restain_flips(r)
    coverage(r, oof, lopo, confusion5, args.simulated)


def restain_flips(r: _Recipe) -> None:
    """The recipe's restain flip rate (slide5 folds, every 4th held-out tile re-rendered with
    each other patient's median stains), as ``bench/model_v2.py evaluate`` measured it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import model_v2

    cache_name = RECIPES[r.recipe][0]
    path = model_v2.OUT / "results.json"
    variants = json.loads(path.read_text())["variants"] if path.exists() else []
    for v in variants:
        if v["features"] == cache_name and v["kind"] == "crops" and v["soft_mixed"] == r.soft:
            s5 = v["slide5"]
            print(
                f"restain flip rate: {s5.get('restain_flip_rate')} of {s5.get('restain_n')} "
                f"copies; per patient out, 3-class accuracy "
                + ", ".join(f"{k} {e['accuracy']}" for k, e in v["lopo"].items())
            )
            return
    print(f"restain flip rate: not in {path} (run bench/model_v2.py features --restain-every 4)")


def coverage(
    r: _Recipe, oof: np.ndarray, lopo: np.ndarray, confusion: np.ndarray, n_cases: int
) -> None:
    """Coverage of the case interval (osteomics.wsi.interval, its array API) on simulated
    mosaic cases of known composition laid out with random_layout from out-of-fold tiles."""
    from osteomics.wsi.interval import confusion_in_tissue_order, necrosis_rate_interval
    from osteomics.wsi.model import load_model
    from osteomics.wsi.necrosis import TISSUE_CLASSES
    from osteomics.wsi.subtiles import read_rgb, tissue_fraction

    _, card = load_model("osteosarcoma-necrosis-v2")
    order = [TISSUE_CLASSES.index(card.tissue_classes[c]) for c in CLASSES]
    tissue_conf = confusion_in_tissue_order(confusion, CLASSES, card.tissue_classes)
    frac_cache = CACHE / "tcia-tissue-fraction.npy"
    if frac_cache.exists():
        frac = np.load(frac_cache)
    else:
        frac = np.array([tissue_fraction(read_rgb(TCIA / f)) for f in r.m["file"]])
        np.save(frac_cache, frac)
    for pool_name, probs in (("slide5 out-of-fold", oof), ("patient-out", lopo)):
        ok = ~np.isnan(probs).any(1)
        by_class = {k: np.flatnonzero(ok & (r.y == k)) for k in range(3)}
        if any(len(v) == 0 for v in by_class.values()):
            print(f"{pool_name}: a class has no held-out tiles; no coverage")
            continue
        rng = np.random.default_rng(0)
        hits, widths, errors, grades = [], [], [], []
        for case in range(n_cases):
            rate = rng.uniform(0.05, 0.95)
            n_cells = 36 - 9  # 6 x 6, a quarter glass
            n_nt = int(rng.integers(3, 12))
            n_nec = round((n_cells - n_nt) * rate)
            picks = (
                [rng.choice(by_class[1]) for _ in range(n_nec)]
                + [rng.choice(by_class[2]) for _ in range(n_cells - n_nt - n_nec)]
                + [rng.choice(by_class[0]) for _ in range(n_nt)]
            )
            tiles = [LabelledTile(Path(str(i)), CLASSES[r.y[i]], "", "") for i in picks]
            layout = random_layout(tiles, 6, 6, glass_fraction=0.25, seed=case)
            pos, areas, true_nec, true_tum = [], [], 0.0, 0.0
            for row_i, row in enumerate(layout):
                for col_i, t in enumerate(row):
                    if t is None:
                        continue
                    i = int(str(t.path))
                    a = frac[i] * (512 * TCIA_MPP / 1000) ** 2
                    pos.append((col_i * 512, row_i * 512))
                    area = np.zeros(3)
                    area[order] = a * probs[i]
                    areas.append(area)
                    true_nec += a if r.y[i] == 1 else 0.0
                    true_tum += a if r.y[i] > 0 else 0.0
            truth = 100 * true_nec / true_tum
            areas_ = np.array(areas)
            iv = necrosis_rate_interval(np.array(pos, float), 512.0, areas_, tissue_conf, seed=case)
            nec, via = (
                areas_[:, TISSUE_CLASSES.index("necrotic")],
                areas_[:, TISSUE_CLASSES.index("viable")],
            )
            est = 100 * nec.sum() / (nec.sum() + via.sum())
            errors.append(abs(est - truth))
            grades.append(huvos_grade(est) == huvos_grade(truth))
            if iv is not None:
                hits.append(iv.low_percent <= truth <= iv.high_percent)
                widths.append(iv.high_percent - iv.low_percent)
        print(
            f"interval coverage, {pool_name} tiles, {n_cases} simulated 6 x 6 cases (27 tissue "
            f"cells, rates 5-95 %): {np.mean(hits):.3f} at 95 % (n {len(hits)}), median width "
            f"{np.median(widths):.1f} points; point estimate mean |error| {np.mean(errors):.1f}, "
            f"Huvos (point) right {np.mean(grades):.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cells", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--accuracy", action="store_true", help="also train and validate")
    parser.add_argument("--accuracy-only", action="store_true", help="only train and validate")
    parser.add_argument(
        "--compare",
        nargs="*",
        default=["osteosarcoma-necrosis-v1"],
        help="other models whose model-only speed is measured in the same run",
    )
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="densenet121-soft")
    parser.add_argument("--simulated", type=int, default=200, help="simulated coverage cases")
    parser.add_argument(
        "--no-mosaics", action="store_true", help="splits and coverage only (no scored mosaics)"
    )
    args = parser.parse_args()
    if args.accuracy or args.accuracy_only:
        accuracy(args)
    if not args.accuracy_only:
        throughput(args)


if __name__ == "__main__":
    main()
