"""FedAdam: an adaptive (Adam-like) server optimizer over the averaged client delta.

Reddi, Charles, Zaheer, Garrett, Rush, Konecny, Kumar, McMahan, "Adaptive Federated Optimization",
ICLR 2021, Algorithm 2. Updates are buffered ``K`` at a time like FedBuff; the weighted mean
``D = sum_i w_i delta_i / sum_i w_i`` (``w_i = n_i * s(t_i)``) is the pseudo-gradient, and

    m <- b1 m + (1 - b1) D,   v <- b2 v + (1 - b2) D^2,   x <- x + eta * m / (sqrt(v) + tau)

without bias correction, as in the paper. ``m`` and ``v`` live in the strategy state (float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from aggregator.strategies.base import ClientUpdate, StrategyResult, StrategyState, frozen_array
from aggregator.strategies.buffered import BufferSpec, take_buffer, with_update
from aggregator.strategies.kernels import adam_server_step, apply_direction, weighted_mean
from fedsynth.errors import ConfigError

__all__ = ["FedAdam"]


@dataclass(frozen=True, slots=True)
class FedAdam:
    """FedAdam rule.

    Attributes:
        spec: Buffer size ``K``, server learning rate ``eta``, staleness, timeout policy.
        beta1: First-moment decay.
        beta2: Second-moment decay.
        tau: Adaptivity (denominator offset), ``> 0``.
    """

    spec: BufferSpec
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.tau > 0):
            raise ConfigError("FedAdam needs 0 <= beta1, beta2 < 1 and tau > 0")

    @property
    def name(self) -> str:
        """``"fedadam"``."""
        return "fedadam"

    def initial_state(self, n_parameters: int) -> StrategyState:
        """Zero moments ``m`` and ``v`` of ``n_parameters`` each."""
        zeros = frozen_array(np.zeros(n_parameters, dtype=np.float64))
        return StrategyState(
            slots=MappingProxyType({"m": zeros, "v": zeros}),
            counters=MappingProxyType({"steps": 0}),
        )

    def on_update(
        self, state: StrategyState, update: ClientUpdate, version: int, params: np.ndarray
    ) -> StrategyResult:
        """Buffer the update; take an Adam step when ``K`` are buffered."""
        state = with_update(state, update, version)
        if len(state.buffer) < self.spec.buffer_size:
            return StrategyResult(state)
        return self._step(state, version, params)

    def on_timeout(self, state: StrategyState, version: int, params: np.ndarray) -> StrategyResult:
        """Step on a partial buffer if ``spec.min_updates_on_timeout`` allows."""
        floor = self.spec.min_updates_on_timeout
        if floor is None or len(state.buffer) < floor:
            return StrategyResult(state)
        return self._step(state, version, params)

    def _step(self, state: StrategyState, version: int, params: np.ndarray) -> StrategyResult:
        emptied, batch = take_buffer(state, version, self.spec.staleness)
        pseudo_grad = weighted_mean(batch.deltas, batch.weights)
        m, v, direction = adam_server_step(
            state.slots["m"], state.slots["v"], pseudo_grad, self.beta1, self.beta2, self.tau
        )
        new_state = StrategyState(
            (),
            MappingProxyType({"m": frozen_array(m), "v": frozen_array(v)}),
            MappingProxyType({**emptied.counters, "steps": emptied.counters.get("steps", 0) + 1}),
        )
        new_params = apply_direction(params, direction, self.spec.server_lr)
        return StrategyResult(new_state, new_params, batch.applied(batch.weights))
