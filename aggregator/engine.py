"""The sans-I/O aggregator engine: ``step(state, event) -> (state, out events)``.

The engine owns the global model and its version, the strategy's state, the roster of known sites,
the ids it has accepted, the ids of applied secure cohorts, and the history of which sites made each
version. It validates every update (:mod:`aggregator.validation`) before the strategy sees it, and
returns typed out events for the adapter to publish. It does no I/O, reads no clock and draws no
random numbers, so the same event sequence always gives bit-identical vectors: a restarted
aggregator that replays from its last checkpoint ends exactly where an undisturbed one does.

Replay protection uses a version window, not an ever-growing set. Accepted message and update ids
are kept per base version ``b``; after a version bump to ``v`` every bucket with
``b < v - max_staleness`` is dropped. An update with such a base is rejected as ``too_stale`` by
validation before it could be applied, so forgetting its id can never let it in twice. With
``max_staleness=None`` every id is kept for the run. Applied cohort ids are kept for the run (one id
per cohort).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

import numpy as np

from aggregator.strategies.base import (
    ClientUpdate,
    Strategy,
    StrategyResult,
    StrategyState,
    UpdateRefused,
    frozen_array,
)
from aggregator.strategies.kernels import apply_direction
from aggregator.validation import (
    ReasonCode,
    Rejection,
    ValidationContext,
    replay_key,
    validate_update,
)
from fedsynth.errors import ConfigError

__all__ = [
    "Accepted",
    "AggregatorEngine",
    "Applied",
    "CohortAggregated",
    "EngineConfig",
    "EngineState",
    "GlobalVersionPublished",
    "InEvent",
    "OutEvent",
    "Rejected",
    "RosterChanged",
    "RoundTimeout",
    "UpdateReceived",
    "VersionRecord",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- events in
@dataclass(frozen=True, slots=True, eq=False)
class UpdateReceived:
    """A decoded, signature-checked plain update."""

    update: ClientUpdate
    message_id: str


@dataclass(frozen=True, slots=True, eq=False)
class CohortAggregated:
    """The unmasked result of a secure cohort, applied as one FedBuff step.

    Attributes:
        cohort_id: Unique cohort id (replays are rejected).
        weighted_delta_sum: ``sum_i w_i delta_i`` (float64), ``w_i`` pre-scaled by each site.
        weight_sum: ``sum_i w_i`` (> 0).
        contributors: Site ids of the survivors.
        target_version: The version ``v_c`` announced with the roster (recorded, not enforced).
    """

    cohort_id: str
    weighted_delta_sum: np.ndarray
    weight_sum: float
    contributors: tuple[str, ...]
    target_version: int


@dataclass(frozen=True, slots=True)
class RoundTimeout:
    """The round/buffer deadline for ``version`` passed (ignored if the version moved on)."""

    version: int


@dataclass(frozen=True, slots=True)
class RosterChanged:
    """The federation roster now holds exactly ``site_ids``."""

    site_ids: frozenset[str]


InEvent: TypeAlias = UpdateReceived | CohortAggregated | RoundTimeout | RosterChanged


# ----------------------------------------------------------------------------- events out
@dataclass(frozen=True, slots=True, eq=False)
class GlobalVersionPublished:
    """A new global version (``vector`` is read-only float32)."""

    version: int
    vector: np.ndarray
    contributors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message refused before or by the strategy; goes to the dead-letter topic."""

    message_id: str
    reason: Rejection


@dataclass(frozen=True, slots=True)
class Accepted:
    """An update passed validation and waits in the strategy's buffer."""

    message_id: str
    update_id: str
    pending: int


@dataclass(frozen=True, slots=True)
class Applied:
    """An update (or a cohort, by its id) entered a new version with this staleness and weight."""

    update_id: str
    staleness: int
    weight: float


OutEvent: TypeAlias = GlobalVersionPublished | Rejected | Accepted | Applied


# ----------------------------------------------------------------------------- state
@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Fixed settings of one aggregator run.

    Attributes:
        n_parameters: Length of the global vector.
        max_staleness: Largest accepted ``v - b``; ``None`` for no bound (ids then kept forever).
        max_norm: Largest accepted L2 norm of a plain delta; ``None`` for no bound.
        cohort_server_lr: Server learning rate for secure cohort results.
    """

    n_parameters: int
    max_staleness: int | None = None
    max_norm: float | None = None
    cohort_server_lr: float = 1.0

    def __post_init__(self) -> None:
        if self.n_parameters < 1:
            raise ConfigError("n_parameters must be >= 1")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ConfigError("max_staleness must be >= 0 or None")


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """Who made a version: ``source`` is ``"strategy"`` or ``"cohort:<id>"``."""

    version: int
    contributors: tuple[str, ...]
    source: str


@dataclass(frozen=True, slots=True, eq=False)
class EngineState:
    """Everything the aggregator must checkpoint (besides consumer offsets).

    Attributes:
        model_version: Current global version ``v``.
        params: Current global vector (read-only float32).
        strategy_state: The strategy's state (buffer, optimizer slots).
        known_sites: Roster of site ids.
        seen: Base version -> accepted message and update ids, each scoped by its site
            (:func:`~aggregator.validation.replay_key`; the replay window).
        applied_cohorts: Ids of applied secure cohorts.
        history: One record per version after the initial one.
    """

    model_version: int
    params: np.ndarray
    strategy_state: StrategyState
    known_sites: frozenset[str] = frozenset()
    seen: Mapping[int, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    applied_cohorts: frozenset[str] = frozenset()
    history: tuple[VersionRecord, ...] = ()


class _SeenView(Container[str]):
    """Membership over every bucket of the replay window."""

    def __init__(self, seen: Mapping[int, frozenset[str]]) -> None:
        self._seen = seen

    def __contains__(self, item: object) -> bool:
        return any(item in ids for ids in self._seen.values())


def _remember(
    seen: Mapping[int, frozenset[str]], base: int, ids: tuple[str, ...]
) -> Mapping[int, frozenset[str]]:
    return MappingProxyType({**seen, base: seen.get(base, frozenset()) | frozenset(ids)})


def _prune(
    seen: Mapping[int, frozenset[str]], version: int, max_staleness: int | None
) -> Mapping[int, frozenset[str]]:
    if max_staleness is None:
        return seen
    floor = version - max_staleness
    return MappingProxyType({b: ids for b, ids in seen.items() if b >= floor})


# ----------------------------------------------------------------------------- engine
@dataclass(frozen=True, slots=True)
class AggregatorEngine:
    """The pure aggregator: a strategy, fixed settings, and :meth:`step`.

    Attributes:
        strategy: The aggregation rule.
        config: Fixed settings.
    """

    strategy: Strategy
    config: EngineConfig

    def initial_state(
        self, params: np.ndarray, known_sites: frozenset[str] = frozenset(), version: int = 0
    ) -> EngineState:
        """State at ``version`` with global vector ``params``.

        Raises:
            ConfigError: ``params`` does not have ``n_parameters`` values.
        """
        if np.asarray(params).shape != (self.config.n_parameters,):
            raise ConfigError(f"params must have shape ({self.config.n_parameters},)")
        return EngineState(
            model_version=version,
            params=frozen_array(params, np.float32),
            strategy_state=self.strategy.initial_state(self.config.n_parameters),
            known_sites=frozenset(known_sites),
        )

    def validation_context(self, state: EngineState) -> ValidationContext:
        """The context :func:`validate_update` checks an update against in ``state``."""
        return ValidationContext(
            known_sites=state.known_sites,
            seen_ids=_SeenView(state.seen),
            current_version=state.model_version,
            max_staleness=self.config.max_staleness,
            n_parameters=self.config.n_parameters,
            max_norm=self.config.max_norm,
        )

    def step(self, state: EngineState, event: InEvent) -> tuple[EngineState, list[OutEvent]]:
        """Apply one event; return the new state and the events to publish, in order."""
        match event:
            case UpdateReceived():
                return self._on_update(state, event)
            case CohortAggregated():
                return self._on_cohort(state, event)
            case RoundTimeout(version=v) if v == state.model_version:
                result = self.strategy.on_timeout(state.strategy_state, v, state.params)
                return self._advance(state, result, [])
            case RoundTimeout():
                return state, []
            case RosterChanged(site_ids=sites):
                return _replace(state, known_sites=frozenset(sites)), []
        raise ConfigError(f"unknown engine event {type(event).__name__}")

    def _on_update(
        self, state: EngineState, event: UpdateReceived
    ) -> tuple[EngineState, list[OutEvent]]:
        update, mid = event.update, event.message_id
        rejection = validate_update(update, self.validation_context(state), mid)
        if rejection is not None:
            log.info("update rejected", extra={"message_id": mid, "reason": rejection.reason_code})
            return state, [Rejected(mid, rejection)]
        try:
            result = self.strategy.on_update(
                state.strategy_state, update, state.model_version, state.params
            )
        except UpdateRefused as exc:
            return state, [Rejected(mid, Rejection(exc.reason_code, exc.detail))]
        keys = (replay_key(update.site_id, mid), replay_key(update.site_id, update.update_id))
        seen = _remember(state.seen, update.base_version, keys)
        state = _replace(state, seen=seen)
        out: list[OutEvent] = []
        if result.params is None:
            out.append(Accepted(mid, update.update_id, len(result.state.buffer)))
        return self._advance(state, result, out)

    def _advance(
        self, state: EngineState, result: StrategyResult, out: list[OutEvent]
    ) -> tuple[EngineState, list[OutEvent]]:
        state = _replace(state, strategy_state=result.state)
        if result.params is None:
            return state, out
        out.extend(Applied(a.update_id, a.staleness, a.weight) for a in result.applied)
        contributors = tuple(a.site_id for a in result.applied if a.weight > 0)
        return self._publish(state, result.params, contributors, "strategy", out)

    def _on_cohort(
        self, state: EngineState, event: CohortAggregated
    ) -> tuple[EngineState, list[OutEvent]]:
        rejection = self._check_cohort(state, event)
        if rejection is not None:
            return state, [Rejected(event.cohort_id, rejection)]
        direction = np.asarray(event.weighted_delta_sum, dtype=np.float64) / event.weight_sum
        params = apply_direction(state.params, direction, self.config.cohort_server_lr)
        staleness = max(0, state.model_version - event.target_version)
        out: list[OutEvent] = [Applied(event.cohort_id, staleness, float(event.weight_sum))]
        state = _replace(state, applied_cohorts=state.applied_cohorts | {event.cohort_id})
        source = f"cohort:{event.cohort_id}"
        return self._publish(state, params, tuple(event.contributors), source, out)

    def _check_cohort(self, state: EngineState, event: CohortAggregated) -> Rejection | None:
        vec = np.asarray(event.weighted_delta_sum)
        if event.cohort_id in state.applied_cohorts:
            return Rejection(ReasonCode.REPLAY, f"cohort {event.cohort_id} was already applied")
        if vec.shape != (self.config.n_parameters,):
            return Rejection(ReasonCode.BAD_SHAPE, f"cohort sum shape {vec.shape}")
        if not (np.isfinite(event.weight_sum) and event.weight_sum > 0):
            return Rejection(ReasonCode.BAD_SAMPLE_COUNT, f"cohort weight_sum={event.weight_sum}")
        if not np.all(np.isfinite(vec)):
            return Rejection(ReasonCode.NON_FINITE, "cohort sum has non-finite values")
        return None

    def _publish(
        self,
        state: EngineState,
        params: np.ndarray,
        contributors: tuple[str, ...],
        source: str,
        out: list[OutEvent],
    ) -> tuple[EngineState, list[OutEvent]]:
        version = state.model_version + 1
        state = _replace(
            state,
            model_version=version,
            params=params,
            seen=_prune(state.seen, version, self.config.max_staleness),
            history=state.history + (VersionRecord(version, contributors, source),),
        )
        out.append(GlobalVersionPublished(version, params, contributors))
        return state, out


def _replace(state: EngineState, **changes: Any) -> EngineState:
    return dataclasses.replace(state, **changes)
