"""FedAsync: apply every update as it arrives, damped by its staleness.

Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", 2019 (arXiv:1903.03934). The server mixes
``x <- (1 - alpha_t) x + alpha_t x_local`` with ``alpha_t = alpha * s(t)`` and ``t = v - b``. We
receive ``delta = x_local - x_b`` rather than ``x_local``, and apply the delta form
``x <- x + alpha * s(t) * delta``, which equals the paper's rule when ``t = 0`` and, for stale
updates, moves the model along the site's own progress instead of pulling it back towards the older
base ``x_b``. Every update bumps the version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggregator.strategies.base import (
    AppliedWeight,
    ClientUpdate,
    StrategyResult,
    StrategyState,
    UpdateRefused,
    dense_delta,
)
from aggregator.strategies.kernels import apply_direction
from aggregator.strategies.staleness import StalenessFn, constant_staleness
from fedsynth.errors import ConfigError

__all__ = ["FedAsync"]


@dataclass(frozen=True, slots=True)
class FedAsync:
    """FedAsync rule.

    Attributes:
        alpha: Mixing rate ``alpha`` in ``(0, 1]``.
        staleness: ``s(t)``.
    """

    alpha: float
    staleness: StalenessFn = constant_staleness

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"FedAsync alpha must be in (0, 1], got {self.alpha}")

    @property
    def name(self) -> str:
        """``"fedasync"``."""
        return "fedasync"

    def initial_state(self, n_parameters: int) -> StrategyState:
        """FedAsync keeps no state."""
        return StrategyState()

    def on_update(
        self, state: StrategyState, update: ClientUpdate, version: int, params: np.ndarray
    ) -> StrategyResult:
        """Apply ``x + alpha * s(t) * delta`` immediately (a new version per update)."""
        t = version - update.base_version
        if t < 0:
            raise UpdateRefused("future_base", f"base {update.base_version} > version {version}")
        alpha_t = self.alpha * self.staleness(t)
        new_params = apply_direction(params, dense_delta(update.delta), alpha_t)
        applied = (AppliedWeight(update.update_id, update.site_id, t, alpha_t),)
        return StrategyResult(state, new_params, applied)

    def on_timeout(self, state: StrategyState, version: int, params: np.ndarray) -> StrategyResult:
        """Nothing is ever pending."""
        return StrategyResult(state)
