"""Privacy: are synthetic rows copies, or near-copies, of the patients the model was trained on?

Two holdout-based tests in the manner of Platzer and Reutterer (2021), "Holdout-based fidelity
and privacy assessment of mixed-type synthetic data" (Frontiers in Big Data 4:679939):

* **Distance to closest record (DCR)** from each synthetic row to the training rows and to real
  held-out rows the model never saw. A generator that does not memorise produces rows no nearer to
  the training rows than to the held-out ones.
* **Distance-based membership inference**: an attacker holding the synthetic data scores each real
  row by minus its distance to the closest synthetic row; the ROC AUC of that score separating
  training rows (members) from held-out rows (non-members) is 0.5 when nothing leaks.

Distances are Gower's (1971) mixed-type distance: the mean over columns of ``|x - y| / range``
(range of the real data, capped at 1) for numeric columns and ``x != y`` for categorical ones. A
missing value matches a missing value (distance 0) and mismatches a present one (distance 1),
because missingness is itself identifying in clinical data.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from fedsynth.eval.columns import (
    ColumnKind,
    ColumnSpec,
    categorical_values,
    check_columns,
    numeric_values,
)

__all__ = [
    "MAX_CLOSER_TO_TRAIN_SHARE",
    "MAX_MEMBERSHIP_AUC",
    "DcrHistogram",
    "MixedRows",
    "PrivacyReport",
    "closer_to_train_share",
    "encode_rows",
    "nearest_distances",
    "measure_privacy",
]

_log = logging.getLogger(__name__)

MAX_CLOSER_TO_TRAIN_SHARE = 0.6
"""The DCR check fails above this size-adjusted share (0.5 expected without memorisation)."""
MAX_MEMBERSHIP_AUC = 0.6
"""The membership-inference check fails above this AUC (0.5 expected without leakage)."""
_CHUNK_ELEMENTS = 1 << 20
_HIST_BINS = 30


@dataclass(frozen=True, slots=True)
class MixedRows:
    """Rows encoded for Gower distances.

    Attributes:
        numeric: ``(n, p)`` floats scaled by the real range (``NaN`` = missing).
        categorical: ``(n, q)`` level codes shared across frames (-1 = missing).
    """

    numeric: np.ndarray
    categorical: np.ndarray

    def __len__(self) -> int:
        return int(self.numeric.shape[0])

    def rows(self, start: int, stop: int) -> MixedRows:
        """The rows ``start:stop``."""
        return MixedRows(self.numeric[start:stop], self.categorical[start:stop])


@dataclass(frozen=True, slots=True)
class DcrHistogram:
    """DCR distributions on shared bins, for plotting.

    Attributes:
        edges: Bin edges (the last bin also holds larger values).
        train: Counts of synthetic-to-train distances.
        holdout: Counts of synthetic-to-holdout distances.
    """

    edges: tuple[float, ...]
    train: tuple[int, ...]
    holdout: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PrivacyReport:
    """Distance-based privacy numbers.

    Attributes:
        dcr_train_p5: 5th percentile of synthetic-to-train DCR.
        dcr_holdout_p5: 5th percentile of synthetic-to-holdout DCR.
        dcr_train_median: Median synthetic-to-train DCR.
        dcr_holdout_median: Median synthetic-to-holdout DCR.
        real_to_real_p5: 5th percentile of holdout-to-train DCR: how close real patients are to
            each other, the yardstick for the two above.
        exact_copy_share: Share of synthetic rows identical to some training row (DCR 0).
        closer_to_train_raw: Share of synthetic rows nearer to train than to holdout (ties count
            as the expected share below).
        closer_to_train_expected: ``n_train / (n_train + n_holdout)``, the raw share expected
            from a generator that does not memorise.
        closer_to_train_share: The raw share adjusted for the set sizes: 0.5 expected, 1.0 when
            every row is a copy.
        membership_auc: Distance-based membership-inference AUC (0.5 = no leak).
        dcr_passed: ``closer_to_train_share <= MAX_CLOSER_TO_TRAIN_SHARE``.
        membership_passed: ``membership_auc <= MAX_MEMBERSHIP_AUC``.
        histogram: DCR histograms for the report.
    """

    dcr_train_p5: float
    dcr_holdout_p5: float
    dcr_train_median: float
    dcr_holdout_median: float
    real_to_real_p5: float
    exact_copy_share: float
    closer_to_train_raw: float
    closer_to_train_expected: float
    closer_to_train_share: float
    membership_auc: float
    dcr_passed: bool
    membership_passed: bool
    histogram: DcrHistogram


def _numeric_scale(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column minimum and range of the real values (0 and 1 where undefined or constant)."""
    if reference.shape[0] == 0 or reference.shape[1] == 0:
        return np.zeros(reference.shape[1]), np.ones(reference.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        low, high = np.nanmin(reference, axis=0), np.nanmax(reference, axis=0)
    span = np.nan_to_num(high - low)
    return np.nan_to_num(low), np.where(span > 0, span, 1.0)


def encode_rows(
    frames: Sequence[pd.DataFrame], specs: Sequence[ColumnSpec], n_reference: int
) -> list[MixedRows]:
    """Encodes frames for Gower distances with shared scaling and category codes.

    Args:
        frames: Frames to encode; the first ``n_reference`` define the numeric ranges.
        specs: Columns and kinds.
        n_reference: How many leading frames are real data.

    Returns:
        One :class:`MixedRows` per frame.
    """
    num_specs = [s for s in specs if s.kind is ColumnKind.NUMERIC]
    cat_specs = [s for s in specs if s.kind is ColumnKind.CATEGORICAL]
    nums = [np.column_stack([numeric_values(f[s.name]) for s in num_specs] or
                            [np.empty((len(f), 0))]) for f in frames]
    low, span = _numeric_scale(np.vstack(nums[:n_reference]))
    cats = []
    for s in cat_specs:
        values = [categorical_values(f[s.name]) for f in frames]
        levels = pd.Index(sorted(set().union(*(set(v.dropna()) for v in values))))
        cats.append([levels.get_indexer(v) for v in values])
    encoded = []
    for i, frame in enumerate(frames):
        codes = np.column_stack([c[i] for c in cats]) if cats else np.empty((len(frame), 0), int)
        encoded.append(MixedRows((nums[i] - low) / span, codes.astype(np.int64)))
    return encoded


def _distance_block(query: MixedRows, reference: MixedRows) -> np.ndarray:
    """Gower distances between every query and reference row, shape ``(len(q), len(r))``."""
    total = np.zeros((len(query), len(reference)))
    for j in range(query.numeric.shape[1]):
        a, b = query.numeric[:, j, None], reference.numeric[None, :, j]
        total += np.fmin(np.abs(a - b), 1.0)  # fmin: NaN (either missing) -> 1
        a_nan, b_nan = np.isnan(a), np.isnan(b)
        if a_nan.any() and b_nan.any():
            total -= a_nan & b_nan  # both missing -> 0
    for j in range(query.categorical.shape[1]):
        total += query.categorical[:, j, None] != reference.categorical[None, :, j]
    width = query.numeric.shape[1] + query.categorical.shape[1]
    distances: np.ndarray = total / max(width, 1)
    return distances


def nearest_distances(query: MixedRows, reference: MixedRows) -> np.ndarray:
    """For each query row, the Gower distance to its closest reference row (chunked)."""
    if len(reference) == 0:
        raise ValueError("reference rows are empty")
    step = max(1, _CHUNK_ELEMENTS // len(reference))
    out = np.empty(len(query))
    for start in range(0, len(query), step):
        stop = min(start + step, len(query))
        out[start:stop] = _distance_block(query.rows(start, stop), reference).min(axis=1)
    return out


def closer_to_train_share(
    dcr_train: np.ndarray, dcr_holdout: np.ndarray, n_train: int, n_holdout: int
) -> tuple[float, float, float]:
    """Share of synthetic rows nearer to train than to holdout.

    Returns:
        ``(raw, expected, adjusted)``: the raw share (a tie counts as ``expected``), the share
        ``n_train / (n_train + n_holdout)`` expected without memorisation, and the raw share
        re-weighted for the set sizes so that 0.5 is expected and copies give 1.0.
    """
    expected = n_train / (n_train + n_holdout)
    tie_or_holdout = np.where(dcr_train > dcr_holdout, 0.0, expected)
    per_row = np.where(dcr_train < dcr_holdout, 1.0, tie_or_holdout)
    raw = float(per_row.mean())
    odds_train, odds_holdout = raw / expected, (1.0 - raw) / (1.0 - expected)
    return raw, expected, float(odds_train / (odds_train + odds_holdout))


def _histogram(dcr_train: np.ndarray, dcr_holdout: np.ndarray) -> DcrHistogram:
    top = float(np.quantile(np.concatenate([dcr_train, dcr_holdout]), 0.99))
    edges = np.linspace(0.0, top if top > 0 else 1.0, _HIST_BINS + 1)
    counts = [
        np.histogram(np.clip(d, 0.0, edges[-1]), bins=edges)[0] for d in (dcr_train, dcr_holdout)
    ]
    return DcrHistogram(
        tuple(float(e) for e in edges), tuple(int(c) for c in counts[0]),
        tuple(int(c) for c in counts[1]),
    )


def measure_privacy(
    real_train: pd.DataFrame,
    synthetic: pd.DataFrame,
    real_holdout: pd.DataFrame,
    specs: Sequence[ColumnSpec],
) -> PrivacyReport:
    """Computes DCR statistics and the membership-inference AUC.

    Args:
        real_train: Rows the generator was trained on (members).
        synthetic: Synthetic rows.
        real_holdout: Real rows the generator never saw (non-members).
        specs: Columns used in the distance.

    Returns:
        The privacy report; deterministic (no randomness involved).
    """
    check_columns(specs, real=real_train, synthetic=synthetic, holdout=real_holdout)
    train, holdout, synth = encode_rows([real_train, real_holdout, synthetic], specs, 2)
    dcr_train, dcr_holdout = nearest_distances(synth, train), nearest_distances(synth, holdout)
    real_to_real = nearest_distances(holdout, train)
    raw, expected, adjusted = closer_to_train_share(
        dcr_train, dcr_holdout, len(train), len(holdout)
    )
    member_d, outsider_d = nearest_distances(train, synth), nearest_distances(holdout, synth)
    labels = np.concatenate([np.ones(len(member_d)), np.zeros(len(outsider_d))])
    auc = float(roc_auc_score(labels, -np.concatenate([member_d, outsider_d])))
    _log.debug("privacy closer_share=%.3f mia_auc=%.3f", adjusted, auc)
    return PrivacyReport(
        dcr_train_p5=float(np.quantile(dcr_train, 0.05)),
        dcr_holdout_p5=float(np.quantile(dcr_holdout, 0.05)),
        dcr_train_median=float(np.median(dcr_train)),
        dcr_holdout_median=float(np.median(dcr_holdout)),
        real_to_real_p5=float(np.quantile(real_to_real, 0.05)),
        exact_copy_share=float(np.mean(dcr_train <= 1e-12)),
        closer_to_train_raw=raw,
        closer_to_train_expected=expected,
        closer_to_train_share=adjusted,
        membership_auc=auc,
        dcr_passed=adjusted <= MAX_CLOSER_TO_TRAIN_SHARE,
        membership_passed=auc <= MAX_MEMBERSHIP_AUC,
        histogram=_histogram(dcr_train, dcr_holdout),
    )
