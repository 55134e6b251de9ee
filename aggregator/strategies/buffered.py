"""Buffer-then-aggregate bookkeeping shared by FedBuff, FedAdam and the robust rules.

A buffered rule appends each update to the state's buffer; when ``buffer_size`` updates are there
(or the deadline passes with at least ``min_updates_on_timeout``) it takes the whole buffer,
computes each update's staleness ``t_i = v - b_i`` at the version it is applied to, and hands the
stacked deltas and their weights ``n_i * s(t_i)`` to a *combiner*: a pure function that returns the
aggregation direction and the weight it reports per update. The server then moves
``x <- x + server_lr * direction``.

This module is plumbing, not a rule; see Nguyen et al., "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022, for the buffering scheme it implements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from aggregator.strategies.base import (
    AppliedWeight,
    ClientUpdate,
    StrategyResult,
    StrategyState,
    UpdateRefused,
)
from aggregator.strategies.kernels import apply_direction, stack_deltas
from aggregator.strategies.staleness import StalenessFn, constant_staleness
from fedsynth.errors import ConfigError

__all__ = [
    "Batch",
    "BufferSpec",
    "BufferedRule",
    "Combiner",
    "buffered_on_timeout",
    "buffered_on_update",
    "take_buffer",
    "with_update",
]

Combiner: TypeAlias = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``(deltas (k, d), weights (k,)) -> (direction (d,), reported weight per update (k,))``."""


@dataclass(frozen=True, slots=True)
class BufferSpec:
    """Parameters of a buffered rule.

    Attributes:
        buffer_size: ``K``, updates per aggregation.
        server_lr: Server learning rate applied to the combined direction.
        staleness: ``s(t)``.
        min_updates_on_timeout: Aggregate a partial buffer at the deadline when it holds at least
            this many updates; ``None`` never aggregates a partial buffer.
    """

    buffer_size: int
    server_lr: float = 1.0
    staleness: StalenessFn = constant_staleness
    min_updates_on_timeout: int | None = None

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ConfigError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if self.min_updates_on_timeout is not None and self.min_updates_on_timeout < 1:
            raise ConfigError("min_updates_on_timeout must be >= 1 or None")


@dataclass(frozen=True, slots=True, eq=False)
class Batch:
    """A taken buffer, ready to combine.

    Attributes:
        updates: The updates in arrival order.
        deltas: ``(k, d)`` float64 stack of their deltas.
        staleness: ``t_i`` per update.
        weights: ``n_i * s(t_i)`` per update (float64).
    """

    updates: tuple[ClientUpdate, ...]
    deltas: np.ndarray
    staleness: tuple[int, ...]
    weights: np.ndarray

    def applied(self, reported: np.ndarray) -> tuple[AppliedWeight, ...]:
        """Pair each update with the weight a combiner reported for it."""
        return tuple(
            AppliedWeight(u.update_id, u.site_id, t, float(w))
            for u, t, w in zip(self.updates, self.staleness, reported, strict=True)
        )


def with_update(state: StrategyState, update: ClientUpdate, version: int) -> StrategyState:
    """Append ``update`` to the buffer.

    Raises:
        UpdateRefused: The update claims a base version newer than ``version``.
    """
    if update.base_version > version:
        raise UpdateRefused(
            "future_base", f"base {update.base_version} is newer than version {version}"
        )
    return StrategyState(state.buffer + (update,), state.slots, state.counters)


def take_buffer(
    state: StrategyState, version: int, staleness: StalenessFn
) -> tuple[StrategyState, Batch]:
    """Empty the buffer and return its contents weighted for application at ``version``.

    The updates are combined in a canonical order (site, then update id), not in arrival order:
    float sums of three or more vectors depend on their order, and arrival order across Kafka
    partitions differs from run to run (and after a restart), while the set of updates in a
    synchronous round does not. Sorted, a FedAvg round gives the same bits however its updates
    arrived.
    """
    updates = tuple(sorted(state.buffer, key=lambda u: (u.site_id, u.update_id)))
    ts = tuple(version - u.base_version for u in updates)
    weights = np.array(
        [u.n_samples * staleness(t) for u, t in zip(updates, ts, strict=True)], dtype=np.float64
    )
    batch = Batch(updates, stack_deltas([u.delta for u in updates]), ts, weights)
    return StrategyState((), state.slots, state.counters), batch


def _flush(
    state: StrategyState, version: int, params: np.ndarray, spec: BufferSpec, combine: Combiner
) -> StrategyResult:
    emptied, batch = take_buffer(state, version, spec.staleness)
    direction, reported = combine(batch.deltas, batch.weights)
    new_params = apply_direction(params, direction, spec.server_lr)
    return StrategyResult(emptied, new_params, batch.applied(reported))


def buffered_on_update(
    state: StrategyState,
    update: ClientUpdate,
    version: int,
    params: np.ndarray,
    spec: BufferSpec,
    combine: Combiner,
) -> StrategyResult:
    """Buffer ``update``; aggregate with ``combine`` when the buffer is full."""
    state = with_update(state, update, version)
    if len(state.buffer) < spec.buffer_size:
        return StrategyResult(state)
    return _flush(state, version, params, spec, combine)


def buffered_on_timeout(
    state: StrategyState, version: int, params: np.ndarray, spec: BufferSpec, combine: Combiner
) -> StrategyResult:
    """Aggregate a partial buffer at the deadline when the spec allows it."""
    floor = spec.min_updates_on_timeout
    if floor is None or len(state.buffer) < floor:
        return StrategyResult(state)
    return _flush(state, version, params, spec, combine)


class BufferedRule:
    """The protocol methods every buffered rule shares; a rule adds ``spec``, ``name`` and
    :meth:`combine` (how ``K`` buffered deltas become one direction), nothing else."""

    __slots__ = ()
    spec: BufferSpec

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(deltas (k, d), weights (k,))`` -> ``(direction (d,), weight per update (k,))``."""
        raise NotImplementedError

    def initial_state(self, n_parameters: int) -> StrategyState:
        """An empty buffer."""
        return StrategyState()

    def on_update(
        self, state: StrategyState, update: ClientUpdate, version: int, params: np.ndarray
    ) -> StrategyResult:
        """Buffer the update; aggregate when ``K`` are buffered."""
        return buffered_on_update(state, update, version, params, self.spec, self.combine)

    def on_timeout(self, state: StrategyState, version: int, params: np.ndarray) -> StrategyResult:
        """Aggregate a partial buffer if ``spec.min_updates_on_timeout`` allows."""
        return buffered_on_timeout(state, version, params, self.spec, self.combine)
