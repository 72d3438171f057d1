"""Per-block preprocessing fitted on training patients only: imputation, one-hot encoding,
variance filter, ComBat, redundancy clustering, standardisation.

Order (each step's parameters come from the training patients of the fold or the final fit):

1. numeric columns with fewer than half of the training patients measured are dropped; the rest
   are imputed with the training median; categorical columns with the most frequent training
   level, then one-hot encoded on the training levels (an unseen level encodes as all zeros);
2. constant features (zero variance in training) are dropped;
3. ComBat by batch when the block names one (numeric features only);
4. redundancy: features are clustered on 1 - |Spearman rho| (average linkage) and cut at
   ``1 - correlation``; each cluster keeps its medoid (the feature with the highest mean |rho|
   to the others), so 482 IBSI features of a PET tumour become a few dozen;
5. standardisation to training mean 0, SD 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from osteomics.fusion.cohort import Block
from osteomics.fusion.errors import BlockDataError, SignatureError
from osteomics.fusion.harmonise import ComBatParameters, apply_combat, fit_combat

#: Minimum share of training patients with a value for a numeric column to be kept.
MIN_PRESENT = 0.5


@dataclass
class BlockTransform:
    """Fitted preprocessing of one block (see the module docstring).

    Attributes
    ----------
    block: block name.
    medians: numeric column -> training median.
    levels: categorical column -> training levels (sorted).
    modes: categorical column -> most frequent training level.
    columns: encoded column names before filtering (numeric, then ``col=level``).
    combat: ComBat estimates, or None without batch.
    kept: encoded features that survive variance and redundancy filters.
    clusters: kept feature -> the features of its redundancy cluster.
    mean, scale: standardisation of ``kept``.
    """

    block: str
    medians: dict[str, float]
    levels: dict[str, list[str]]
    modes: dict[str, str]
    columns: list[str]
    combat: ComBatParameters | None
    kept: list[str]
    clusters: dict[str, list[str]]
    mean: np.ndarray
    scale: np.ndarray
    n_dropped: dict[str, int] = field(default_factory=dict)

    @property
    def output_names(self) -> list[str]:
        return [f"{self.block}:{f}" for f in self.kept]

    def to_json(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "imputation": {"median": self.medians, "most_frequent": self.modes},
            "categorical_levels": self.levels,
            "encoded_columns": self.columns,
            "dropped": self.n_dropped,
            "harmonisation": self.combat.to_json() if self.combat is not None else None,
            "kept": self.kept,
            "redundancy_clusters": self.clusters,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlockTransform:
        h = data["harmonisation"]
        return cls(
            block=data["block"],
            medians={k: float(v) for k, v in data["imputation"]["median"].items()},
            levels={k: list(v) for k, v in data["categorical_levels"].items()},
            modes=dict(data["imputation"]["most_frequent"]),
            columns=list(data["encoded_columns"]),
            combat=ComBatParameters.from_json(h) if h is not None else None,
            kept=list(data["kept"]),
            clusters={k: list(v) for k, v in data["redundancy_clusters"].items()},
            mean=np.asarray(data["mean"], dtype=float),
            scale=np.asarray(data["scale"], dtype=float),
            n_dropped=dict(data.get("dropped", {})),
        )


def _encode(
    frame: pd.DataFrame,
    medians: dict[str, float],
    levels: dict[str, list[str]],
    modes: dict[str, str],
) -> np.ndarray:
    parts = []
    if medians:
        num = np.array(frame[list(medians)], dtype=float)
        fill = np.fromiter(medians.values(), dtype=float, count=len(medians))
        parts.append(np.where(np.isnan(num), fill[None, :], num))
    for col, lv in levels.items():
        values = frame[col].where(frame[col].notna(), modes[col]).astype(str).to_numpy()
        parts.append((values[:, None] == np.asarray(lv, dtype=str)[None, :]).astype(float))
    if not parts:
        return np.zeros((len(frame), 0))
    return np.hstack(parts)


def spearman_abs(values: np.ndarray) -> np.ndarray:
    """|Spearman rho| between columns of ``values`` (patients x features)."""
    ranks = np.array(pd.DataFrame(values).rank(axis=0), dtype=float)
    ranks -= ranks.mean(axis=0)
    norm = np.sqrt((ranks**2).sum(axis=0))
    norm[norm == 0] = 1.0
    ranks /= norm
    return np.clip(np.abs(ranks.T @ ranks), 0.0, 1.0)


def redundancy_medoids(values: np.ndarray, correlation: float) -> tuple[list[int], list[list[int]]]:
    """Cluster features on 1 - |Spearman rho| (average linkage, cut at 1 - ``correlation``).

    Returns
    -------
    (representatives, members)
        Column index of each cluster's medoid, and every cluster's member indices, in the order
        of each cluster's first column.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    p = values.shape[1]
    if p <= 1:
        return list(range(p)), [[i] for i in range(p)]
    rho = spearman_abs(values)
    dist = 1.0 - rho
    np.fill_diagonal(dist, 0.0)
    labels = fcluster(
        linkage(squareform(dist, checks=False), method="average"),
        t=1.0 - correlation,
        criterion="distance",
    )
    reps: list[int] = []
    members: list[list[int]] = []
    seen: set[int] = set()
    for i in range(p):
        if labels[i] in seen:
            continue
        seen.add(labels[i])
        m = [j for j in range(p) if labels[j] == labels[i]]
        mean_rho = rho[np.ix_(m, m)].mean(axis=1)
        reps.append(m[int(np.argmax(mean_rho))])
        members.append(m)
    return reps, members


def fit_block_transform(
    block: Block, rows: np.ndarray, correlation: float = 0.9
) -> tuple[BlockTransform, np.ndarray]:
    """Fit the preprocessing of one block on the training ``rows`` and transform them.

    Parameters
    ----------
    block:
        The block.
    rows:
        Integer positions of the training patients in ``block.features``.
    correlation:
        |Spearman rho| above which features count as redundant.

    Returns
    -------
    (BlockTransform, np.ndarray)
        The fitted transform and the training matrix (patients x kept features, standardised).

    Raises
    ------
    BlockDataError
        No usable feature in the training patients, a batch with one patient.
    """
    frame = block.features.iloc[rows]
    numeric = [c for c in frame.columns if c not in block.categorical]
    present = frame[numeric].notna().mean(axis=0) if numeric else pd.Series(dtype=float)
    numeric = [c for c in numeric if present[c] >= MIN_PRESENT]
    medians = {c: float(frame[c].median()) for c in numeric}
    levels: dict[str, list[str]] = {}
    modes: dict[str, str] = {}
    for c in block.categorical:
        col = frame[c].dropna().astype(str)
        if col.empty:
            continue
        levels[c] = sorted(col.unique().tolist())
        counts = col.value_counts()
        modes[c] = sorted(counts.index[counts == counts.max()])[0]
    columns = numeric + [f"{c}={lv}" for c, lvs in levels.items() for lv in lvs]
    x = _encode(frame, medians, levels, modes)
    dropped = {"mostly_missing": len(block.features.columns) - len(block.categorical)
               - len(numeric)}  # fmt: skip
    sd = x.std(axis=0)
    variable = sd > 1e-12 * np.maximum(1.0, np.abs(x).max(axis=0))
    dropped["constant"] = int((~variable).sum())
    if not variable.any():
        raise BlockDataError(
            f"block {block.name!r}: every feature is constant (or missing) in the training "
            "patients; check the table and its where filters"
        )
    x = x[:, variable]
    names = [c for c, v in zip(columns, variable, strict=True) if v]
    combat = None
    if block.batch is not None:
        n_numeric = sum(1 for c in names if c in medians)
        batch = block.batch.iloc[rows].to_numpy(dtype=str)
        combat, harmonised = fit_combat(
            x[:, :n_numeric], batch, names[:n_numeric], f"block {block.name!r}"
        )
        x[:, :n_numeric] = harmonised
    reps, members = redundancy_medoids(x, correlation)
    dropped["redundant"] = len(names) - len(reps)
    kept = [names[i] for i in reps]
    clusters = {names[r]: [names[j] for j in m] for r, m in zip(reps, members, strict=True)}
    x = x[:, reps]
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    transform = BlockTransform(
        block.name, medians, levels, modes, columns, combat, kept, clusters, mean, scale, dropped
    )
    return transform, (x - mean) / scale


def apply_block_transform(
    transform: BlockTransform, features: pd.DataFrame, batch: pd.Series | None
) -> np.ndarray:
    """Transform new patients with a fitted :class:`BlockTransform`.

    Raises
    ------
    SignatureError
        A column the transform needs is not in ``features``; a batch needed but not given, or
        not seen in training.
    """
    needed = list(transform.medians) + list(transform.levels)
    missing = [c for c in needed if c not in features.columns]
    if missing:
        raise SignatureError(
            f"block {transform.block!r}: {len(missing)} feature(s) the signature needs are not "
            f"in the table (e.g. {', '.join(missing[:3])}); compute them with the same settings "
            "as the training cohort"
        )
    x = _encode(features, transform.medians, transform.levels, transform.modes)
    frame = pd.DataFrame(x, columns=transform.columns)
    if transform.combat is not None:
        if batch is None:
            raise SignatureError(
                f"block {transform.block!r} was harmonised by batch in training: give the "
                "block's batch = column in the cohort file"
            )
        cols = transform.combat.features
        frame[cols] = apply_combat(
            frame[cols].to_numpy(), batch.to_numpy(dtype=str), cols, transform.combat
        )
    return (frame[transform.kept].to_numpy(dtype=float) - transform.mean) / transform.scale
