"""Accountant bookkeeping, state round trips, choice by name, and the budget guard."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from fedsynth.errors import BudgetExceededError, ConfigError
from fedsynth.privacy import (
    ACCOUNTANTS,
    Accountant,
    AccountantStateError,
    BudgetGuard,
    PrivacyBudget,
    PrivacyConfigError,
    PRVAccountant,
    RDPAccountant,
    accountant_from_state,
    copy_accountant,
    make_accountant,
    noise_for_budget,
)


def test_make_accountant_by_name_and_mapping_is_read_only() -> None:
    assert isinstance(make_accountant("rdp"), RDPAccountant)
    assert isinstance(make_accountant("prv"), PRVAccountant)
    assert isinstance(make_accountant("rdp"), Accountant)
    with pytest.raises(PrivacyConfigError, match="unknown accountant 'gdp'"):
        make_accountant("gdp")
    with pytest.raises(TypeError):
        ACCOUNTANTS["x"] = RDPAccountant  # type: ignore[index]
    assert issubclass(PrivacyConfigError, ConfigError)


def test_empty_accountant_spends_nothing() -> None:
    for name in ACCOUNTANTS:
        accountant = make_accountant(name)
        assert accountant.epsilon(1e-5) == 0.0
        assert accountant.total_steps == 0


def test_steps_merge_and_state_round_trips_through_json() -> None:
    accountant = RDPAccountant()
    accountant.step(noise_multiplier=1.0, sample_rate=0.1, steps=3)
    accountant.step(noise_multiplier=1.0, sample_rate=0.1)
    accountant.step(noise_multiplier=2.0, sample_rate=0.1, steps=5)
    state = accountant.to_state()
    assert state["history"] == [[1.0, 0.1, 4], [2.0, 0.1, 5]]
    restored = accountant_from_state(json.loads(json.dumps(state)))
    assert isinstance(restored, RDPAccountant)
    assert restored.total_steps == 9
    assert restored.epsilon(1e-5) == accountant.epsilon(1e-5)
    prv = PRVAccountant()
    prv.step(noise_multiplier=1.0, sample_rate=0.1, steps=2)
    assert isinstance(accountant_from_state(json.loads(json.dumps(prv.to_state()))), PRVAccountant)


def test_copy_is_independent() -> None:
    accountant = RDPAccountant()
    accountant.step(noise_multiplier=1.0, sample_rate=0.1)
    twin = copy_accountant(accountant)
    twin.step(noise_multiplier=1.0, sample_rate=0.1, steps=10)
    assert accountant.total_steps == 1
    assert twin.total_steps == 11


@pytest.mark.parametrize(
    "state",
    [
        {"mechanism": "gdp", "history": []},
        {"mechanism": "rdp", "history": [[1.0, 0.1]], "orders": [2.0]},
        {"mechanism": "rdp", "history": [[1.0, 1.5, 3]], "orders": [2.0]},
        {"mechanism": "rdp", "history": [[-1.0, 0.1, 3]], "orders": [2.0]},
        {"mechanism": "rdp", "history": [[1.0, 0.1, 0]], "orders": [2.0]},
        {"mechanism": "rdp", "history": [], "orders": [0.5]},
        {"mechanism": "rdp", "history": "x", "orders": [2.0]},
        {"mechanism": "prv", "history": [], "eps_error": "small"},
        [],
    ],
)
def test_bad_state_is_a_clear_error(state: object) -> None:
    with pytest.raises(AccountantStateError):
        accountant_from_state(state)  # type: ignore[arg-type]


def test_rdp_from_state_refuses_prv_state() -> None:
    with pytest.raises(AccountantStateError, match="mechanism 'prv', expected 'rdp'"):
        RDPAccountant.from_state(PRVAccountant().to_state())


@pytest.mark.parametrize(
    ("sigma", "q", "steps"), [(-0.1, 0.1, 1), (1.0, 0.0, 1), (1.0, 1.1, 1), (1.0, 0.1, 0),
                              (math.inf, 0.1, 1), (1.0, 0.1, 2.5), (1.0, 0.1, True)]
)
def test_bad_step_parameters_are_refused(sigma: float, q: float, steps: int) -> None:
    accountant = RDPAccountant()
    with pytest.raises(PrivacyConfigError):
        accountant.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
    assert accountant.total_steps == 0


def test_budget_is_frozen_and_validated() -> None:
    budget = PrivacyBudget(epsilon=2.0, delta=1e-5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget.epsilon = 3.0  # type: ignore[misc]
    for epsilon, delta in [(0.0, 1e-5), (math.inf, 1e-5), (1.0, 0.0), (1.0, 1.0)]:
        with pytest.raises(PrivacyConfigError):
            PrivacyBudget(epsilon, delta)


def test_guard_refuses_before_overspending_and_leaves_accountant_unchanged() -> None:
    accountant = RDPAccountant()
    accountant.step(noise_multiplier=1.0, sample_rate=0.05, steps=100)
    spent = accountant.epsilon(1e-5)
    state = accountant.to_state()
    guard = BudgetGuard(accountant, PrivacyBudget(epsilon=spent + 0.5, delta=1e-5))
    after = guard.check(1.0, 0.05, 10)
    assert spent < after <= spent + 0.5
    assert accountant.to_state() == state
    with pytest.raises(BudgetExceededError) as info:
        guard.check(1.0, 0.05, 1000)
    message = str(info.value)
    assert f"spent epsilon={spent:.4g} so far over 100 steps" in message
    assert "1000 more step(s)" in message and f"over the budget epsilon={spent + 0.5:g}" in message
    assert accountant.to_state() == state
    with pytest.raises(BudgetExceededError):
        guard.spend(1.0, 0.05, 1000)
    assert accountant.to_state() == state
    assert guard.spend(1.0, 0.05, 10) == pytest.approx(after)
    assert accountant.total_steps == 110


def test_max_steps_is_the_exact_boundary() -> None:
    accountant = RDPAccountant()
    accountant.step(noise_multiplier=1.2, sample_rate=0.02, steps=50)
    guard = BudgetGuard(accountant, PrivacyBudget(epsilon=2.0, delta=1e-5))
    limit = guard.max_steps(1.2, 0.02)
    assert limit > 100
    guard.check(1.2, 0.02, limit)
    with pytest.raises(BudgetExceededError):
        guard.check(1.2, 0.02, limit + 1)
    assert accountant.total_steps == 50
    assert guard.max_steps(1.2, 0.02, limit=10) == 10
    assert BudgetGuard(accountant, PrivacyBudget(0.01, 1e-5)).max_steps(1.2, 0.02) == 0
    assert guard.max_steps(0.0, 0.02) == 0  # no noise: infinite epsilon


def test_noise_for_budget_refuses_impossible_and_bad_requests() -> None:
    with pytest.raises(PrivacyConfigError):
        noise_for_budget(1.0, 1e-5, 0.0, 100)
    with pytest.raises(PrivacyConfigError):
        noise_for_budget(1.0, 1e-5, 0.1, 100, mechanism="gdp")
    with pytest.raises(PrivacyConfigError):
        noise_for_budget(-1.0, 1e-5, 0.1, 100)


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_noise_after_a_prior_release_fits_both_in_the_budget(mechanism: str) -> None:
    prior = [(3.0, 1.0, 1)]  # Gaussian histograms, noise multiplier 3
    sigma = noise_for_budget(8.0, 1e-5, 0.05, 200, mechanism=mechanism, prior=prior)
    accountant = make_accountant(mechanism)
    accountant.step(noise_multiplier=3.0, sample_rate=1.0, steps=1)
    accountant.step(noise_multiplier=sigma, sample_rate=0.05, steps=200)
    assert 8.0 - 0.01 <= accountant.epsilon(1e-5) <= 8.0  # within tolerance, never over
    # the prior costs something: more noise than with the whole budget for DP-SGD
    assert sigma > noise_for_budget(8.0, 1e-5, 0.05, 200, mechanism=mechanism)


def test_noise_after_a_prior_that_spends_the_budget_is_refused() -> None:
    with pytest.raises(PrivacyConfigError, match=r"already spend epsilon=.* of the budget"):
        noise_for_budget(1.0, 1e-5, 0.05, 200, prior=[(1.0, 1.0, 1)])


def test_accounted_histograms_beat_the_old_laplace_split_at_every_documented_budget() -> None:
    # fedsynth.data.preprocess.HISTOGRAM_NOISE_SCALE: with bench.quality's DP-SGD plan, the joint
    # accounting gives smaller noise to both releases than 10% Laplace + 90% DP-SGD
    from fedsynth.data import default_histogram_noise

    q, steps, d = 1 / 3, 1000, 14
    for eps in (1.0, 4.0, 8.0):
        z = default_histogram_noise(eps)
        joint = noise_for_budget(eps, 1e-5, q, steps, prior=[(z, 1.0, 1)])
        split = noise_for_budget(0.9 * eps, 1e-5, q, steps)
        assert joint < split
        assert z * math.sqrt(d) < math.sqrt(2) * d / (0.1 * eps)  # Gaussian sd < Laplace sd
