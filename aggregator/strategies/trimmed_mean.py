"""Coordinate-wise trimmed mean aggregation (plain mode only).

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018. The server buffers ``K`` deltas and, per coordinate, drops the
``floor(beta * k)`` largest and smallest values and averages the rest (unweighted, like the median,
so that a claimed sample count cannot buy influence). Each update is reported with weight ``1 / k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from aggregator.strategies.buffered import BufferedRule, BufferSpec
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
class TrimmedMean(BufferedRule):
    """Trimmed-mean rule.

    Attributes:
        spec: Buffer size ``K``, server learning rate, timeout policy (staleness is unused).
        beta: Fraction trimmed from each end, ``0 <= beta < 0.5``.
    """

    spec: BufferSpec
    beta: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 0.5:
            raise ConfigError(f"trimmed mean beta must be in [0, 0.5), got {self.beta}")

    coordinatewise: ClassVar[bool] = True

    @property
    def name(self) -> str:
        """``"trimmed_mean"``."""
        return "trimmed_mean"

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinate-wise trimmed mean."""
        return trimmed_combine(deltas, weights, beta=self.beta)
