"""Configuration of the aggregation rule: one pydantic model per rule, selected by ``name``.

``StrategyConfig.model_validate({"name": "fedbuff", "buffer_size": 4})`` picks the FedBuff model
through a discriminated union; :func:`aggregator.strategies.registry.build_strategy` turns it into a
:class:`~aggregator.strategies.base.Strategy`. Staleness functions are themselves a discriminated
union on ``kind``. Every model is frozen and rejects unknown keys.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from aggregator.strategies.staleness import (
    StalenessFn,
    constant_staleness,
    hinge_staleness,
    polynomial_staleness,
)

__all__ = [
    "AnyStrategyConfig",
    "ConstantStalenessConfig",
    "FedAdamConfig",
    "FedAsyncConfig",
    "FedAvgConfig",
    "FedBuffConfig",
    "FedProxConfig",
    "HingeStalenessConfig",
    "KrumConfig",
    "MedianConfig",
    "NormClippingConfig",
    "PolynomialStalenessConfig",
    "StalenessConfig",
    "StrategyConfig",
    "TrimmedMeanConfig",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConstantStalenessConfig(_Frozen):
    """``s(t) = 1``."""

    kind: Literal["constant"] = "constant"

    def function(self) -> StalenessFn:
        """The bound staleness function."""
        return constant_staleness


class PolynomialStalenessConfig(_Frozen):
    """``s(t) = (1 + t) ** -a``."""

    kind: Literal["polynomial"] = "polynomial"
    a: float = Field(0.5, ge=0)

    def function(self) -> StalenessFn:
        """The bound staleness function."""
        return partial(polynomial_staleness, a=self.a)


class HingeStalenessConfig(_Frozen):
    """``s(t) = 1`` if ``t <= b`` else ``1 / (a (t - b) + 1)``."""

    kind: Literal["hinge"] = "hinge"
    a: float = Field(10.0, ge=0)
    b: float = Field(4.0, ge=0)

    def function(self) -> StalenessFn:
        """The bound staleness function."""
        return partial(hinge_staleness, a=self.a, b=self.b)


StalenessConfig = Annotated[
    ConstantStalenessConfig | PolynomialStalenessConfig | HingeStalenessConfig,
    Field(discriminator="kind"),
]


class FedAvgConfig(_Frozen):
    """Synchronous FedAvg rounds."""

    name: Literal["fedavg"] = "fedavg"
    sites_per_round: int = Field(ge=1)
    min_sites_on_timeout: int | None = Field(1, ge=1)


class FedProxConfig(FedAvgConfig):
    """FedAvg on the server, proximal coefficient ``mu`` for clients."""

    name: Literal["fedprox"] = "fedprox"  # type: ignore[assignment]
    mu: float = Field(0.01, ge=0)


class FedAsyncConfig(_Frozen):
    """FedAsync: every update applied at once with ``alpha * s(t)``."""

    name: Literal["fedasync"] = "fedasync"
    alpha: float = Field(0.6, gt=0, le=1)
    staleness: StalenessConfig = PolynomialStalenessConfig(a=0.5)


class _BufferedConfig(_Frozen):
    buffer_size: int = Field(ge=1)
    server_lr: float = Field(1.0, gt=0)
    min_updates_on_timeout: int | None = Field(None, ge=1)


class FedBuffConfig(_BufferedConfig):
    """FedBuff: buffer ``K``, weighted mean, server learning rate."""

    name: Literal["fedbuff"] = "fedbuff"
    staleness: StalenessConfig = PolynomialStalenessConfig(a=0.5)


class FedAdamConfig(_BufferedConfig):
    """FedAdam server optimizer over buffered averaged deltas."""

    name: Literal["fedadam"] = "fedadam"
    staleness: StalenessConfig = PolynomialStalenessConfig(a=0.5)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)


class MedianConfig(_BufferedConfig):
    """Coordinate-wise median over a buffer of ``K``."""

    name: Literal["median"] = "median"


class TrimmedMeanConfig(_BufferedConfig):
    """Coordinate-wise trimmed mean over a buffer of ``K``."""

    name: Literal["trimmed_mean"] = "trimmed_mean"
    beta: float = Field(0.1, ge=0, lt=0.5)


class KrumConfig(_BufferedConfig):
    """(Multi-)Krum over a buffer of ``K`` with ``f`` Byzantine updates tolerated."""

    name: Literal["krum"] = "krum"
    n_byzantine: int = Field(ge=0)
    n_selected: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _enough_updates(self) -> KrumConfig:
        floor = min(self.buffer_size, self.min_updates_on_timeout or self.buffer_size)
        if floor < 2 * self.n_byzantine + 3:
            raise ValueError(f"Krum with f={self.n_byzantine} needs buffers of >= 2f + 3 updates")
        if self.n_selected > self.buffer_size:
            raise ValueError("n_selected cannot exceed buffer_size")
        return self


class NormClippingConfig(_Frozen):
    """Clip each delta's L2 norm to ``max_norm``, then apply the ``inner`` rule."""

    name: Literal["norm_clipping"] = "norm_clipping"
    max_norm: float = Field(gt=0)
    inner: AnyStrategyConfig


AnyStrategyConfig = Annotated[
    FedAvgConfig
    | FedProxConfig
    | FedAsyncConfig
    | FedBuffConfig
    | FedAdamConfig
    | MedianConfig
    | TrimmedMeanConfig
    | KrumConfig
    | NormClippingConfig,
    Field(discriminator="name"),
]

NormClippingConfig.model_rebuild()


class StrategyConfig(RootModel[AnyStrategyConfig]):
    """The configured rule; ``.root`` is the rule-specific model."""

    model_config = ConfigDict(frozen=True)
