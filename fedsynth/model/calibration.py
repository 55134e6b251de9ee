"""Marginal calibration of synthetic rows to released DP histograms (raking), as post-processing.

Every site already releases differentially private histograms of every modelled column
(:func:`fedsynth.data.site_histograms`); their sum fits the numeric normalization. Under DP-SGD the
model's one-dimensional marginals drift from the data's, while those released histograms estimate
them directly. :func:`rake_to_histograms` draws a pool of rows from the model, weights the pool so
that its weighted marginal of every chosen column matches the summed histograms (iterative
proportional fitting, Deming and Stephan 1940, "On a least squares adjustment of a sampled
frequency table when the expected marginal totals are known"), and keeps ``n`` rows drawn without
replacement with probability proportional to the weights.

Privacy: the input is the model (already trained with DP-SGD) and the released histograms (already
paid for), and nothing else about the data is read, so the output is post-processing of DP
releases and costs no further privacy (Dwork and Roth 2014, Prop. 2.1). Associations still come
from the model: IPF multiplies the pool's distribution by one factor per column and level, which is
the distribution closest to the model's in Kullback-Leibler divergence with the given marginals,
and it leaves every odds ratio between columns as the model generated it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedsynth.data import DatasetSchema, Histograms, validate_frame
from fedsynth.data.preprocess import column_bins, value_bins
from fedsynth.errors import ConfigError

__all__ = ["histogram_targets", "rake_to_histograms", "raking_weights"]

logger = logging.getLogger(__name__)


def histogram_targets(hist: Histograms, column: str, pseudo_count: float = 0.5) -> np.ndarray:
    """One column's noisy counts as probabilities: clipped at 0, ``pseudo_count`` added per bin."""
    counts = np.clip(np.asarray(hist.column(column), dtype=np.float64), 0.0, None) + pseudo_count
    return np.asarray(counts / counts.sum())


def raking_weights(
    bins: np.ndarray, targets: Sequence[np.ndarray], *, iterations: int = 50, tol: float = 1e-6
) -> np.ndarray:
    """IPF weights of ``m`` pool rows so that each column's weighted bin shares equal its target.

    Args:
        bins: ``(m, c)`` bin index of every row in every raked column.
        targets: ``c`` probability vectors, one per column, indexed by bin.
        iterations: full sweeps over the columns at most.
        tol: stop when no column's weighted share is off its target by more than this.

    Returns:
        ``(m,)`` non-negative weights summing to 1. A target bin with no pool row cannot be met
        and is left out of that column's fit (its share goes to the other bins).
    """
    m = bins.shape[0]
    if m == 0 or bins.shape[1] != len(targets):
        raise ConfigError("raking needs a non-empty pool and one target per column")
    w = np.full(m, 1.0 / m)
    fitted = []
    for j, target in enumerate(targets):
        present = np.bincount(bins[:, j], minlength=len(target)) > 0
        t = np.where(present, target, 0.0)
        fitted.append(t / t.sum())
    for _ in range(iterations):
        worst = 0.0
        for j, target in enumerate(fitted):
            share = np.bincount(bins[:, j], weights=w, minlength=len(target))
            worst = max(worst, float(np.abs(share - target).max()))
            ratio = np.divide(target, share, out=np.zeros_like(target), where=share > 0)
            w = w * ratio[bins[:, j]]
            w = w / w.sum()
        if worst < tol:
            break
    return w


def rake_to_histograms(
    pool: pd.DataFrame,
    hist: Histograms,
    schema: DatasetSchema,
    n: int,
    rng: np.random.Generator,
    *,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``n`` rows of ``pool`` whose marginals follow the released histograms (module docstring).

    Args:
        pool: Synthetic rows from the model, several times ``n`` of them.
        hist: The released (summed, noisy) histograms.
        schema: Their schema.
        n: Rows to return (at most ``len(pool)``).
        rng: Source of the weighted draw.
        columns: Columns to rake (default: every modelled column).

    Returns:
        ``n`` rows of ``pool`` (fresh index), drawn without replacement with probabilities
        proportional to the raking weights (Efraimidis and Spirakis 2006).
    """
    if n > len(pool):
        raise ConfigError(f"cannot keep {n} rows of a pool of {len(pool)}")
    if hist.schema_hash != schema.schema_hash():
        raise ConfigError("histograms were computed under a different schema")
    names = [c.name for c in schema.modelled_columns] if columns is None else list(columns)
    clean = validate_frame(pool, schema, allow_missing_columns=True)
    specs = [schema.column(name) for name in names]
    bins = np.stack([value_bins(clean[s.name], s) for s in specs], axis=1)
    targets = [histogram_targets(hist, s.name) for s in specs]
    for s, t in zip(specs, targets, strict=True):
        if len(t) != column_bins(s):
            raise ConfigError(f"histogram of {s.name!r} does not match the schema's bins")
    w = raking_weights(bins, targets)
    keys = np.full(len(w), -np.inf)
    positive = w > 0
    keys[positive] = np.log(rng.random(int(positive.sum()))) / w[positive]
    chosen = np.sort(np.argsort(-keys, kind="stable")[:n])
    logger.debug("raked %d of %d pool rows over %d columns", n, len(pool), len(names))
    return pool.iloc[chosen].reset_index(drop=True)
