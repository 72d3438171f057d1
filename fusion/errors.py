"""Errors of the fusion room.

Each also inherits the matching builtin (``except ValueError`` still works). Messages name the
cohort file, block, table and column concerned, and say what to do.
"""

from __future__ import annotations

from osteomics import OsteomicsError


class FusionError(OsteomicsError):
    """Base of fusion errors."""


class CohortConfigError(FusionError, ValueError):
    """A cohort TOML that cannot be used: unknown or missing keys, wrong types, unknown format."""


class CohortTableNotFoundError(FusionError, FileNotFoundError):
    """A table named in the cohort file does not exist."""


class CohortTableError(FusionError, ValueError):
    """A table that cannot be read, lacks a named column, or has duplicated patients."""


class CohortJoinError(FusionError, ValueError):
    """Tables whose patient IDs do not match, or too few patients left after the join."""


class OutcomeError(FusionError, ValueError):
    """An outcome that cannot be modelled: one class, too few events for the folds, negative or
    missing times."""


class BlockDataError(FusionError, ValueError):
    """A block with all values missing, no usable feature, or a batch with one patient."""


class SignatureError(FusionError, ValueError):
    """A signature folder that cannot be read, or a cohort that does not fit a signature
    (missing block or feature, a batch not seen in training)."""
