"""Gower distances, DCR shares and membership inference on hand-checkable data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedsynth.eval.privacy as privacy_module
from fedsynth.eval.columns import ColumnKind, ColumnSpec
from fedsynth.eval.privacy import (
    closer_to_train_share,
    encode_rows,
    measure_privacy,
    nearest_distances,
)

SPECS = (ColumnSpec("v", ColumnKind.NUMERIC), ColumnSpec("c", ColumnKind.CATEGORICAL))


def _gaussian(n: int, rng: np.random.Generator) -> pd.DataFrame:
    x = rng.normal(size=(n, 3))
    return pd.DataFrame({
        "a": x[:, 0], "b": x[:, 0] + x[:, 1], "c": x[:, 2],
        "g": rng.choice(["p", "q", "r"], size=n),
    })


def _specs(df: pd.DataFrame) -> tuple[ColumnSpec, ...]:
    kinds = {"a": "numeric", "b": "numeric", "c": "numeric", "g": "categorical"}
    return tuple(ColumnSpec(c, ColumnKind(kinds[c])) for c in df.columns)


def test_gower_distance_known_values() -> None:
    reference = pd.DataFrame({"v": [0.0, 10.0], "c": ["a", "b"]})
    query = pd.DataFrame({"v": [5.0, 0.0, 30.0], "c": ["a", "a", "b"]})
    ref, qry = encode_rows([reference, query], SPECS, 1)
    # (|5-0|/10 + 0)/2 = 0.25 to row 0; (0.5 + 1)/2 = 0.75 to row 1
    # row 2 lies outside the real range: its numeric gap is capped at 1
    assert nearest_distances(qry, ref) == pytest.approx([0.25, 0.0, 0.5])


def test_gower_missing_matches_missing_only() -> None:
    reference = pd.DataFrame({"v": [np.nan, 0.0, 10.0], "c": ["a", "a", None]})
    ref, qry = encode_rows([reference, pd.DataFrame({"v": [np.nan], "c": [None]})], SPECS, 1)
    # to row 0: 0 + 1 (a vs missing); row 1: 1 + 1; row 2: 1 + 0
    assert nearest_distances(qry, ref) == pytest.approx([0.5])
    ref2, qry2 = encode_rows([reference, pd.DataFrame({"v": [np.nan], "c": ["a"]})], SPECS, 1)
    assert nearest_distances(qry2, ref2) == pytest.approx([0.0])


def test_chunked_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    frame = _gaussian(120, rng)
    frame.loc[rng.choice(120, 20), "a"] = np.nan
    train, synth = encode_rows([frame.iloc[:70], frame.iloc[70:]], _specs(frame), 1)
    whole = nearest_distances(synth, train)
    monkeypatch.setattr(privacy_module, "_CHUNK_ELEMENTS", 7 * len(train))
    chunked = nearest_distances(synth, train)
    np.testing.assert_allclose(chunked, whole)
    brute = [
        min(privacy_module._distance_block(synth.rows(i, i + 1), train.rows(j, j + 1))[0, 0]
            for j in range(len(train)))
        for i in range(len(synth))
    ]
    np.testing.assert_allclose(whole, brute)


def test_closer_to_train_share_size_adjustment() -> None:
    train, holdout = np.array([0.0, 0.0, 0.3, 0.5]), np.array([0.2, 0.2, 0.1, 0.5])
    raw, expected, adjusted = closer_to_train_share(train, holdout, 80, 20)
    assert expected == pytest.approx(0.8)
    assert raw == pytest.approx((1 + 1 + 0 + 0.8) / 4)
    ones = closer_to_train_share(np.zeros(5), np.ones(5), 80, 20)
    assert ones == pytest.approx((1.0, 0.8, 1.0))
    neutral = closer_to_train_share(np.ones(5), np.ones(5), 80, 20)
    assert neutral[2] == pytest.approx(0.5)
    assert adjusted == pytest.approx((0.7 / 0.8) / (0.7 / 0.8 + 0.3 / 0.2))


def test_copied_training_rows_fail_both_checks() -> None:
    rng = np.random.default_rng(1)
    train, holdout = _gaussian(200, rng), _gaussian(60, rng)
    report = measure_privacy(train, train.copy(), holdout, _specs(train))
    assert report.dcr_train_p5 == 0.0 and report.dcr_train_median == 0.0
    assert report.exact_copy_share == 1.0
    assert report.closer_to_train_share == pytest.approx(1.0)
    assert report.membership_auc > 0.99
    assert not report.dcr_passed and not report.membership_passed
    assert sum(report.histogram.train) == 200 and report.histogram.train[0] == 200


def test_fresh_sample_passes_both_checks() -> None:
    rng = np.random.default_rng(2)
    train, holdout, synth = _gaussian(300, rng), _gaussian(100, rng), _gaussian(300, rng)
    report = measure_privacy(train, synth, holdout, _specs(train))
    assert report.exact_copy_share == 0.0
    assert report.closer_to_train_share == pytest.approx(0.5, abs=0.1)
    assert report.membership_auc == pytest.approx(0.5, abs=0.08)
    assert report.dcr_passed and report.membership_passed
    assert report.dcr_train_p5 > 0.0
