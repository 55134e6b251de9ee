"""Aggregation rules: one module per rule behind the :class:`Strategy` protocol.

Pure code: no I/O, no broker. Numeric kernels are in :mod:`.kernels` and :mod:`.staleness`.
"""

from aggregator.strategies.base import (
    AppliedWeight,
    ClientUpdate,
    Strategy,
    StrategyResult,
    StrategyState,
    UpdateRefused,
)
from aggregator.strategies.buffered import BufferSpec
from aggregator.strategies.config import StrategyConfig
from aggregator.strategies.fedadam import FedAdam
from aggregator.strategies.fedasync import FedAsync
from aggregator.strategies.fedavg import FedAvg
from aggregator.strategies.fedbuff import FedBuff
from aggregator.strategies.fedprox import FedProx, proximal_penalty
from aggregator.strategies.krum import Krum
from aggregator.strategies.median import CoordinateMedian
from aggregator.strategies.norm_clipping import NormClipping
from aggregator.strategies.registry import STRATEGY_NAMES, build_strategy
from aggregator.strategies.trimmed_mean import TrimmedMean

__all__ = [
    "STRATEGY_NAMES",
    "AppliedWeight",
    "BufferSpec",
    "ClientUpdate",
    "CoordinateMedian",
    "FedAdam",
    "FedAsync",
    "FedAvg",
    "FedBuff",
    "FedProx",
    "Krum",
    "NormClipping",
    "Strategy",
    "StrategyConfig",
    "StrategyResult",
    "StrategyState",
    "TrimmedMean",
    "UpdateRefused",
    "build_strategy",
    "proximal_penalty",
]
