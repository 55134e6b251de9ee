"""Strategy selection by configuration, refusals, deadlines and the FedProx penalty."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from aggregator import strategies as strategies_pkg
from aggregator.strategies import (
    STRATEGY_NAMES,
    BufferSpec,
    ClientUpdate,
    FedAvg,
    FedBuff,
    FedProx,
    NormClipping,
    Strategy,
    StrategyConfig,
    UpdateRefused,
    build_strategy,
    proximal_penalty,
)
from aggregator.strategies.config import FedBuffConfig
from fedsynth.codec.quantize import quantize, read_levels
from fedsynth.errors import ConfigError

X0 = np.zeros(2, dtype=np.float32)


def upd(uid: str, site: str, base: int = 0, n: int = 1, delta=(1.0, 1.0)) -> ClientUpdate:
    return ClientUpdate(uid, site, base, n, np.array(delta, dtype=np.float32))


CONFIGS = {
    "fedavg": {"name": "fedavg", "sites_per_round": 3},
    "fedprox": {"name": "fedprox", "sites_per_round": 3, "mu": 0.1},
    "fedasync": {"name": "fedasync", "alpha": 0.5, "staleness": {"kind": "hinge", "a": 1, "b": 2}},
    "fedbuff": {"name": "fedbuff", "buffer_size": 4, "server_lr": 0.5},
    "fedadam": {"name": "fedadam", "buffer_size": 2},
    "median": {"name": "median", "buffer_size": 3},
    "trimmed_mean": {"name": "trimmed_mean", "buffer_size": 5, "beta": 0.2},
    "krum": {"name": "krum", "buffer_size": 5, "n_byzantine": 1, "n_selected": 2},
    "norm_clipping": {
        "name": "norm_clipping",
        "max_norm": 2.0,
        "inner": {"name": "median", "buffer_size": 3},
    },
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_rule_builds_from_config_and_follows_the_protocol(name: str) -> None:
    strategy = build_strategy(StrategyConfig.model_validate(CONFIGS[name]))
    assert isinstance(strategy, Strategy)
    assert strategy.name.split("[")[0] == name


def test_config_covers_every_rule_name() -> None:
    assert set(CONFIGS) == STRATEGY_NAMES


def test_build_accepts_a_rule_config_directly() -> None:
    strategy = build_strategy(FedBuffConfig(buffer_size=3))
    assert isinstance(strategy, FedBuff) and strategy.spec.buffer_size == 3


def test_norm_clipping_wraps_the_configured_inner_rule() -> None:
    strategy = build_strategy(StrategyConfig.model_validate(CONFIGS["norm_clipping"]))
    assert isinstance(strategy, NormClipping) and strategy.inner.name == "median"
    assert strategy.name == "norm_clipping[median]"


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "nope"},
        {"name": "fedbuff"},
        {"name": "fedbuff", "buffer_size": 0},
        {"name": "fedbuff", "buffer_size": 2, "unknown": 1},
        {"name": "krum", "buffer_size": 4, "n_byzantine": 1},
        {"name": "trimmed_mean", "buffer_size": 4, "beta": 0.5},
        {"name": "fedasync", "alpha": 1.5},
        {"name": "fedasync", "staleness": {"kind": "cubic"}},
    ],
)
def test_invalid_configs_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        StrategyConfig.model_validate(bad)


def test_build_refuses_an_unknown_config_type() -> None:
    with pytest.raises(ConfigError):
        build_strategy(object())  # type: ignore[arg-type]


def test_fedavg_refuses_wrong_round_and_duplicate_site() -> None:
    strategy = FedAvg(3)
    state = strategy.on_update(strategy.initial_state(2), upd("a", "s1"), 0, X0).state
    with pytest.raises(UpdateRefused) as info:
        strategy.on_update(state, upd("b", "s1"), 0, X0)
    assert info.value.reason_code == "duplicate_site"
    with pytest.raises(UpdateRefused) as info:
        strategy.on_update(state, upd("c", "s2", base=1), 2, X0)
    assert info.value.reason_code == "wrong_round"


def test_fedavg_round_closes_at_the_deadline_with_the_sites_that_reported() -> None:
    strategy = FedAvg(3, min_sites_on_timeout=2)
    state = strategy.on_update(strategy.initial_state(2), upd("a", "s1", n=1), 0, X0).state
    assert strategy.on_timeout(state, 0, X0).params is None  # 1 < 2
    state = strategy.on_update(state, upd("b", "s2", n=3, delta=(5, 5)), 0, X0).state
    r = strategy.on_timeout(state, 0, X0)
    np.testing.assert_allclose(r.params, [4.0, 4.0])  # (1*1 + 3*5) / 4
    assert r.state.buffer == ()


def test_buffered_rule_without_timeout_floor_keeps_its_buffer() -> None:
    strategy = FedBuff(BufferSpec(3))
    state = strategy.on_update(strategy.initial_state(2), upd("a", "s1"), 0, X0).state
    assert strategy.on_timeout(state, 0, X0).state.buffer == state.buffer


def test_buffered_rule_refuses_a_future_base() -> None:
    strategy = FedBuff(BufferSpec(3))
    with pytest.raises(UpdateRefused) as info:
        strategy.on_update(strategy.initial_state(2), upd("a", "s1", base=5), 2, X0)
    assert info.value.reason_code == "future_base"


def test_new_params_are_read_only_float32() -> None:
    r = FedAvg(1).on_update(FedAvg(1).initial_state(2), upd("a", "s1"), 0, X0)
    assert r.params is not None and r.params.dtype == np.float32
    assert not r.params.flags.writeable


def test_fedprox_server_is_fedavg_and_keeps_mu() -> None:
    strategy = build_strategy(StrategyConfig.model_validate(CONFIGS["fedprox"]))
    assert isinstance(strategy, FedProx) and strategy.mu == 0.1
    assert strategy.server.sites_per_round == 3


def test_proximal_penalty_numpy_and_sequences() -> None:
    p, g = np.array([1.0, 2.0]), np.zeros(2)
    assert float(proximal_penalty(p, g, 0.5)) == pytest.approx(1.25)  # 0.25 * (1 + 4)
    assert float(proximal_penalty([p, p], [g, g], 0.5)) == pytest.approx(2.5)
    with pytest.raises(ConfigError):
        proximal_penalty(p, g, -1.0)


def test_proximal_penalty_is_differentiable_in_torch() -> None:
    torch = pytest.importorskip("torch")
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    penalty = proximal_penalty(w, torch.zeros(2), 0.5)
    penalty.backward()
    assert penalty.item() == pytest.approx(1.25)
    assert w.grad.tolist() == pytest.approx([0.5, 1.0])  # mu * (w - g)


def test_public_surface_is_declared() -> None:
    for name in strategies_pkg.__all__:
        assert hasattr(strategies_pkg, name)


def test_norm_clipping_keeps_a_quantized_delta_within_the_bound_and_clips_one_beyond() -> None:
    rng = np.random.default_rng(4)
    small = read_levels(quantize(np.array([0.3, -0.4]), 8, rng))  # norm 0.5
    large = read_levels(quantize(np.array([3.0, -4.0]), 8, rng))  # norm 5
    strategy = NormClipping(FedBuff(BufferSpec(3)), 1.0)
    state = strategy.initial_state(2)
    state = strategy.on_update(state, ClientUpdate("u1", "a", 0, 1, small), 0, X0).state
    state = strategy.on_update(state, ClientUpdate("u2", "b", 0, 1, large), 0, X0).state
    kept, clipped = (u.delta for u in state.buffer)
    assert kept is small  # passed on as it came: summed from its levels
    assert isinstance(clipped, np.ndarray) and clipped.dtype == np.float32
    assert np.isclose(np.linalg.norm(clipped), 1.0, rtol=1e-6)
    assert np.allclose(clipped, [0.6, -0.8], atol=1e-6)
