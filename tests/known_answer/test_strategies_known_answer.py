"""Every aggregation rule against numbers computed by hand (shown in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.strategies import (
    BufferSpec,
    ClientUpdate,
    CoordinateMedian,
    FedAdam,
    FedAsync,
    FedAvg,
    FedBuff,
    Krum,
    NormClipping,
    Strategy,
    StrategyConfig,
    TrimmedMean,
    build_strategy,
)
from aggregator.strategies.kernels import krum_scores
from aggregator.strategies.staleness import hinge_staleness, polynomial_staleness

X0 = np.array([1.0, 2.0], dtype=np.float32)


def upd(uid: str, delta: list[float], n: int = 1, base: int = 0, site: str | None = None):
    return ClientUpdate(uid, site or f"site-{uid}", base, n, np.array(delta, dtype=np.float32))


def feed(strategy: Strategy, updates: list[ClientUpdate], version: int = 0):
    state = strategy.initial_state(2)
    result = None
    for u in updates:
        result = strategy.on_update(state, u, version, X0)
        state = result.state
    assert result is not None
    return result


def test_staleness_values() -> None:
    assert polynomial_staleness(3, a=0.5) == pytest.approx(0.5)  # (1+3)^-0.5
    assert polynomial_staleness(0, a=2.0) == 1.0
    assert hinge_staleness(4, a=10, b=4) == 1.0  # t <= b
    assert hinge_staleness(5, a=10, b=4) == pytest.approx(1 / 11)  # 1/(10*1+1)
    assert hinge_staleness(3, a=2, b=1) == pytest.approx(1 / 5)  # 1/(2*2+1)


def test_fedavg_weights_by_samples() -> None:
    # (1*[1,0] + 3*[0,4]) / 4 = [0.25, 3]; x = [1,2] + that
    r = feed(FedAvg(2), [upd("a", [1, 0], n=1), upd("b", [0, 4], n=3)])
    np.testing.assert_allclose(r.params, [1.25, 5.0])
    assert [a.weight for a in r.applied] == [1.0, 3.0]


def test_fedasync_polynomial() -> None:
    # t = 3 - 1 = 2, s = 1/3, alpha_t = 0.5/3 = 1/6; x + [6,-12]/6 = [2, 0]
    cfg = {"name": "fedasync", "alpha": 0.5, "staleness": {"kind": "polynomial", "a": 1.0}}
    strategy = build_strategy(StrategyConfig.model_validate(cfg))
    r = feed(strategy, [upd("a", [6, -12], base=1)], version=3)
    np.testing.assert_allclose(r.params, [2.0, 0.0], atol=1e-6)
    assert r.applied[0].staleness == 2
    assert r.applied[0].weight == pytest.approx(1 / 6)


def test_fedasync_hinge_uses_full_weight_before_the_hinge() -> None:
    cfg = {"name": "fedasync", "alpha": 1.0, "staleness": {"kind": "hinge", "a": 2, "b": 1}}
    strategy = build_strategy(StrategyConfig.model_validate(cfg))
    r = feed(strategy, [upd("a", [5, 5], base=0)], version=1)  # t=1 <= b: s=1
    np.testing.assert_allclose(r.params, [6.0, 7.0])
    r = feed(strategy, [upd("a", [5, 5], base=0)], version=3)  # t=3: s=1/5
    np.testing.assert_allclose(r.params, [2.0, 3.0])


def test_fedbuff_staleness_weighted_mean_with_server_lr() -> None:
    # version 1: a (t=0, s=1, n=2) w=2; b (t=1, s=1/2, n=4) w=2
    # mean = ([4,0]*2 + [0,4]*2)/4 = [2,2]; x + 0.5*[2,2] = [2,3]
    from aggregator.strategies.staleness import make_staleness

    strategy = FedBuff(BufferSpec(2, 0.5, make_staleness("polynomial", a=1.0)))
    first = strategy.on_update(strategy.initial_state(2), upd("a", [4, 0], 2, 1), 1, X0)
    assert first.params is None and len(first.state.buffer) == 1
    r = strategy.on_update(first.state, upd("b", [0, 4], 4, 0), 1, X0)
    np.testing.assert_allclose(r.params, [2.0, 3.0])
    assert [(a.staleness, a.weight) for a in r.applied] == [(0, 2.0), (1, 2.0)]
    assert r.state.buffer == ()


def test_fedadam_two_steps() -> None:
    # D=[1,-2]: m=0.1D=[.1,-.2], v=.01D^2=[.01,.04], dir=m/(sqrt v+.1)=[.5,-2/3]
    strategy = FedAdam(BufferSpec(1, 1.0), beta1=0.9, beta2=0.99, tau=0.1)
    r = strategy.on_update(strategy.initial_state(2), upd("a", [1, -2]), 0, X0)
    np.testing.assert_allclose(r.params, [1.5, 2 - 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(r.state.slots["m"], [0.1, -0.2])
    np.testing.assert_allclose(r.state.slots["v"], [0.01, 0.04])
    # same D again: m=.19*[1,-2], v=.0199*[1,4]; dir = .19/(sqrt(.0199)+.1) per |D|
    r2 = strategy.on_update(r.state, upd("b", [1, -2]), 1, r.params)
    step = 0.19 / (np.sqrt(0.0199) + 0.1)
    step2 = 0.38 / (np.sqrt(0.0796) + 0.1)
    np.testing.assert_allclose(r2.params, [1.5 + step, 2 - 2 / 3 - step2], rtol=1e-6)
    assert r2.state.counters["steps"] == 2


def test_median() -> None:
    # per coordinate: median(1,2,100)=2, median(10,-5,0)=0
    r = feed(
        CoordinateMedian(BufferSpec(3)), [upd("a", [1, 10]), upd("b", [2, -5]), upd("c", [100, 0])]
    )
    np.testing.assert_allclose(r.params, [3.0, 2.0])


def test_trimmed_mean() -> None:
    # k=5, beta=0.2 -> trim 1 each end: mean(2,3,4)=3, mean(0,1,2)=1
    rows = [[1, -100], [2, 0], [3, 1], [4, 2], [100, 3]]
    r = feed(TrimmedMean(BufferSpec(5), 0.2), [upd(str(i), d) for i, d in enumerate(rows)])
    np.testing.assert_allclose(r.params, [4.0, 3.0])


KRUM_ROWS = [[0, 0], [1, 0], [0, 2], [1, 1], [10, 10]]


def test_krum_scores_by_hand() -> None:
    # f=1, k=5: sum of the 2 smallest squared distances to others
    scores = krum_scores(np.array(KRUM_ROWS, dtype=np.float64), 1)
    np.testing.assert_allclose(scores, [3, 2, 6, 3, 326])


def test_krum_and_multi_krum() -> None:
    updates = [upd(str(i), d) for i, d in enumerate(KRUM_ROWS)]
    r = feed(Krum(BufferSpec(5), n_byzantine=1), updates)
    np.testing.assert_allclose(r.params, [2.0, 2.0])  # picks [1,0]
    assert [a.weight for a in r.applied] == [0, 1, 0, 0, 0]
    r = feed(Krum(BufferSpec(5), n_byzantine=1, n_selected=3), updates)
    # picks rows 1, 0, 3 (scores 2, 3, 3): mean = [2/3, 1/3]
    np.testing.assert_allclose(r.params, [1 + 2 / 3, 2 + 1 / 3], rtol=1e-6)


def test_norm_clipping_wraps_fedasync() -> None:
    # [30,40] has norm 50 -> clipped to norm 5: [3,4]
    r = feed(NormClipping(FedAsync(1.0), 5.0), [upd("a", [30, 40])])
    np.testing.assert_allclose(r.params, [4.0, 6.0], rtol=1e-6)
