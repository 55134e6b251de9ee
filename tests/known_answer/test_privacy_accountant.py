"""Known answers for the accountants: Opacus's own computation, hard-coded values, and the
analytic RDP of the Gaussian mechanism (q = 1) and of the sampled Gaussian at integer orders."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from opacus.accountants import PRVAccountant as OpacusPRV
from opacus.accountants import RDPAccountant as OpacusRDP

from fedsynth.privacy import PRVAccountant, RDPAccountant, noise_for_budget

COMBOS = [  # (noise_multiplier, sample_rate, steps, delta)
    (1.0, 0.01, 1000, 1e-5),
    (1.1, 0.004, 10000, 1e-5),
    (2.0, 0.05, 500, 1e-6),
    (0.8, 1.0, 10, 1e-5),
    (4.0, 0.1, 200, 1e-5),
]

# Computed once with opacus 1.6.0 (RDPAccountant.get_epsilon) for the COMBOS above.
REFERENCE_EPSILON = [
    2.1013652716430564,
    2.0130594443876637,
    3.1018682543968032,
    25.518420950267977,
    1.5568078922121804,
]


def _opacus_rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    reference = OpacusRDP()
    for sigma, q, steps in history:
        for _ in range(steps):
            reference.step(noise_multiplier=sigma, sample_rate=q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(reference.get_epsilon(delta))


@pytest.mark.parametrize(("combo", "expected"), list(zip(COMBOS, REFERENCE_EPSILON, strict=True)))
def test_rdp_matches_hard_coded_reference(
    combo: tuple[float, float, int, float], expected: float
) -> None:
    sigma, q, steps, delta = combo
    ours = RDPAccountant()
    ours.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
    assert ours.epsilon(delta) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("combo", COMBOS[:1] + COMBOS[2:])
def test_rdp_equals_opacus_stepping_one_at_a_time(combo: tuple[float, float, int, float]) -> None:
    sigma, q, steps, delta = combo
    ours = RDPAccountant()
    for _ in range(steps):
        ours.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.total_steps == steps
    assert ours.epsilon(delta) == pytest.approx(_opacus_rdp_epsilon([(sigma, q, steps)], delta))


def test_rdp_equals_opacus_for_a_mixed_history() -> None:
    history = [(1.0, 0.02, 50), (1.5, 0.01, 120), (1.0, 0.02, 30), (0.9, 0.05, 7)]
    ours = RDPAccountant()
    for sigma, q, steps in history:
        ours.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
    assert ours.epsilon(1e-5) == pytest.approx(_opacus_rdp_epsilon(history, 1e-5), rel=1e-12)
    assert ours.total_steps == 207


def _rdp_to_epsilon(orders: np.ndarray, rdp: np.ndarray, delta: float) -> float:
    """Balle et al. 2020, Theorem 21, minimised over the given orders."""
    eps = rdp - (math.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    return float(np.min(eps))


@pytest.mark.parametrize(("sigma", "steps"), [(0.8, 10), (1.0, 1), (3.0, 100), (10.0, 2000)])
def test_full_batch_matches_gaussian_mechanism_formula(sigma: float, steps: int) -> None:
    orders = np.array(RDPAccountant().to_state()["orders"])
    expected = _rdp_to_epsilon(orders, steps * orders / (2 * sigma**2), 1e-5)
    ours = RDPAccountant()
    ours.step(noise_multiplier=sigma, sample_rate=1.0, steps=steps)
    assert ours.epsilon(1e-5) == pytest.approx(expected, rel=1e-12)


def _log_a_integer(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha of the sampled Gaussian (Mironov et al. 2019, Sec. 3.3) by the binomial sum."""
    terms = [
        math.log(math.comb(alpha, k)) + k * math.log(q) + (alpha - k) * math.log1p(-q)
        + (k * k - k) / (2 * sigma**2)
        for k in range(alpha + 1)
    ]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.0, 0.01, 1000), (2.0, 0.1, 300)])
def test_sampled_gaussian_matches_binomial_sum_at_integer_orders(
    sigma: float, q: float, steps: int
) -> None:
    orders = list(range(2, 48))
    rdp = np.array([steps * _log_a_integer(q, sigma, a) / (a - 1) for a in orders])
    expected = _rdp_to_epsilon(np.array(orders, dtype=float), rdp, 1e-5)
    ours = RDPAccountant(orders=orders)
    ours.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
    assert ours.epsilon(1e-5) == pytest.approx(expected, rel=1e-9)


def test_prv_equals_opacus_prv_and_is_tighter_than_rdp() -> None:
    ours = PRVAccountant()
    reference = OpacusPRV()
    for _ in range(300):
        ours.step(noise_multiplier=1.1, sample_rate=0.02)
        reference.step(noise_multiplier=1.1, sample_rate=0.02)
    assert ours.epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    rdp = RDPAccountant()
    rdp.step(noise_multiplier=1.1, sample_rate=0.02, steps=300)
    assert ours.epsilon(1e-5) < rdp.epsilon(1e-5)


@pytest.mark.parametrize(("epsilon", "q", "steps"), [(1.0, 0.01, 1000), (8.0, 0.25, 400)])
def test_noise_for_budget_lands_just_under_target(epsilon: float, q: float, steps: int) -> None:
    sigma = noise_for_budget(epsilon, 1e-5, q, steps)
    accountant = RDPAccountant()
    accountant.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
    spent = accountant.epsilon(1e-5)
    assert epsilon - 0.011 <= spent <= epsilon
