"""Column descriptions for evaluation, and the cleaning every metric shares.

The dataset schema (``fedsynth.data.schema``) is the long-term source of column kinds; until the
evaluation is wired to it, a :class:`ColumnSpec` list is enough: a name and whether the column is
numeric or categorical. :func:`column_specs_from_frame` drafts one from a frame's dtypes.

All metrics read columns through :func:`numeric_values` and :func:`categorical_values`, so that a
boolean stored as a Python object, an integer category and a string category are compared alike,
and a missing value is always ``NaN``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd

from fedsynth.errors import DataValidationError

__all__ = [
    "ColumnKind",
    "ColumnSpec",
    "categorical_values",
    "check_columns",
    "column_specs_from_frame",
    "numeric_values",
]


class ColumnKind(StrEnum):
    """How a column is compared: by distribution shape (numeric) or by frequencies (categorical)."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One column to evaluate.

    Attributes:
        name: Column name, identical in the real and the synthetic frame.
        kind: ``numeric`` or ``categorical``.
    """

    name: str
    kind: ColumnKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ColumnKind(self.kind))


def column_specs_from_frame(
    df: pd.DataFrame, exclude: Collection[str] = ()
) -> tuple[ColumnSpec, ...]:
    """Infers column kinds from dtypes: int and float are numeric, everything else categorical.

    Booleans (either ``bool`` dtype or ``True``/``False`` objects) count as categorical.

    Args:
        df: A sample of the data.
        exclude: Columns to leave out, such as identifiers.

    Returns:
        One spec per remaining column, in frame order.
    """
    specs = []
    for name in df.columns:
        if name in exclude:
            continue
        dtype = df[name].dtype
        numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        kind = ColumnKind.NUMERIC if numeric else ColumnKind.CATEGORICAL
        specs.append(ColumnSpec(str(name), kind))
    return tuple(specs)


def check_columns(specs: Sequence[ColumnSpec], **frames: pd.DataFrame) -> None:
    """Raises if a spec'd column is absent from a frame, or the spec list is empty or repeats.

    Args:
        specs: The columns to evaluate.
        **frames: Frames by role (``real=...``, ``synthetic=...``), named in the error message.

    Raises:
        DataValidationError: On the first problem found.
    """
    if not specs:
        raise DataValidationError("no columns to evaluate")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DataValidationError(f"column specs repeat a name: {names}")
    for role, frame in frames.items():
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise DataValidationError(f"{role} data lacks columns {missing}")
        if len(frame) == 0:
            raise DataValidationError(f"{role} data has no rows")


def numeric_values(series: pd.Series) -> np.ndarray:
    """Returns a float64 array; values that are not numbers become ``NaN``."""
    values: np.ndarray = pd.to_numeric(series, errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    return values


def categorical_values(series: pd.Series) -> pd.Series:
    """Returns the column as strings (``True`` -> ``"True"``, ``1.0`` -> ``"1"``), NaN kept."""
    def as_text(value: object) -> object:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return np.nan
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        return str(value)

    return series.map(as_text).astype(object)
