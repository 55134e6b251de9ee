"""The one interface every aggregation rule implements, and the values it works on.

A strategy is a pure object: it holds only its parameters and never mutates anything. Its evolving
state lives in a :class:`StrategyState` value that the caller (the sans-I/O engine) threads through
``on_update`` and ``on_timeout`` and checkpoints. Every array a strategy returns is a fresh,
read-only array, so sharing values between states is safe.

The numeric kernels (weighted mean, staleness, clipping, median, Krum) live apart from the
classes in :mod:`aggregator.strategies.kernels` and :mod:`aggregator.strategies.staleness`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np

from fedsynth.codec.quantize import QuantizedVector
from fedsynth.errors import ProtocolError

__all__ = [
    "AppliedWeight",
    "ClientUpdate",
    "Delta",
    "Strategy",
    "StrategyResult",
    "StrategyState",
    "UpdateRefused",
    "dense_delta",
    "frozen_array",
]

Delta: TypeAlias = np.ndarray | QuantizedVector
"""An update's delta: a 1-D float32 array, or the levels of a quantized one as they came off the
wire (:mod:`fedsynth.codec.quantize`), which the weighted-mean rules sum without forming floats."""


def dense_delta(delta: Delta) -> np.ndarray:
    """``delta`` as a 1-D float32 array (a quantized one's values rounded to float32)."""
    if isinstance(delta, QuantizedVector):
        return delta.dense(np.float32)
    return delta


def frozen_array(values: np.ndarray, dtype: type[np.generic] | None = None) -> np.ndarray:
    """Return a read-only copy of ``values`` (converted to ``dtype`` when given).

    Args:
        values: Any array.
        dtype: Target dtype; ``None`` keeps the dtype.

    Returns:
        A new contiguous array whose ``writeable`` flag is off.
    """
    out = np.array(values, dtype=dtype, copy=True, order="C")
    out.setflags(write=False)
    return out


@dataclass(frozen=True, slots=True, eq=False)
class ClientUpdate:
    """One site's decoded model update.

    Attributes:
        update_id: Unique id of this update (stable across resends by the agent's outbox).
        site_id: The sending site.
        base_version: Global version ``b`` the site trained from.
        n_samples: Number of local samples behind the update (the FedAvg weight).
        delta: ``local - global_b``: a 1-D float32 array, or a :class:`QuantizedVector` of the
            levels it was sent as (:data:`Delta`).
        weight_hint: The client's own declared weight multiplier. Built-in strategies do not trust
            it (they weight by ``n_samples`` and server-side staleness); it is carried for audit and
            for rules that choose to use it.
    """

    update_id: str
    site_id: str
    base_version: int
    n_samples: int
    delta: Delta
    weight_hint: float = 1.0


@dataclass(frozen=True, slots=True, eq=False)
class StrategyState:
    """Evolving state of a strategy; one shape for every rule so checkpoints stay generic.

    Attributes:
        buffer: Updates received but not yet aggregated, in arrival order.
        slots: Named server-side arrays (e.g. FedAdam's ``m`` and ``v``).
        counters: Named integer counters (e.g. optimizer steps).
    """

    buffer: tuple[ClientUpdate, ...] = ()
    slots: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}))
    counters: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class AppliedWeight:
    """How one update entered a new global version.

    Attributes:
        update_id: The update.
        site_id: Its site.
        staleness: ``t = v - b`` at the version it was applied to.
        weight: The weight the rule gave it (rule-specific: ``alpha * s(t)`` for FedAsync,
            ``n_i * s(t_i)`` for FedBuff, 1/m for a multi-Krum pick, 0 for a discarded update).
    """

    update_id: str
    site_id: str
    staleness: int
    weight: float


@dataclass(frozen=True, slots=True, eq=False)
class StrategyResult:
    """What a strategy step produced.

    Attributes:
        state: The new strategy state.
        params: The NEW global parameter vector (float32, read-only) when this step bumps the
            version, else ``None``.
        applied: One entry per update that was aggregated into ``params`` (empty when ``None``).
    """

    state: StrategyState
    params: np.ndarray | None = None
    applied: tuple[AppliedWeight, ...] = ()


class UpdateRefused(ProtocolError):
    """A well-formed update that this rule cannot take now (e.g. a FedAvg update for an old round).

    Attributes:
        reason_code: Short machine-readable reason, reported in the dead-letter record.
    """

    def __init__(self, reason_code: str, detail: str) -> None:
        super().__init__(f"{reason_code}: {detail}")
        self.reason_code = reason_code
        self.detail = detail


@runtime_checkable
class Strategy(Protocol):
    """An aggregation rule: pure, parameterised, state passed in and out."""

    @property
    def name(self) -> str:
        """Short name of the rule (as in the configuration)."""
        ...

    def initial_state(self, n_parameters: int) -> StrategyState:
        """State before any update, for a model of ``n_parameters`` parameters."""
        ...

    def on_update(
        self, state: StrategyState, update: ClientUpdate, version: int, params: np.ndarray
    ) -> StrategyResult:
        """Take one validated update at global ``version`` with global vector ``params``.

        Raises:
            UpdateRefused: The rule cannot take this update now.
        """
        ...

    def on_timeout(self, state: StrategyState, version: int, params: np.ndarray) -> StrategyResult:
        """The round/buffer deadline for ``version`` passed: aggregate what is there, if allowed."""
        ...
