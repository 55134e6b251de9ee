"""Secure-mode coordination without I/O: one SecAgg+ cohort per FedBuff buffer, one at a time.

FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022)
applies the weighted mean of ``K`` buffered updates; in secure mode the buffer is a SecAgg+ cohort
(Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020), since
masks cancel only inside a cohort. :class:`CohortCoordinator` drives the pure server state machine
of :mod:`fedsynth.secagg.server` from decoded, signature-verified records and returns the records to
publish; the Kafka adapter signs and sends them and feeds :attr:`CoordinatorOutput.event` to the
engine. It reads no clock (``now`` is passed in, in seconds since the Unix epoch, as
``CohortOpen.join_deadline_ms`` is epoch milliseconds) and draws no random numbers.

Topics: ``CohortOpen``, ``CohortRoster``, ``MaskRequest`` and ``UnmaskRequest`` go to
``fedsynth.control``. Sites publish ``CohortJoin`` (site-events), ``EncryptedShare`` (share-relay,
keyed by recipient: the coordinator reads them only to learn who has shared and never relays),
masked ``ModelUpdate`` (updates) and ``UnmaskResponse`` (unmask).

Target version: cohorts are sequential and in secure mode only cohorts make versions, so a cohort
opened at global version ``v`` has its result applied *to* ``v`` (producing ``v + 1``). The
coordinator announces ``v_c = v`` and each site weights its update by ``n_i * s(v_c - b_i)``,
exactly the staleness ``t = v - b`` that plain mode computes at application; the engine then records
a cohort staleness of ``v - v_c = 0`` (anything else: another path moved the version mid-cohort).

Restart: :meth:`CohortCoordinator.to_state` and :meth:`CohortCoordinator.state_arrays` hold the
open cohort's whole server state (joins with their public keys, who shared and sent input, the
masked running sum, the shares collected while unmasking: only what the server received anyway,
encrypted at rest with the rest of the checkpoint), checkpointed with the offsets of the records
that built it. After :meth:`CohortCoordinator.from_state` the cohort goes on where it was:
records after the checkpoint are consumed again and control records in the checkpoint's outbox
are sent again (sites drop repeats by message id, see :mod:`agents.secure`), so a restart costs
the cohort no member and no update. The ids of recently ended cohorts are checkpointed too, so an
unmask response that arrives after its cohort's result is dropped, not dead-lettered, on either side
of a restart. The open cohort's current stage gets a fresh deadline once the adapter consumes
again after a restart, and the time a pause took after a rebalance
(:meth:`CohortCoordinator.restart_stage_clock`), since the downtime is not the sites' fault.
Only when the state cannot be rebuilt (an older checkpoint format) is the cohort abandoned: its
late records are dead-lettered with that reason, the adapter opens a new one, and sites leave the
old cohort when they see the new ``CohortOpen`` and rejoin with the same pending update, unless
the old cohort had already named them survivors (then the update is spent).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.engine import CohortAggregated
from aggregator.ledgers import PrivacyLedgers, Report, reported
from aggregator.strategies.staleness import StalenessFn, make_staleness
from fedsynth.errors import ConfigError, FedSynthError, ProtocolError
from fedsynth.secagg.fixedpoint import FixedPointSpec
from fedsynth.secagg.messages import (
    CohortJoin,
    CohortResult,
    Deadline,
    EncryptedShare,
    MaskedInput,
)
from fedsynth.secagg.server import (
    ServerConfig,
    ServerStage,
    ServerState,
    server_from_doc,
    server_step,
    server_to_doc,
    start_server,
)
from fedsynth.secagg.wire import from_record, to_fields

__all__ = ["CohortConfig", "CohortCoordinator", "CoordinatorOutput", "Send"]

log = logging.getLogger(__name__)

Send = tuple[str, dict[str, Any]]
"""``(schema name, record fields without the envelope)``."""

INBOUND = frozenset({"CohortJoin", "EncryptedShare", "ModelUpdate", "UnmaskResponse"})
_STATE_FORMAT = 2
_PAST_KEPT = 32
_FINISHED = "already finished"  # how a cohort that produced its result ended (``_past``)


@dataclass(frozen=True, slots=True)
class CohortConfig:
    """Fixed secure-mode settings; the quantization and staleness terms are shared with sites.

    Attributes:
        federation_id: the federation.
        spec: fixed-point parameters (clip, levels, max weight); sites hold the same values.
        vector_length: length of every update.
        buffer_size: ``K``; joins close when ``K`` sites have joined.
        min_members: fewest members at the join deadline; fewer cancels the cohort.
        threshold: Shamir ``t``; ``None`` for ``max(2, ceil(2h/3))`` with ``h`` holders per
            secret in a full cohort (``h = min(degree, K - 1) + 1``).
        degree: neighbour-graph degree (even); ``None`` for the complete graph (SecAgg).
        join_deadline_s, share_deadline_s, input_deadline_s, unmask_deadline_s: how long each
            stage may last, from the moment it starts.
        max_staleness: joins with ``v_c - b`` above it are refused (``None``: no bound).
        staleness_kind, staleness_a, staleness_b: the staleness function ``s`` sites apply
            (see :func:`aggregator.strategies.staleness.make_staleness`).
    """

    federation_id: str
    spec: FixedPointSpec
    vector_length: int
    buffer_size: int = 4
    min_members: int = 3
    threshold: int | None = None
    degree: int | None = None
    join_deadline_s: float = 60.0
    share_deadline_s: float = 30.0
    input_deadline_s: float = 60.0
    unmask_deadline_s: float = 30.0
    max_staleness: int | None = None
    staleness_kind: str = "polynomial"
    staleness_a: float = 0.5
    staleness_b: float = 0.0

    def __post_init__(self) -> None:
        deadlines = (self.join_deadline_s, self.share_deadline_s, self.input_deadline_s,
                     self.unmask_deadline_s)
        if not all(math.isfinite(d) and d > 0 for d in deadlines):
            raise ConfigError("every cohort deadline must be positive and finite")
        if self.degree is not None and (self.degree < 2 or self.degree % 2):
            raise ConfigError(f"degree must be even and >= 2 (or None), got {self.degree}")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ConfigError("max_staleness must be >= 0 or None")
        make_staleness(self.staleness_kind, self.staleness_a, self.staleness_b)
        try:
            self.server_config("check", 0)
        except FedSynthError as exc:
            raise ConfigError(f"unsafe cohort parameters: {exc}") from exc

    @property
    def graph_degree(self) -> int:
        """The degree published in rosters (``K - 1`` for the complete graph)."""
        return self.buffer_size - 1 if self.degree is None else self.degree

    @property
    def shamir_threshold(self) -> int:
        """The threshold published in rosters."""
        if self.threshold is not None:
            return self.threshold
        holders = min(self.graph_degree, self.buffer_size - 1) + 1
        return max(2, math.ceil(2 * holders / 3))

    def staleness(self) -> StalenessFn:
        """The staleness function sites pre-scale with."""
        return make_staleness(self.staleness_kind, self.staleness_a, self.staleness_b)

    def site_terms(self) -> dict[str, Any]:
        """JSON-ready terms every site needs besides the roster (publish with the model spec)."""
        return {
            "clip": self.spec.clip, "levels": self.spec.levels,
            "max_weight": self.spec.max_weight, "weight_levels": self.spec.weight_levels,
            "max_staleness": self.max_staleness,
            "staleness": {"kind": self.staleness_kind, "a": self.staleness_a,
                          "b": self.staleness_b},
        }

    def server_config(self, cohort_id: str, target_version: int) -> ServerConfig:
        """The SecAgg+ server configuration of one cohort."""
        return ServerConfig(self.federation_id, cohort_id, target_version, self.spec,
                            self.vector_length, self.shamir_threshold, self.graph_degree,
                            self.buffer_size, self.min_members)

    def stage_seconds(self, stage: ServerStage) -> float:
        """How long ``stage`` may last."""
        return {
            ServerStage.JOINING: self.join_deadline_s,
            ServerStage.SHARING: self.share_deadline_s,
            ServerStage.MASKING: self.input_deadline_s,
            ServerStage.UNMASKING: self.unmask_deadline_s,
        }.get(stage, math.inf)


@dataclass
class CoordinatorOutput:
    """What one call asks the adapter to do.

    Attributes:
        sends: records to sign and publish on ``fedsynth.control``, in order.
        result: the unmasked cohort sum when the cohort finished in this call.
        event: ``result`` as the engine event to step (``None`` without a result).
        rejections: reasons for refused records (one per record, for the dead-letter topic).
        finished: the cohort ended (done or failed) in this call; the coordinator is idle.
        failed: why the cohort failed, when it did.
        changed: the coordinator's state changed (a record or deadline was taken): checkpoint.
    """

    sends: list[Send] = field(default_factory=list)
    result: CohortResult | None = None
    event: CohortAggregated | None = None
    rejections: list[str] = field(default_factory=list)
    finished: bool = False
    failed: str | None = None
    changed: bool = False


@dataclass(slots=True)
class _Open:
    server: ServerState
    stage_started: float
    reports: dict[str, Report] = field(default_factory=dict)  # of each masked input taken


class CohortCoordinator:
    """Runs one secure cohort at a time (see the module docstring)."""

    def __init__(self, config: CohortConfig, ledgers: PrivacyLedgers | None = None) -> None:
        """``ledgers``: the sites' privacy ledgers (:mod:`aggregator.ledgers`), checked at each
        join and masked input and told of each survivor's epsilon; None checks nothing."""
        self.config = config
        self.ledgers = ledgers
        self._open: _Open | None = None
        self._seq = 0
        self._past: deque[tuple[str, str]] = deque(maxlen=_PAST_KEPT)  # (cohort id, how it ended)
        self._closed: str | None = None  # why no cohort opens any more (the run ended)

    # ------------------------------------------------------------------ queries
    @property
    def cohort_id(self) -> str | None:
        """Id of the open cohort, if any."""
        return None if self._open is None else self._open.server.config.cohort_id

    @property
    def stage(self) -> ServerStage | None:
        """Stage of the open cohort, if any."""
        return None if self._open is None else self._open.server.stage

    @property
    def target_version(self) -> int | None:
        """``v_c`` of the open cohort, if any."""
        return None if self._open is None else self._open.server.config.target_version

    def deadline(self) -> float | None:
        """When the open cohort's current stage times out (seconds since the epoch)."""
        if self._open is None:
            return None
        return self._open.stage_started + self.config.stage_seconds(self._open.server.stage)

    # ------------------------------------------------------------------ commands
    def open_cohort(self, current_version: int, now: float) -> CoordinatorOutput:
        """Open the next cohort, to be applied to ``current_version`` (``v_c``).

        Raises:
            ProtocolError: a cohort is already open (cohorts are sequential), or the
                coordinator was closed.
        """
        if self._open is not None:
            raise ProtocolError(f"cohort {self.cohort_id} is still open")
        if self._closed is not None:
            raise ProtocolError(f"no cohort opens any more: {self._closed}")
        self._seq += 1
        cohort_id = f"c{self._seq}-{secrets.token_hex(6)}"
        server = start_server(self.config.server_config(cohort_id, current_version))
        self._open = _Open(server, now)
        deadline_ms = int((now + self.config.join_deadline_s) * 1000)
        log.info("cohort %s opened for version %d", cohort_id, current_version)
        fields = {"cohort_id": cohort_id, "target_version": current_version,
                  "join_deadline_ms": deadline_ms}
        return CoordinatorOutput(sends=[("CohortOpen", fields)], changed=True)

    def on_record(self, name: str, record: Mapping[str, Any], now: float) -> CoordinatorOutput:
        """One decoded, verified record; what it cannot use becomes a rejection (never raises)."""
        short = name.removeprefix("fedsynth.")
        try:
            return self._on_record(short, record, now)
        except FedSynthError as exc:
            return _rejected(short, record, f"{type(exc).__name__}: {exc}")
        except (KeyError, TypeError, ValueError) as exc:
            return _rejected(short, record, f"malformed record ({type(exc).__name__}: {exc})")

    def tick(self, now: float) -> CoordinatorOutput:
        """Fire the current stage's deadline once ``now`` has reached it."""
        deadline = self.deadline()
        if self._open is None or deadline is None or now < deadline:
            return CoordinatorOutput()
        server = self._open.server
        return self._step(Deadline(server.config.cohort_id, str(server.stage)), now)

    # ------------------------------------------------------------------ checkpoint
    def to_state(self) -> dict[str, Any]:
        """JSON-ready state: the cohort counter, past cohorts and the open cohort's server state
        (its masked running sum is in :meth:`state_arrays`)."""
        open_ = None
        if self._open is not None:
            server = self._open.server
            doc, _ = server_to_doc(server)
            open_ = {"cohort_id": server.config.cohort_id, "stage": str(server.stage),
                     "target_version": server.config.target_version,
                     "stage_started": self._open.stage_started, "server": doc,
                     **_reports_to_state(self._open.reports)}
        return {"format": _STATE_FORMAT, "seq": self._seq, "open": open_,
                "past": [list(p) for p in self._past], "closed": self._closed}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The arrays beside :meth:`to_state`: the open cohort's masked running sum, if any."""
        total = None if self._open is None else self._open.server.total
        return {} if total is None else {"total": total}

    @classmethod
    def from_state(
        cls,
        config: CohortConfig,
        state: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray] | None = None,
        ledgers: PrivacyLedgers | None = None,
    ) -> CohortCoordinator:
        """Restore after a restart, with the open cohort where it was (call
        :meth:`restart_stage_clock` once the adapter consumes again).

        A state of format 1 (ids only) or one whose cohort cannot be rebuilt abandons the
        in-flight cohort instead: its late records are dead-lettered and its sites rejoin the
        next cohort (see the module docstring).

        Raises:
            ConfigError: a state of an unknown format.
        """
        fmt = state.get("format")
        if fmt not in (1, _STATE_FORMAT):
            raise ConfigError(f"cohort state format {fmt!r} is not {_STATE_FORMAT}")
        coordinator = cls(config, ledgers)
        coordinator._seq = int(state["seq"])
        coordinator._past.extend((str(c), str(how)) for c, how in state["past"])
        coordinator._closed = state.get("closed")  # absent in older checkpoints
        open_ = state["open"]
        if open_ is None:
            return coordinator
        cohort_id = str(open_["cohort_id"])
        if fmt == _STATE_FORMAT:
            try:
                server = server_from_doc(
                    config.server_config(cohort_id, int(open_["target_version"])),
                    open_["server"],
                    (arrays or {}).get("total"),
                )
            except FedSynthError as exc:
                log.error("cohort %s cannot be resumed (%s); abandoning it", cohort_id, exc)
            else:
                started = float(open_["stage_started"])
                coordinator._open = _Open(server, started, _reports_from_state(open_))
                log.info("cohort %s resumed in stage %s", cohort_id, server.stage)
                return coordinator
        coordinator._past.append((cohort_id, "abandoned at an aggregator restart"))
        log.warning("cohort %s abandoned by the restart (was %s)", cohort_id, open_["stage"])
        return coordinator

    def close(self, why: str) -> None:
        """No cohort opens after this (``why``, e.g. the run reached its final version).

        Records of past cohorts are still taken as before (a finished cohort's late unmask
        responses dropped, the rest refused), but a refusal says that no later cohort opens
        instead of sending a pending update to one. Kept in :meth:`to_state`.

        Raises:
            ProtocolError: a cohort is open.
        """
        if self._open is not None:
            raise ProtocolError(f"cohort {self.cohort_id} is still open")
        self._closed = why

    def restart_stage_clock(self, now: float, paused_s: float | None = None) -> None:
        """After a restart (``paused_s`` None): give the open cohort's current stage its whole
        time again, from ``now``, since the time the aggregator was down is not the sites' fault
        (and not known). After a pause within one run (a rebalance): move the stage's start by
        the ``paused_s`` seconds in which nothing could be handled, so that repeated rebalances
        give back the time they took and never the whole stage again."""
        if self._open is None:
            return
        if paused_s is None:
            self._open.stage_started = now
        else:
            self._open.stage_started += max(0.0, paused_s)

    # ------------------------------------------------------------------ internals
    def _on_record(self, name: str, record: Mapping[str, Any], now: float) -> CoordinatorOutput:
        if name not in INBOUND:
            return _rejected(name, record, "not a message the cohort coordinator takes")
        if record["federation_id"] != self.config.federation_id:
            return _rejected(name, record, f"federation {record['federation_id']!r}")
        message = from_record(name, record)
        cohort_id = getattr(message, "cohort_id", None)
        if name == "UnmaskResponse" and self._ended(str(cohort_id)) == _FINISHED:
            # The sum needed no more shares: dropped unread, as the server does in DONE. ``_past``
            # is checkpointed, so a response that arrives after a restart is dropped the same way
            # instead of being dead-lettered.
            log.debug("late unmask response from %s for finished cohort %s dropped",
                      record.get("sender"), cohort_id)
            return CoordinatorOutput()
        if self._open is None or cohort_id != self.cohort_id:
            return _rejected(name, record, self._why_foreign(str(cohort_id)))
        problem = self._precheck(message, record)
        if problem is not None:
            return _rejected(name, record, problem)
        problem = self._ledger_refusal(message, record)
        if problem is not None:  # may have suspended the site: checkpoint
            out = _rejected(name, record, problem)
            out.changed = True
            return out
        out = self._step(message, now)
        if out.rejections:
            out.rejections = [_reason(name, record, r) for r in out.rejections]
        elif isinstance(message, MaskedInput) and self._open is not None:
            self._open.reports[message.site_id] = reported(record)
        return out

    def _require_open(self) -> _Open:
        if self._open is None:
            raise ProtocolError("no cohort is open")
        return self._open

    def _ended(self, cohort_id: str) -> str | None:
        """How a recent cohort ended (None: not one of the last ``_PAST_KEPT``)."""
        return dict(self._past).get(cohort_id)

    def _why_foreign(self, cohort_id: str) -> str:
        ended = self._ended(cohort_id)
        if ended is not None and self._closed is not None:
            return f"cohort {cohort_id} {ended}; no later cohort opens ({self._closed})"
        if ended is not None:
            return f"cohort {cohort_id} {ended}; a pending update rejoins a later cohort"
        now_open = self.cohort_id or "none"
        if self._closed is not None:
            return f"foreign cohort {cohort_id} (none open: {self._closed})"
        return f"foreign cohort {cohort_id} (open: {now_open})"

    def _precheck(self, message: object, record: Mapping[str, Any]) -> str | None:
        server = self._require_open().server
        target = server.config.target_version
        if isinstance(message, CohortJoin) and self.config.max_staleness is not None:
            if target - message.base_version > self.config.max_staleness:
                return f"base version {message.base_version} too stale for target {target}"
        if isinstance(message, MaskedInput):
            join = server.joins.get(message.site_id)
            if join is not None and join.base_version != record["base_version"]:
                return (f"masked update base version {record['base_version']} differs from "
                        f"the join's {join.base_version}")
        return None

    def _ledger_refusal(self, message: object, record: Mapping[str, Any]) -> str | None:
        """A suspended site may not join; a masked input's epsilon must pass its site's ledger
        (a refused input is a dropout: the cohort goes on without it). An input the cohort
        would refuse anyway is left to it: only a valid one may suspend its site."""
        if self.ledgers is None:
            return None
        if isinstance(message, CohortJoin):
            why = self.ledgers.suspended(message.site_id)
            return None if why is None else f"site {message.site_id!r} is suspended: {why}"
        if not isinstance(message, MaskedInput):
            return None
        r = reported(record)
        if self.ledgers.refusal(message.site_id, r) is None:
            return None
        try:  # rare: a trial step (the server step is pure) tells whether the input is valid
            server_step(self._require_open().server, message)
        except FedSynthError:
            return None
        return self.ledgers.admit(message.site_id, r)

    def _step(self, message: object, now: float) -> CoordinatorOutput:
        open_ = self._require_open()
        before = open_.server
        try:
            server, outbound = server_step(before, message)  # type: ignore[arg-type]
        except FedSynthError as exc:
            if isinstance(message, Deadline):  # a deadline cannot be refused: end the cohort
                return self._end(before, f"{type(exc).__name__}: {exc}")
            return CoordinatorOutput(rejections=[f"{type(exc).__name__}: {exc}"])
        open_.server = server
        out = CoordinatorOutput(changed=server is not before)
        if server.stage != before.stage:
            open_.stage_started = now
            log.info("cohort %s: %s -> %s", server.config.cohort_id, before.stage, server.stage)
        for item in outbound:
            if isinstance(item, CohortResult):
                out.result = item
            elif not isinstance(item, EncryptedShare):  # sites relay their own shares
                out.sends.append(to_fields(item))
        if server.stage == ServerStage.DONE:
            return self._finish(server, out)
        if server.stage == ServerStage.FAILED:
            failed = self._end(before, server.failure)
            out.finished, out.failed, out.changed = True, failed.failed, True
        return out

    def _finish(self, server: ServerState, out: CoordinatorOutput) -> CoordinatorOutput:
        result = out.result
        if result is None:  # pragma: no cover - DONE always carries the result
            raise ProtocolError("cohort done without a result")
        out.event = CohortAggregated(result.cohort_id, result.sum_vector, result.weight_sum,
                                     result.survivors, server.config.target_version)
        out.finished = True
        self._past.append((result.cohort_id, _FINISHED))
        if self.ledgers is not None and self._open is not None:
            for site in result.survivors:  # a survivor's masked input is in the sum
                r = self._open.reports.get(site)  # (None: taken before a restart
                if r is not None:  # from a checkpoint older than the ledgers)
                    self.ledgers.record(site, r)
        self._open = None
        log.info("cohort %s done: %d survivors, weight %.6g", result.cohort_id,
                 len(result.survivors), result.weight_sum)
        return out

    def _end(self, server: ServerState, reason: str) -> CoordinatorOutput:
        cohort_id = server.config.cohort_id
        self._past.append((cohort_id, f"failed ({reason})"))
        self._open = None
        log.warning("cohort %s failed in %s: %s", cohort_id, server.stage, reason)
        return CoordinatorOutput(finished=True, failed=reason, changed=True)


def _reason(name: str, record: Mapping[str, Any], why: str) -> str:
    sender = record.get("sender", "?") if isinstance(record, Mapping) else "?"
    return f"{name} from {sender!r}: {why}"


def _rejected(name: str, record: Mapping[str, Any], why: str) -> CoordinatorOutput:
    return CoordinatorOutput(rejections=[_reason(name, record, why)])


def _reports_to_state(reports: Mapping[str, Report]) -> dict[str, Any]:
    """The open cohort's ledger reports as its checkpoint keeps them: ``epsilon``, and
    ``sequence`` and ``writes`` for the inputs that reported them."""
    return {
        "epsilon": {s: r.epsilon for s, r in reports.items()},
        "sequence": {s: r.sequence for s, r in reports.items() if r.sequence is not None},
        "writes": {s: list(r.writes) for s, r in reports.items() if r.writes},
    }


def _reports_from_state(open_: Mapping[str, Any]) -> dict[str, Report]:
    """:func:`_reports_to_state`'s output read back (a checkpoint from before sequences or
    write ids has none of them)."""
    sequence, writes = open_.get("sequence", {}), open_.get("writes", {})
    return {
        str(s): Report(
            float(e),
            None if sequence.get(s) is None else int(sequence[s]),
            writes=tuple(map(str, writes.get(s, ()))),
        )
        for s, e in open_.get("epsilon", {}).items()
    }
