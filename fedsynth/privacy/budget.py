"""Privacy budgets and the guard that refuses a step before it would overspend.

The guard asks the accountant what epsilon *would* be after the prospective steps, on a copy, and
raises :class:`~fedsynth.errors.BudgetExceededError` when that exceeds the budget; the real
accountant is only touched once the check passed. DP-SGD: Abadi et al., "Deep Learning with
Differential Privacy" (CCS 2016); the noise calibration searches Opacus's accountants.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from opacus.accountants.utils import get_noise_multiplier

from fedsynth.errors import BudgetExceededError
from fedsynth.privacy.accountant import (
    ACCOUNTANTS,
    Accountant,
    copy_accountant,
    make_accountant,
)
from fedsynth.privacy.errors import PrivacyConfigError
from fedsynth.privacy.history import validate_step

__all__ = ["BudgetGuard", "PrivacyBudget", "noise_for_budget"]

logger = logging.getLogger(__name__)

_MAX_STEPS_LIMIT = 10**9


@dataclass(frozen=True, slots=True)
class PrivacyBudget:
    """An (epsilon, delta) budget for one site, over its whole life.

    Attributes:
        epsilon: Largest epsilon the site may ever spend (finite, > 0).
        delta: The delta at which epsilon is measured, in (0, 1).
    """

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, int | float) and math.isfinite(self.epsilon)):
            raise PrivacyConfigError(f"budget epsilon must be finite, got {self.epsilon!r}")
        if self.epsilon <= 0:
            raise PrivacyConfigError(f"budget epsilon must be > 0, got {self.epsilon}")
        if not (isinstance(self.delta, int | float) and 0.0 < self.delta < 1.0):
            raise PrivacyConfigError(f"budget delta must be in (0, 1), got {self.delta!r}")


class BudgetGuard:
    """Checks prospective steps against a budget before they are taken.

    The guard wraps an accountant; it does not own or copy it, so steps recorded elsewhere (by
    :func:`~fedsynth.privacy.dpsgd.make_private`) are seen by the next check.

    Args:
        accountant: The site's accountant.
        budget: The site's budget.
    """

    __slots__ = ("_accountant", "_budget")

    def __init__(self, accountant: Accountant, budget: PrivacyBudget) -> None:
        self._accountant = accountant
        self._budget = budget

    @property
    def budget(self) -> PrivacyBudget:
        """The budget enforced."""
        return self._budget

    def spent(self) -> float:
        """Epsilon spent so far at the budget's delta."""
        return self._accountant.epsilon(self._budget.delta)

    def prospective(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> float:
        """Epsilon after ``steps`` more steps, computed on a copy (the accountant is unchanged)."""
        validate_step(noise_multiplier, sample_rate, steps)
        trial = copy_accountant(self._accountant)
        trial.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        return trial.epsilon(self._budget.delta)

    def check(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> float:
        """Raises before ``steps`` more steps would exceed the budget.

        Returns:
            The epsilon the steps would bring the total to (<= budget).

        Raises:
            BudgetExceededError: With spent-so-far, prospective and budget in the message.
        """
        after = self.prospective(noise_multiplier, sample_rate, steps)
        if after <= self._budget.epsilon:
            return after
        spent = self.spent()
        raise BudgetExceededError(
            f"privacy budget exceeded: spent epsilon={spent:.4g} so far over "
            f"{self._accountant.total_steps} steps; {steps} more step(s) at "
            f"noise_multiplier={noise_multiplier:g}, sample_rate={sample_rate:g} would bring it "
            f"to epsilon={after:.4g}, over the budget epsilon={self._budget.epsilon:g} "
            f"(delta={self._budget.delta:g}); the step was not taken"
        )

    def spend(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> float:
        """Checks, then records the steps in the accountant; returns the new epsilon."""
        after = self.check(noise_multiplier, sample_rate, steps)
        self._accountant.step(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
        return after

    def max_steps(
        self, noise_multiplier: float, sample_rate: float, *, limit: int = _MAX_STEPS_LIMIT
    ) -> int:
        """The largest number of further steps that stays within the budget (0 when none).

        Exponential then binary search; epsilon is non-decreasing in the number of steps.

        Args:
            noise_multiplier: Planned noise multiplier.
            sample_rate: Planned sample rate.
            limit: Upper bound returned when the budget would allow more steps than this.
        """
        validate_step(noise_multiplier, sample_rate, 1)

        def fits(steps: int) -> bool:
            return self.prospective(noise_multiplier, sample_rate, steps) <= self._budget.epsilon

        if not fits(1):
            return 0
        low, high = 1, 2
        while fits(high):
            if high >= limit:
                return limit
            low, high = high, min(2 * high, limit + 1)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low


def noise_for_budget(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    mechanism: str = "rdp",
    epsilon_tolerance: float = 0.01,
    prior: Sequence[tuple[float, float, int]] = (),
) -> float:
    """The smallest noise multiplier (within tolerance) that keeps ``steps`` steps within budget.

    Args:
        epsilon: Target epsilon for the whole run.
        delta: Target delta.
        sample_rate: Poisson sampling rate of each step.
        steps: Number of steps planned.
        mechanism: Accountant used for the search (``"rdp"`` or ``"prv"``).
        epsilon_tolerance: Search precision in epsilon; the result never exceeds the target.
        prior: ``(noise_multiplier, sample_rate, steps)`` releases made before the steps, in the
            same accountant (e.g. the site's Gaussian histograms: ``(z, 1.0, 1)``); the budget
            covers them and the planned steps together.

    Raises:
        PrivacyConfigError: For bad arguments or a budget that no noise level reaches.
    """
    PrivacyBudget(epsilon, delta)
    validate_step(0.0, sample_rate, steps)
    if mechanism not in ACCOUNTANTS:
        raise PrivacyConfigError(
            f"unknown accountant {mechanism!r}; choose one of {sorted(ACCOUNTANTS)}"
        )
    if prior:
        return _noise_after_prior(
            epsilon, delta, sample_rate, steps, mechanism, epsilon_tolerance, prior
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma = get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=mechanism,
                epsilon_tolerance=epsilon_tolerance,
            )
    except ValueError as exc:
        raise PrivacyConfigError(
            f"no noise multiplier reaches epsilon={epsilon:g}, delta={delta:g} in {steps} steps "
            f"at sample_rate={sample_rate:g}: {exc}"
        ) from exc
    logger.debug("noise_for_budget", extra={"epsilon": epsilon, "steps": steps, "sigma": sigma})
    return float(sigma)


_SIGMA_CEILING = 1e4


def _noise_after_prior(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    mechanism: str,
    tolerance: float,
    prior: Sequence[tuple[float, float, int]],
) -> float:
    """Bisection on the noise multiplier with ``prior`` and the planned steps in one accountant."""
    base = make_accountant(mechanism)
    for z, q, n in prior:
        base.step(noise_multiplier=z, sample_rate=q, steps=n)
    before = base.epsilon(delta)
    if before >= epsilon:
        raise PrivacyConfigError(
            f"the earlier releases {list(prior)} already spend epsilon={before:.4g} of the budget "
            f"epsilon={epsilon:g} (delta={delta:g}); no noise multiplier leaves room for {steps} "
            "steps"
        )

    def spent(sigma: float) -> float:
        acc = copy_accountant(base)
        acc.step(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
        return acc.epsilon(delta)

    low, high = 0.0, 1.0
    while spent(high) > epsilon:
        low, high = high, 2 * high
        if high > _SIGMA_CEILING:
            raise PrivacyConfigError(
                f"no noise multiplier up to {_SIGMA_CEILING:g} keeps {steps} steps at "
                f"sample_rate={sample_rate:g} within epsilon={epsilon:g} after {list(prior)}"
            )
    while True:  # invariant: spent(high) <= epsilon < spent(low) (or low == 0)
        middle = (low + high) / 2
        over = spent(middle) > epsilon
        low, high = (middle, high) if over else (low, middle)
        if epsilon - spent(high) <= tolerance or high - low < 1e-6:
            return high
