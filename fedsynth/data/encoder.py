"""Feature encoder: a schema's columns <-> the float32 matrix the diffusion model learns.

Layout of an encoded row (see :attr:`FeatureEncoder.blocks`):

1. first, one value per continuous column (``num_dims`` of them), normalized: a quantile transform
   to a standard normal (as in TabDDPM, Kotelnikov et al. 2023) fitted from summed DP histograms
   (:meth:`FeatureEncoder.from_histograms`), or min-max to ``[-1, 1]`` from the clinical bounds
   (:meth:`FeatureEncoder.from_schema_bounds`, no data at all). A missing value is encoded as 0;
2. then one-hot blocks (``cat_sizes``): for each continuous column a 2-way block ``[present,
   missing]`` (its explicit missing indicator), for each discrete column its levels plus a final
   "missing" level.

The conditioning column is not part of the matrix: :meth:`FeatureEncoder.encode_condition` gives its
class index (``n_classes`` stands for "missing/unconditional"), and ``cond_prior`` its distribution
from the same histograms. Identifier and site columns are never encoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from fedsynth.data.patterns import PATTERN_HISTOGRAM, MissingPatterns
from fedsynth.data.preprocess import Histograms, bin_edges, value_bins
from fedsynth.data.schema import ColumnKind, ColumnSpec, DatasetSchema
from fedsynth.data.validate import validate_frame
from fedsynth.errors import ConfigError

__all__ = ["Block", "FeatureEncoder", "NumericTransform"]

_U_EPS = 1e-6  # quantile levels are clipped to [eps, 1-eps]: z within about +-4.75


@dataclass(frozen=True, slots=True)
class NumericTransform:
    """Monotone piecewise-linear map ``x -> u`` in [0, 1], then ``u -> z``.

    ``gaussianize`` maps ``u`` through the standard normal quantile function (quantile transform);
    otherwise ``z = 2u - 1`` (min-max).
    """

    xs: tuple[float, ...]
    us: tuple[float, ...]
    gaussianize: bool

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalize values (NaN stays NaN)."""
        u = np.interp(x, self.xs, self.us)
        if self.gaussianize:
            return np.asarray(ndtri(np.clip(u, _U_EPS, 1 - _U_EPS)))
        return np.asarray(2 * u - 1)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Back to the value scale (inside the outer knots)."""
        u = ndtr(z) if self.gaussianize else (np.asarray(z) + 1) / 2
        return np.interp(np.clip(u, 0.0, 1.0), self.us, self.xs)


@dataclass(frozen=True, slots=True)
class Block:
    """Where one column lives in the encoded matrix.

    ``value_index`` is the column of a continuous value (None for discrete columns); ``offset`` and
    ``width`` locate its one-hot block (levels + missing, or present/missing).
    """

    name: str
    value_index: int | None
    offset: int
    width: int


@dataclass(frozen=True, slots=True, eq=False)
class FeatureEncoder:
    """Encodes validated frames to float32 matrices and decodes them back (see module docstring)."""

    schema: DatasetSchema
    transforms: tuple[tuple[str, NumericTransform], ...]
    cond_prior: tuple[float, ...]
    missing_shares: tuple[tuple[str, float], ...] = ()
    """Share of missing values per feature column, from the same (DP) histograms; empty when the
    encoder was not fitted from histograms. Used to calibrate sampling
    (:meth:`fedsynth.model.TabularDiffusion.calibrate_marginals`)."""
    level_shares: tuple[tuple[str, tuple[float, ...]], ...] = ()
    """Share of every level of each discrete feature column (its "missing" level last), from the
    same histograms; empty when not fitted from histograms (or read from an older model file)."""
    missing_patterns: MissingPatterns | None = None
    """Shares of the frequent joint missingness patterns of the schema's ``missing_pattern``
    columns, from the same histograms (:mod:`fedsynth.data.patterns`); None without them."""

    @classmethod
    def from_histograms(
        cls, schema: DatasetSchema, hist: Histograms, *, pseudo_count: float = 0.5
    ) -> FeatureEncoder:
        """Quantile transforms and the condition prior from (summed, noisy) histograms.

        Noisy counts are clipped at 0 and ``pseudo_count`` is added to every bin, which keeps
        each transform strictly monotone; the missing bin never enters a transform.
        """
        if hist.schema_hash != schema.schema_hash():
            raise ConfigError("histograms were computed under a different schema")
        transforms = []
        for spec in _continuous(schema):
            counts = np.clip(hist.column(spec.name)[:-1], 0.0, None) + pseudo_count
            cdf = np.concatenate([[0.0], np.cumsum(counts) / counts.sum()])
            edges = bin_edges(spec)
            transforms.append((spec.name, NumericTransform(tuple(edges), tuple(cdf), True)))
        prior = _uniform_prior(schema)
        if schema.conditioning is not None:
            counts = np.clip(hist.column(schema.conditioning), 0.0, None) + pseudo_count / 10
            prior = tuple(float(p) for p in counts / counts.sum())
        shares, levels = [], []
        for spec in schema.modelled_columns:
            if spec.name == schema.conditioning:
                continue
            counts = np.clip(hist.column(spec.name), 0.0, None) + pseudo_count
            shares.append((spec.name, float(counts[-1] / counts.sum())))
            if spec.is_discrete:
                levels.append((spec.name, tuple(float(c) for c in counts / counts.sum())))
        patterns = None
        if schema.missing_pattern:
            # every column's histogram counts each row once: their mean total estimates the rows
            n_rows = float(np.mean([hist.column(s.name).sum() for s in schema.modelled_columns]))
            patterns = MissingPatterns.estimate(
                schema.missing_pattern, hist.column(PATTERN_HISTOGRAM), n_rows
            )
        return cls(schema, tuple(transforms), prior, tuple(shares), tuple(levels), patterns)

    @classmethod
    def from_schema_bounds(cls, schema: DatasetSchema) -> FeatureEncoder:
        """Min-max transforms from the clinical bounds and a uniform condition prior (no data)."""
        transforms = []
        for spec in _continuous(schema):
            xs = _bounds(spec)
            transforms.append((spec.name, NumericTransform(xs, (0.0, 1.0), False)))
        return cls(schema, tuple(transforms), _uniform_prior(schema))

    # ----- layout -------------------------------------------------------------------------------
    @property
    def feature_columns(self) -> tuple[ColumnSpec, ...]:
        """Modelled columns in the matrix (all but the conditioning column), schema order."""
        return tuple(c for c in self.schema.modelled_columns if c.name != self.schema.conditioning)

    @property
    def num_dims(self) -> int:
        """Number of continuous value columns (they come first)."""
        return len(self.transforms)

    @property
    def blocks(self) -> tuple[Block, ...]:
        """Position of every feature column in the matrix."""
        out: list[Block] = []
        value_index, offset = 0, self.num_dims
        for spec in self.feature_columns:
            levels = spec.levels()
            width = 2 if levels is None else len(levels) + 1
            out.append(Block(spec.name, None if levels is not None else value_index, offset, width))
            value_index += levels is None
            offset += width
        return tuple(out)

    @property
    def cat_sizes(self) -> tuple[int, ...]:
        """Widths of the one-hot blocks, in matrix order."""
        return tuple(b.width for b in self.blocks)

    @property
    def dim(self) -> int:
        """Width of an encoded row."""
        return self.num_dims + sum(self.cat_sizes)

    @property
    def n_classes(self) -> int:
        """Levels of the conditioning column (0 without one); index ``n_classes`` means none."""
        if self.schema.conditioning is None:
            return 0
        return len(self.schema.column(self.schema.conditioning).levels() or ())

    # ----- encode / decode ----------------------------------------------------------------------
    def encode(self, df: pd.DataFrame) -> np.ndarray:
        """Validated (or raw) frame -> float32 matrix of shape ``(len(df), dim)``."""
        clean = validate_frame(df, self.schema, allow_missing_columns=True)
        out = np.zeros((len(clean), self.dim), dtype=np.float32)
        transforms = dict(self.transforms)
        for spec, block in zip(self.feature_columns, self.blocks, strict=True):
            col = clean[spec.name]
            if block.value_index is not None:
                x = col.to_numpy(dtype=np.float64, na_value=np.nan)
                missing = np.isnan(x)
                out[:, block.value_index] = np.where(missing, 0.0, transforms[spec.name].forward(x))
                index = missing.astype(np.int64)
            else:
                index = value_bins(col, spec)
            out[np.arange(len(clean)), block.offset + index] = 1.0
        return out

    def encode_condition(self, df: pd.DataFrame) -> np.ndarray:
        """Class index (int64) of the conditioning column; ``n_classes`` where missing or none."""
        if self.schema.conditioning is None:
            return np.zeros(len(df), dtype=np.int64)
        spec = self.schema.column(self.schema.conditioning)
        clean = validate_frame(df[[spec.name]], _single(self.schema, spec))
        return value_bins(clean[spec.name], spec)

    def decode(self, matrix: np.ndarray, cond: np.ndarray | None = None) -> pd.DataFrame:
        """Matrix (one-hot blocks or scores, argmax is taken) -> frame in the schema's types.

        Args:
            matrix: ``(n, dim)`` array.
            cond: class indices of the conditioning column; its column is added when given.
        """
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise ConfigError(f"cannot decode shape {matrix.shape}, encoder width is {self.dim}")
        transforms = dict(self.transforms)
        out: dict[str, pd.Series] = {}
        for spec in self.schema.modelled_columns:
            if spec.name == self.schema.conditioning:
                if cond is not None:
                    out[spec.name] = _levels_to_series(spec, np.asarray(cond, dtype=np.int64))
                continue
            block = next(b for b in self.blocks if b.name == spec.name)
            scores = matrix[:, block.offset : block.offset + block.width]
            if spec.required:  # never missing: the last level (missing) does not compete
                scores = scores[:, :-1]
            index = scores.argmax(axis=1)
            if block.value_index is None:
                out[spec.name] = _levels_to_series(spec, index)
            else:
                x = transforms[spec.name].inverse(matrix[:, block.value_index])
                out[spec.name] = _values_to_series(spec, np.where(index == 1, np.nan, x))
        return pd.DataFrame(out)

    # ----- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (schema included)."""
        return {
            "schema": self.schema.to_dict(),
            "transforms": [
                {
                    "name": n,
                    "xs": [float(v) for v in t.xs],
                    "us": [float(v) for v in t.us],
                    "gaussianize": t.gaussianize,
                }
                for n, t in self.transforms
            ],
            "cond_prior": [float(p) for p in self.cond_prior],
            **(
                {"missing_shares": [[n, float(v)] for n, v in self.missing_shares]}
                if self.missing_shares
                else {}
            ),
            **(
                {"level_shares": [[n, [float(v) for v in vs]] for n, vs in self.level_shares]}
                if self.level_shares
                else {}
            ),
            **(
                {"missing_patterns": self.missing_patterns.to_dict()}
                if self.missing_patterns is not None
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureEncoder:
        """Inverse of :meth:`to_dict`."""
        schema = DatasetSchema.from_dict(raw["schema"])
        transforms = tuple(
            (t["name"], NumericTransform(tuple(t["xs"]), tuple(t["us"]), bool(t["gaussianize"])))
            for t in raw["transforms"]
        )
        shares = tuple((str(n), float(v)) for n, v in raw.get("missing_shares", ()))
        levels = tuple(
            (str(n), tuple(float(v) for v in vs)) for n, vs in raw.get("level_shares", ())
        )
        prior = tuple(float(p) for p in raw["cond_prior"])
        patterns = raw.get("missing_patterns")
        return cls(schema, transforms, prior, shares, levels,
                   None if patterns is None else MissingPatterns.from_dict(patterns))


def _continuous(schema: DatasetSchema) -> list[ColumnSpec]:
    return [
        c for c in schema.modelled_columns if c.name != schema.conditioning and not c.is_discrete
    ]


def _uniform_prior(schema: DatasetSchema) -> tuple[float, ...]:
    if schema.conditioning is None:
        return (1.0,)
    k = len(schema.column(schema.conditioning).levels() or ())
    return tuple([1.0 / k] * k + [0.0])


def _bounds(spec: ColumnSpec) -> tuple[float, float]:
    if spec.bounds is None:
        raise ConfigError(f"continuous column {spec.name!r} needs clinical bounds")
    return spec.bounds.lo, spec.bounds.hi


def _single(schema: DatasetSchema, spec: ColumnSpec) -> DatasetSchema:
    return DatasetSchema(schema.name, (spec,), conditioning=None)


def _levels_to_series(spec: ColumnSpec, index: np.ndarray) -> pd.Series:
    levels = spec.levels() or ()
    values = [levels[i] if i < len(levels) else None for i in index]
    if spec.kind is ColumnKind.BOOLEAN:
        return pd.Series(values, dtype="boolean")
    if spec.kind is ColumnKind.INTEGER:
        return pd.Series(values, dtype="Int64")
    return pd.Series([np.nan if v is None else v for v in values], dtype=object)


def _values_to_series(spec: ColumnSpec, x: np.ndarray) -> pd.Series:
    lo, hi = _bounds(spec)
    step = spec.step()
    if step is not None:
        x = lo + np.round((x - lo) / step) * step
        decimals = max(0, -math.floor(math.log10(step))) + 2
        x = np.round(x, decimals)
    x = np.clip(x, lo, hi)
    if spec.kind is ColumnKind.INTEGER:
        return pd.Series(pd.array(np.round(x), dtype="Float64")).astype("Int64")
    return pd.Series(x, dtype="float64")
