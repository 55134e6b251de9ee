"""Coordinate-wise trimmed mean aggregation (plain mode only).

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018. The server buffers ``K`` deltas and, per coordinate, drops the
``floor(beta * k)`` largest and smallest values and averages the rest (unweighted, like the median,
so that a claimed sample count cannot buy influence). Each update is reported with weight ``1 / k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from aggregator.strategies.base import ClientUpdate, StrategyResult, StrategyState
from aggregator.strategies.buffered import (
    BufferSpec,
    Combiner,
    buffered_on_timeout,
    buffered_on_update,
)
from aggregator.strategies.kernels import trimmed_mean
from fedsynth.errors import ConfigError

__all__ = ["TrimmedMean", "trimmed_combine"]


def trimmed_combine(
    deltas: np.ndarray, weights: np.ndarray, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Combiner: trimmed mean dropping ``floor(beta * k)`` values at each end; ``1 / k`` each."""
    k = deltas.shape[0]
    return trimmed_mean(deltas, math.floor(beta * k)), np.full(k, 1.0 / k)


@dataclass(frozen=True, slots=True)
class TrimmedMean:
    """Trimmed-mean rule.

    Attributes:
        spec: Buffer size ``K``, server learning rate, timeout policy (staleness is unused).
        beta: Fraction trimmed from each end, ``0 <= beta < 0.5``.
    """

    spec: BufferSpec
    beta: float
    _combine: Combiner = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 0.5:
            raise ConfigError(f"trimmed mean beta must be in [0, 0.5), got {self.beta}")
        object.__setattr__(self, "_combine", partial(trimmed_combine, beta=self.beta))

    @property
    def name(self) -> str:
        """``"trimmed_mean"``."""
        return "trimmed_mean"

    def initial_state(self, n_parameters: int) -> StrategyState:
        """An empty buffer."""
        return StrategyState()

    def on_update(
        self, state: StrategyState, update: ClientUpdate, version: int, params: np.ndarray
    ) -> StrategyResult:
        """Buffer the update; aggregate when ``K`` are buffered."""
        return buffered_on_update(state, update, version, params, self.spec, self._combine)

    def on_timeout(self, state: StrategyState, version: int, params: np.ndarray) -> StrategyResult:
        """Aggregate a partial buffer if ``spec.min_updates_on_timeout`` allows."""
        return buffered_on_timeout(state, version, params, self.spec, self._combine)
