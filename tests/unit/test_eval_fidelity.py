"""Fidelity metrics on small hand-computed cases."""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from fedsynth.errors import DataValidationError
from fedsynth.eval.columns import (
    ColumnKind,
    ColumnSpec,
    categorical_values,
    column_specs_from_frame,
)
from fedsynth.eval.fidelity import (
    contingency_similarity,
    correlation_similarity,
    ks_statistic,
    measure_fidelity,
    tv_distance,
)
from fedsynth.eval.sdmetrics_quality import sdmetrics_quality

NUM, CAT = ColumnKind.NUMERIC, ColumnKind.CATEGORICAL


def _frame(n: int, rng: np.random.Generator) -> pd.DataFrame:
    x = rng.normal(size=n)
    return pd.DataFrame({
        "x": x,
        "y": 2 * x + rng.normal(scale=0.3, size=n),
        "g": np.where(x > 0, "hi", "lo"),
        "flag": [bool(v) for v in x > 1],
    })


def test_ks_statistic_known_value() -> None:
    real, synth = np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 4.0, 5.0, 6.0])
    assert ks_statistic(real, synth) == pytest.approx(0.5)
    assert ks_statistic(real, real) == 0.0
    assert ks_statistic(real, np.array([np.nan])) == 1.0


def test_tv_distance_known_value_and_ignores_missing() -> None:
    real = pd.Series(["a", "a", "b", "b", np.nan])
    synth = pd.Series(["a", "b", "b", "b"])
    assert tv_distance(real, synth) == pytest.approx(0.25)
    assert tv_distance(real, pd.Series(["c", "c"])) == pytest.approx(1.0)


def test_correlation_similarity_opposite_signs_scores_zero() -> None:
    a = np.arange(10.0)
    r_real, r_syn, score = correlation_similarity(a, a, a, -a)
    assert (r_real, r_syn, score) == (pytest.approx(1.0), pytest.approx(-1.0), pytest.approx(0.0))


def test_correlation_uses_pairwise_complete_rows() -> None:
    a = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    b = np.array([1.0, 2.0, 100.0, np.nan, 5.0, 6.0])
    r_real, _, score = correlation_similarity(a, b, a, b)
    assert r_real == pytest.approx(1.0)
    assert score == pytest.approx(1.0)


def test_correlation_undefined_on_constant_real_column() -> None:
    const, a = np.ones(5), np.arange(5.0)
    assert correlation_similarity(const, a, a, a)[2] is None


def test_contingency_similarity_swapped_pairs_scores_zero() -> None:
    real = (np.array([0, 1, 0, 1]), np.array([0, 1, 0, 1]))
    swapped = (np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0]))
    assert contingency_similarity(real, real, (2, 2)) == pytest.approx(1.0)
    assert contingency_similarity(real, swapped, (2, 2)) == pytest.approx(0.0)
    # missing is a level of its own: (missing, 0) and (missing, 1) match no real cell
    missing = (np.array([-1, -1, -1, -1]), np.array([0, 1, 0, 1]))
    assert contingency_similarity(real, missing, (2, 2)) == pytest.approx(0.0)
    half = (np.array([0, 1, -1, -1]), np.array([0, 1, 0, 1]))
    assert contingency_similarity(real, half, (2, 2)) == pytest.approx(0.5)


def test_identical_frames_score_one() -> None:
    df = _frame(300, np.random.default_rng(0))
    report = measure_fidelity(df, df.copy(), column_specs_from_frame(df))
    assert report.column_shapes_score == pytest.approx(1.0)
    assert report.pair_trends_score == pytest.approx(1.0)
    assert report.quality_score == pytest.approx(1.0)
    assert report.missingness_score == pytest.approx(1.0)
    assert len(report.pair_trends) == 6


def test_independent_shuffle_keeps_shapes_loses_trends() -> None:
    rng = np.random.default_rng(1)
    df = _frame(500, rng)
    shuffled = pd.DataFrame({c: rng.permutation(df[c].to_numpy()) for c in df.columns})
    report = measure_fidelity(df, shuffled, column_specs_from_frame(df))
    assert report.column_shapes_score == pytest.approx(1.0)
    assert report.pair_trends_score is not None and report.pair_trends_score < 0.8
    xy = next(t for t in report.pair_trends if (t.column_a, t.column_b) == ("x", "y"))
    assert xy.metric == "correlation" and xy.real is not None and xy.real > 0.9
    assert xy.score is not None and xy.score < 0.6


def test_missingness_difference_reported() -> None:
    real = pd.DataFrame({"v": [1.0, 2.0, np.nan, np.nan], "c": ["a", "b", "a", "b"]})
    synth = pd.DataFrame({"v": [1.0, 2.0, 3.0, 4.0], "c": ["a", None, "a", "b"]})
    report = measure_fidelity(real, synth, [ColumnSpec("v", NUM), ColumnSpec("c", CAT)])
    v, c = report.column_shapes
    assert (v.missing_real, v.missing_synthetic, v.missing_difference) == (0.5, 0.0, 0.5)
    assert (c.missing_real, c.missing_synthetic) == (0.0, 0.25)
    assert report.missingness_score == pytest.approx(1.0 - (0.5 + 0.25) / 2)


def test_empty_synthetic_column_scores_zero_and_missing_column_raises() -> None:
    real = pd.DataFrame({"v": [1.0, 2.0, 3.0]})
    report = measure_fidelity(real, pd.DataFrame({"v": [np.nan] * 3}), [ColumnSpec("v", NUM)])
    assert report.column_shapes[0].score == 0.0
    assert report.pair_trends_score is None
    with pytest.raises(DataValidationError, match="lacks columns"):
        measure_fidelity(real, pd.DataFrame({"w": [1.0]}), [ColumnSpec("v", NUM)])


def test_column_specs_from_frame_kinds() -> None:
    df = pd.DataFrame({"id": [1, 2], "age": [40, 50], "b": [True, False], "o": [True, None],
                       "s": ["x", "y"], "f": [1.5, np.nan]})
    specs = column_specs_from_frame(df, exclude={"id"})
    assert [(s.name, s.kind) for s in specs] == [
        ("age", NUM), ("b", CAT), ("o", CAT), ("s", CAT), ("f", NUM)
    ]
    assert ColumnSpec("z", "numeric").kind is NUM  # type: ignore[arg-type]


def test_categorical_values_unifies_representations() -> None:
    values = categorical_values(pd.Series([True, 1.0, "x", None, np.nan, 2]))
    assert values.iloc[:3].tolist() == ["True", "1", "x"]
    assert values.isna().tolist() == [False, False, False, True, True, False]


def test_sdmetrics_absent_reports_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def no_sdmetrics(name: str, package: str | None = None) -> ModuleType:
        if name.startswith("sdmetrics"):
            raise ImportError("No module named 'sdmetrics'")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", no_sdmetrics)
    df = _frame(50, np.random.default_rng(2))
    result = sdmetrics_quality(df, df, column_specs_from_frame(df))
    assert result.score is None
    assert "not installed" in result.note


def test_sdmetrics_score_when_installed() -> None:
    pytest.importorskip("sdmetrics")
    df = _frame(200, np.random.default_rng(3))
    result = sdmetrics_quality(df, df.copy(), column_specs_from_frame(df))
    assert result.score == pytest.approx(1.0, abs=1e-6)
    assert result.note.startswith("sdmetrics ")
