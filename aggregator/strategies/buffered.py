"""Buffer-then-aggregate bookkeeping shared by FedBuff, FedAdam and the robust rules.

A buffered rule appends each update to the state's buffer; when ``buffer_size`` updates are there
(or the deadline passes with at least ``min_updates_on_timeout``) it takes the whole buffer,
computes each update's staleness ``t_i = v - b_i`` at the version it is applied to, and hands the
stacked deltas and their weights ``n_i * s(t_i)`` to a *combiner*: a pure function that returns the
aggregation direction and the weight it reports per update. The server then moves
``x <- x + server_lr * direction``. A rule whose combiner is coordinate-wise (``coordinatewise``)
has the whole flush run per block of columns (:mod:`.columns`): the same bits, in cache-sized
pieces.

This module is plumbing, not a rule; see Nguyen et al., "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022, for the buffering scheme it implements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

import numpy as np

from aggregator.strategies.base import (
    AppliedWeight,
    ClientUpdate,
    StrategyResult,
    StrategyState,
    UpdateRefused,
)
from aggregator.strategies.columns import for_columns
from aggregator.strategies.kernels import apply_direction, apply_direction_into, stack_deltas
from aggregator.strategies.staleness import StalenessFn, constant_staleness
from fedsynth.errors import ConfigError

__all__ = [
    "Batch",
    "BufferSpec",
    "BufferedRule",
    "ColumnCombiner",
    "Combiner",
    "buffered_on_timeout",
    "buffered_on_update",
    "take_buffer",
    "with_update",
]

Combiner: TypeAlias = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``(deltas (k, d), weights (k,)) -> (direction (d,), reported weight per update (k,))``."""

ColumnCombiner: TypeAlias = Callable[["Batch", slice], tuple[np.ndarray, np.ndarray]]
"""``(batch, columns) -> (direction over those columns, reported weight per update (k,))``, for a
coordinate-wise rule: its result over a block of columns equals those columns of its result over
the whole vector, and the reported weights do not depend on the block."""


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
        updates: The updates in canonical (site, update id) order.
        staleness: ``t_i`` per update.
        weights: ``n_i * s(t_i)`` per update (float64).
    """

    updates: tuple[ClientUpdate, ...]
    staleness: tuple[int, ...]
    weights: np.ndarray

    @property
    def deltas(self) -> np.ndarray:
        """``(k, d)`` float64 stack of the deltas."""
        return self.stacked()

    def stacked(self, columns: slice | None = None) -> np.ndarray:
        """``(k, width)`` float64 stack of the deltas' ``columns`` (all by default)."""
        return stack_deltas([u.delta for u in self.updates], columns)

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
    batch = Batch(updates, ts, weights)
    return StrategyState((), state.slots, state.counters), batch


def _flush(
    state: StrategyState,
    version: int,
    params: np.ndarray,
    spec: BufferSpec,
    combine: Combiner,
    columns: ColumnCombiner | None,
) -> StrategyResult:
    emptied, batch = take_buffer(state, version, spec.staleness)
    if columns is None:
        direction, reported = combine(batch.deltas, batch.weights)
        new_params = apply_direction(params, direction, spec.server_lr)
        return StrategyResult(emptied, new_params, batch.applied(reported))
    out = np.empty(np.shape(params), dtype=np.float32)
    first: list[np.ndarray] = []

    def block(cols: slice) -> None:
        direction, reported = columns(batch, cols)
        apply_direction_into(out[cols], params[cols], direction, spec.server_lr)
        if cols.start == 0:
            first.append(reported)

    for_columns(out.size, block)
    out.setflags(write=False)
    return StrategyResult(emptied, out, batch.applied(first[0]))


def buffered_on_update(
    state: StrategyState,
    update: ClientUpdate,
    version: int,
    params: np.ndarray,
    spec: BufferSpec,
    combine: Combiner,
    columns: ColumnCombiner | None = None,
) -> StrategyResult:
    """Buffer ``update``; aggregate with ``combine`` when the buffer is full.

    ``columns``: for a coordinate-wise rule, the same combination over a block of columns; the
    flush then runs per column block (:mod:`.columns`) instead of over the whole stack.
    """
    state = with_update(state, update, version)
    if len(state.buffer) < spec.buffer_size:
        return StrategyResult(state)
    return _flush(state, version, params, spec, combine, columns)


def buffered_on_timeout(
    state: StrategyState,
    version: int,
    params: np.ndarray,
    spec: BufferSpec,
    combine: Combiner,
    columns: ColumnCombiner | None = None,
) -> StrategyResult:
    """Aggregate a partial buffer at the deadline when the spec allows it."""
    floor = spec.min_updates_on_timeout
    if floor is None or len(state.buffer) < floor:
        return StrategyResult(state)
    return _flush(state, version, params, spec, combine, columns)


class BufferedRule:
    """The protocol methods every buffered rule shares; a rule adds ``spec``, ``name`` and
    :meth:`combine` (how ``K`` buffered deltas become one direction), nothing else."""

    __slots__ = ()
    spec: BufferSpec
    coordinatewise: ClassVar[bool] = False
    """True when :meth:`combine` treats each coordinate on its own: the flush then runs per
    column block through :meth:`combine_columns`."""

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(deltas (k, d), weights (k,))`` -> ``(direction (d,), weight per update (k,))``."""
        raise NotImplementedError

    def combine_columns(self, batch: Batch, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`combine` over a block of columns (used when :attr:`coordinatewise`)."""
        return self.combine(batch.stacked(cols), batch.weights)

    def _columns(self) -> ColumnCombiner | None:
        return self.combine_columns if self.coordinatewise else None

    def initial_state(self, n_parameters: int) -> StrategyState:
        """An empty buffer."""
        return StrategyState()

    def on_update(
        self, state: StrategyState, update: ClientUpdate, version: int, params: np.ndarray
    ) -> StrategyResult:
        """Buffer the update; aggregate when ``K`` are buffered."""
        return buffered_on_update(
            state, update, version, params, self.spec, self.combine, self._columns()
        )

    def on_timeout(self, state: StrategyState, version: int, params: np.ndarray) -> StrategyResult:
        """Aggregate a partial buffer if ``spec.min_updates_on_timeout`` allows."""
        return buffered_on_timeout(
            state, version, params, self.spec, self.combine, self._columns()
        )
