"""Federated preprocessing: DP-noised histograms over schema-bounded bins.

Each site computes, for every modelled column, a histogram over bins fixed by the schema alone
(categories, or bins over the clinical bounds) plus one "missing" bin, and adds noise before
anything leaves the site. Histograms from all sites add up (as objects or as one flat float vector,
so secure aggregation can sum them); the sum fits the global numeric transform
(:meth:`fedsynth.data.encoder.FeatureEncoder.from_histograms`). No transform is fitted on one site's
raw values. A site that never measures a column puts all its rows in that column's missing bin, so
it shifts only the missingness rate and never the shape of the other sites' values.

Sensitivity (add/remove one record): each record adds exactly 1 to one bin of each of the ``d``
modelled columns, so the whole histogram set has L1 sensitivity ``d`` and L2 sensitivity
``sqrt(d)``. A schema with a ``missing_pattern`` adds one histogram over the joint missingness
patterns of those columns (:mod:`fedsynth.data.patterns`); a record adds 1 to one of its bins too,
so ``d`` counts it as one more column.

* Laplace mechanism (Dwork et al. 2006): noise ``Lap(d / epsilon)`` per bin gives ``epsilon``-DP.
* Gaussian mechanism (Dwork & Roth 2014, Thm A.1): ``sigma = sqrt(2 ln(1.25/delta)) * sqrt(d) /
  epsilon`` gives ``(epsilon, delta)``-DP; the theorem holds for ``epsilon <= 1`` only, so larger
  values are refused.
* Gaussian mechanism accounted by the site's accountant (:func:`accounted_histograms`): noise
  ``N(0, (z sqrt(d))^2)`` per bin is the Gaussian mechanism with noise multiplier ``z`` on a query
  of L2 sensitivity 1 after scaling, i.e. one step of ``(noise_multiplier=z, sample_rate=1)`` in
  the same RDP or PRV accountant as DP-SGD (Mironov 2017, "Renyi Differential Privacy"). Composed
  there rather than added as a separate epsilon, it costs far less: at a total budget of 8 (delta
  1e-5, the DP-SGD plan of ``bench.quality``) ``z = 3`` leaves DP-SGD a smaller noise multiplier
  than spending epsilon 0.8 on Laplace histograms, and its noise per bin is less than half the
  Laplace noise. The caller records the step in the ledger *before* calling this function.

Noisy counts are kept as they are (negative values included) so that sums stay unbiased; clipping is
post-processing done once, on the sum.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd

from fedsynth.data.patterns import PATTERN_HISTOGRAM, frame_codes
from fedsynth.data.schema import ColumnSpec, DatasetSchema
from fedsynth.data.validate import validate_frame
from fedsynth.errors import ConfigError

__all__ = [
    "Histograms",
    "NoiseMechanism",
    "bin_edges",
    "column_bins",
    "HISTOGRAM_NOISE_SCALE",
    "accounted_histograms",
    "default_histogram_noise",
    "exact_histograms",
    "histogram_layout",
    "noise_scale",
    "site_histograms",
    "value_bins",
]

logger = logging.getLogger(__name__)


class NoiseMechanism(StrEnum):
    """Noise added to a site's histograms."""

    LAPLACE = "laplace"
    GAUSSIAN = "gaussian"


def bin_edges(spec: ColumnSpec) -> np.ndarray:
    """Bin edges of a continuous column, from the schema alone.

    When the column's values fall on a grid (``step``) with at most ``n_bins`` points, each point
    gets its own bin centred on it; otherwise ``n_bins`` equal bins span the clinical bounds.
    """
    if spec.bounds is None:
        raise ConfigError(f"column {spec.name!r} has no bounds to bin over")
    lo, hi = spec.bounds.lo, spec.bounds.hi
    step = spec.step()
    if step is not None:
        n_points = int(math.floor((hi - lo) / step + 1e-9)) + 1
        if n_points <= spec.n_bins:
            return lo - step / 2 + step * np.arange(n_points + 1, dtype=np.float64)
    edges = np.linspace(lo, hi, spec.n_bins + 1, dtype=np.float64)
    if spec.atoms and step is not None:
        edges = _with_atoms(edges, spec.atoms, step)
    return edges


def _with_atoms(edges: np.ndarray, atoms: tuple[float, ...], step: float) -> np.ndarray:
    """``edges`` with a bin ``[a - step/2, a + step/2]`` (within the outer edges) for each atom.

    Edges closer than one step to an atom are dropped, so no sliver bin sits beside it.
    """
    lo, hi = edges[0], edges[-1]
    inner = edges[1:-1]
    for atom in atoms:
        inner = inner[np.abs(inner - atom) >= step]
    cuts = [c for a in atoms for c in (a - step / 2, a + step / 2) if lo < c < hi]
    return np.concatenate([[lo], np.sort(np.concatenate([inner, cuts])), [hi]])


def column_bins(spec: ColumnSpec) -> int:
    """Number of histogram bins of a column, the trailing "missing" bin included."""
    levels = spec.levels()
    if levels is not None:
        return len(levels) + 1
    return len(bin_edges(spec))  # (len(edges) - 1) value bins + 1 missing bin


def histogram_layout(schema: DatasetSchema) -> list[tuple[str, int]]:
    """``(column, bins)`` of every modelled column, in schema order, then the missingness
    pattern histogram (:data:`~fedsynth.data.patterns.PATTERN_HISTOGRAM`) when the schema has
    one: the flat vector's layout."""
    layout = [(spec.name, column_bins(spec)) for spec in schema.modelled_columns]
    if schema.missing_pattern:
        layout.append((PATTERN_HISTOGRAM, 2 ** len(schema.missing_pattern)))
    return layout


@dataclass(frozen=True, slots=True, eq=False)
class Histograms:
    """Per-column counts over schema bins; the last bin of each column counts missing values."""

    schema_hash: str
    columns: tuple[str, ...]
    counts: tuple[np.ndarray, ...]

    def column(self, name: str) -> np.ndarray:
        """Counts of column ``name`` (missing bin last)."""
        try:
            return self.counts[self.columns.index(name)]
        except ValueError:
            raise ConfigError(f"histograms have no column {name!r}") from None

    def __add__(self, other: Histograms) -> Histograms:
        if self.schema_hash != other.schema_hash or self.columns != other.columns:
            raise ConfigError("cannot add histograms of different schemas")
        summed = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return Histograms(self.schema_hash, self.columns, summed)

    def to_vector(self) -> np.ndarray:
        """All counts as one flat float64 vector, columns in :func:`histogram_layout` order."""
        return np.concatenate(self.counts).astype(np.float64)

    @classmethod
    def from_vector(cls, schema: DatasetSchema, vector: np.ndarray) -> Histograms:
        """Inverse of :meth:`to_vector` for ``schema``."""
        layout = histogram_layout(schema)
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (sum(n for _, n in layout),):
            raise ConfigError(f"histogram vector has shape {vector.shape}, schema needs {layout}")
        splits = np.cumsum([n for _, n in layout])[:-1]
        parts = tuple(p.copy() for p in np.split(vector, splits))
        return cls(schema.schema_hash(), tuple(name for name, _ in layout), parts)

    @classmethod
    def zeros(cls, schema: DatasetSchema) -> Histograms:
        """Empty histograms (the neutral element of ``+``)."""
        return cls.from_vector(schema, np.zeros(sum(n for _, n in histogram_layout(schema))))


def exact_histograms(df: pd.DataFrame, schema: DatasetSchema) -> Histograms:
    """Noise-free histograms of validated data (never released as they are)."""
    clean = validate_frame(df, schema, allow_missing_columns=True)
    counts = [_column_counts(clean[spec.name], spec) for spec in schema.modelled_columns]
    names = [spec.name for spec in schema.modelled_columns]
    if schema.missing_pattern:
        codes = frame_codes(clean, schema.missing_pattern)
        n_patterns = 2 ** len(schema.missing_pattern)
        counts.append(np.bincount(codes, minlength=n_patterns).astype(np.float64))
        names.append(PATTERN_HISTOGRAM)
    return Histograms(schema.schema_hash(), tuple(names), tuple(counts))


def _column_counts(values: pd.Series, spec: ColumnSpec) -> np.ndarray:
    n_bins = column_bins(spec)
    index = value_bins(values, spec)
    return np.bincount(index, minlength=n_bins).astype(np.float64)


def value_bins(values: pd.Series, spec: ColumnSpec) -> np.ndarray:
    """Bin index of each value (missing values -> the last bin)."""
    levels = spec.levels()
    missing = values.isna().to_numpy()
    if levels is not None:
        lookup = {level: i for i, level in enumerate(levels)}
        index = np.array(
            [
                len(levels) if m else lookup[_level_key(v, spec)]  # type: ignore[index]
                for v, m in zip(values, missing, strict=True)
            ],
            dtype=np.int64,
        )
        return index
    edges = bin_edges(spec)
    x = values.to_numpy(dtype=np.float64, na_value=np.nan)
    inner = np.clip(np.searchsorted(edges, np.nan_to_num(x), side="right") - 1, 0, len(edges) - 2)
    return np.where(missing, len(edges) - 1, inner).astype(np.int64)


def _level_key(value: object, spec: ColumnSpec) -> object:
    levels = spec.levels()
    if levels and isinstance(levels[0], bool):
        return bool(value)
    if levels and isinstance(levels[0], int):
        return int(value)  # type: ignore[call-overload]
    return str(value)


def site_histograms(
    df: pd.DataFrame,
    schema: DatasetSchema,
    epsilon: float,
    rng: np.random.Generator,
    *,
    mechanism: NoiseMechanism = NoiseMechanism.LAPLACE,
    delta: float = 1e-6,
) -> Histograms:
    """A site's DP histograms of every modelled column (see the module docstring for the noise).

    Args:
        df: the site's data (raw or validated); absent modelled columns count as all-missing.
        schema: the dataset schema that fixes the bins.
        epsilon: privacy budget of this release; ``math.inf`` releases exact counts (non-private,
            for tests and benchmarks only; logged as a warning).
        rng: the noise source.
        mechanism: Laplace (pure DP) or Gaussian ((epsilon, delta)-DP, epsilon <= 1).
        delta: the Gaussian mechanism's delta.
    """
    exact = exact_histograms(df, schema)
    if math.isinf(epsilon) and epsilon > 0:
        logger.warning("site histograms released WITHOUT differential privacy (epsilon=inf)")
        return exact
    scale = noise_scale(len(exact.columns), epsilon, mechanism, delta)
    if mechanism is NoiseMechanism.LAPLACE:
        noisy = tuple(c + rng.laplace(0.0, scale, size=c.shape) for c in exact.counts)
    else:
        noisy = tuple(c + rng.normal(0.0, scale, size=c.shape) for c in exact.counts)
    return Histograms(exact.schema_hash, exact.columns, noisy)


#: ``z = HISTOGRAM_NOISE_SCALE / epsilon`` is the default histogram noise multiplier for a site
#: whose total budget is ``epsilon``. For the DP-SGD plan of ``bench.quality`` (q = 1/3, 1000
#: steps, delta 1e-5, 14 columns), at epsilon 1, 4 and 8 both the noise per bin (60, 15, 7.5) and
#: DP-SGD's noise multiplier (44.5, 12.8, 7.16) are below those of the earlier split, 10% of epsilon
#: on Laplace histograms (noise sd 198, 49, 25) and 90% on DP-SGD (47.5, 13.5, 7.41). The scale was
#: 24 (z = 3 at epsilon 8, DP-SGD 6.95); since the gateway calibrates level shares to the released
#: histograms, their noise matters more than DP-SGD's small rise (``bench.quality_seeds`` before
#: and after, docs/bench-quality.md: the served score rose, the model alone did not move).
HISTOGRAM_NOISE_SCALE = 16.0


def default_histogram_noise(epsilon: float) -> float:
    """The histogram noise multiplier for a total budget ``epsilon`` (see HISTOGRAM_NOISE_SCALE)."""
    if not epsilon > 0:
        raise ConfigError(f"epsilon must be positive, got {epsilon}")
    return HISTOGRAM_NOISE_SCALE / epsilon


def accounted_histograms(
    df: pd.DataFrame, schema: DatasetSchema, noise_multiplier: float, rng: np.random.Generator
) -> Histograms:
    """A site's histograms with Gaussian noise of ``noise_multiplier * sqrt(d)`` per bin.

    The privacy of this release is one Gaussian-mechanism step with ``noise_multiplier`` and sample
    rate 1, which the caller records in its accountant or ledger (see the module docstring).

    Raises:
        ConfigError: ``noise_multiplier`` is not a positive finite number.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"histogram noise multiplier must be positive, got {noise_multiplier}")
    exact = exact_histograms(df, schema)
    sigma = noise_multiplier * math.sqrt(len(exact.columns))
    noisy = tuple(c + rng.normal(0.0, sigma, size=c.shape) for c in exact.counts)
    return Histograms(exact.schema_hash, exact.columns, noisy)


def noise_scale(n_columns: int, epsilon: float, mechanism: NoiseMechanism, delta: float) -> float:
    """Laplace scale ``b`` or Gaussian ``sigma`` for ``n_columns`` histograms at ``epsilon``."""
    if not epsilon > 0:
        raise ConfigError(f"histogram epsilon must be positive, got {epsilon}")
    if mechanism is NoiseMechanism.LAPLACE:
        return n_columns / epsilon
    if epsilon > 1 or not 0 < delta < 1:
        raise ConfigError("the Gaussian mechanism needs epsilon <= 1 and 0 < delta < 1")
    return math.sqrt(2 * math.log(1.25 / delta)) * math.sqrt(n_columns) / epsilon
