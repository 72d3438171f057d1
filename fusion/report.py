"""``report.html`` of a signature: one self-contained page (figures inline as PNG, no external
assets) with the cohort, the nested-CV performance table and the figures a reader expects: ROC
curves with a bootstrap band, calibration plot and decision curve (binary targets), Kaplan-Meier
curves of the risk groups with the log-rank test (survival targets), and the coefficient plot.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from osteomics.fusion.metrics import km_curve

if TYPE_CHECKING:
    from osteomics.fusion.results import FitResult

#: False-positive-rate grid of the ROC band.
_FPR = np.linspace(0, 1, 101)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _roc_tpr(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    return np.interp(_FPR, fpr, tpr)


def roc_figure(result: FitResult) -> str:
    """Out-of-fold ROC curve of each model (mean score over repeats) with a 95 % bootstrap band."""
    import matplotlib.pyplot as plt

    y = result.cohort.event
    assert y is not None
    rng = np.random.default_rng(result.settings.seed + 13)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for m, scores in result.scores.items():
        mean = scores.mean(axis=0)
        band = []
        for _ in range(200):
            idx = rng.integers(0, len(y), len(y))
            if y[idx].min() != y[idx].max():
                band.append(_roc_tpr(y[idx], mean[idx]))
        low, high = np.quantile(band, [0.025, 0.975], axis=0)
        perf = result.performance[m]
        line = ax.plot(
            _FPR, _roc_tpr(y, mean), label=f"{m}: AUC {perf.value:.2f} "
            f"({perf.ci[0]:.2f}-{perf.ci[1]:.2f})",
        )  # fmt: skip
        ax.fill_between(_FPR, low, high, color=line[0].get_color(), alpha=0.15)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("Nested-CV ROC (out-of-fold), 95 % bootstrap band")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def calibration_figure(result: FitResult) -> str:
    """Observed event rate against mean predicted probability, by quintile of prediction."""
    import matplotlib.pyplot as plt

    y = result.cohort.event
    assert y is not None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    for m, scores in result.scores.items():
        p = scores.mean(axis=0)
        bins = np.quantile(p, np.linspace(0, 1, 6))
        which = np.clip(np.searchsorted(bins, p, side="right") - 1, 0, 4)
        xs = [p[which == b].mean() for b in range(5) if (which == b).any()]
        ys = [y[which == b].mean() for b in range(5) if (which == b).any()]
        perf = result.performance[m]
        ax.plot(xs, ys, marker="o", label=f"{m}: slope {perf.calibration_slope:.2f}, "
                f"intercept {perf.calibration_intercept:.2f}")  # fmt: skip
        nb = perf.net_benefit
        if nb:
            ax2.plot(nb["thresholds"], nb["model"], marker="o", label=m)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("predicted probability (out-of-fold)")
    ax.set_ylabel("observed event rate")
    ax.set_title("Calibration (quintiles)")
    ax.legend(fontsize=8)
    any_nb = next(iter(result.performance.values())).net_benefit
    if any_nb:
        ax2.plot(any_nb["thresholds"], any_nb["treat_all"], color="grey", linestyle="--",
                 label="treat all")  # fmt: skip
        ax2.axhline(0, color="black", linewidth=0.8, label="treat none")
    ax2.set_xlabel("threshold probability")
    ax2.set_ylabel("net benefit")
    ax2.set_title("Decision curve")
    ax2.legend(fontsize=8)
    return _png(fig)


def km_figure(result: FitResult) -> str:
    """Kaplan-Meier curves of high- and low-risk groups (median out-of-fold risk) per model."""
    import matplotlib.pyplot as plt

    cohort = result.cohort
    assert cohort.time is not None and cohort.event is not None
    models = list(result.scores)
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        risk = result.scores[m].mean(axis=0)
        high = risk >= np.median(risk)
        for label, grp in (("low risk", ~high), ("high risk", high)):
            t, s = km_curve(cohort.time[grp], cohort.event[grp])
            ax.step(t, s, where="post", label=f"{label} (n={int(grp.sum())})")
        p = result.performance[m].logrank_p
        ax.set_title(f"{m}: log-rank p = {p:.3g}" if p is not None else m)
        ax.set_xlabel("time")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("event-free probability")
    return _png(fig)


def coefficient_figure(result: FitResult) -> str:
    """Standardised coefficients of each final model's selected features."""
    import matplotlib.pyplot as plt

    models = list(result.models)
    heights = [max(1, len(result.models[m].selected)) for m in models]
    fig, axes = plt.subplots(
        len(models), 1, figsize=(8, 1.2 + 0.28 * sum(heights) + 0.6 * len(models)),
        gridspec_kw={"height_ratios": heights}, squeeze=False,
    )  # fmt: skip
    for ax, m in zip(axes[:, 0], models, strict=True):
        sel = result.models[m].selected[:25]
        if not sel:
            ax.text(0.5, 0.5, "no feature selected (all coefficients 0)", ha="center")
            ax.set_axis_off()
            continue
        names = [n[:70] for n, _ in sel][::-1]
        values = [c for _, c in sel][::-1]
        ax.barh(names, values, color=["#d62728" if v > 0 else "#1f77b4" for v in values])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{m}: coefficients per SD", fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
    return _png(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if not np.isfinite(v) else f"{v:.3f}"
    return html.escape(str(v))


def report_html(result: FitResult, document: dict[str, Any]) -> str:
    """The report page."""
    import matplotlib

    matplotlib.use("Agg")
    cohort = result.cohort
    binary = cohort.target == "binary"
    metric = "AUC" if binary else "C-index"
    rows = []
    for m, perf in result.performance.items():
        sel = result.models[m].selected
        extra = (
            f"<td>{_fmt(perf.brier)}</td><td>{_fmt(perf.calibration_slope)}</td>"
            f"<td>{_fmt(perf.calibration_intercept)}</td>"
            if binary
            else f"<td>{_fmt(perf.logrank_p)}</td>"
        )
        rows.append(
            f"<tr><td>{html.escape(m)}</td><td>{_fmt(perf.value)}</td>"
            f"<td>{_fmt(perf.ci[0])}–{_fmt(perf.ci[1])}</td><td>{_fmt(perf.permutation)}</td>"
            f"<td>{_fmt(perf.permutation_p)}</td>{extra}<td>{len(sel)}</td></tr>"
        )
    head_extra = (
        "<th>Brier</th><th>calibration slope</th><th>calibration intercept</th>"
        if binary
        else "<th>log-rank p (median split)</th>"
    )
    figures = [roc_figure(result), calibration_figure(result)] if binary else [km_figure(result)]
    figures.append(coefficient_figure(result))
    s = result.settings
    join = "".join(f"<li>{html.escape(line)}</li>" for line in cohort.report.lines())
    tables = "".join(
        f"<li>{html.escape(i['role'])}: {html.escape(str(i['file']))} "
        f"(sha256 {i['sha256'][:12]}…)</li>"
        for i in document["training_cohort"]["tables"]
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>osteomics signature report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Signature report</h1>
<p>{html.escape(cohort.spec.path.name)} · target: {cohort.target} · {len(cohort.patients)}
patients, {cohort.n_events} events · blocks: {html.escape(", ".join(cohort.blocks))} ·
osteomics {html.escape(document["version"])} · fitted {html.escape(document["finished"] or "")}
</p>
<h2>Cohort</h2><ul>{join}</ul><ul>{tables}</ul>
<h2>Nested cross-validated performance</h2>
<p>{s.repeats} x {s.folds}-fold outer, {s.inner_folds}-fold inner cross-validation by patient;
every preprocessing step, the penalty and the coefficients fitted on outer-training patients only.
{metric}: mean over repeats of the out-of-fold {metric}; 95 % CI from {s.bootstraps} patient
bootstrap resamples; permutation: the same nested CV on {s.permutations} shuffled outcomes.</p>
<table><tr><th>model</th><th>{metric}</th><th>95 % CI</th><th>permutation {metric}</th>
<th>permutation p</th>{head_extra}<th>features (final fit)</th></tr>{"".join(rows)}</table>
<h2>Figures</h2>{"".join(figures)}
<p>Fit time {result.seconds:.1f} s. The signature and its provenance: signature.json.</p>
</body></html>
"""
