"""The SDMetrics ``QualityReport`` score, when the optional ``eval`` extra is installed.

SDMetrics (DataCebo) is the reference implementation of the column-shapes / pair-trends quality
score that ``fedsynth.eval.fidelity`` mirrors; reporting both lets a reader compare our numbers with
published ones. Without the package the score is None and the note says why; nothing else changes.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from fedsynth.eval.columns import ColumnKind, ColumnSpec, categorical_values, numeric_values

__all__ = ["SDMetricsResult", "sdmetrics_quality"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SDMetricsResult:
    """The SDMetrics score or the reason it is absent.

    Attributes:
        score: Overall QualityReport score in [0, 1], or None.
        note: ``sdmetrics X.Y.Z`` when computed, otherwise why not.
    """

    score: float | None
    note: str


def _prepare(frame: pd.DataFrame, specs: Sequence[ColumnSpec]) -> pd.DataFrame:
    columns = {}
    for spec in specs:
        if spec.kind is ColumnKind.NUMERIC:
            columns[spec.name] = numeric_values(frame[spec.name])
        else:
            columns[spec.name] = categorical_values(frame[spec.name]).to_numpy()
    return pd.DataFrame(columns)


def sdmetrics_quality(
    real: pd.DataFrame, synthetic: pd.DataFrame, specs: Sequence[ColumnSpec]
) -> SDMetricsResult:
    """Runs the SDMetrics single-table QualityReport, if SDMetrics is importable.

    Args:
        real: Real rows.
        synthetic: Synthetic rows.
        specs: Columns and kinds (numeric -> ``numerical``, categorical -> ``categorical``).

    Returns:
        The score, or None with the reason (not installed, or SDMetrics raised).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sdmetrics = importlib.import_module("sdmetrics")
            module = importlib.import_module("sdmetrics.reports.single_table")
            report_class = module.QualityReport  # lazy attribute; warns that it is deprecated
    except (ImportError, AttributeError) as exc:
        return SDMetricsResult(None, f"sdmetrics not installed ({exc}); install fedsynth[eval]")
    version = getattr(sdmetrics, "__version__", "?")
    metadata = {
        "columns": {
            s.name: {"sdtype": "numerical" if s.kind is ColumnKind.NUMERIC else "categorical"}
            for s in specs
        }
    }
    report = report_class()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            real_prepared, synthetic_prepared = _prepare(real, specs), _prepare(synthetic, specs)
            report.generate(real_prepared, synthetic_prepared, metadata, verbose=False)
            score = float(report.get_score())
    except Exception as exc:  # noqa: BLE001 - a third-party failure becomes a reported reason
        _log.warning("sdmetrics QualityReport failed: %s", exc)
        return SDMetricsResult(None, f"sdmetrics {version} failed: {type(exc).__name__}: {exc}")
    if score != score:  # NaN
        return SDMetricsResult(None, f"sdmetrics {version} returned NaN")
    return SDMetricsResult(score, f"sdmetrics {version}")
