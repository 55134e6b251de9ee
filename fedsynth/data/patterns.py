"""Joint missingness: which columns are missing together, released as one DP histogram.

Missing values in clinical data come in patterns, not one column at a time: a hospital that did
not run the exercise test has no maximum heart rate, no exercise angina and no ST depression for
that patient, and a site that never measures a column has it missing in every row. Each column's
own missing share (its histogram's "missing" bin) says nothing about that. A schema may name up to
:data:`~fedsynth.data.schema.MAX_PATTERN_COLUMNS` columns (``missing_pattern``); every site then
adds one more histogram to its release, over the ``2**m`` patterns (bit ``j`` of a row's pattern
is set when ``missing_pattern[j]`` is missing in it).

Privacy: a record adds 1 to exactly one pattern bin, just as to one bin of every column, so the
pattern histogram counts as one more column in the release's sensitivity (``sqrt(d + 1)`` instead
of ``sqrt(d)``, :mod:`fedsynth.data.preprocess`); nothing else is spent.

Estimation (post-processing of the summed noisy counts, :meth:`MissingPatterns.estimate`): most of
the ``2**m`` patterns never occur, so the noise level is estimated from the bins themselves (the
median absolute count over 0.6745, a robust estimate of the noise's standard deviation when most
bins are empty; it can only overstate it), and a pattern is kept when its count exceeds the level
that pure noise passes in half a bin on average over all ``2**m`` bins (a Bonferroni-style
threshold; it assumes Gaussian noise, the release the agents make: under Laplace noise's heavier
tails it keeps phantom patterns, ``bench.histograms``). Kept patterns get their estimated shares;
the rest of the rows form one "other" share whose patterns the model chooses. The sampler
reweights its rows to these shares (:meth:`fedsynth.model.TabularDiffusion.calibrate_marginals`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.errors import ConfigError

__all__ = [
    "PATTERN_HISTOGRAM",
    "MissingPatterns",
    "frame_codes",
    "pattern_acceptance",
    "pattern_codes",
]

#: Name of the pattern histogram in a :class:`~fedsynth.data.preprocess.Histograms` (a schema
#: refuses a column of that name, so it cannot collide with one).
PATTERN_HISTOGRAM = "(missing pattern)"

_MAD_TO_SD = 0.6745  # median |N(0, 1)|


def pattern_codes(missing: np.ndarray) -> np.ndarray:
    """Pattern of each row of an ``(n, m)`` boolean "is missing" matrix (bit ``j``: column j)."""
    missing = np.asarray(missing, dtype=bool)
    if missing.ndim != 2:
        raise ConfigError(f"missingness matrix must be 2-d, got shape {missing.shape}")
    weights = np.left_shift(1, np.arange(missing.shape[1], dtype=np.int64))
    return missing.astype(np.int64) @ weights


def frame_codes(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Pattern of each row of ``frame`` over ``columns`` (absent columns count as missing)."""
    missing = np.ones((len(frame), len(columns)), bool)
    for j, column in enumerate(columns):
        if column in frame:
            missing[:, j] = frame[column].isna().to_numpy()
    return pattern_codes(missing)


@dataclass(frozen=True, slots=True)
class MissingPatterns:
    """The released share of each frequent missingness pattern over ``columns``.

    Attributes:
        columns: the schema's ``missing_pattern`` columns (bit order).
        codes: the kept patterns.
        shares: their shares of all rows (sum at most 1).
        noise_sd: the noise level estimated from the histogram (0 for exact counts).
    """

    columns: tuple[str, ...]
    codes: tuple[int, ...]
    shares: tuple[float, ...]
    noise_sd: float = 0.0

    def __post_init__(self) -> None:
        if len(self.codes) != len(self.shares) or len(set(self.codes)) != len(self.codes):
            raise ConfigError("missing patterns: codes must be distinct, one share each")
        if any(not 0 <= c < 2 ** len(self.columns) for c in self.codes):
            raise ConfigError("missing patterns: a code lies outside the pattern space")
        if any(s < 0 for s in self.shares) or sum(self.shares) > 1 + 1e-9:
            raise ConfigError("missing patterns: shares must be non-negative and sum to <= 1")

    @property
    def other(self) -> float:
        """Share of rows whose pattern is none of the kept ones."""
        return max(0.0, 1.0 - sum(self.shares))

    @classmethod
    def estimate(
        cls, columns: Sequence[str], counts: np.ndarray, n_rows: float
    ) -> MissingPatterns:
        """Kept patterns and shares from summed noisy counts (see the module docstring).

        Args:
            columns: the pattern columns, in bit order.
            counts: the ``2**m`` summed (noisy) pattern counts.
            n_rows: the number of rows, estimated from the column histograms (itself noisy: at
                a small epsilon it may even be negative; the kept counts' sum bounds it below).
        """
        counts = np.asarray(counts, dtype=np.float64)
        if counts.shape != (2 ** len(columns),):
            raise ConfigError(
                f"pattern histogram has shape {counts.shape}, {len(columns)} columns need "
                f"({2 ** len(columns)},)"
            )
        if not (np.isfinite(counts).all() and math.isfinite(n_rows)):
            raise ConfigError("pattern histogram and row count must be finite")
        noise_sd = float(np.median(np.abs(counts))) / _MAD_TO_SD
        z = statistics.NormalDist().inv_cdf(1.0 - 0.5 / counts.size)
        keep = np.flatnonzero(counts > max(z * noise_sd, 0.5))
        shares = counts[keep] / max(n_rows, float(counts[keep].sum()), 1.0)
        return cls(tuple(columns), tuple(int(c) for c in keep),
                   tuple(float(s) for s in shares), noise_sd)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"columns": list(self.columns), "codes": list(self.codes),
                "shares": list(self.shares), "noise_sd": self.noise_sd}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MissingPatterns:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(tuple(str(c) for c in raw["columns"]), tuple(int(c) for c in raw["codes"]),
                       tuple(float(s) for s in raw["shares"]), float(raw.get("noise_sd", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid missing patterns: {exc}") from exc


def pattern_acceptance(
    drawn: np.ndarray,
    patterns: MissingPatterns,
    cap: float = 4.0,
    missing: Sequence[float] | None = None,
) -> np.ndarray:
    """Probability of keeping a generated row, per pattern, so kept rows follow ``patterns``.

    Rejection sampling (von Neumann 1951) with the density ratio of each kept pattern,
    ``target share / share among the drawn rows``, and one ratio for all other patterns
    (``other / the drawn rows' share outside the kept patterns``), divided by the largest ratio.
    The largest ratio is capped at ``cap`` so that at least about one generated row in ``cap`` is
    kept; a pattern the model draws more than ``cap`` times too rarely stays under its share. A
    pattern never drawn counts as drawn in half a row, so its ratio is finite.

    With ``missing`` (each column's released missing share), the rows outside the kept patterns
    are also raked (iterative proportional fitting on one binary margin per column, Deming and
    Stephan 1940) so that, kept patterns included, every column keeps its released missing share:
    a column missing mostly in rare patterns (e.g. the exercise test's, below the threshold) would
    otherwise lose its missing values to the kept, mostly complete, patterns.

    Args:
        drawn: patterns of rows the model generated (unweighted), at least one.
        patterns: the released shares.
        cap: the largest ratio kept (>= 1).

    Returns:
        ``2**m`` probabilities in [0, 1], indexed by pattern.
    """
    drawn = np.asarray(drawn, dtype=np.int64)
    size = 2 ** len(patterns.columns)
    if drawn.size == 0 or cap < 1:
        raise ConfigError("pattern acceptance needs drawn rows and a cap of at least 1")
    floor = 0.5 / drawn.size
    share = np.bincount(drawn, minlength=size).astype(np.float64) / drawn.size
    kept = np.asarray(patterns.codes, dtype=np.int64)
    target = np.asarray(patterns.shares, dtype=np.float64)
    other_drawn = max(1.0 - float(share[kept].sum()), floor)
    ratio = np.full(size, patterns.other / other_drawn)
    if missing is not None and patterns.other > 0:
        rest = np.ones(size, bool)
        rest[kept] = False
        rest &= share > 0
        if rest.any():
            ratio[rest] = _raked_rest(share, np.flatnonzero(rest), patterns, missing)
    ratio[kept] = target / np.maximum(share[kept], floor)
    top = min(float(ratio.max()), cap)
    if top <= 0:
        raise ConfigError("released pattern shares are all zero")
    return np.asarray(np.minimum(ratio, top) / top)


def _raked_rest(
    share: np.ndarray, codes: np.ndarray, patterns: MissingPatterns, missing: Sequence[float],
    sweeps: int = 50,
) -> np.ndarray:
    """Density ratios for the drawn patterns ``codes`` outside the kept ones (see
    :func:`pattern_acceptance`): their total mass is ``other`` and column ``j`` is missing in
    ``missing[j]`` minus what the kept patterns already hold (clipped to ``[0, other]``)."""
    m = len(patterns.columns)
    if len(missing) != m:
        raise ConfigError(f"need {m} missing shares, one per pattern column, got {len(missing)}")
    shift = np.arange(m)
    kept_bits = (np.asarray(patterns.codes, dtype=np.int64)[:, None] >> shift) & 1
    held = np.asarray(patterns.shares, dtype=np.float64) @ kept_bits if len(patterns.codes) else 0
    other = patterns.other
    residual = np.clip(np.asarray(missing, dtype=np.float64) - held, 0.0, other)
    bits = ((codes[:, None] >> shift) & 1).astype(bool)
    drawn = share[codes]
    mass = drawn * (other / drawn.sum())
    for _ in range(sweeps):
        for j in range(m):
            on = float(mass[bits[:, j]].sum())
            off = other - on
            if on > 0 and off > 0 and 0 < residual[j] < other:
                mass[bits[:, j]] *= residual[j] / on
                mass[~bits[:, j]] *= (other - residual[j]) / off
    return np.asarray(mass / drawn)
