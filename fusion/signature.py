"""Signatures: fit (nested-CV performance + final model), write, read, apply.

A signature folder holds ``signature.json`` (the house provenance record, then the blocks'
preprocessing and harmonisation parameters, every model's coefficients and bootstrap refits, the
risk-group threshold, the nested-CV performance and the training cohort summary) and
``report.html``. It is written into a staging folder next to the target and renamed into place,
so the target is either the old signature, the new one, or absent, never half-written.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from osteomics.core.files import ensure_writable, write_json_atomic, write_text_atomic
from osteomics.core.provenance import input_record, provenance, utc_now
from osteomics.fusion.cohort import Cohort, CohortSpec, load_cohort
from osteomics.fusion.errors import SignatureError
from osteomics.fusion.metrics import (
    auc,
    bootstrap_ci,
    brier,
    c_index,
    calibration,
    logrank,
    net_benefit,
)
from osteomics.fusion.model import (
    FUSED,
    FitSettings,
    LinearModel,
    check_outcome,
    cross_validated_scores,
    fit_final,
    score_from_linear,
)
from osteomics.fusion.preprocess import BlockTransform, apply_block_transform
from osteomics.fusion.report import report_html
from osteomics.fusion.results import FitResult, ModelPerformance

logger = logging.getLogger(__name__)

SIGNATURE_FORMAT = 1
SIGNATURE_FILE = "signature.json"
REPORT_FILE = "report.html"
#: Threshold probabilities of the decision curve.
NET_BENEFIT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


def _metric(cohort: Cohort, event: np.ndarray, time: np.ndarray | None, s: np.ndarray) -> float:
    return auc(event, s) if cohort.target == "binary" else c_index(time, event, s)  # type: ignore[arg-type]


def evaluate(
    cohort: Cohort, scores: np.ndarray, permuted: list[float], settings: FitSettings
) -> ModelPerformance:
    """Metric, bootstrap CI, permutation baseline and calibration of out-of-fold scores."""
    assert cohort.event is not None
    event, time = cohort.event, cohort.time
    per_repeat = [_metric(cohort, event, time, s) for s in scores]
    value = float(np.mean(per_repeat))

    def boot(idx: np.ndarray) -> float:
        t = time[idx] if time is not None else None
        return float(np.mean([_metric(cohort, event[idx], t, s[idx]) for s in scores]))

    ci = bootstrap_ci(boot, len(event), settings.bootstraps, settings.seed + 11)
    perm_mean = float(np.mean(permuted)) if permuted else None
    perm_p = (1 + sum(v >= value for v in permuted)) / (1 + len(permuted)) if permuted else None
    perf = ModelPerformance(
        "auc" if cohort.target == "binary" else "c_index",
        value, ci, per_repeat, perm_mean, list(permuted), perm_p,
    )  # fmt: skip
    mean_score = scores.mean(axis=0)
    if cohort.target == "binary":
        perf.brier = float(np.mean([brier(event, s) for s in scores]))
        perf.calibration_slope, perf.calibration_intercept = calibration(event, mean_score)
        thresholds = np.asarray(NET_BENEFIT_THRESHOLDS)
        model_nb, all_nb = net_benefit(event, mean_score, thresholds)
        perf.net_benefit = {
            "thresholds": thresholds.tolist(),
            "model": model_nb.tolist(),
            "treat_all": all_nb.tolist(),
        }
    else:
        assert time is not None
        high = mean_score >= np.median(mean_score)
        if 0 < high.sum() < len(high):
            perf.logrank_chisq, perf.logrank_p = logrank(time, event, high.astype(int))
    return perf


def fit_signature(
    spec: CohortSpec, settings: FitSettings, blocks: list[str] | None = None
) -> FitResult:
    """Join the cohort, run the nested CV (+ permutations) and fit the final models.

    Raises
    ------
    FusionError
        Every data problem (see :mod:`osteomics.fusion.errors`).
    """
    t0 = time.perf_counter()
    cohort = load_cohort(spec, blocks)
    assert cohort.event is not None
    check_outcome(cohort.event, settings.folds, settings.inner_folds, str(spec.path))
    logger.info(
        "cohort: %d patients, %d events, blocks %s", len(cohort.patients), cohort.n_events,
        ", ".join(cohort.blocks),
    )  # fmt: skip
    scores = cross_validated_scores(
        cohort, settings, cohort.event, cohort.time, settings.repeats, settings.seed
    )
    permuted: dict[str, list[float]] = {m: [] for m in scores}
    rng = np.random.default_rng(settings.seed + 5)
    for p in range(settings.permutations):
        order = rng.permutation(len(cohort.patients))
        ev = cohort.event[order]
        tm = cohort.time[order] if cohort.time is not None else None
        perm_scores = cross_validated_scores(cohort, settings, ev, tm, 1, settings.seed + 100 + p)
        for m, s in perm_scores.items():
            permuted[m].append(_metric(cohort, ev, tm, s[0]))
    performance = {m: evaluate(cohort, s, permuted[m], settings) for m, s in scores.items()}
    transforms, models = fit_final(cohort, settings)
    return FitResult(
        cohort, settings, transforms, models, performance, scores, time.perf_counter() - t0
    )


def _round(value: Any, digits: int = 6) -> Any:
    if isinstance(value, float):
        return round(value, digits) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v, digits) for v in value]
    return value


def summary_json(result: FitResult) -> dict[str, Any]:
    """The ``--json`` summary: n, events, target, and per model the metric, CI, permutation
    baseline and selected features."""
    cohort = result.cohort
    models = {}
    for m, perf in result.performance.items():
        models[m] = _round(
            {
                perf.metric: perf.value,
                "ci": list(perf.ci),
                "permutation": perf.permutation,
                "permutation_p": perf.permutation_p,
                "features": [n for n, _ in result.models[m].selected],
            }
        )
        if perf.brier is not None:
            models[m].update(
                _round(
                    {
                        "brier": perf.brier,
                        "calibration_slope": perf.calibration_slope,
                        "calibration_intercept": perf.calibration_intercept,
                    }
                )
            )
        if perf.logrank_p is not None:
            models[m]["logrank_p"] = _round(perf.logrank_p)
    return {
        "n": len(cohort.patients),
        "events": cohort.n_events,
        "target": cohort.target,
        "models": models,
        "fit_seconds": round(result.seconds, 1),
    }


def signature_document(result: FitResult, started: str, finished: str) -> dict[str, Any]:
    """``signature.json``: provenance first, then the signature itself."""
    cohort = result.cohort
    spec = cohort.spec
    inputs = [input_record(path, role) for role, path in cohort.tables()]
    doc = provenance(
        "signature fit",
        parameters={**asdict(result.settings), "blocks": list(cohort.blocks)},
        started=started,
        finished=finished,
        inputs=inputs,
    )
    outcome = spec.outcome
    assert outcome is not None
    doc["signature_format"] = SIGNATURE_FORMAT
    doc["target"] = cohort.target
    doc["outcome"] = {"event": outcome.event, "time": outcome.time}
    doc["blocks"] = {
        name: {
            "format": b.spec.format,
            "table": b.spec.table.name,
            "id": b.spec.id,
            "where": b.spec.where,
            "batch": b.spec.batch,
            "categorical": list(b.categorical),
            "columns": list(b.spec.columns) if b.spec.columns is not None else None,
            "feature": b.spec.feature,
            "value": b.spec.value,
            "exclude": list(b.spec.exclude),
            "n_input_features": int(b.features.shape[1]),
            "preprocessing": result.transforms[name].to_json(),
        }
        for name, b in cohort.blocks.items()
    }
    doc["default_model"] = FUSED if FUSED in result.models else next(iter(result.models))
    doc["models"] = {}
    for m, fm in result.models.items():
        perf = result.performance[m]
        doc["models"][m] = {
            "blocks": fm.blocks,
            "inputs": fm.model.inputs,
            "coefficients": fm.model.coef.tolist(),
            "intercept": fm.model.intercept,
            "penalty": fm.model.penalty,
            "selected": [{"feature": n, "coefficient": c} for n, c in fm.selected],
            "score": "probability" if cohort.target == "binary" else "cox linear predictor",
            "thresholds": {"risk_group": fm.threshold, "rule": "median training score"},
            "bootstrap_coefficients": fm.bootstrap_coef.tolist(),
            "bootstrap_intercepts": fm.bootstrap_intercept.tolist(),
            "performance": _round(asdict(perf)),
        }
    doc["training_cohort"] = {
        "n": len(cohort.patients),
        "events": cohort.n_events,
        "event_rate": round(cohort.n_events / len(cohort.patients), 4),
        "time_median": float(np.median(cohort.time)) if cohort.time is not None else None,
        "join": cohort.report.lines(),
        "dropped": {k: len(v) for k, v in cohort.report.dropped.items()},
        "tables": inputs,
    }
    return doc


def write_signature(out_dir: Path, result: FitResult, started: str) -> Path:
    """Write ``signature.json`` and ``report.html`` into ``out_dir`` via a staging folder.

    Raises
    ------
    SignatureError
        ``out_dir`` exists, is not empty and is not a signature folder.
    OutputNotWritableError
        The parent folder is not writable.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (
        not out_dir.is_dir()
        or (any(out_dir.iterdir()) and not (out_dir / SIGNATURE_FILE).is_file())
    ):
        raise SignatureError(
            f"{out_dir} exists and is not a signature folder; choose a new or empty --out"
        )
    parent = out_dir.resolve().parent
    ensure_writable(parent)
    staging = parent / f".{out_dir.name}.staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        doc = signature_document(result, started, utc_now())
        write_json_atomic(staging / SIGNATURE_FILE, doc)
        write_text_atomic(staging / REPORT_FILE, report_html(result, doc))
        old = None
        if out_dir.exists():
            old = parent / f".{out_dir.name}.old-{uuid.uuid4().hex}"
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir / SIGNATURE_FILE


# --------------------------------------------------------------------------- apply


@dataclass
class Signature:
    """A signature read back from its folder."""

    path: Path
    document: dict[str, Any]
    transforms: dict[str, BlockTransform]

    @property
    def target(self) -> str:
        return str(self.document["target"])

    def model(self, name: str | None = None) -> dict[str, Any]:
        name = name or self.document["default_model"]
        models = self.document["models"]
        if name not in models:
            raise SignatureError(f"{self.path}: no model {name!r} (models: {', '.join(models)})")
        return dict(models[name])


def read_signature(sig_dir: Path) -> Signature:
    """Read ``SIG_DIR/signature.json``.

    Raises
    ------
    SignatureError
        Missing or unreadable file, unknown signature format.
    """
    import json

    path = Path(sig_dir) / SIGNATURE_FILE
    if not path.is_file():
        raise SignatureError(f"{path} not found; give the folder `signature fit --out` wrote")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{path}: cannot read the signature ({exc})") from exc
    if doc.get("signature_format") != SIGNATURE_FORMAT:
        raise SignatureError(
            f"{path}: signature format {doc.get('signature_format')!r} is not "
            f"{SIGNATURE_FORMAT}; re-fit it with this osteomics version"
        )
    transforms = {
        name: BlockTransform.from_json(b["preprocessing"]) for name, b in doc["blocks"].items()
    }
    return Signature(Path(sig_dir), doc, transforms)


@dataclass
class Scores:
    """Scores of ``signature apply``."""

    table: pd.DataFrame
    cohort: Cohort
    model: str
    metric: dict[str, Any] | None


def apply_signature(
    signature: Signature, spec: CohortSpec, model_name: str | None = None, seed: int = 0
) -> Scores:
    """Score the cohort's patients: score, bootstrap CI, risk group (and the metric when the
    cohort has an outcome).

    Raises
    ------
    SignatureError
        A block the model needs is not in the cohort file, a feature is missing from a table, a
        batch was not seen in training.
    """
    model = signature.model(model_name)
    name = model_name or signature.document["default_model"]
    missing = [b for b in model["blocks"] if b not in spec.block_names]
    if missing:
        raise SignatureError(
            f"{spec.path}: the signature's model {name!r} needs block(s) "
            f"{', '.join(missing)}, which the cohort file does not define; add them with the "
            "same tables and settings as in training"
        )
    has_outcome = spec.outcome is not None
    cohort = load_cohort(spec, model["blocks"], require_outcome=False, min_patients=1)
    if has_outcome and cohort.event is None:
        has_outcome = False
    matrices = {}
    for b in model["blocks"]:
        block = cohort.blocks[b]
        matrices[b] = apply_block_transform(signature.transforms[b], block.features, block.batch)
    x = np.hstack([matrices[b] for b in model["blocks"]])
    lin = LinearModel(model["inputs"], np.asarray(model["coefficients"]), model["intercept"], 0.0)
    target = signature.target
    score = score_from_linear(target, lin.linear_predictor(x))
    bc = np.asarray(model["bootstrap_coefficients"], dtype=float).reshape(-1, len(lin.inputs))
    bi = np.asarray(model["bootstrap_intercepts"], dtype=float)
    if len(bc):
        boot = score_from_linear(target, x @ bc.T + bi[None, :])
        low, high = np.quantile(boot, [0.025, 0.975], axis=1)
    else:
        low = high = np.full(len(score), np.nan)
    threshold = model["thresholds"]["risk_group"]
    table = pd.DataFrame(
        {
            "patient_id": cohort.patients,
            "score": score,
            "ci_low": low,
            "ci_high": high,
            "risk_group": np.where(score >= threshold, "high", "low"),
        }
    )
    metric = None
    if has_outcome and cohort.event is not None and 0 < cohort.n_events < len(cohort.patients):
        ev = cohort.event
        if target == "binary":
            value = auc(ev, score)
            ci = bootstrap_ci(lambda i: auc(ev[i], score[i]), len(score), 1000, seed)
            metric = {"auc": value, "ci": list(ci)}
        elif cohort.time is not None:
            t, e = cohort.time, cohort.event
            value = c_index(t, e, score)
            ci = bootstrap_ci(lambda i: c_index(t[i], e[i], score[i]), len(score), 1000, seed)
            metric = {"c_index": value, "ci": list(ci)}
    return Scores(table, cohort, name, _round(metric) if metric else None)


# --------------------------------------------------------------------------- one study


def cohort_spec_for(
    signature: Signature, tables: dict[str, Path], model_name: str | None = None
) -> CohortSpec:
    """A cohort spec that reads each block of the model from ``tables`` (block name -> table)
    with the format, ID column, filters and columns recorded in the signature.

    Raises
    ------
    SignatureError
        A block of the model without a table.
    """
    from osteomics.fusion.cohort import BlockSpec

    model = signature.model(model_name)
    missing = [b for b in model["blocks"] if b not in tables]
    if missing:
        raise SignatureError(
            f"{signature.path}: no table given for block(s) {', '.join(missing)} of the model"
        )
    blocks = []
    for name in model["blocks"]:
        b = signature.document["blocks"][name]
        blocks.append(
            BlockSpec(
                name=name,
                table=Path(tables[name]),
                format=b["format"],
                id=b["id"],
                feature=b.get("feature"),
                value=b.get("value"),
                where=dict(b.get("where") or {}),
                batch=b.get("batch"),
                columns=tuple(b["columns"]) if b.get("columns") is not None else None,
                categorical=tuple(b.get("categorical", [])),
                exclude=tuple(b.get("exclude", [])),
            )
        )
    return CohortSpec(
        path=signature.path / SIGNATURE_FILE, id_column="patient_id", outcome=None,
        blocks=tuple(blocks),
    )  # fmt: skip


def score_study(
    signature: Signature,
    radiomics_table: Path,
    other_tables: dict[str, Path],
    out_csv: Path,
    model_name: str | None = None,
) -> Path | None:
    """Score the patient(s) of one study's radiomics table (the node's hook).

    Every ``radiomics``-format block of the model reads ``radiomics_table``; the other blocks read
    ``other_tables`` (e.g. the pathology table). Writes ``out_csv`` (``signature apply``'s columns)
    and its provenance next to it (``.provenance.json``), atomically.

    Returns
    -------
    Path or None
        ``out_csv``, or None when no patient of the study has every block (for example the
        pathology table does not have the patient yet).
    """
    from osteomics.fusion.errors import CohortJoinError

    started = utc_now()
    model = signature.model(model_name)
    tables = dict(other_tables)
    for name in model["blocks"]:
        if signature.document["blocks"][name]["format"] == "radiomics":
            tables[name] = Path(radiomics_table)
    spec = cohort_spec_for(signature, tables, model_name)
    try:
        scores = apply_signature(signature, spec, model_name)
    except CohortJoinError:
        return None
    if scores.table.empty:
        return None
    out_csv = Path(out_csv)
    from osteomics.core.files import atomic_path

    with atomic_path(out_csv) as tmp:
        scores.table.to_csv(tmp, index=False, float_format="%.6g")
    record = provenance(
        "signature apply",
        parameters={"signature": str(signature.path), "model": scores.model},
        started=started,
        finished=utc_now(),
        inputs=[input_record(signature.path / SIGNATURE_FILE, "signature")]
        + [input_record(p, f"block:{n}") for n, p in sorted(tables.items())],
    )
    record["output"] = str(out_csv)
    write_json_atomic(out_csv.with_name(out_csv.stem + ".provenance.json"), record)
    return out_csv
