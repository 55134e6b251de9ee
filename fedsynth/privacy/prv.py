"""PRV accountant: numerical composition of privacy loss random variables.

Gopi, Lee and Wutschitz, "Numerical Composition of Differential Privacy" (NeurIPS 2021). The maths
is Opacus's ``PRVAccountant``; this module only keeps our step history and bridges it, so the state
format and the Protocol are the same as the RDP accountant's. PRV gives tighter epsilons than RDP
at the price of a slower, approximate computation (``eps_error`` bounds the approximation; the
reported value is the upper bound, so it never under-reports).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from opacus.accountants import PRVAccountant as _OpacusPRVAccountant

from fedsynth.privacy.errors import AccountantStateError, PrivacyConfigError
from fedsynth.privacy.history import (
    StepSegment,
    append_steps,
    history_from_accountant_state,
    history_to_state,
)

__all__ = ["PRVAccountant"]


class PRVAccountant:
    """Accountant implementing :class:`fedsynth.privacy.accountant.Accountant` with PRVs.

    Args:
        eps_error: Allowed error of the epsilon estimate (the upper bound is reported).
    """

    mechanism: ClassVar[str] = "prv"
    __slots__ = ("_eps_error", "_history")

    def __init__(self, eps_error: float = 0.01) -> None:
        if not (math.isfinite(eps_error) and eps_error > 0):
            raise PrivacyConfigError(f"eps_error must be > 0, got {eps_error!r}")
        self._eps_error = float(eps_error)
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
        """Upper bound on the epsilon spent so far at ``delta``."""
        if not (0.0 < delta < 1.0):
            raise PrivacyConfigError(f"delta must be in (0, 1), got {delta!r}")
        if not self._history:
            return 0.0
        if any(seg.noise_multiplier == 0.0 for seg in self._history):
            return math.inf
        bridge = _OpacusPRVAccountant()
        bridge.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in self._history]
        return float(bridge.get_epsilon(delta=delta, eps_error=self._eps_error))

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: mechanism, eps_error and history."""
        return {
            "mechanism": self.mechanism,
            "eps_error": self._eps_error,
            "history": history_to_state(self._history),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PRVAccountant:
        """Rebuilds an accountant from :meth:`to_state` output.

        Raises:
            AccountantStateError: When the state is not a valid PRV accountant state.
        """
        history = history_from_accountant_state(state, cls.mechanism)
        eps_error = state.get("eps_error")
        if isinstance(eps_error, bool) or not isinstance(eps_error, int | float):
            raise AccountantStateError(f"PRV state needs a numeric eps_error, got {eps_error!r}")
        try:
            accountant = cls(float(eps_error))
        except PrivacyConfigError as exc:
            raise AccountantStateError(str(exc)) from exc
        accountant._history = history
        return accountant

    def __repr__(self) -> str:
        return f"PRVAccountant(total_steps={self.total_steps}, segments={len(self._history)})"
