"""One call to evaluate synthetic data, and one to write report.json and report.html.

``evaluate`` runs the three families of metrics (``fidelity``, ``utility``, ``privacy``) on the
same columns; ``write_report`` stores the numbers as JSON and renders a self-contained HTML page
with the plots embedded, for an analyst at a hospital to read without any other file.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.errors import DataValidationError
from fedsynth.eval.columns import ColumnSpec, check_columns
from fedsynth.eval.fidelity import FidelityReport, measure_fidelity
from fedsynth.eval.privacy import measure_privacy
from fedsynth.eval.results import EvaluationReport
from fedsynth.eval.sdmetrics_quality import sdmetrics_quality
from fedsynth.eval.utility import Target, UtilityReport, measure_utility

__all__ = ["EvaluationReport", "evaluate", "split_holdout", "write_report"]

_log = logging.getLogger(__name__)


def split_holdout(
    real: pd.DataFrame, rng: np.random.Generator, holdout_fraction: float = 0.2
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits real rows at random into training and held-out rows.

    Args:
        real: All real rows.
        rng: Source of the permutation (pass a seeded Generator for a fixed split).
        holdout_fraction: Share of rows held out, in (0, 1).

    Returns:
        ``(train, holdout)``, each with a fresh index.

    Raises:
        DataValidationError: If either part would be empty.
    """
    n_holdout = int(round(len(real) * holdout_fraction))
    if not 0.0 < holdout_fraction < 1.0 or n_holdout == 0 or n_holdout == len(real):
        raise DataValidationError(
            f"cannot hold out {holdout_fraction:.0%} of {len(real)} rows: a part would be empty"
        )
    order = rng.permutation(len(real))
    holdout = real.iloc[np.sort(order[:n_holdout])].reset_index(drop=True)
    train = real.iloc[np.sort(order[n_holdout:])].reset_index(drop=True)
    return train, holdout


def _utility_or_reason(
    frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    specs: Sequence[ColumnSpec],
    target: Target | None,
) -> tuple[UtilityReport | None, str]:
    if target is None:
        return None, "no target column given; utility not computed"
    try:
        return measure_utility(*frames, specs, target), f"target: {target.description}"
    except DataValidationError as exc:
        _log.warning("utility not computed: %s", exc)
        return None, f"utility not computed: {exc}"


def evaluate(
    real_train: pd.DataFrame,
    synthetic: pd.DataFrame,
    real_holdout: pd.DataFrame,
    specs: Sequence[ColumnSpec],
    target: Target | None,
    *,
    with_sdmetrics: bool = True,
    notes: Sequence[str] = (),
) -> EvaluationReport:
    """Measures fidelity, utility and privacy of synthetic data.

    Args:
        real_train: Real rows the generator was trained on.
        synthetic: Synthetic rows.
        real_holdout: Real rows the generator never saw (for utility testing and privacy).
        specs: The columns to evaluate and their kinds; other columns are ignored.
        target: Binary target for utility, or None to skip utility.
        with_sdmetrics: Also compute the SDMetrics QualityReport score when installed.
        notes: Free-text facts to carry into the report (e.g. how the holdout was chosen).

    Returns:
        The frozen report.

    Raises:
        DataValidationError: If a column is missing or a frame is empty.
    """
    specs = tuple(specs)
    check_columns(specs, real=real_train, synthetic=synthetic, holdout=real_holdout)
    fid = measure_fidelity(real_train, synthetic, specs)
    if with_sdmetrics:
        sdm = sdmetrics_quality(real_train, synthetic, specs)
        fid = _with_sdmetrics(fid, sdm.score, sdm.note)
    else:
        fid = _with_sdmetrics(fid, None, "disabled by the caller")
    util, util_note = _utility_or_reason((real_train, synthetic, real_holdout), specs, target)
    priv = measure_privacy(real_train, synthetic, real_holdout, specs)
    _log.info(
        "evaluated quality=%.3f closer_to_train=%.3f membership_auc=%.3f",
        fid.quality_score, priv.closer_to_train_share, priv.membership_auc,
    )
    return EvaluationReport(
        specs, len(real_train), len(synthetic), len(real_holdout),
        fid, util, util_note, priv, tuple(notes),
    )


def _with_sdmetrics(fid: FidelityReport, score: float | None, note: str) -> FidelityReport:
    return dataclasses.replace(fid, sdmetrics_quality=score, sdmetrics_note=note)


def write_report(
    report: EvaluationReport, real: pd.DataFrame, synthetic: pd.DataFrame, out_dir: Path | str
) -> tuple[Path, Path]:
    """Writes ``report.json`` and a self-contained ``report.html`` into ``out_dir``.

    Args:
        report: The result of :func:`evaluate`.
        real: The real training rows (for the marginal and correlation plots).
        synthetic: The synthetic rows.
        out_dir: Folder, created if absent.

    Returns:
        Paths of the JSON and HTML files.
    """
    from fedsynth.eval.html_page import render_html  # matplotlib only when writing

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(report.to_json() + "\n", encoding="utf-8")
    html_path.write_text(render_html(report, real, synthetic), encoding="utf-8")
    _log.info("wrote %s and %s", json_path, html_path)
    return json_path, html_path
