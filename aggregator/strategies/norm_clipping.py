"""Norm clipping: a wrapper that bounds each update's L2 norm before another rule sees it.

Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019: clipping every
client delta to a norm bound ``M`` (``delta * min(1, M / ||delta||)``) limits what one malicious
update can do. This wraps any strategy (it is not a subclass): the inner rule receives clipped
deltas and keeps its own state unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from aggregator.strategies.base import (
    ClientUpdate,
    Strategy,
    StrategyResult,
    StrategyState,
    dense_delta,
    frozen_array,
)
from aggregator.strategies.kernels import clip_by_norm, l2_norm
from fedsynth.errors import ConfigError

__all__ = ["NormClipping"]


@dataclass(frozen=True, slots=True)
class NormClipping:
    """Clip each delta to ``max_norm``, then delegate to ``inner``.

    Attributes:
        inner: The wrapped rule.
        max_norm: L2 bound ``M > 0``.
    """

    inner: Strategy
    max_norm: float

    def __post_init__(self) -> None:
        if not self.max_norm > 0:
            raise ConfigError(f"max_norm must be > 0, got {self.max_norm}")

    @property
    def name(self) -> str:
        """``"norm_clipping[<inner>]"``."""
        return f"norm_clipping[{self.inner.name}]"

    def initial_state(self, n_parameters: int) -> StrategyState:
        """The inner rule's initial state."""
        return self.inner.initial_state(n_parameters)

    def on_update(
        self, state: StrategyState, update: ClientUpdate, version: int, params: np.ndarray
    ) -> StrategyResult:
        """Clip the delta, then hand the update to the inner rule.

        A delta within the bound goes on as it came (a quantized one stays quantized).
        """
        norm = l2_norm(update.delta)  # once: a quantized delta's from its float64 values
        if norm <= self.max_norm:
            return self.inner.on_update(state, update, version, params)
        clipped = frozen_array(clip_by_norm(dense_delta(update.delta), self.max_norm, norm))
        return self.inner.on_update(
            state, dataclasses.replace(update, delta=clipped), version, params
        )

    def on_timeout(self, state: StrategyState, version: int, params: np.ndarray) -> StrategyResult:
        """Delegate to the inner rule."""
        return self.inner.on_timeout(state, version, params)
