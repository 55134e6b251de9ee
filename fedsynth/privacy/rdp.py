"""Renyi-DP accountant for the Poisson-subsampled Gaussian mechanism (DP-SGD).

Bookkeeping only: the maths is Opacus's pure module ``opacus.accountants.analysis.rdp``, which
implements the sampled Gaussian mechanism RDP bound of Mironov, Talwar and Zhang, "Renyi
Differential Privacy of the Sampled Gaussian Mechanism" (2019), and the RDP to (epsilon, delta)
conversion of Balle et al., "Hypothesis Testing Interpretations and Renyi Differential Privacy"
(AISTATS 2020, Theorem 21). DP-SGD itself is Abadi et al., "Deep Learning with Differential
Privacy" (CCS 2016).

RDP composes additively, so the accountant keeps the step history and sums per-step RDP curves; the
per-step curve for one ``(sigma, q)`` pair is cached because budget planning evaluates it often.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.rdp import RDPAccountant as _OpacusRDPAccountant

from fedsynth.privacy.errors import AccountantStateError, PrivacyConfigError
from fedsynth.privacy.history import (
    StepSegment,
    append_steps,
    history_from_accountant_state,
    history_to_state,
)

__all__ = ["DEFAULT_ORDERS", "RDPAccountant", "rdp_epsilon"]

logger = logging.getLogger(__name__)

#: RDP orders searched for the best conversion; the same grid as Opacus's RDP accountant.
DEFAULT_ORDERS: tuple[float, ...] = tuple(float(a) for a in _OpacusRDPAccountant.DEFAULT_ALPHAS)


@lru_cache(maxsize=256)
def _rdp_per_step(sample_rate: float, noise_multiplier: float, orders: tuple[float, ...]) -> Any:
    curve = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(orders)
    )
    array = np.asarray(curve, dtype=np.float64)
    array.setflags(write=False)
    return array


def rdp_epsilon(history: Sequence[StepSegment], delta: float, orders: tuple[float, ...]) -> float:
    """Epsilon of a step history at ``delta``: the best RDP order, after composition.

    Args:
        history: The step segments.
        delta: Target delta in (0, 1).
        orders: RDP orders (all > 1).

    Returns:
        Epsilon (0.0 for an empty history; ``inf`` if any step had no noise).
    """
    if not (0.0 < delta < 1.0):
        raise PrivacyConfigError(f"delta must be in (0, 1), got {delta!r}")
    if not history:
        return 0.0
    total = np.zeros(len(orders), dtype=np.float64)
    for seg in history:
        total = total + _rdp_per_step(seg.sample_rate, seg.noise_multiplier, orders) * seg.steps
    if not np.isfinite(total).any():
        return math.inf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eps, best_order = rdp_analysis.get_privacy_spent(
            orders=list(orders), rdp=total, delta=delta
        )
    for warning in caught:
        logger.debug("rdp conversion: %s (best order %s)", warning.message, best_order)
    return float(eps)


class RDPAccountant:
    """Accountant implementing :class:`fedsynth.privacy.accountant.Accountant` with RDP.

    Args:
        orders: RDP orders to search; Opacus's default grid when omitted.
    """

    mechanism: ClassVar[str] = "rdp"
    __slots__ = ("_history", "_orders")

    def __init__(self, orders: Sequence[float] | None = None) -> None:
        chosen = DEFAULT_ORDERS if orders is None else tuple(float(a) for a in orders)
        if not chosen or any(not (math.isfinite(a) and a > 1.0) for a in chosen):
            raise PrivacyConfigError(f"RDP orders must be finite and > 1, got {chosen!r}")
        self._orders = chosen
        self._history: tuple[StepSegment, ...] = ()

    @property
    def history(self) -> tuple[StepSegment, ...]:
        """The merged step segments so far (immutable)."""
        return self._history

    @property
    def total_steps(self) -> int:
        """Number of steps recorded so far."""
        return sum(seg.steps for seg in self._history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Records ``steps`` DP-SGD steps with the given parameters."""
        self._history = append_steps(self._history, noise_multiplier, sample_rate, steps)

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta``."""
        return rdp_epsilon(self._history, delta, self._orders)

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: mechanism, orders and history."""
        return {
            "mechanism": self.mechanism,
            "orders": list(self._orders),
            "history": history_to_state(self._history),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RDPAccountant:
        """Rebuilds an accountant from :meth:`to_state` output.

        Raises:
            AccountantStateError: When the state is not a valid RDP accountant state.
        """
        history = history_from_accountant_state(state, cls.mechanism)
        orders = state.get("orders")
        if not isinstance(orders, list) or not all(isinstance(a, int | float) for a in orders):
            raise AccountantStateError(f"RDP state needs a list of numeric orders, got {orders!r}")
        try:
            accountant = cls(orders)
        except PrivacyConfigError as exc:
            raise AccountantStateError(str(exc)) from exc
        accountant._history = history
        return accountant

    def __repr__(self) -> str:
        return f"RDPAccountant(total_steps={self.total_steps}, segments={len(self._history)})"
