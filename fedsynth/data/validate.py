"""Validate a site's data against its dataset schema.

:func:`validate_frame` returns a clean, typed copy (missing-value codes turned into missing values)
or raises :class:`~fedsynth.errors.DataValidationError` listing every problem it found, up to a cap,
each naming row and column. A missing-value code (``chol == 0``) is never an error even where it
lies outside the clinical bounds: it means "not measured"; but in a ``required`` column (one that is
always recorded, such as age) a missing value is an error.

Output dtypes: numeric -> ``float64``; integer -> ``Int64``; boolean -> ``boolean``; categorical ->
``object`` (``str`` or missing). Missing values are ``NaN``/``pd.NA``.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.data.schema import ColumnKind, ColumnSpec, DatasetSchema
from fedsynth.errors import ConfigError, DataValidationError

__all__ = [
    "MAX_REPORTED_PROBLEMS",
    "Problem",
    "SchemaValidationError",
    "load_site_file",
    "validate_frame",
]

logger = logging.getLogger(__name__)

#: At most this many problems are spelled out in one error message.
MAX_REPORTED_PROBLEMS = 50
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the data: a cell (row and column) or a whole column (row None)."""

    row: Hashable | None
    column: str
    message: str

    def __str__(self) -> str:
        where = (
            f"column {self.column!r}"
            if self.row is None
            else f"row {self.row}, column {self.column!r}"
        )
        return f"{where}: {self.message}"


class SchemaValidationError(DataValidationError):
    """Data does not match its schema; ``problems`` lists every problem found."""

    def __init__(self, schema_name: str, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        shown = [f"  - {p}" for p in problems[:MAX_REPORTED_PROBLEMS]]
        more = len(problems) - len(shown)
        if more > 0:
            shown.append(f"  ... and {more} more")
        super().__init__(
            f"data does not match schema {schema_name!r} ({len(problems)} problems):\n"
            + "\n".join(shown)
        )


def validate_frame(
    df: pd.DataFrame, schema: DatasetSchema, *, allow_missing_columns: bool = False
) -> pd.DataFrame:
    """Check ``df`` against ``schema`` and return a clean, typed copy.

    Modelled columns (features, target) are required; identifier and site columns are kept when
    present; columns the schema does not know are dropped with a warning.

    Args:
        df: the site's raw data.
        schema: the dataset schema.
        allow_missing_columns: add an absent modelled column as all-missing instead of failing
            (a site that never measures a variable).

    Raises:
        SchemaValidationError: (a DataValidationError) naming row and column of every problem.
    """
    problems: list[Problem] = []
    out: dict[str, pd.Series] = {}
    for spec in schema.columns:
        absent = spec.name not in df.columns
        if absent:
            if spec.modelled and not allow_missing_columns:
                problems.append(Problem(None, spec.name, "missing from the data"))
            if not spec.modelled:
                continue
            raw = pd.Series(np.nan, index=df.index, dtype=object)
        else:
            raw = df[spec.name]
        series, found = coerce_column(raw, spec)
        out[spec.name] = series
        problems.extend(found)
        if spec.required and not absent:
            problems.extend(
                Problem(idx, spec.name, "is required (always recorded) but missing")
                for idx in series.index[series.isna().to_numpy()]
            )
    extra = [c for c in df.columns if not schema.has_column(str(c))]
    if extra:
        logger.warning("dropping columns not in schema %s: %s", schema.name, extra)
    if problems:
        raise SchemaValidationError(schema.name, problems)
    return pd.DataFrame(out, index=df.index)


def coerce_column(raw: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, list[Problem]]:
    """Type one column by its spec; returns the typed column and the problems found."""
    is_code = _missing_code_mask(raw, spec)
    values = raw.mask(is_code)
    if spec.kind is ColumnKind.CATEGORICAL:
        return _coerce_categorical(values, spec)
    if spec.kind is ColumnKind.BOOLEAN:
        return _coerce_boolean(values, spec)
    return _coerce_number(values, spec)


def _missing_code_mask(raw: pd.Series, spec: ColumnSpec) -> pd.Series:
    if not spec.missing_codes:
        return pd.Series(False, index=raw.index)
    text_codes = {str(c) for c in spec.missing_codes}
    num_codes = [float(c) for c in spec.missing_codes if _is_number(c)]
    as_text = raw.map(lambda v: str(v) if isinstance(v, str) else None).isin(text_codes)
    numbers = pd.to_numeric(raw.where(~_bool_mask(raw)), errors="coerce")
    return as_text | numbers.isin(num_codes)


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _bool_mask(raw: pd.Series) -> pd.Series:
    return raw.map(lambda v: isinstance(v, bool | np.bool_)).astype(bool)


def _coerce_number(values: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, list[Problem]]:
    is_bool = _bool_mask(values)
    numbers = pd.to_numeric(values.where(~is_bool), errors="coerce").astype("float64")
    present = values.notna()
    problems = [
        Problem(idx, spec.name, f"expected a number, got {values[idx]!r}")
        for idx in values.index[(present & numbers.isna()).to_numpy()]
    ]
    if spec.kind is ColumnKind.INTEGER:
        frac = numbers.notna() & (numbers != np.round(numbers))
        problems += [
            Problem(idx, spec.name, f"expected an integer, got {numbers[idx]!r}")
            for idx in values.index[frac.to_numpy()]
        ]
    if spec.bounds is not None:
        lo, hi = spec.bounds.lo, spec.bounds.hi
        out = numbers.notna() & ((numbers < lo) | (numbers > hi))
        problems += [
            Problem(
                idx, spec.name, f"value {numbers[idx]:g} outside clinical bounds [{lo:g}, {hi:g}]"
            )
            for idx in values.index[out.to_numpy()]
        ]
    if spec.kind is ColumnKind.INTEGER and not problems:
        return numbers.round().astype("Int64"), problems
    return numbers, problems


def _coerce_categorical(values: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, list[Problem]]:
    allowed = set(spec.categories)
    problems: list[Problem] = []
    cleaned: list[object] = []
    for idx, value in values.items():
        if _is_missing(value):
            cleaned.append(np.nan)
            continue
        text = (
            str(value)
            if not isinstance(value, float) or not value.is_integer()
            else str(int(value))
        )
        if text not in allowed:
            problems.append(
                Problem(idx, spec.name, f"{value!r} is not one of {list(spec.categories)}")
            )
        cleaned.append(text)
    return pd.Series(cleaned, index=values.index, dtype=object, name=spec.name), problems


def _coerce_boolean(values: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, list[Problem]]:
    problems: list[Problem] = []
    cleaned: list[object] = []
    for idx, value in values.items():
        parsed = _parse_bool(value)
        if parsed is _INVALID:
            problems.append(Problem(idx, spec.name, f"expected a boolean, got {value!r}"))
            parsed = pd.NA
        cleaned.append(parsed)
    return pd.Series(cleaned, index=values.index, dtype="boolean", name=spec.name), problems


_INVALID = object()


def _parse_bool(value: object) -> object:
    if _is_missing(value):
        return pd.NA
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer | float | np.floating) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return _INVALID


def _is_missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def load_site_file(path: str | Path, schema: DatasetSchema | None = None) -> pd.DataFrame:
    """Read a site's CSV or Parquet file; validate it when ``schema`` is given.

    Raises:
        ConfigError: the file is missing, unreadable or of an unknown type.
        SchemaValidationError: the data does not match ``schema``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise ConfigError(f"{path}: unknown data file type {suffix!r} (use .csv or .parquet)")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read data file {path}: {exc}") from exc
    return df if schema is None else validate_frame(df, schema)
