"""Draft a dataset schema from a sample file, for the operator to review and edit.

The draft is a starting point, never a federation's schema as is: its bounds come from one sample's
values (widened outward to round numbers) and must be replaced by clinical bounds agreed by all
sites, and guessed missing-value codes (an isolated 0 far below every other value) must be
confirmed. Values that hold a fifth or more of a continuous column's records are drafted as
``atoms`` (each gets a histogram bin of its own). When 6 to 12 modelled columns have missing values
in the sample (up to the 12 most often missing when more do), they are drafted as the
``missing_pattern`` whose joint missingness the sites release (:mod:`fedsynth.data.patterns`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from fedsynth.data.schema import (
    MAX_DISCRETE_LEVELS,
    MAX_PATTERN_COLUMNS,
    MIN_PATTERN_COLUMNS,
    Bounds,
    ColumnKind,
    ColumnRole,
    ColumnSpec,
    DatasetSchema,
)
from fedsynth.data.validate import SchemaValidationError, validate_frame
from fedsynth.errors import ConfigError

__all__ = ["MAX_CATEGORIES", "infer_column", "infer_schema"]

#: Text columns with more distinct values than this are treated as identifiers.
MAX_CATEGORIES = 32
_BOOL_TEXT = {"true", "false"}


def infer_schema(
    df: pd.DataFrame,
    name: str,
    *,
    target: str | None = None,
    site_column: str | None = None,
) -> DatasetSchema:
    """A draft schema for ``df``: one column spec per column, ``target`` as conditioning column."""
    columns = []
    for col in df.columns:
        role = (
            ColumnRole.TARGET if col == target else ColumnRole.SITE if col == site_column else None
        )
        columns.append(infer_column(df[col], str(col), role))
    conditioning = None
    if target is not None:
        spec = next(c for c in columns if c.name == target)
        conditioning = target if spec.is_discrete else None
    draft = DatasetSchema(
        name=name,
        columns=tuple(columns),
        conditioning=conditioning,
        description="DRAFT inferred from a sample: review bounds, categories and missing codes",
    )
    pattern = _draft_missing_pattern(df, draft)
    return dataclasses.replace(draft, missing_pattern=pattern) if pattern else draft


def _draft_missing_pattern(df: pd.DataFrame, draft: DatasetSchema) -> tuple[str, ...]:
    """The modelled columns the sample has missing (its drafted missing codes included), most
    often missing first, when there are enough of them for a pattern histogram."""
    try:
        clean = validate_frame(df, draft)
    except SchemaValidationError:
        return ()
    rates = {
        c.name: float(clean[c.name].isna().mean())
        for c in draft.modelled_columns
        if not c.required and c.name != draft.conditioning
    }
    missing = sorted((n for n, r in rates.items() if r > 0), key=lambda n: -rates[n])
    if len(missing) < MIN_PATTERN_COLUMNS:
        return ()
    chosen = set(missing[:MAX_PATTERN_COLUMNS])
    return tuple(c.name for c in draft.columns if c.name in chosen)  # in schema order


def infer_column(values: pd.Series, name: str, role: ColumnRole | None = None) -> ColumnSpec:
    """A draft spec for one column (``role`` None: feature, or identifier when it looks like one).

    Bounds are the sample's range widened by a tenth of it on each side and rounded outward.
    """
    present = values.dropna()
    if _looks_boolean(present):
        return ColumnSpec(name, ColumnKind.BOOLEAN, role or ColumnRole.FEATURE)
    numbers = pd.to_numeric(present, errors="coerce")
    if len(present) and numbers.notna().all():
        return _numeric_spec(numbers.astype(float), name, role)
    categories = sorted({str(v) for v in present})
    if role is None and len(categories) > MAX_CATEGORIES:
        return ColumnSpec(name, ColumnKind.CATEGORICAL, ColumnRole.IDENTIFIER, categories=("?",))
    return ColumnSpec(
        name, ColumnKind.CATEGORICAL, role or ColumnRole.FEATURE, categories=tuple(categories)
    )


def _looks_boolean(present: pd.Series) -> bool:
    if len(present) == 0:
        return False
    if present.map(lambda v: isinstance(v, bool | np.bool_)).all():
        return True
    return bool(present.map(lambda v: str(v).strip().lower() in _BOOL_TEXT).all())


def _numeric_spec(x: pd.Series, name: str, role: ColumnRole | None) -> ColumnSpec:
    integral = bool((x == np.round(x)).all())
    kind = ColumnKind.INTEGER if integral else ColumnKind.NUMERIC
    if (
        role is None
        and integral
        and x.is_unique
        and (name.lower() == "id" or x.is_monotonic_increasing)
    ):
        return ColumnSpec(name, kind, ColumnRole.IDENTIFIER)
    codes: tuple[float | str, ...] = ()
    if _zero_is_missing_code(x):
        codes, x = (0,), x[x != 0]
    lo, hi = float(x.min()), float(x.max())
    if not (integral and hi - lo < MAX_DISCRETE_LEVELS):  # small integer ranges stay exact levels
        lo, hi = _round_out(lo, hi)
        lo, hi = (math.floor(lo), math.ceil(hi)) if integral else (lo, hi)
    spec = ColumnSpec(
        name,
        kind,
        role or ColumnRole.FEATURE,
        bounds=Bounds(lo, hi),
        missing_codes=codes,
        resolution=None if integral else _resolution(x),
    )
    return _with_atoms(spec, x)


#: A continuous column's value held by at least this share of its records is drafted as an atom.
ATOM_SHARE = 0.2


def _with_atoms(spec: ColumnSpec, x: pd.Series) -> ColumnSpec:
    """``spec`` with the values that hold ``ATOM_SHARE`` of the records as atoms, when valid."""
    if spec.levels() is not None or spec.step() is None or len(x) == 0:
        return spec
    shares = x.value_counts(normalize=True)
    atoms = tuple(sorted(float(v) for v, share in shares.items() if share >= ATOM_SHARE))
    if not atoms:
        return spec
    try:
        return ColumnSpec.from_dict({**spec.to_dict(), "atoms": list(atoms)})
    except ConfigError:  # off the grid of the rounded bounds: leave it to the operator
        return spec


def _zero_is_missing_code(x: pd.Series) -> bool:
    """0 is present but every other value is positive and at least 10x above it in spacing."""
    nonzero = x[x != 0]
    if (x == 0).sum() == 0 or len(nonzero) < 10 or (nonzero < 0).any():
        return False
    low = float(nonzero.quantile(0.01))
    return low > 10 and low / max(float(nonzero.std()), 1e-9) > 1.0


def _round_out(lo: float, hi: float) -> tuple[float, float]:
    span = max(hi - lo, 1e-9)
    unit = 10 ** math.floor(math.log10(span)) / 10
    lo_r = round(math.floor((lo - span / 10) / unit) * unit, 10)
    hi_r = round(math.ceil((hi + span / 10) / unit) * unit, 10)
    if lo_r == hi_r:
        hi_r = lo_r + unit
    return float(lo_r), float(hi_r)


def _resolution(x: pd.Series) -> float | None:
    for decimals in range(0, 4):
        if bool((np.round(x, decimals) == x).all()):
            return float(10.0**-decimals)
    return None
