"""Krum and multi-Krum aggregation (plain mode only).

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017. With ``k`` buffered deltas of which at most ``f`` are Byzantine
(``k >= 2f + 3``), each delta is scored by the sum of squared distances to its ``k - f - 2`` nearest
neighbours; Krum takes the lowest-scoring delta, multi-Krum the plain mean of the ``m`` lowest.
Selected updates are reported with weight ``1 / m``, the rest with ``0``. Equal scores are broken by
arrival order (the lower buffer index wins), which keeps replays deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggregator.strategies.buffered import BufferedRule, BufferSpec
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
class Krum(BufferedRule):
    """(Multi-)Krum rule.

    Attributes:
        spec: Buffer size ``K``, server learning rate, timeout policy (staleness is unused).
        n_byzantine: ``f``, the number of Byzantine updates tolerated per buffer.
        n_selected: ``m``; 1 is classic Krum.
    """

    spec: BufferSpec
    n_byzantine: int
    n_selected: int = 1

    def __post_init__(self) -> None:
        smallest = self.spec.min_updates_on_timeout or self.spec.buffer_size
        if self.n_byzantine < 0 or min(smallest, self.spec.buffer_size) < 2 * self.n_byzantine + 3:
            raise ConfigError(
                f"Krum with f={self.n_byzantine} needs every aggregated buffer to hold >= "
                f"{2 * self.n_byzantine + 3} updates"
            )
        if not 1 <= self.n_selected <= self.spec.buffer_size:
            raise ConfigError(f"n_selected must be in 1..{self.spec.buffer_size}")

    @property
    def name(self) -> str:
        """``"krum"``."""
        return "krum"

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean of the multi-Krum selection."""
        return krum_combine(
            deltas, weights, n_byzantine=self.n_byzantine, n_selected=self.n_selected
        )
