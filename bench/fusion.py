"""Fusion benchmark and validation on the real STS and TCGA-SARC cohorts.

Steps (each can be run alone; outputs go to bench/out/fusion/, which git ignores):

``--extract``
    Our own PET radiomics of the 43 STS patients (``sts/`` and ``sts-pet/``), ``GTV_Mass_PET``,
    with the shipped ``pet`` configuration (4 mm trilinear, SUV >= 0, FBS 0.25 SUV) and two
    discretisation variants (FBN 32, FBS 0.5 SUV): the table ``osteomics radiomics`` writes,
    plus a ``config`` column. About 1.2 s per patient and configuration here.
``--ibsi``
    Our PET values (``pet`` configuration) against the 9 IBSI teams' values of the same patients
    and features: per feature family, the share of (patient, feature) values inside the teams'
    range, and the ICC(3,1) (two-way mixed, consistency) of ours against the teams' median.
``--validate``
    Nested-CV signatures: STS lung metastasis from our PET radiomics, from grade + histological
    type, and fused; TCGA-SARC progression-free interval from the pathologist's slide estimates.
``--speed`` (default)
    ``signature fit``'s nested CV on 43 patients x ~1,450 PET features against a plain
    scikit-learn pipeline doing the same nested CV (same folds, same C grid, median imputation,
    variance filter, scaling, elastic-net logistic regression in GridSearchCV). Prints the ratio
    last, on one line.

Run: ``.venv/bin/python bench/fusion.py --extract --ibsi --validate --speed``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
RADIOLOGY = DATA / "radiology"
OUT = ROOT / "bench" / "out" / "fusion"
PET_TABLE = OUT / "sts_pet_radiomics.parquet"
IBSI_TABLE = RADIOLOGY / "ibsi1-validation-features" / "features_long.csv.gz"

#: Discretisation variants of the shipped ``pet`` configuration: name -> [discretisation] text.
PET_VARIANTS = {
    "pet": None,
    "pet-fbn32": 'method = "fixed_bin_number"\nn_bins = 32\n',
    "pet-fbs0.5": 'method = "fixed_bin_size"\nbin_width = 0.5\nlower_bound = 0\n',
}


def sts_pet_folders() -> list[Path]:
    """The 43 STS patients' PET folders (``sts/`` then ``sts-pet/``), sorted by patient."""
    folders = [p / "PET" for p in (RADIOLOGY / "sts").glob("STS_*") if (p / "PET").is_dir()]
    folders += [p / "PET" for p in (RADIOLOGY / "sts-pet").glob("STS_*") if (p / "PET").is_dir()]
    return sorted(folders, key=lambda f: f.parent.name)


def _variant_config(name: str) -> object:
    from osteomics.radiology.radiomics import load_config

    if PET_VARIANTS[name] is None:
        return load_config("pet")
    shipped = (ROOT / "radiology" / "radiomics" / "configs" / "pet.toml").read_text()
    head, rest = shipped.split("[discretisation]\n", 1)
    rest = rest.split("\n\n", 1)[1]
    text = head.replace('name = "pet"', f'name = "{name}"') + "[discretisation]\n"
    text += PET_VARIANTS[name] + "\n" + rest
    path = OUT / "configs" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_config(path)


#: Patients whose RTSTRUCT frame of reference differs from their image's (see _pet_mask).
FOR_MISMATCH: list[str] = []


def _pet_mask(rtstruct: Path, image: object) -> object:
    """The PET ROI; when the RTSTRUCT's frame-of-reference UID differs from the image's but it
    references exactly this image series (STS_046 in sts-pet/), the contours are read anyway and
    the patient is listed in FOR_MISMATCH: the IBSI teams computed features from the same pair."""
    import dataclasses

    import pydicom

    from osteomics.radiology.radiomics.dicom import read_rtstruct_mask
    from osteomics.radiology.radiomics.errors import GeometryMismatchError

    try:
        return read_rtstruct_mask(rtstruct, image, None)  # type: ignore[arg-type]
    except GeometryMismatchError:
        ds = pydicom.dcmread(rtstruct, stop_before_pixels=True)
        referenced = {
            str(s.SeriesInstanceUID)
            for f in ds.ReferencedFrameOfReferenceSequence
            for st in f.RTReferencedStudySequence
            for s in st.RTReferencedSeriesSequence
        }
        info = image.info  # type: ignore[attr-defined]
        if referenced != {info.series}:
            raise
        FOR_MISMATCH.append(str(info.patient))
        loose = dataclasses.replace(image, info=dataclasses.replace(info, frame_of_reference=None))
        return read_rtstruct_mask(rtstruct, loose, None)


def extract(limit: int | None = None) -> pd.DataFrame:
    """PET radiomics of the STS patients, every variant; cached per patient in OUT/cache."""
    from osteomics.radiology.radiomics import extract_features
    from osteomics.radiology.radiomics.dicom import read_dicom_series

    configs = {name: _variant_config(name) for name in PET_VARIANTS}
    cache = OUT / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    frames, seconds = [], []
    folders = sts_pet_folders()[:limit]
    for folder in folders:
        patient = folder.parent.name
        path = cache / f"{patient}.parquet"
        if path.is_file():
            cached = pd.read_parquet(path)
            frames.append(cached.assign(modality=cached["modality"].replace({"PET": "PT"})))
            continue
        t0 = time.perf_counter()
        image = read_dicom_series(folder / "image")
        mask = _pet_mask(folder / "mask" / "RS.dcm", image)
        rows = []
        for name, config in configs.items():
            for v in extract_features(image.volume, mask, config):  # type: ignore[arg-type]
                info = image.info
                rows.append(
                    (info.patient, info.study, info.series, info.modality, mask.name, v.family,
                     v.feature, v.ibsi_id, v.value, name)
                )  # fmt: skip
        frame = pd.DataFrame(
            rows,
            columns=["patient", "study", "series", "modality", "roi", "family", "feature",
                     "ibsi_id", "value", "config"],
        )  # fmt: skip
        frame.to_parquet(path, index=False)
        frames.append(frame)
        seconds.append(time.perf_counter() - t0)
        print(f"{patient}: {len(frame)} values in {seconds[-1]:.1f} s", flush=True)
    table = pd.concat(frames, ignore_index=True)
    if FOR_MISMATCH:
        print(f"RTSTRUCT frame of reference differs from the image's: {', '.join(FOR_MISMATCH)}")
    if limit is None:
        table.to_parquet(PET_TABLE, index=False)
    if seconds:
        print(
            f"extracted {len(seconds)} patients x {len(configs)} configurations: "
            f"{np.mean(seconds):.1f} s per patient"
        )
    return table


# --------------------------------------------------------------------------- IBSI agreement


def icc_3_1(a: np.ndarray, b: np.ndarray) -> float:
    """ICC(3,1), two-way mixed, consistency, single rater, of two raters over subjects."""
    x = np.column_stack([a, b]).astype(float)
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows = ss_rows / (n - 1)
    ms_err = ss_err / ((n - 1) * (k - 1))
    if ms_rows + (k - 1) * ms_err == 0:
        return float("nan")
    return float((ms_rows - ms_err) / (ms_rows + (k - 1) * ms_err))


def ibsi_agreement(config: str = "pet") -> pd.DataFrame:
    """Per IBSI feature family: features compared, share of our values within the teams' range,
    median ICC(3,1) against the teams' median, and the share of features with ICC >= 0.9."""
    ours = pd.read_parquet(PET_TABLE)
    ours = ours[ours["config"] == config]
    teams = pd.read_csv(IBSI_TABLE, low_memory=False)
    teams = teams[(teams["modality"] == "PET") & (teams["value_set"] == 1)].dropna(subset=["value"])
    key = ["patient_id", "feature_family", "feature_name"]
    stats = teams.groupby(key)["value"].agg(["min", "max", "median", "count"]).reset_index()
    stats = stats[stats["count"] >= 5]
    ours = ours.rename(
        columns={"patient": "patient_id", "family": "feature_family", "feature": "feature_name"}
    )[[*key, "value"]]
    joined = stats.merge(ours, on=key, how="inner")
    span = joined["max"] - joined["min"]
    tol = 1e-6 * np.maximum(1.0, joined[["min", "max"]].abs().max(axis=1))
    joined["within"] = (joined["value"] >= joined["min"] - tol) & (
        joined["value"] <= joined["max"] + tol
    )
    joined["span"] = span
    rows = []
    for family, g in joined.groupby("feature_family"):
        iccs = []
        for _, f in g.groupby("feature_name"):
            if len(f) >= 10 and f["value"].std() > 0 and f["median"].std() > 0:
                iccs.append(icc_3_1(f["value"].to_numpy(), f["median"].to_numpy()))
        iccs_arr = np.asarray(iccs)
        rows.append(
            {
                "family": family,
                "features": g["feature_name"].nunique(),
                "values": len(g),
                "within_team_range": round(float(g["within"].mean()), 3),
                "median_icc": round(float(np.median(iccs_arr)), 3) if iccs else None,
                "share_icc_ge_0.9": round(float((iccs_arr >= 0.9).mean()), 3) if iccs else None,
            }
        )
    out = pd.DataFrame(rows).sort_values("family")
    total = {
        "family": "ALL",
        "features": int(joined["feature_name"].nunique()),
        "values": len(joined),
        "within_team_range": round(float(joined["within"].mean()), 3),
    }
    return pd.concat([out, pd.DataFrame([total])], ignore_index=True)


# --------------------------------------------------------------------------- validation


def write_cohorts(folder: Path) -> dict[str, Path]:
    """The cohort files of the validation (they are docs/fusion.md's worked example too)."""
    folder.mkdir(parents=True, exist_ok=True)
    clinical = (RADIOLOGY / "sts-clinical.csv").resolve()
    sts = f"""id_column = "patient_id"
[outcome]
table = "{clinical}"
event = "lung_mets"

[[block]]
name = "pet"
table = "{PET_TABLE.resolve()}"
format = "radiomics"
where = {{ config = "pet" }}

[[block]]
name = "pathology"
table = "{clinical}"
columns = ["grade", "mskcc_type"]
categorical = ["grade", "mskcc_type"]
"""
    tcga = (DATA / "tcga-sarc-clinical" / "patients.csv").resolve()
    tcga_text = f"""id_column = "patient_id"
[outcome]
table = "{tcga}"
event = "pfi"
time = "pfi_days"

[[block]]
name = "pathology"
table = "{tcga}"
columns = ["mean_slide_percent_necrosis", "mean_slide_percent_tumor_cells",
           "mean_slide_percent_stromal_cells", "mean_slide_percent_lymphocyte_infiltration",
           "sarc2017_mitotic_rate"]
"""
    review = f"""id_column = "patient_id"
[outcome]
table = "{tcga}"
event = "os"
time = "os_days"

[[block]]
name = "slide"
table = "{tcga}"
columns = ["mean_slide_percent_necrosis", "mean_slide_percent_tumor_cells",
           "mean_slide_percent_stromal_cells", "mean_slide_percent_lymphocyte_infiltration"]

[[block]]
name = "review"
table = "{tcga}"
columns = ["sarc2017_mitotic_rate", "sarc2017_necrosis_score", "sarc2017_fnclcc_grade"]
"""
    paths = {
        "sts": folder / "sts-lung-mets.toml",
        "tcga": folder / "tcga-sarc-pfi.toml",
        "tcga-os": folder / "tcga-sarc-os-slide-review.toml",
    }
    paths["sts"].write_text(sts)
    paths["tcga"].write_text(tcga_text)
    paths["tcga-os"].write_text(review)
    return paths


def validate(permutations: int, repeats: int, only: list[str] | None = None) -> dict[str, object]:
    from osteomics.core.provenance import utc_now
    from osteomics.fusion.cohort import load_cohort_spec
    from osteomics.fusion.model import FitSettings
    from osteomics.fusion.signature import fit_signature, summary_json, write_signature

    paths = write_cohorts(OUT / "cohorts")
    results: dict[str, object] = {}
    for name, path in paths.items():
        if only and name not in only:
            continue
        settings = FitSettings(repeats=repeats, permutations=permutations, seed=0)
        started = utc_now()
        result = fit_signature(load_cohort_spec(path), settings)
        write_signature(OUT / f"signature-{name}", result, started)
        results[name] = summary_json(result)
        print(json.dumps(results[name], indent=1), flush=True)
    return results


# --------------------------------------------------------------------------- speed


def speed(repeats: int) -> tuple[float, float, int]:
    """Seconds of osteomics' nested CV and of the plain scikit-learn one, and the features."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from osteomics.fusion.cohort import load_cohort_spec
    from osteomics.fusion.model import C_GRID, FitSettings, cross_validated_scores

    folder = OUT / "cohorts"
    folder.mkdir(parents=True, exist_ok=True)
    wide = folder / "sts-pet-all-configs.toml"
    clinical = (RADIOLOGY / "sts-clinical.csv").resolve()
    table = pd.read_parquet(PET_TABLE)
    table = table.assign(name=table["config"] + ":" + table["family"] + ":" + table["feature"])
    long_path = OUT / "sts_pet_all_configs_long.parquet"
    table[["patient", "name", "value"]].to_parquet(long_path, index=False)
    wide.write_text(
        f'[outcome]\ntable = "{clinical}"\nevent = "lung_mets"\nid = "patient_id"\n'
        f'[[block]]\nname = "pet"\ntable = "{long_path}"\nformat = "long"\nid = "patient"\n'
        'feature = "name"\nvalue = "value"\n'
    )
    from osteomics.fusion.cohort import load_cohort

    cohort = load_cohort(load_cohort_spec(wide))
    assert cohort.event is not None
    n_features = cohort.blocks["pet"].features.shape[1]
    settings = FitSettings(repeats=repeats, permutations=0)
    t0 = time.perf_counter()
    ours = cross_validated_scores(cohort, settings, cohort.event, None, repeats, 0)
    t_ours = time.perf_counter() - t0

    x = cohort.blocks["pet"].features.to_numpy(dtype=float)
    y = cohort.event
    pipe = make_pipeline(
        SimpleImputer(strategy="median"),
        VarianceThreshold(),
        StandardScaler(),
        LogisticRegression(penalty="elasticnet", solver="saga", l1_ratio=0.5, max_iter=5000),
    )
    t0 = time.perf_counter()
    plain = np.zeros((repeats, len(y)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for r in range(repeats):
            outer = StratifiedKFold(5, shuffle=True, random_state=r)
            for train, test in outer.split(x, y):
                search = GridSearchCV(
                    pipe,
                    {"logisticregression__C": list(C_GRID)},
                    cv=StratifiedKFold(3, shuffle=True, random_state=r),
                    scoring="roc_auc",
                )
                search.fit(x[train], y[train])
                plain[r, test] = search.predict_proba(x[test])[:, 1]
    t_plain = time.perf_counter() - t0
    from osteomics.fusion.metrics import auc

    print(
        f"nested CV {repeats}x5 (inner 3), {len(y)} patients x {n_features} features: "
        f"osteomics {t_ours:.1f} s (AUC {np.mean([auc(y, s) for s in ours['pet']]):.3f}), "
        f"plain scikit-learn {t_plain:.1f} s (AUC {np.mean([auc(y, s) for s in plain]):.3f})"
    )
    return t_ours, t_plain, n_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extract", action="store_true", help="extract our PET radiomics")
    parser.add_argument("--limit", type=int, default=None, help="first N patients (timing)")
    parser.add_argument("--ibsi", action="store_true", help="agreement with the 9 IBSI teams")
    parser.add_argument("--validate", action="store_true", help="STS and TCGA signatures")
    parser.add_argument("--speed", action="store_true", help="ratio to plain scikit-learn")
    parser.add_argument("--permutations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cohorts", nargs="+", default=None, help="sts, tcga, tcga-os")
    args = parser.parse_args()
    if not (args.extract or args.ibsi or args.validate or args.speed):
        args.speed = True
    OUT.mkdir(parents=True, exist_ok=True)
    if args.extract:
        extract(args.limit)
    if args.ibsi:
        agreement = ibsi_agreement()
        print(agreement.to_string(index=False))
        agreement.to_csv(OUT / "ibsi_agreement.csv", index=False)
    if args.validate:
        results = validate(args.permutations, args.repeats, args.cohorts)
        out = OUT / (
            "validation.json" if not args.cohorts else f"validation-{'-'.join(args.cohorts)}.json"
        )
        out.write_text(json.dumps(results, indent=2) + "\n")
    if args.speed:
        t_ours, t_plain, n_features = speed(args.repeats)
        print(
            f"fusion nested CV vs plain scikit-learn ({n_features} features): "
            f"{t_ours / t_plain:.2f}x the time"
        )


if __name__ == "__main__":
    main()
