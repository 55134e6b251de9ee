"""Krum and multi-Krum aggregation (plain mode only).

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017. With ``k`` buffered deltas of which at most ``f`` are Byzantine
(``k >= 2f + 3``), each delta is scored by the sum of squared distances to its ``k - f - 2`` nearest
neighbours; Krum takes the lowest-scoring delta, multi-Krum the plain mean of the ``m`` lowest.
Selected updates are reported with weight ``1 / m``, the rest with ``0``. Equal scores are broken by
arrival order (the lower buffer index wins), which keeps replays deterministic.
"""

from __future__ import annotations

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
from aggregator.strategies.kernels import krum_select
from fedsynth.errors import ConfigError

__all__ = ["Krum", "krum_combine"]


def krum_combine(
    deltas: np.ndarray, weights: np.ndarray, n_byzantine: int, n_selected: int
) -> tuple[np.ndarray, np.ndarray]:
    """Combiner: mean of the ``n_selected`` best Krum-scored deltas."""
    m = min(n_selected, deltas.shape[0])
    picked = np.sort(krum_select(deltas, n_byzantine, m))
    reported = np.zeros(deltas.shape[0], dtype=np.float64)
    reported[picked] = 1.0 / m
    return np.asarray(deltas[picked].mean(axis=0), dtype=np.float64), reported


@dataclass(frozen=True, slots=True)
class Krum:
    """(Multi-)Krum rule.

    Attributes:
        spec: Buffer size ``K``, server learning rate, timeout policy (staleness is unused).
        n_byzantine: ``f``, the number of Byzantine updates tolerated per buffer.
        n_selected: ``m``; 1 is classic Krum.
    """

    spec: BufferSpec
    n_byzantine: int
    n_selected: int = 1
    _combine: Combiner = field(init=False, repr=False)

    def __post_init__(self) -> None:
        smallest = self.spec.min_updates_on_timeout or self.spec.buffer_size
        if self.n_byzantine < 0 or min(smallest, self.spec.buffer_size) < 2 * self.n_byzantine + 3:
            raise ConfigError(
                f"Krum with f={self.n_byzantine} needs every aggregated buffer to hold >= "
                f"{2 * self.n_byzantine + 3} updates"
            )
        if not 1 <= self.n_selected <= self.spec.buffer_size:
            raise ConfigError(f"n_selected must be in 1..{self.spec.buffer_size}")
        combine = partial(krum_combine, n_byzantine=self.n_byzantine, n_selected=self.n_selected)
        object.__setattr__(self, "_combine", combine)

    @property
    def name(self) -> str:
        """``"krum"``."""
        return "krum"

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
