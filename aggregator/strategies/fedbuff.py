"""FedBuff: buffered asynchronous aggregation.

Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022. The server
buffers ``K`` client deltas; when the buffer is full it moves the global model by
``server_lr * sum_i w_i delta_i / sum_i w_i`` with ``w_i = n_i * s(t_i)`` and ``t_i`` the staleness
of update ``i`` at the version it is applied to, then bumps the version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggregator.strategies.base import ClientUpdate, StrategyResult, StrategyState
from aggregator.strategies.buffered import BufferSpec, buffered_on_timeout, buffered_on_update
from aggregator.strategies.kernels import weighted_mean

__all__ = ["FedBuff", "weighted_combine"]


def weighted_combine(deltas: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Combiner: the weighted mean of the deltas; reports each update's weight ``n_i * s(t_i)``."""
    return weighted_mean(deltas, weights), weights


@dataclass(frozen=True, slots=True)
class FedBuff:
    """FedBuff rule.

    Attributes:
        spec: Buffer size ``K``, server learning rate, staleness function, timeout policy.
    """

    spec: BufferSpec

    @property
    def name(self) -> str:
        """``"fedbuff"``."""
        return "fedbuff"

    def initial_state(self, n_parameters: int) -> StrategyState:
        """An empty buffer."""
        return StrategyState()

    def on_update(
        self, state: StrategyState, update: ClientUpdate, version: int, params: np.ndarray
    ) -> StrategyResult:
        """Buffer the update; aggregate when ``K`` are buffered."""
        return buffered_on_update(state, update, version, params, self.spec, weighted_combine)

    def on_timeout(self, state: StrategyState, version: int, params: np.ndarray) -> StrategyResult:
        """Aggregate a partial buffer if ``spec.min_updates_on_timeout`` allows."""
        return buffered_on_timeout(state, version, params, self.spec, weighted_combine)
