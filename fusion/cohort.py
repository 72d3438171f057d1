"""Cohorts: one TOML file names the outcome table and the feature blocks; the tables are read,
filtered, reshaped to one row per patient and joined on the patient ID.

A cohort file::

    id_column = "patient_id"                 # default patient column of every table
    [outcome]
    table = "sts-clinical.csv"               # paths relative to the cohort file
    event = "lung_mets"                      # 0/1
    time = "days_diagnosis_to_lung_mets_or_censor"   # optional: time-to-event target
    [[block]]
    name = "pet"
    table = "features_long.csv.gz"
    format = "long"                          # see FORMATS
    id = "patient_id"
    feature = "feature"
    value = "value"
    where = { modality = "PET", team = "oncoray" }
    batch = "scanner"                        # optional: ComBat by this column

Unknown keys are refused. Table formats (:data:`FORMATS`):

- ``wide``: one row per patient; ``columns`` (default: all but the ID and batch) and
  ``categorical`` (text columns, one-hot encoded in the model).
- ``long``: one row per (patient, feature); ``feature`` and ``value`` name the columns.
- ``radiomics``: the long table ``osteomics radiomics`` and the node write (``patient``,
  ``study``, ``series``, ``modality``, ``roi``, ``family``, ``feature``, ``ibsi_id``, ``value``);
  feature names become ``MODALITY:family:feature``.
- ``necrosis-cases``: ``necrosis_cases.csv`` of ``osteomics necrosis`` (patient = ``case``;
  rows with status ``ok``; default columns necrosis rate and areas).
- ``necrosis-slides``: ``necrosis_slides.csv``, aggregated per case (areas summed, case
  necrosis rate from the summed areas, number of slides, min/max slide necrosis rate).
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from osteomics.fusion.errors import (
    BlockDataError,
    CohortConfigError,
    CohortJoinError,
    CohortTableError,
    CohortTableNotFoundError,
    OutcomeError,
)

logger = logging.getLogger(__name__)

#: Table formats a block can name.
FORMATS = ("wide", "long", "radiomics", "necrosis-cases", "necrosis-slides")

#: Columns of the ``osteomics radiomics`` long table (radiology/radiomics_job.py COLUMNS).
RADIOMICS_COLUMNS = ("patient", "study", "series", "modality", "roi", "family", "feature", "value")
#: Default columns of a ``necrosis-cases`` block (wsi/report.py CASE_COLUMNS).
NECROSIS_CASE_COLUMNS = ("necrosis_rate", "viable_mm2", "necrotic_mm2", "non_tumour_mm2")
#: Columns a ``necrosis-slides`` block needs (wsi/report.py SLIDE_COLUMNS).
NECROSIS_SLIDE_COLUMNS = ("case", "status", "viable_mm2", "necrotic_mm2", "non_tumour_mm2")

_TOP_KEYS = {"id_column", "outcome", "block"}
_OUTCOME_KEYS = {"table", "event", "time", "id", "where"}
_BLOCK_KEYS = {
    "name", "table", "format", "id", "feature", "value", "where", "batch", "columns",
    "categorical", "exclude",
}  # fmt: skip


@dataclass(frozen=True)
class OutcomeSpec:
    """Where the outcome lives.

    Attributes
    ----------
    table: outcome table (CSV or Parquet).
    event: 0/1 column (1 = event: metastasis, death, ...).
    time: time-to-event column (days, >= 0); None for a binary target.
    id: the table's patient column.
    where: equality filters on other columns.
    """

    table: Path
    event: str
    time: str | None
    id: str
    where: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockSpec:
    """One feature block as the cohort file describes it (see the module docstring)."""

    name: str
    table: Path
    format: str
    id: str
    feature: str | None = None
    value: str | None = None
    where: dict[str, Any] = field(default_factory=dict)
    batch: str | None = None
    columns: tuple[str, ...] | None = None
    categorical: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class CohortSpec:
    """A parsed cohort file."""

    path: Path
    id_column: str
    outcome: OutcomeSpec | None
    blocks: tuple[BlockSpec, ...]

    def block(self, name: str) -> BlockSpec:
        for b in self.blocks:
            if b.name == name:
                return b
        raise CohortConfigError(
            f"{self.path}: no block named {name!r} (blocks: {', '.join(self.block_names)})"
        )

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks)


@dataclass
class Block:
    """One block's features, one row per patient.

    Attributes
    ----------
    name: block name.
    features: patients x features (index: patient ID as text); numeric columns are float,
        categorical ones object (text, NaN when missing).
    categorical: names of the categorical columns.
    batch: batch label per patient (ComBat), or None.
    spec: what the cohort file said.
    """

    name: str
    features: pd.DataFrame
    categorical: tuple[str, ...]
    batch: pd.Series | None
    spec: BlockSpec


@dataclass
class JoinReport:
    """Who was dropped at the join, and why (patient IDs are not logged, only counted)."""

    n_outcome: int | None
    n_joined: int
    dropped: dict[str, list[str]]
    missing_values: dict[str, int]

    def lines(self) -> list[str]:
        out = []
        for reason, ids in self.dropped.items():
            if ids:
                out.append(f"{len(ids)} patient(s) dropped: {reason}")
        for block, count in self.missing_values.items():
            if count:
                out.append(
                    f"block {block!r}: {count} missing value(s) imputed inside each training fold "
                    "(median for numbers, most frequent level for categories)"
                )
        return out


@dataclass
class Cohort:
    """Patients with an outcome and every block, in one order.

    Attributes
    ----------
    patients: patient IDs (sorted).
    event: 0/1 per patient, or None when the cohort has no outcome (apply).
    time: time to event or censoring per patient, or None.
    blocks: block name -> :class:`Block`, rows in ``patients`` order.
    report: the join report.
    spec: the cohort file.
    """

    patients: list[str]
    event: np.ndarray | None
    time: np.ndarray | None
    blocks: dict[str, Block]
    report: JoinReport
    spec: CohortSpec

    @property
    def target(self) -> str:
        return "survival" if self.time is not None else "binary"

    @property
    def n_events(self) -> int:
        return int(self.event.sum()) if self.event is not None else 0

    def tables(self) -> list[tuple[str, Path]]:
        """``(role, path)`` of every input table, the cohort file first."""
        out = [("cohort", self.spec.path)]
        if self.spec.outcome is not None:
            out.append(("outcome", self.spec.outcome.table))
        out += [(f"block:{name}", b.spec.table) for name, b in self.blocks.items()]
        return out


# --------------------------------------------------------------------------- cohort file


def _str(where: str, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise CohortConfigError(f"{where}: {key} must be a non-empty string, not {value!r}")
    return value


def _str_list(where: str, value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CohortConfigError(f"{where}: {key} must be a list of column names, not {value!r}")
    return tuple(value)


def _where(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CohortConfigError(
            f"{where}: where must be a table of column = value filters, e.g. "
            'where = { modality = "PET" }'
        )
    return dict(value)


def _unknown(where: str, table: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise CohortConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def load_cohort_spec(path: Path) -> CohortSpec:
    """Parse and check a cohort TOML file (table paths are relative to it).

    Raises
    ------
    CohortTableNotFoundError
        The file, or a table it names, does not exist.
    CohortConfigError
        Invalid TOML, unknown or missing keys, wrong types, unknown format, duplicate names.
    """
    path = Path(path)
    if not path.is_file():
        raise CohortTableNotFoundError(f"cohort file {path} not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CohortConfigError(f"{path}: not valid TOML ({exc})") from exc
    _unknown(str(path), raw, _TOP_KEYS)
    id_column = _str(str(path), raw.get("id_column", "patient_id"), "id_column")
    base = path.parent

    def table_path(where: str, value: Any) -> Path:
        if value is None:
            raise CohortConfigError(f"{where}: missing key 'table' (a CSV or Parquet file)")
        p = Path(_str(where, value, "table"))
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise CohortTableNotFoundError(
                f"{where}: table {p} not found (paths are relative to the cohort file {path})"
            )
        return p

    outcome = None
    if "outcome" in raw:
        o = raw["outcome"]
        where = f"{path} [outcome]"
        if not isinstance(o, dict):
            raise CohortConfigError(f"{where} must be a table")
        _unknown(where, o, _OUTCOME_KEYS)
        for key in ("table", "event"):
            if key not in o:
                raise CohortConfigError(f"{where}: missing key {key!r}")
        outcome = OutcomeSpec(
            table=table_path(where, o["table"]),
            event=_str(where, o["event"], "event"),
            time=_str(where, o["time"], "time") if "time" in o else None,
            id=_str(where, o.get("id", id_column), "id"),
            where=_where(where, o.get("where", {})),
        )
    blocks_raw = raw.get("block", [])
    if not isinstance(blocks_raw, list) or not blocks_raw:
        raise CohortConfigError(f"{path}: at least one [[block]] is needed")
    blocks = []
    for i, b in enumerate(blocks_raw):
        where = f"{path} [[block]] #{i + 1}"
        if not isinstance(b, dict):
            raise CohortConfigError(f"{where} must be a table")
        _unknown(where, b, _BLOCK_KEYS)
        if "name" not in b:
            raise CohortConfigError(f"{where}: missing key 'name'")
        name = _str(where, b["name"], "name")
        where = f"{path} block {name!r}"
        if name == "fused" or "," in name:
            raise CohortConfigError(f"{where}: the name 'fused' and commas are reserved")
        fmt = b.get("format", "wide")
        if fmt not in FORMATS:
            raise CohortConfigError(
                f"{where}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}"
            )
        default_id = {"radiomics": "patient", "necrosis-cases": "case", "necrosis-slides": "case"}
        spec = BlockSpec(
            name=name,
            table=table_path(where, b.get("table")),
            format=fmt,
            id=_str(where, b.get("id", default_id.get(fmt, id_column)), "id"),
            feature=_str(where, b["feature"], "feature") if "feature" in b else None,
            value=_str(where, b["value"], "value") if "value" in b else None,
            where=_where(where, b.get("where", {})),
            batch=_str(where, b["batch"], "batch") if "batch" in b else None,
            columns=_str_list(where, b["columns"], "columns") if "columns" in b else None,
            categorical=_str_list(where, b.get("categorical", []), "categorical"),
            exclude=_str_list(where, b.get("exclude", []), "exclude"),
        )
        if fmt == "long" and (spec.feature is None or spec.value is None):
            raise CohortConfigError(
                f"{where}: a long block needs feature = and value = (its feature-name and "
                "value columns)"
            )
        if fmt != "long" and (spec.feature is not None or spec.value is not None):
            raise CohortConfigError(f'{where}: feature/value are for format = "long" only')
        blocks.append(spec)
    names = [b.name for b in blocks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CohortConfigError(f"{path}: block name(s) used twice: {', '.join(dupes)}")
    return CohortSpec(path=path, id_column=id_column, outcome=outcome, blocks=tuple(blocks))


# --------------------------------------------------------------------------- tables


def read_table(path: Path) -> pd.DataFrame:
    """A CSV (``.csv``, ``.csv.gz``, ``.tsv``) or Parquet table, every column read as written.

    Raises
    ------
    CohortTableError
        Unreadable file or unknown extension.
    """
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path, low_memory=False)
        if name.endswith((".tsv", ".tsv.gz")):
            return pd.read_csv(path, sep="\t", low_memory=False)
    except (OSError, ValueError) as exc:
        raise CohortTableError(f"{path}: cannot read the table ({exc})") from exc
    raise CohortTableError(f"{path}: give a .csv, .csv.gz, .tsv or .parquet table")


def _need(frame: pd.DataFrame, columns: list[str], what: str, path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        shown = ", ".join(map(str, list(frame.columns)[:12]))
        raise CohortTableError(
            f"{what}: column(s) {', '.join(missing)} not in {path} (it has: {shown}"
            f"{', ...' if frame.shape[1] > 12 else ''}); fix the name in the cohort file"
        )


def _filter(frame: pd.DataFrame, where: dict[str, Any], what: str, path: Path) -> pd.DataFrame:
    _need(frame, list(where), f"{what} where", path)
    mask = np.ones(len(frame), dtype=bool)
    for column, wanted in where.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        col = frame[column]
        mask &= col.isin(values).to_numpy() | col.astype(str).isin([str(v) for v in values])
    out = frame[mask]
    if out.empty:
        raise CohortTableError(f"{what}: no row of {path} matches where = {where}")
    return out


def _ids(series: pd.Series) -> pd.Series:
    return series.astype(str).str.strip()


def _long_to_wide(
    frame: pd.DataFrame, id_col: str, feature_col: str, value_col: str, what: str, path: Path
) -> pd.DataFrame:
    frame = frame.assign(**{id_col: _ids(frame[id_col])})
    dup = frame.duplicated([id_col, feature_col], keep=False)
    if dup.any():
        sub = frame[dup]
        varying = [
            c
            for c in frame.columns
            if c not in (id_col, feature_col, value_col)
            and sub.groupby([id_col, feature_col])[c].nunique(dropna=False).max() > 1
        ]
        hint = (
            f"add a where filter on {', '.join(varying[:4])}"
            if varying
            else "remove the duplicated rows"
        )
        raise CohortTableError(
            f"{what}: {int(dup.sum())} rows of {path} share a (patient, feature) pair; {hint}"
        )
    values = pd.to_numeric(frame[value_col], errors="coerce")
    bad = values.isna() & frame[value_col].notna()
    if bad.any():
        example = frame.loc[bad, value_col].iloc[0]
        raise CohortTableError(
            f"{what}: {int(bad.sum())} non-numeric value(s) in column {value_col!r} of {path} "
            f"(e.g. {example!r}); long blocks hold numbers"
        )
    wide = (
        frame.assign(_v=values).pivot(index=id_col, columns=feature_col, values="_v").astype(float)
    )
    wide.columns = [str(c) for c in wide.columns]
    wide.index.name = None
    return wide


def _patient_batch(
    frame: pd.DataFrame, id_col: str, batch_col: str, what: str, path: Path
) -> pd.Series:
    sub = frame[[id_col, batch_col]].assign(**{id_col: _ids(frame[id_col])})
    per = sub.groupby(id_col)[batch_col].nunique(dropna=False)
    if (per > 1).any():
        raise CohortTableError(
            f"{what}: {int((per > 1).sum())} patient(s) have more than one {batch_col!r} in "
            f"{path}; the batch must be one value per patient"
        )
    batch = sub.drop_duplicates(id_col).set_index(id_col)[batch_col]
    if batch.isna().any():
        raise BlockDataError(
            f"{what}: {int(batch.isna().sum())} patient(s) have no {batch_col!r} in {path}; "
            "every patient needs a batch for ComBat"
        )
    batch = batch.astype(str)
    batch.index.name = None
    return batch


def read_block(spec: BlockSpec) -> Block:
    """Read one block's table into one row per patient (see the module docstring).

    Raises
    ------
    CohortTableError, BlockDataError
        Missing columns, duplicated patients, non-numeric values in a numeric column, a block
        with no value at all.
    """
    what = f"block {spec.name!r}"
    path = spec.table
    frame = read_table(path)
    if spec.where:
        frame = _filter(frame, spec.where, what, path)
    _need(frame, [spec.id], what, path)
    batch = None
    categorical = tuple(spec.categorical)
    if spec.format in ("long", "radiomics"):
        if spec.format == "radiomics":
            _need(frame, list(RADIOMICS_COLUMNS), what, path)
            frame = frame.assign(
                _feature=frame["modality"].astype(str)
                + ":"
                + frame["family"].astype(str)
                + ":"
                + frame["feature"].astype(str)
            )
            feature_col, value_col = "_feature", "value"
        else:
            assert spec.feature is not None and spec.value is not None
            feature_col, value_col = spec.feature, spec.value
            _need(frame, [feature_col, value_col], what, path)
        if spec.batch:
            _need(frame, [spec.batch], what, path)
            batch = _patient_batch(frame, spec.id, spec.batch, what, path)
        keep = [spec.id, feature_col, value_col]
        others = [c for c in frame.columns if c not in keep]
        features = _long_to_wide(frame[keep + others], spec.id, feature_col, value_col, what, path)
        if spec.columns is not None:
            _need(features, list(spec.columns), what, path)
            features = features[list(spec.columns)]
        categorical = ()
    else:
        if spec.format == "necrosis-slides":
            _need(frame, list(NECROSIS_SLIDE_COLUMNS), what, path)
            frame = _necrosis_slides_to_cases(frame[frame["status"] == "ok"], spec.id)
        elif spec.format == "necrosis-cases":
            _need(frame, ["status"], what, path)
            frame = frame[frame["status"] == "ok"]
        ids = _ids(frame[spec.id])
        dup = ids.duplicated(keep=False)
        if dup.any():
            raise CohortTableError(
                f"{what}: {ids[dup].nunique()} patient(s) appear on more than one row of {path} "
                f"(column {spec.id!r}); a {spec.format} table has one row per patient"
            )
        if spec.batch:
            _need(frame, [spec.batch], what, path)
            batch = _patient_batch(frame, spec.id, spec.batch, what, path)
        if spec.columns is not None:
            columns = list(spec.columns)
        elif spec.format == "necrosis-cases":
            columns = [c for c in NECROSIS_CASE_COLUMNS if c in frame.columns]
        else:
            columns = [c for c in frame.columns if c not in (spec.id, spec.batch)]
        _need(frame, columns + list(categorical), what, path)
        for c in categorical:
            if c not in columns:
                columns.append(c)
        features = frame[columns].copy()
        features.index = pd.Index(ids.to_numpy())
        for c in columns:
            if c in categorical:
                col = features[c]
                features[c] = col.where(col.isna(), col.astype(str)).astype(object)
                continue
            numeric = pd.to_numeric(features[c], errors="coerce")
            bad = numeric.isna() & features[c].notna()
            if bad.any():
                raise CohortTableError(
                    f"{what}: column {c!r} of {path} holds text (e.g. "
                    f"{features.loc[bad, c].iloc[0]!r}); list it in categorical = [...] or "
                    "leave it out of columns"
                )
            features[c] = numeric.astype(float)
    if spec.exclude:
        features = features.drop(columns=[c for c in spec.exclude if c in features.columns])
        categorical = tuple(c for c in categorical if c not in spec.exclude)
    if features.shape[1] == 0:
        raise BlockDataError(f"{what}: no feature column left in {path}")
    if features.isna().all().all():
        raise BlockDataError(
            f"{what}: every value is missing in {path} (after where filters); check the "
            "value column and filters"
        )
    features.index = features.index.astype(str)
    return Block(spec.name, features, categorical, batch, spec)


def _necrosis_slides_to_cases(frame: pd.DataFrame, case_col: str) -> pd.DataFrame:
    areas = frame[["viable_mm2", "necrotic_mm2", "non_tumour_mm2"]].apply(
        pd.to_numeric, errors="coerce"
    )
    frame = frame.assign(**{c: areas[c] for c in areas.columns})
    tumour = frame["viable_mm2"] + frame["necrotic_mm2"]
    frame = frame.assign(_slide_rate=100.0 * frame["necrotic_mm2"] / tumour.where(tumour > 0))
    g = frame.groupby(_ids(frame[case_col]))
    out = pd.DataFrame(
        {
            "viable_mm2": g["viable_mm2"].sum(),
            "necrotic_mm2": g["necrotic_mm2"].sum(),
            "non_tumour_mm2": g["non_tumour_mm2"].sum(),
            "n_slides": g.size().astype(float),
            "slide_necrosis_rate_min": g["_slide_rate"].min(),
            "slide_necrosis_rate_max": g["_slide_rate"].max(),
        }
    )
    tumour_case = out["viable_mm2"] + out["necrotic_mm2"]
    out.insert(0, "necrosis_rate", 100.0 * out["necrotic_mm2"] / tumour_case.where(tumour_case > 0))
    out.index.name = case_col
    return out.reset_index()


def read_outcome(spec: OutcomeSpec) -> tuple[pd.Series, pd.Series | None]:
    """Event (0/1) and time per patient, rows with a missing event or time left out.

    Raises
    ------
    CohortTableError, OutcomeError
        Missing columns, duplicated patients, an event column that is not 0/1, negative times.
    """
    what = "[outcome]"
    frame = read_table(spec.table)
    if spec.where:
        frame = _filter(frame, spec.where, what, spec.table)
    cols = [spec.id, spec.event] + ([spec.time] if spec.time else [])
    _need(frame, cols, what, spec.table)
    ids = _ids(frame[spec.id])
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise CohortTableError(
            f"{what}: {ids[dup].nunique()} patient(s) appear on more than one row of "
            f"{spec.table} (column {spec.id!r}); the outcome table has one row per patient"
        )
    event = pd.to_numeric(frame[spec.event], errors="coerce")
    event.index = pd.Index(ids.to_numpy())
    bad = ~event.dropna().isin([0, 1])
    if bad.any():
        raise OutcomeError(
            f"{what}: column {spec.event!r} of {spec.table} must hold 0/1 (found "
            f"{event.dropna()[bad].iloc[0]!r}); recode the event as 0 = none, 1 = event"
        )
    time = None
    if spec.time:
        time = pd.to_numeric(frame[spec.time], errors="coerce")
        time.index = event.index
        negative = time < 0
        if negative.any():
            raise OutcomeError(
                f"{what}: {int(negative.sum())} negative time(s) in column {spec.time!r} of "
                f"{spec.table}; times to event or censoring must be >= 0"
            )
    return event, time


def load_cohort(
    spec: CohortSpec,
    blocks: list[str] | None = None,
    require_outcome: bool = True,
    min_patients: int = 10,
) -> Cohort:
    """Read the outcome and the blocks and join them on the patient ID.

    Patients without an outcome or without any value in a block are dropped; the report says how
    many for which reason. Missing single values stay (imputed later, inside the training folds).

    Parameters
    ----------
    spec:
        The cohort file.
    blocks:
        Block names to use (default all).
    require_outcome:
        False for ``signature apply``: the outcome is read when the file has one.
    min_patients:
        Fewer patients than this after the join is an error.

    Raises
    ------
    CohortJoinError
        IDs that do not match across tables (how many, in which blocks), too few patients left.
    CohortConfigError
        An unknown block name, or no [outcome] when one is required.
    """
    names = blocks if blocks else list(spec.block_names)
    for n in names:
        spec.block(n)
    if require_outcome and spec.outcome is None:
        raise CohortConfigError(f"{spec.path}: [outcome] is needed to fit a signature")
    read = {n: read_block(spec.block(n)) for n in names}
    event = time = None
    dropped: dict[str, list[str]] = {}
    if spec.outcome is not None:
        event, time = read_outcome(spec.outcome)
        usable = event.notna() & (time.notna() if time is not None else True)
        dropped["no outcome value"] = sorted(event.index[~usable])
        universe = set(event.index[usable])
        n_outcome: int | None = len(universe)
    else:
        universe = set().union(*(set(b.features.index) for b in read.values()))
        n_outcome = None
    patients = set(universe)
    for name, b in read.items():
        has = set(b.features.index[b.features.notna().any(axis=1)])
        dropped[f"no {name!r} data"] = sorted(patients - has)
        patients &= has
    order = sorted(patients)
    if len(order) < min_patients:
        detail = []
        for name, b in read.items():
            ids = set(b.features.index)
            detail.append(
                f"block {name!r}: {len(ids & universe)} of {len(ids)} IDs match"
                + (f" (e.g. {sorted(ids - universe)[0]!r})" if ids - universe else "")
            )
        where = "the outcome table" if spec.outcome is not None else "the other blocks"
        raise CohortJoinError(
            f"{spec.path}: only {len(order)} patient(s) have every block"
            + (" and an outcome" if spec.outcome is not None else "")
            + f" (need >= {min_patients}); IDs against {where}: "
            + "; ".join(detail)
            + ". Check the id columns and the ID spelling"
        )
    out_blocks = {}
    missing: dict[str, int] = {}
    for name, b in read.items():
        feats = b.features.loc[order]
        missing[name] = int(feats.isna().sum().sum())
        bat = b.batch.reindex(order) if b.batch is not None else None
        if bat is not None and bat.isna().any():
            raise BlockDataError(f"block {name!r}: {int(bat.isna().sum())} patient(s) lack a batch")
        out_blocks[name] = Block(name, feats, b.categorical, bat, b.spec)
    ev = event.loc[order].to_numpy(dtype=int) if event is not None else None
    tm = time.loc[order].to_numpy(dtype=float) if time is not None else None
    report = JoinReport(n_outcome, len(order), dropped, missing)
    for line in report.lines():
        logger.info(line)
    return Cohort(order, ev, tm, out_blocks, report, spec)
