"""FedBuff: buffered asynchronous aggregation.

Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022. The server
buffers ``K`` client deltas; when the buffer is full it moves the global model by
``server_lr * sum_i w_i delta_i / sum_i w_i`` with ``w_i = n_i * s(t_i)`` and ``t_i`` the staleness
of update ``i`` at the version it is applied to, then bumps the version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from aggregator.strategies.buffered import Batch, BufferedRule, BufferSpec
from aggregator.strategies.kernels import weighted_mean, weighted_mean_rows

__all__ = ["FedBuff", "weighted_columns", "weighted_combine"]


def weighted_combine(deltas: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Combiner: the weighted mean of the deltas; reports each update's weight ``n_i * s(t_i)``."""
    return weighted_mean(deltas, weights), weights


def weighted_columns(batch: Batch, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """:func:`weighted_combine` over a block of columns, without stacking the deltas."""
    rows = [u.delta for u in batch.updates]
    return weighted_mean_rows(rows, batch.weights, cols), batch.weights


@dataclass(frozen=True, slots=True)
class FedBuff(BufferedRule):
    """FedBuff rule.

    Attributes:
        spec: Buffer size ``K``, server learning rate, staleness function, timeout policy.
    """

    spec: BufferSpec

    coordinatewise: ClassVar[bool] = True

    @property
    def name(self) -> str:
        """``"fedbuff"``."""
        return "fedbuff"

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean of the deltas."""
        return weighted_combine(deltas, weights)

    def combine_columns(self, batch: Batch, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean over a block of columns, straight from the float32 deltas."""
        return weighted_columns(batch, cols)
