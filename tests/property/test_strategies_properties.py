"""Hypothesis properties of the aggregation kernels and rules."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aggregator.strategies import (
    BufferSpec,
    ClientUpdate,
    CoordinateMedian,
    FedAvg,
    FedBuff,
    Krum,
    columns,
)
from aggregator.strategies.kernels import (
    clip_by_norm,
    coordinate_median,
    krum_select,
    l2_norm,
    trimmed_mean,
    weighted_mean,
)
from aggregator.strategies.staleness import make_staleness
from fedsynth.codec.quantize import quantize, read_levels

FINITE = st.floats(-1e3, 1e3, allow_nan=False, width=32)
DIM = st.integers(1, 6)
settings.register_profile("fedsynth", max_examples=60, deadline=None)
settings.load_profile("fedsynth")


def matrices(min_rows: int = 1, max_rows: int = 7):
    return st.tuples(st.integers(min_rows, max_rows), DIM).flatmap(
        lambda s: arrays(np.float64, s, elements=FINITE)
    )


@given(
    arrays(np.float64, st.integers(1, 8), elements=FINITE),
    st.integers(1, 6),
    st.lists(st.floats(0.01, 100), min_size=6, max_size=6),
)
def test_weighted_mean_of_identical_vectors_is_that_vector(vec, k, weights) -> None:
    stacked = np.tile(vec, (k, 1))
    np.testing.assert_allclose(
        weighted_mean(stacked, np.array(weights[:k])), vec, rtol=1e-9, atol=1e-9
    )


@given(matrices(), st.randoms(use_true_random=False))
def test_order_free_kernels_are_permutation_invariant(x, rnd) -> None:
    perm = list(range(x.shape[0]))
    rnd.shuffle(perm)
    w = np.arange(1, x.shape[0] + 1, dtype=np.float64)
    np.testing.assert_allclose(
        weighted_mean(x[perm], w[perm]), weighted_mean(x, w), rtol=1e-9, atol=1e-9
    )
    np.testing.assert_array_equal(coordinate_median(x[perm]), coordinate_median(x))
    trim = (x.shape[0] - 1) // 2
    np.testing.assert_allclose(
        trimmed_mean(x[perm], trim), trimmed_mean(x, trim), rtol=1e-9, atol=1e-9
    )


@given(matrices(min_rows=4), st.floats(1e6, 1e9))
def test_median_and_trimmed_mean_ignore_one_huge_outlier(x, huge) -> None:
    honest_lo, honest_hi = x.min(axis=0), x.max(axis=0)
    attacked = np.vstack([x, np.full(x.shape[1], huge)])
    for agg in (coordinate_median(attacked), trimmed_mean(attacked, 1)):
        assert np.all(agg >= honest_lo - 1e-9) and np.all(agg <= honest_hi + 1e-9)


@given(matrices(min_rows=5, max_rows=8), st.floats(1e5, 1e8), st.integers(1, 3))
def test_krum_never_selects_an_obvious_outlier(x, far, m) -> None:
    attacked = np.vstack([x, np.full(x.shape[1], far)])
    picked = krum_select(attacked, n_byzantine=1, n_selected=m)
    assert attacked.shape[0] - 1 not in picked.tolist()


@given(
    st.sampled_from(["constant", "polynomial", "hinge"]),
    st.floats(0, 5),
    st.floats(0, 10),
    st.integers(0, 200),
)
def test_staleness_is_one_at_zero_and_non_increasing(kind, a, b, t) -> None:
    s = make_staleness(kind, a=a, b=b)
    assert s(0) == 1.0
    assert 0.0 < s(t + 1) <= s(t) <= 1.0


@given(arrays(np.float64, st.integers(1, 8), elements=FINITE), st.floats(0.01, 100))
def test_clipping_bounds_the_norm_and_keeps_direction(vec, bound) -> None:
    clipped = clip_by_norm(vec, bound)
    assert np.linalg.norm(clipped) <= bound * (1 + 1e-9)
    if np.linalg.norm(vec) <= bound:
        np.testing.assert_array_equal(clipped, vec)
    else:
        np.testing.assert_allclose(clipped * (np.linalg.norm(vec) / bound), vec, rtol=1e-9)


@given(
    arrays(np.float32, st.integers(0, 40), elements=st.floats(width=32)),
    st.sampled_from([1, 7, 1 << 16, (1 << 16) + 1, 3 << 16]),
)
def test_l2_norm_is_the_float64_norm_and_finite_exactly_for_finite_values(vec, size) -> None:
    """Block sums against numpy's whole-vector norm; a vector of ``size`` values (across the
    2^16 blocks) built from the drawn ones, so that a bad value lands in any block."""
    big = np.resize(vec, size) if vec.size else np.zeros(size, np.float32)
    for v in (vec, big):
        norm = l2_norm(v)
        finite = bool(np.all(np.isfinite(v)))
        assert np.isfinite(norm) == finite
        if finite:
            np.testing.assert_allclose(
                norm, np.linalg.norm(v.astype(np.float64)), rtol=1e-12, atol=0
            )


def _updates(x: np.ndarray) -> list[ClientUpdate]:
    return [
        ClientUpdate(f"u{i}", f"s{i}", 0, i + 1, row.astype(np.float32)) for i, row in enumerate(x)
    ]


@given(matrices(min_rows=5, max_rows=5), st.randoms(use_true_random=False))
def test_buffered_rules_give_the_same_bits_in_any_arrival_order(x, rnd) -> None:
    """A buffer is combined in canonical (site, update id) order: the same set of updates gives
    the same model bit for bit however it arrived (what makes resume after a crash exact)."""
    ups = _updates(x)
    shuffled = ups[:]
    rnd.shuffle(shuffled)
    params = np.zeros(x.shape[1], dtype=np.float32)
    rules = (FedAvg(5), FedBuff(BufferSpec(5)), CoordinateMedian(BufferSpec(5)),
             Krum(BufferSpec(5), n_byzantine=1))
    for strategy in rules:
        results = []
        for order in (ups, shuffled):
            state = strategy.initial_state(x.shape[1])
            for u in order:
                r = strategy.on_update(state, u, 0, params)
                state = r.state
            results.append(r.params)
        assert np.array_equal(results[0], results[1]), strategy


@given(matrices(min_rows=3, max_rows=7), st.randoms(use_true_random=False))
def test_a_buffer_is_taken_in_canonical_order_whatever_the_arrival_order(x, rnd) -> None:
    from aggregator.strategies.base import StrategyState
    from aggregator.strategies.buffered import take_buffer

    ups = _updates(x)
    shuffled = ups[:]
    rnd.shuffle(shuffled)
    fn = make_staleness("constant")
    _, first = take_buffer(StrategyState(tuple(ups)), 0, fn)
    _, second = take_buffer(StrategyState(tuple(shuffled)), 0, fn)
    assert [u.update_id for u in second.updates] == [u.update_id for u in ups]
    assert np.array_equal(first.deltas, second.deltas)
    assert np.array_equal(first.weights, second.weights)


@contextmanager
def _column_blocks(block: int):
    """Cut flushes into ``block``-wide column blocks (restored afterwards)."""
    saved = columns.BLOCK
    columns.BLOCK = block
    try:
        yield
    finally:
        columns.BLOCK = saved


def _flushed(strategy, ups: list[ClientUpdate], params: np.ndarray) -> np.ndarray:
    state = strategy.initial_state(params.size)
    for u in ups:
        result = strategy.on_update(state, u, 0, params)
        state = result.state
    assert result.params is not None
    return result.params


@given(
    st.tuples(st.integers(3, 6), st.integers(1, 40)).flatmap(
        lambda shape: arrays(np.float64, shape, elements=FINITE)
    ),
    st.integers(1, 7),
)
def test_column_blocks_give_the_same_bits_as_one_pass(x, block) -> None:
    """Coordinate-wise flushes cut into column blocks equal the single pass bit for bit, and
    the FedBuff flush equals the stacked weighted mean of :mod:`kernels` exactly."""
    from aggregator.strategies import TrimmedMean

    k = x.shape[0]
    params = np.linspace(-1, 1, x.shape[1]).astype(np.float32)
    rules = [
        FedBuff(BufferSpec(k, server_lr=0.7)),
        CoordinateMedian(BufferSpec(k)),
        TrimmedMean(BufferSpec(k), beta=0.2),
        FedAvg(sites_per_round=k),
    ]
    ups = _updates(x)
    for rule in rules:
        whole = _flushed(rule, ups, params)
        with _column_blocks(block):
            blocked = _flushed(rule, ups, params)
        assert np.array_equal(whole, blocked), rule.name
        assert not blocked.flags.writeable
    weights = np.array([u.n_samples for u in ups], dtype=np.float64)
    stacked = weighted_mean(np.stack([u.delta for u in ups]).astype(np.float64), weights)
    expected = (params.astype(np.float64) + 0.7 * stacked).astype(np.float32)
    assert np.array_equal(_flushed(rules[0], ups, params), expected)


def _quantized(x: np.ndarray, bits: int) -> list[ClientUpdate]:
    rng = np.random.default_rng(7)
    return [
        ClientUpdate(f"u{i}", f"s{i}", 0, i + 1, read_levels(quantize(row, bits, rng)))
        for i, row in enumerate(x)
    ]


@given(
    st.tuples(st.integers(3, 6), st.integers(1, 40)).flatmap(
        lambda shape: arrays(np.float64, shape, elements=FINITE)
    ),
    st.integers(1, 7),
    st.sampled_from([1, 8, 16]),
)
def test_quantized_deltas_give_what_their_values_give(x, block, bits) -> None:
    """Deltas kept as their levels: every rule cuts into column blocks with the same bits; the
    weighted-mean rules (summing levels times ``weight * step``) agree with the same rule on the
    float64 values to float32 precision (or, for a value that cancels to near zero, to float64
    roundings of the largest value), and the rules that stack the values exactly."""
    from aggregator.strategies import TrimmedMean

    k = x.shape[0]
    params = np.linspace(-1, 1, x.shape[1]).astype(np.float32)
    ups = _quantized(x, bits)
    values = [
        ClientUpdate(u.update_id, u.site_id, 0, u.n_samples,
                     u.delta.values(slice(None), np.empty(u.delta.size)))
        for u in ups
    ]
    for rule, exact in (
        (FedBuff(BufferSpec(k, server_lr=0.7)), False),
        (FedAvg(sites_per_round=k), False),
        (CoordinateMedian(BufferSpec(k)), True),
        (TrimmedMean(BufferSpec(k), beta=0.2), True),
    ):
        whole = _flushed(rule, ups, params)
        with _column_blocks(block):
            assert np.array_equal(_flushed(rule, ups, params), whole), rule.name
        reference = _flushed(rule, values, params)
        if exact:
            assert np.array_equal(whole, reference), rule.name
        else:  # float64 sums in another order: a few roundings of the largest value apart
            atol = 2**-40 * float(np.abs(x).max())
            assert np.allclose(whole, reference, rtol=2**-21, atol=atol), rule.name


@given(arrays(np.float64, st.integers(1, 300), elements=FINITE), st.sampled_from([1, 8, 16]))
def test_l2_norm_of_levels_is_the_norm_of_their_values(vec, bits) -> None:
    q = read_levels(quantize(vec, bits, np.random.default_rng(0)))
    values = q.values(slice(None), np.empty(q.size))
    assert np.isclose(l2_norm(q), float(np.linalg.norm(values)), rtol=1e-12, atol=1e-300)
