"""``osteomics signature fit|apply``: pathology-radiology signatures for tumour boards.

Patient IDs go to the output files only, never to the log or the console.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

# The [fusion] extra's distributions, imported here so that a missing one is reported when the
# command loads (cli/main.py EXTRA_MODULES names the extra), not halfway through a fit.
import matplotlib  # noqa: F401
import neuroCombat  # noqa: F401
import sklearn  # noqa: F401
import sksurv  # noqa: F401
import typer

from osteomics.core.errors import InvalidOptionError
from osteomics.core.files import atomic_path
from osteomics.core.provenance import utc_now
from osteomics.fusion.cohort import load_cohort_spec
from osteomics.fusion.model import FitSettings
from osteomics.fusion.signature import (
    apply_signature,
    fit_signature,
    read_signature,
    summary_json,
    write_signature,
)

app = typer.Typer(
    help="Fused pathology-radiology signatures: fit with nested CV, apply to new patients.",
    no_args_is_help=True,
)


def _positive(value: int, name: str, minimum: int = 1) -> int:
    if value < minimum:
        raise InvalidOptionError(f"{name} must be >= {minimum}, not {value}")
    return value


@app.command("fit")
def fit(
    cohort: Path = typer.Argument(..., help="Cohort TOML (outcome table and feature blocks)."),
    out: Path = typer.Option(..., "--out", help="Signature folder to write (SIG_DIR)."),
    blocks: str | None = typer.Option(
        None, "--blocks", help="Comma-separated block names (default: every block)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of every random step."),
    folds: int = typer.Option(5, "--folds", help="Outer cross-validation folds."),
    repeats: int = typer.Option(5, "--repeats", help="Outer cross-validation repeats."),
    inner_folds: int = typer.Option(3, "--inner-folds", help="Inner folds choosing the penalty."),
    permutations: int = typer.Option(
        20, "--permutations", help="Shuffled-outcome reruns of the nested CV (0: none)."
    ),
    bootstraps: int = typer.Option(1000, "--bootstraps", help="Bootstrap resamples for CIs."),
    model_bootstraps: int = typer.Option(
        50, "--model-bootstraps", help="Final-model refits for per-patient score CIs."
    ),
    l1_ratio: float = typer.Option(0.5, "--l1-ratio", help="Elastic-net mixing (1 = lasso)."),
    correlation: float = typer.Option(
        0.9, "--correlation", help="|Spearman rho| above which features are redundant."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Fit a signature: join the cohort, run nested patient-level CV (with bootstrap CIs and a
    permutation baseline) for each block and fused, fit the final models, and write
    SIG_DIR/signature.json and SIG_DIR/report.html."""
    settings = FitSettings(
        folds=_positive(folds, "--folds", 2),
        repeats=_positive(repeats, "--repeats"),
        inner_folds=_positive(inner_folds, "--inner-folds", 2),
        permutations=_positive(permutations, "--permutations", 0),
        bootstraps=_positive(bootstraps, "--bootstraps", 10),
        model_bootstraps=_positive(model_bootstraps, "--model-bootstraps", 0),
        l1_ratio=l1_ratio,
        correlation=correlation,
        seed=seed,
    )
    if not 0.0 < l1_ratio <= 1.0:
        raise InvalidOptionError(f"--l1-ratio must be in (0, 1], not {l1_ratio}")
    if not 0.0 < correlation <= 1.0:
        raise InvalidOptionError(f"--correlation must be in (0, 1], not {correlation}")
    started = utc_now()
    spec = load_cohort_spec(cohort)
    names = [b.strip() for b in blocks.split(",") if b.strip()] if blocks else None
    result = fit_signature(spec, settings, names)
    write_signature(out, result, started)
    summary = summary_json(result)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    metric = "AUC" if result.cohort.target == "binary" else "C-index"
    typer.echo(
        f"{summary['n']} patients, {summary['events']} events ({summary['target']}); "
        f"nested CV {settings.repeats}x{settings.folds}-fold"
    )
    for line in result.cohort.report.lines():
        typer.echo(f"  {line}")
    for m, perf in result.performance.items():
        perm = f"{perf.permutation:.3f}" if perf.permutation is not None else "-"
        typer.echo(
            f"{m:>12}: {metric} {perf.value:.3f} (95% CI {perf.ci[0]:.3f}-{perf.ci[1]:.3f}), "
            f"permutation {perm}, {len(result.models[m].selected)} feature(s)"
        )
    typer.echo(f"wrote {out}/signature.json and report.html in {result.seconds:.0f} s")


@app.command("apply")
def apply(
    sig_dir: Path = typer.Argument(..., help="Signature folder written by `signature fit`."),
    cohort: Path = typer.Argument(..., help="Cohort TOML of the patients to score."),
    out: Path = typer.Option(..., "--out", help="Scores table (.csv)."),
    model: str | None = typer.Option(
        None, "--model", help="Model of the signature (default: fused, or the only block)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Score patients with a signature: patient_id, score, ci_low, ci_high, risk_group."""
    if out.suffix != ".csv":
        raise InvalidOptionError(f"{out}: --out must end in .csv")
    signature = read_signature(sig_dir)
    spec = load_cohort_spec(cohort)
    scores = apply_signature(signature, spec, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        scores.table.to_csv(tmp, index=False, float_format="%.6g")
    summary = {
        "n": len(scores.table),
        "model": scores.model,
        "high_risk": int((scores.table["risk_group"] == "high").sum()),
        "dropped": {k: len(v) for k, v in scores.cohort.report.dropped.items() if v},
    }
    if scores.metric is not None:
        summary["metric"] = scores.metric
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    logging.getLogger(__name__).info("scored %d patients", summary["n"])
    typer.echo(f"scored {summary['n']} patients with model {scores.model!r}: {out}")
    if scores.metric is not None:
        typer.echo(f"  on these patients: {json.dumps(scores.metric)}")
