"""Coordinate-wise median aggregation (plain mode only).

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018. The server buffers ``K`` deltas like FedBuff and moves the global
model by ``server_lr * median_i(delta_i)`` taken per coordinate. Sample counts and staleness do not
weight the median (a weighted median would let one site claim a huge ``n`` and win); staleness is
bounded by validation instead. Each update is reported with weight ``1 / K``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from aggregator.strategies.buffered import BufferedRule, BufferSpec
from aggregator.strategies.kernels import coordinate_median

__all__ = ["CoordinateMedian", "median_combine"]


def median_combine(deltas: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Combiner: coordinate-wise median; reports ``1 / k`` per update."""
    k = deltas.shape[0]
    return coordinate_median(deltas), np.full(k, 1.0 / k)


@dataclass(frozen=True, slots=True)
class CoordinateMedian(BufferedRule):
    """Coordinate-wise median rule.

    Attributes:
        spec: Buffer size ``K``, server learning rate, timeout policy (staleness is unused).
    """

    spec: BufferSpec

    coordinatewise: ClassVar[bool] = True

    @property
    def name(self) -> str:
        """``"median"``."""
        return "median"

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinate-wise median."""
        return median_combine(deltas, weights)
