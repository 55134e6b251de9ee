"""Build a strategy from its configuration through one frozen mapping (no if/elif chain)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from aggregator.strategies.base import Strategy
from aggregator.strategies.buffered import BufferSpec
from aggregator.strategies.config import (
    AnyStrategyConfig,
    FedAdamConfig,
    FedAsyncConfig,
    FedAvgConfig,
    FedBuffConfig,
    FedProxConfig,
    KrumConfig,
    MedianConfig,
    NormClippingConfig,
    StrategyConfig,
    TrimmedMeanConfig,
)
from aggregator.strategies.fedadam import FedAdam
from aggregator.strategies.fedasync import FedAsync
from aggregator.strategies.fedavg import FedAvg
from aggregator.strategies.fedbuff import FedBuff
from aggregator.strategies.fedprox import FedProx
from aggregator.strategies.krum import Krum
from aggregator.strategies.median import CoordinateMedian
from aggregator.strategies.norm_clipping import NormClipping
from aggregator.strategies.staleness import constant_staleness
from aggregator.strategies.trimmed_mean import TrimmedMean
from fedsynth.errors import ConfigError

__all__ = ["STRATEGY_NAMES", "build_strategy"]


def _spec(cfg: Any, with_staleness: bool = False) -> BufferSpec:
    staleness = cfg.staleness.function() if with_staleness else constant_staleness
    return BufferSpec(cfg.buffer_size, cfg.server_lr, staleness, cfg.min_updates_on_timeout)


def _fedavg(cfg: FedAvgConfig) -> Strategy:
    return FedAvg(cfg.sites_per_round, cfg.min_sites_on_timeout)


def _fedprox(cfg: FedProxConfig) -> Strategy:
    return FedProx(FedAvg(cfg.sites_per_round, cfg.min_sites_on_timeout), cfg.mu)


def _fedasync(cfg: FedAsyncConfig) -> Strategy:
    return FedAsync(cfg.alpha, cfg.staleness.function())


def _fedbuff(cfg: FedBuffConfig) -> Strategy:
    return FedBuff(_spec(cfg, with_staleness=True))


def _fedadam(cfg: FedAdamConfig) -> Strategy:
    return FedAdam(_spec(cfg, with_staleness=True), cfg.beta1, cfg.beta2, cfg.tau)


def _median(cfg: MedianConfig) -> Strategy:
    return CoordinateMedian(_spec(cfg))


def _trimmed_mean(cfg: TrimmedMeanConfig) -> Strategy:
    return TrimmedMean(_spec(cfg), cfg.beta)


def _krum(cfg: KrumConfig) -> Strategy:
    return Krum(_spec(cfg), cfg.n_byzantine, cfg.n_selected)


def _norm_clipping(cfg: NormClippingConfig) -> Strategy:
    return NormClipping(build_strategy(cfg.inner), cfg.max_norm)


_BUILDERS: Mapping[type[Any], Callable[[Any], Strategy]] = MappingProxyType(
    {
        FedAvgConfig: _fedavg,
        FedProxConfig: _fedprox,
        FedAsyncConfig: _fedasync,
        FedBuffConfig: _fedbuff,
        FedAdamConfig: _fedadam,
        MedianConfig: _median,
        TrimmedMeanConfig: _trimmed_mean,
        KrumConfig: _krum,
        NormClippingConfig: _norm_clipping,
    }
)

STRATEGY_NAMES: frozenset[str] = frozenset(
    model.model_fields["name"].default for model in _BUILDERS
)
"""Every configurable rule name."""


def build_strategy(config: StrategyConfig | AnyStrategyConfig) -> Strategy:
    """Build the configured strategy.

    Args:
        config: A :class:`StrategyConfig` or one rule's config model.

    Returns:
        The strategy.

    Raises:
        ConfigError: The config type has no builder.
    """
    cfg = config.root if isinstance(config, StrategyConfig) else config
    builder = _BUILDERS.get(type(cfg))
    if builder is None:
        raise ConfigError(f"no strategy builder for {type(cfg).__name__}")
    return builder(cfg)
