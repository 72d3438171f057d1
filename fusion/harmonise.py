"""ComBat harmonisation by batch (site, scanner), fitted on training patients only.

The location/scale estimates and their empirical-Bayes shrinkage come from ``neuroCombat``
(Fortin et al., NeuroImage 2018; the reference Python port of Johnson's ComBat). Applying fitted
estimates to new patients is the ComBat adjustment itself (standardise with the training pooled
mean and variance, remove the batch's shrunk shift ``gamma*`` and scale ``delta*``, undo the
standardisation); ``neuroCombatFromTraining`` does the same but fails on NumPy 2, so the six lines
are here, and the tests check they reproduce ``neuroCombat``'s own output on the training data.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from osteomics.fusion.errors import BlockDataError, SignatureError


@dataclass
class ComBatParameters:
    """Fitted ComBat estimates for ``features`` (the ones with variance in every batch).

    Attributes
    ----------
    batches: batch labels seen in training (sorted as neuroCombat sorts them).
    features: harmonised feature names; other features pass unchanged.
    stand_mean: pooled mean per feature, shape (p,).
    var_pooled: pooled variance per feature, shape (p,).
    gamma_star: shrunk additive batch effect, shape (batches, p), standardised units.
    delta_star: shrunk multiplicative batch effect, shape (batches, p).
    """

    batches: list[str]
    features: list[str]
    stand_mean: np.ndarray
    var_pooled: np.ndarray
    gamma_star: np.ndarray
    delta_star: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "ComBat (parametric empirical Bayes, neuroCombat)",
            "batches": self.batches,
            "features": self.features,
            "stand_mean": self.stand_mean.tolist(),
            "var_pooled": self.var_pooled.tolist(),
            "gamma_star": self.gamma_star.tolist(),
            "delta_star": self.delta_star.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ComBatParameters:
        return cls(
            batches=list(data["batches"]),
            features=list(data["features"]),
            stand_mean=np.asarray(data["stand_mean"], dtype=float),
            var_pooled=np.asarray(data["var_pooled"], dtype=float),
            gamma_star=np.asarray(data["gamma_star"], dtype=float).reshape(
                len(data["batches"]), -1
            ),
            delta_star=np.asarray(data["delta_star"], dtype=float).reshape(
                len(data["batches"]), -1
            ),
        )


def check_batches(batch: pd.Series | np.ndarray, where: str) -> None:
    """Every batch needs at least two patients.

    Raises
    ------
    BlockDataError
        Naming the batches with one patient.
    """
    counts = pd.Series(np.asarray(batch, dtype=str)).value_counts()
    single = sorted(str(b) for b in counts.index[counts < 2])
    if len(counts) < 2:
        raise BlockDataError(
            f"{where}: only one batch ({counts.index[0]!r}); drop batch = from the block or "
            "give a column with at least two batches"
        )
    if single:
        raise BlockDataError(
            f"{where}: batch(es) {', '.join(map(repr, single[:5]))} have one patient; ComBat "
            "needs >= 2 per batch: merge small batches in the table or drop batch ="
        )


def fit_combat(
    values: np.ndarray, batch: np.ndarray, features: list[str], where: str = "block"
) -> tuple[ComBatParameters, np.ndarray]:
    """Fit ComBat on training values and return the estimates and the harmonised values.

    Parameters
    ----------
    values:
        Patients x features, no missing values.
    batch:
        Batch label per patient.
    features:
        Column names of ``values``.
    where:
        Block name, for messages.

    Returns
    -------
    (ComBatParameters, np.ndarray)
        Estimates, and ``values`` harmonised (same shape; features with no variance inside some
        batch are left as they are).

    Raises
    ------
    BlockDataError
        A batch with one patient.
    """
    from neuroCombat import neuroCombat

    batch = np.asarray(batch, dtype=str)
    check_batches(batch, where)
    out = values.astype(float).copy()
    usable = np.ones(values.shape[1], dtype=bool)
    for b in np.unique(batch):
        usable &= values[batch == b].std(axis=0) > 0
    idx = np.flatnonzero(usable)
    if idx.size == 0:
        empty = np.zeros((len(np.unique(batch)), 0))
        params = ComBatParameters(
            sorted(np.unique(batch).tolist()), [], np.zeros(0), np.zeros(0), empty, empty
        )
        return params, out
    covars = pd.DataFrame({"batch": batch})
    # The empirical-Bayes priors pool over features: with one feature there is nothing to pool
    # (their variance has no degree of freedom), so location/scale are used unshrunk.
    eb = idx.size >= 2
    # neuroCombat prints its progress, and computes the (unused) priors even without eb
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = neuroCombat(dat=values[:, idx].T, covars=covars, batch_col="batch", eb=eb)
    if not np.isfinite(result["data"]).all():
        raise BlockDataError(
            f"{where}: ComBat gave non-finite values (a feature with almost no variance "
            "inside a batch?); drop batch = or the offending features"
        )
    est = result["estimates"]
    stand_mean = est["stand.mean"][:, 0] + est["mod.mean"].mean(axis=1)
    params = ComBatParameters(
        batches=[str(b) for b in est["batches"]],
        features=[features[i] for i in idx],
        stand_mean=np.asarray(stand_mean, dtype=float),
        var_pooled=np.asarray(est["var.pooled"], dtype=float).ravel(),
        gamma_star=np.asarray(est["gamma.star"], dtype=float),
        delta_star=np.asarray(est["delta.star"], dtype=float),
    )
    out[:, idx] = np.asarray(result["data"]).T
    return params, out


def apply_combat(
    values: np.ndarray, batch: np.ndarray, features: list[str], params: ComBatParameters
) -> np.ndarray:
    """Harmonise new patients with fitted estimates (columns matched by name).

    Raises
    ------
    SignatureError
        A batch not seen in training.
    """
    batch = np.asarray(batch, dtype=str)
    unseen = sorted({str(b) for b in batch} - set(params.batches))
    if unseen:
        raise SignatureError(
            f"batch(es) {', '.join(map(repr, unseen[:5]))} were not seen in training; ComBat "
            f"can only harmonise the training batches ({', '.join(params.batches)}): re-fit "
            "the signature with these patients' batch, or map them to a training batch"
        )
    out = values.astype(float).copy()
    if not params.features:
        return out
    pos = {f: i for i, f in enumerate(features)}
    cols = [pos[f] for f in params.features]
    which = np.array([params.batches.index(b) for b in batch], dtype=int)
    sd = np.sqrt(params.var_pooled)
    z = (values[:, cols] - params.stand_mean) / sd
    z = (z - params.gamma_star[which]) / np.sqrt(params.delta_star[which])
    out[:, cols] = z * sd + params.stand_mean
    return out
