"""Figures for the evaluation report, rendered off-screen (Agg) as base64 PNG data URIs.

Every function returns a ``data:image/png;base64,...`` string so the HTML report embeds its images
and needs no other file.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fedsynth.eval.columns import (  # noqa: E402
    ColumnKind,
    ColumnSpec,
    categorical_values,
    numeric_values,
)
from fedsynth.eval.fidelity import FidelityReport  # noqa: E402
from fedsynth.eval.privacy import DcrHistogram  # noqa: E402

__all__ = [
    "correlation_difference_plot",
    "dcr_plot",
    "figure_to_data_uri",
    "marginal_plot",
    "pair_trend_plot",
]

REAL_COLOR = "#1f77b4"
SYNTH_COLOR = "#ff7f0e"
_MAX_LEVELS = 12
_DPI = 80


def figure_to_data_uri(fig: Figure) -> str:
    """Encodes a figure as a PNG data URI and closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _missing_label(real: float, synth: float) -> str:
    return f"missing: real {real:.0%}, synthetic {synth:.0%}"


def _bin_edges(values: np.ndarray, target_bins: int = 24) -> list[float]:
    """About ``target_bins`` bins over the central 99% of values; whole-number bins for integers."""
    low, high = (float(q) for q in np.quantile(values, [0.005, 0.995]))
    if np.all(values == np.round(values)):
        width = max(1, int(np.ceil((high - low + 1) / target_bins)))
        return [float(e) for e in np.arange(low - 0.5, high + 0.5 + width, width)]
    return [float(e) for e in np.linspace(low, high if high > low else low + 1.0, target_bins + 1)]


def _numeric_marginal(ax: Axes, real: np.ndarray, synth: np.ndarray) -> None:
    a, b = real[~np.isnan(real)], synth[~np.isnan(synth)]
    both = np.concatenate([a, b])
    if both.size == 0:
        ax.text(0.5, 0.5, "no observed values", ha="center", transform=ax.transAxes)
        return
    edges = _bin_edges(both)
    if a.size:
        ax.hist(np.clip(a, edges[0], edges[-1]), bins=edges, density=True, color=REAL_COLOR,
                alpha=0.45, histtype="stepfilled", label="real")
    if b.size:
        ax.hist(np.clip(b, edges[0], edges[-1]), bins=edges, density=True, color=SYNTH_COLOR,
                histtype="step", lw=1.8, label="synthetic")
    ax.set_ylabel("density")


def _categorical_marginal(ax: Axes, real: pd.Series, synth: pd.Series) -> None:
    p = real.fillna("(missing)").value_counts(normalize=True)
    q = synth.fillna("(missing)").value_counts(normalize=True)
    levels = list(p.index[:_MAX_LEVELS]) + [v for v in q.index if v not in p.index]
    levels = levels[:_MAX_LEVELS]
    x = np.arange(len(levels))
    ax.bar(x - 0.2, [p.get(v, 0.0) for v in levels], 0.4, color=REAL_COLOR, label="real")
    ax.bar(x + 0.2, [q.get(v, 0.0) for v in levels], 0.4, color=SYNTH_COLOR, label="synthetic")
    ax.set_xticks(x, [str(v)[:14] for v in levels], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("share of rows")


def marginal_plot(
    spec: ColumnSpec, real: pd.Series, synthetic: pd.Series, score: float | None
) -> str:
    """Real against synthetic distribution of one column, as a data URI."""
    fig, ax = plt.subplots(figsize=(4.2, 2.9))
    if spec.kind is ColumnKind.NUMERIC:
        a, b = numeric_values(real), numeric_values(synthetic)
        _numeric_marginal(ax, a, b)
        missing = _missing_label(float(np.isnan(a).mean()), float(np.isnan(b).mean()))
    else:
        a_cat, b_cat = categorical_values(real), categorical_values(synthetic)
        _categorical_marginal(ax, a_cat, b_cat)
        missing = _missing_label(float(a_cat.isna().mean()), float(b_cat.isna().mean()))
    shown = "n/a" if score is None else f"{score:.3f}"
    ax.set_title(f"{spec.name}  (score {shown})\n{missing}", fontsize=9)
    ax.legend(fontsize=7)
    return figure_to_data_uri(fig)


def _correlations(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    values = pd.DataFrame({n: numeric_values(frame[n]) for n in names})
    matrix: np.ndarray = values.corr(method="pearson", min_periods=3).to_numpy()
    return matrix


def _heatmap(matrix: np.ndarray, names: Sequence[str], title: str, vmin: float, cmap: str) -> str:
    size = 1.2 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(np.ma.masked_invalid(matrix), vmin=vmin, vmax=1.0, cmap=cmap)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=10)
    return figure_to_data_uri(fig)


def correlation_difference_plot(
    real: pd.DataFrame, synthetic: pd.DataFrame, specs: Sequence[ColumnSpec]
) -> str | None:
    """Heatmap of real minus synthetic Pearson correlations of numeric columns (None if < 2)."""
    names = [s.name for s in specs if s.kind is ColumnKind.NUMERIC]
    if len(names) < 2:
        return None
    diff = _correlations(real, names) - _correlations(synthetic, names)
    np.fill_diagonal(diff, np.nan)
    return _heatmap(diff, names, "Correlation: real minus synthetic", -1.0, "RdBu_r")


def pair_trend_plot(report: FidelityReport) -> str | None:
    """Heatmap of ``1 - score`` for every column pair: how much each relation is lost."""
    names = [c.column for c in report.column_shapes]
    if len(names) < 2:
        return None
    index = {n: i for i, n in enumerate(names)}
    gap = np.full((len(names), len(names)), np.nan)
    for t in report.pair_trends:
        if t.score is not None:
            i, j = index[t.column_a], index[t.column_b]
            gap[i, j] = gap[j, i] = 1.0 - t.score
    return _heatmap(gap, names, "Pair trend gap (0 = relation kept)", 0.0, "Reds")


def dcr_plot(histogram: DcrHistogram) -> str:
    """Histograms of synthetic-to-train and synthetic-to-holdout distances, as shares."""
    edges = np.asarray(histogram.edges)
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    for counts, color, label in (
        (histogram.train, SYNTH_COLOR, "synthetic to training rows"),
        (histogram.holdout, REAL_COLOR, "synthetic to held-out rows"),
    ):
        shares = np.asarray(counts, dtype=float) / max(sum(counts), 1)
        ax.stairs(shares, edges, color=color, lw=2, label=label)
    ax.set_xlabel("distance to closest real record (Gower, 0 = identical)")
    ax.set_ylabel("share of synthetic rows")
    ax.legend(fontsize=8)
    return figure_to_data_uri(fig)
