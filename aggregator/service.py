"""The aggregator's coordination logic, without I/O.

The faust app (:mod:`aggregator.app`) hands every consumed message to
:meth:`AggregatorService.handle` and calls :meth:`AggregatorService.tick` on a timer; both return
:class:`Effects`: messages to send, messages to dead-letter, and whether state changed (so the
adapter checkpoints before it commits).

Phases: ``gathering`` (waiting for every roster site's ``SiteHello`` with its DP histograms) ->
``training`` (the global model exists; updates go through the pure engine) -> ``done`` (the last
version is published and marked final). Federated preprocessing happens at the end of gathering:
the sites' DP histograms are summed and the feature encoder is fitted from the sum, never from any
one site's values (ARCHITECTURE.md, Privacy).

Reading a message is split so that the adapter can overlap its expensive part with consumption:
:func:`prepare` (signatures, Avro decoding, and, with the reader's :data:`DERIVE`, a plain update's
zstd and quantization levels, whether it came in one chunk or several) is pure and thread-safe;
:meth:`AggregatorService.handle` takes its result, in consumption order, for everything that
touches state. ``handle(data)`` on raw bytes does both in one go.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import numpy as np

from aggregator.cohorts import INBOUND as COHORT_INBOUND
from aggregator.cohorts import CohortConfig, CohortCoordinator, CoordinatorOutput
from aggregator.engine import (
    AggregatorEngine,
    Applied,
    EngineConfig,
    EngineState,
    GlobalVersionPublished,
    OutEvent,
    Rejected,
    RoundTimeout,
    UpdateReceived,
)
from aggregator.ledgers import NOT_A_REPORT, PrivacyLedgers, reported
from aggregator.settings import OPERATOR, AggregatorSettings
from aggregator.strategies import ClientUpdate, StrategyConfig, build_strategy
from aggregator.strategies.base import Delta
from fedsynth.codec.quantize import QuantizedVector
from fedsynth.data.encoder import FeatureEncoder
from fedsynth.data.preprocess import Histograms
from fedsynth.data.schema import DatasetSchema
from fedsynth.errors import ConfigError, MessageError
from fedsynth.federation import MODEL_CODEC, ModelSpec, decode_delta, encode_vector
from fedsynth.messages import (
    Derive,
    Inbound,
    MessageFactory,
    MessageReader,
    Outgoing,
    Rejection,
    Verified,
    Waiting,
)
from fedsynth.model.config import DiffusionConfig
from fedsynth.secagg.fixedpoint import FixedPointSpec

__all__ = [
    "DERIVE",
    "AggregatorService",
    "DeadLetterItem",
    "Effects",
    "Phase",
    "Prepared",
    "Send",
    "SiteInfo",
    "SiteReinstated",
    "SiteSuspended",
    "plain_delta",
    "prepare",
]

log = logging.getLogger(__name__)


class Phase(StrEnum):
    """Where the federation stands."""

    GATHERING = "gathering"
    TRAINING = "training"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Send:
    """Messages for one topic and key (chunks of one payload stay in order)."""

    topic: str
    key: str
    messages: tuple[Outgoing, ...]


@dataclass(frozen=True, slots=True)
class DeadLetterItem:
    """A refused message and why."""

    reason: str
    error_class: str


@dataclass
class Effects:
    """What one call asks the adapter to do."""

    sends: list[Send] = field(default_factory=list)
    dead: list[DeadLetterItem] = field(default_factory=list)
    changed: bool = False
    events: list[Any] = field(default_factory=list)

    def merge(self, other: Effects) -> Effects:
        self.sends += other.sends
        self.dead += other.dead
        self.changed |= other.changed
        self.events += other.events
        return self


@dataclass(frozen=True, slots=True)
class SiteSuspended:
    """A site's privacy ledger went back and the aggregator suspended it for the run (the app
    records it in the audit chain; ``fedsynth aggregator --reinstate`` takes it back)."""

    site: str
    reason: str

    def audit_detail(self) -> dict[str, Any]:
        """The detail of the ``aggregator``/``suspend_site`` audit event."""
        return {"site": self.site, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class SiteReinstated:
    """An operator's command took a suspended site back (the app records it in the audit
    chain)."""

    site: str
    epsilon: float
    suspended: str
    at_ms: int
    note: str
    command_id: str | None  # None: the offline command, which has no message
    absorbed_write: str | None = None  # the last write id of the ledger added to the site's

    def audit_detail(self) -> dict[str, Any]:
        """The detail of the ``operator``/``reinstate_site`` audit event."""
        return {"site": self.site, "epsilon": self.epsilon, "suspended": self.suspended,
                "at_ms": self.at_ms, "note": self.note, "command": self.command_id,
                "absorbed_write": self.absorbed_write}


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """What a site told us in its hello, and the privacy it reported since."""

    n_samples: int
    histograms: bytes
    epsilon_spent: float = 0.0


NoteEncoded = Callable[[np.ndarray, str, "bytes | memoryview"], None]
"""Told each plain update's decoded delta with the codec and wire bytes it came from, before the
engine sees it (the app's checkpoint store keeps a buffered delta in that compact form)."""

Prepared = Verified | Rejection
"""What :func:`prepare` gives for one message, for :meth:`AggregatorService.handle`."""


def plain_delta(record: Mapping[str, Any]) -> Delta | None:
    """A plain ``ModelUpdate``'s delta, decoded (zstd; a quantized one kept as its levels, see
    :func:`~fedsynth.federation.decode_delta`); None for a masked one. The service's reader runs
    it where it verifies an update (:data:`DERIVE`).

    Raises:
        MessageError: The vector does not decode to ``n_parameters`` values.
    """
    if record["mode"] != "plain":
        return None
    return decode_delta(record["vector"], record["codec"], int(record["n_parameters"]))


DERIVE: Mapping[str, Derive] = MappingProxyType({"ModelUpdate": plain_delta})
"""The aggregator reader's ``derive`` functions: with them a plain update's vector is decoded on
the worker that verifies it, whether it came in one chunk or in several (the chunk that
completes a set has the set joined and decoded ahead), not on the engine thread."""


def prepare(reader: MessageReader, data: bytes) -> Prepared:
    """Verify ``data`` (and, with :data:`DERIVE`, decode a plain update's vector); safe on worker
    threads (it changes nothing but the reader's locked cache of chunk sets joined ahead, see
    :meth:`MessageReader.verify`)."""
    return reader.verify(data)


class AggregatorService:
    """Gathers sites, fits the encoder, drives the engine, publishes versions."""

    def __init__(
        self,
        settings: AggregatorSettings,
        schema: DatasetSchema,
        reader: MessageReader,
        factory: MessageFactory,
        topics: dict[str, str],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        note_encoded: NoteEncoded | None = None,
    ) -> None:
        self.settings = settings
        self.note_encoded = note_encoded
        self.schema = schema
        self.reader = reader
        self.factory = factory
        self.topics = topics
        self.clock = clock
        self.wall_clock = wall_clock
        self.coordinator: CohortCoordinator | None = None
        self.hist: CohortCoordinator | None = None
        self.hist_cohort: str | None = None  # the cohort whose sum gave the histograms
        self.phase = Phase.GATHERING
        self.sites: dict[str, SiteInfo] = {}
        self.ledgers = PrivacyLedgers()  # each site's epsilon must grow (aggregator.ledgers)
        self.spec: ModelSpec | None = None
        self.engine: AggregatorEngine | None = None
        self.state: EngineState | None = None
        self.started = clock()
        self.version_started = clock()
        self.rng = np.random.default_rng(settings.seed)

    # ----------------------------------------------------------------- inbound
    def handle(self, data: bytes | Prepared) -> Effects:
        """One consumed message of any topic, raw or :func:`prepare`-d; never raises for bad input.

        Prepared messages must be handed over in consumption order. A site the message got
        suspended (its privacy ledger went back, :mod:`aggregator.ledgers`) comes back as a
        :class:`SiteSuspended` event, for the audit chain.
        """
        fx = self._handle(data)
        for site, why in self.ledgers.take_suspensions():
            fx.events.append(SiteSuspended(site, why))
            fx.changed = True
        return fx

    def _handle(self, data: bytes | Prepared) -> Effects:
        prepared = prepare(self.reader, data) if isinstance(data, bytes) else data
        got = self.reader.accept(prepared)
        if isinstance(got, Waiting):
            return Effects()
        if isinstance(got, Rejection):
            return Effects(dead=[DeadLetterItem(got.reason, got.error_class)])
        try:
            return self._dispatch(got)
        except MessageError as exc:
            return Effects(dead=[DeadLetterItem(str(exc), type(exc).__name__)])

    def _dispatch(self, msg: Inbound) -> Effects:
        if self.settings.mode == "secure" and msg.name in COHORT_INBOUND:
            if self.hist is not None and self.phase is Phase.GATHERING:
                out = self.hist.on_record(msg.name, msg.record, self.wall_clock())
                return self._histogram_effects(out)
            if self.hist_cohort is not None and msg.record.get("cohort_id") == self.hist_cohort:
                return self._late_for_histograms(msg)
            if self.coordinator is None:
                why = (f"{msg.name} from {msg.record['sender']!r} for cohort "
                       f"{msg.record.get('cohort_id')}: no cohort is open yet (the aggregator is "
                       "gathering hellos; a record from before its restart?)")
                return Effects(dead=[DeadLetterItem(why, "CohortRejected")])
            # In training, and after the final version too: no cohort is open then (the
            # coordinator is closed), so it drops a finished cohort's late unmask responses and
            # refuses the rest, saying that the run has ended.
            out = self.coordinator.on_record(msg.name, msg.record, self.wall_clock())
            return self._cohort_effects(out)
        if msg.name == "SiteHello":
            return self._on_hello(msg.record)
        if msg.name == "Heartbeat":
            return self._on_heartbeat(msg.record)
        if msg.name == "ModelUpdate":
            return self._on_update(msg.record, msg.derived)
        if msg.name == "OperatorCommand":
            return self._on_operator(msg.record)
        return Effects(
            dead=[DeadLetterItem(f"{msg.name} is not expected by the aggregator", "Unexpected")]
        )

    def _late_for_histograms(self, msg: Inbound) -> Effects:
        """A record of the histogram cohort after its sum was taken: an unmask response the sum
        did not need is dropped (as a finished cohort drops it); anything else is refused."""
        if msg.name == "UnmaskResponse":
            log.debug("late unmask response from %s for the histogram cohort %s dropped",
                      msg.record["sender"], self.hist_cohort)
            return Effects()
        why = (f"{msg.name} from {msg.record['sender']!r}: histogram cohort {self.hist_cohort} "
               "already finished")
        return Effects(dead=[DeadLetterItem(why, "CohortRejected")])

    def _on_hello(self, rec: dict[str, Any]) -> Effects:
        site = rec["site_id"]
        if site != rec["sender"] or site not in self.settings.sites:
            raise MessageError(
                f"hello for site {site!r} from {rec['sender']!r} is not on the roster"
            )
        if rec["schema_hash"] != self.schema.schema_hash():
            raise MessageError(
                f"site {site!r} uses dataset schema {rec['schema_hash'][:12]}, the federation "
                f"uses {self.schema.schema_hash()[:12]}"
            )
        if not rec["consent"]:
            raise MessageError(f"site {site!r} has not given consent to take part")
        if self.phase is not Phase.GATHERING:
            return Effects()  # a restarted agent says hello again; nothing to do
        self.sites[site] = SiteInfo(int(rec["n_samples"]), rec["histograms"] or b"")
        log.info(
            "hello from %s (%d rows); %d/%d sites",
            site,
            rec["n_samples"],
            len(self.sites),
            len(self.settings.sites),
        )
        if set(self.sites) == set(self.settings.sites):
            return self._sites_gathered()
        return Effects(changed=True)

    def _on_heartbeat(self, rec: dict[str, Any]) -> Effects:
        site = rec["sender"]
        if site in self.sites:
            info = self.sites[site]
            eps = max(info.epsilon_spent, float(rec["epsilon_spent"]))
            self.sites[site] = SiteInfo(info.n_samples, info.histograms, eps)
        return Effects()

    def _on_update(self, rec: dict[str, Any], decoded: object = None) -> Effects:
        if self.phase is Phase.GATHERING or self.engine is None or self.state is None:
            raise MessageError("update arrived before the first global version")
        if self.phase is Phase.DONE:
            raise MessageError(
                f"update {rec['update_id']} from {rec['site_id']!r} arrived after the final "
                f"version {self.settings.rounds}: training is over"
            )
        if rec["site_id"] != rec["sender"]:
            raise MessageError(f"update for {rec['site_id']!r} signed by {rec['sender']!r}")
        if rec["mode"] != "plain":
            raise MessageError("masked updates need secure mode, which this aggregator is not in")
        delta = (  # decoded where it was verified, or here (and a decoding error raised here)
            decoded
            if isinstance(decoded, np.ndarray | QuantizedVector)
            else decode_delta(rec["vector"], rec["codec"], int(rec["n_parameters"]))
        )
        if self.note_encoded is not None and isinstance(delta, np.ndarray):
            self.note_encoded(delta, rec["codec"], rec["vector"])
        update = ClientUpdate(
            update_id=rec["update_id"],
            site_id=rec["site_id"],
            base_version=int(rec["base_version"]),
            n_samples=int(rec["n_samples"]),
            delta=delta,
            weight_hint=float(rec["weight"]),
        )
        report = reported(rec)
        epsilon = report.epsilon
        site = self.sites.get(rec["site_id"])
        if site is not None:
            eps = max(site.epsilon_spent, epsilon)
            self.sites[rec["site_id"]] = SiteInfo(site.n_samples, site.histograms, eps)
        state, out = self.engine.step(self.state, UpdateReceived(update, rec["message_id"]))
        refused = [e.reason.reason_code for e in out if isinstance(e, Rejected)]
        if not refused or refused[0] not in NOT_A_REPORT:
            # The site's ledger has the last word. A refusal drops the engine's new state (the
            # step is pure) and may suspend the site: checkpoint.
            why = self.ledgers.admit(update.site_id, report)
            if why is not None:
                return Effects(
                    changed=True, dead=[DeadLetterItem(f"privacy_ledger: {why}", "UpdateRejected")]
                )
            if not refused:
                self.ledgers.record(update.site_id, report)
        return self._take(state, out)

    def _on_operator(self, rec: dict[str, Any]) -> Effects:
        """Reinstate a suspended site while running, as ``fedsynth aggregator --reinstate``
        does offline: the command's time dates the reinstatement (records the site created
        before it that go back are refused without suspending it again)."""
        if rec["sender"] != OPERATOR:  # no site may be named so (AggregatorSettings)
            raise MessageError(
                f"OperatorCommand signed by {rec['sender']!r}: only the operator's key "
                f"({OPERATOR!r}) may command the aggregator"
            )
        site, epsilon = rec["site_id"], float(rec["epsilon"])
        info = self.sites.get(site)
        if info is None:
            raise MessageError(f"{rec['action']}: {site!r} is not a site of this run")
        at_ms = int(rec["created_at"])
        absorbed = rec.get("absorbed_write")  # absent from an operator's older schema
        try:
            why = self.ledgers.reinstate(site, epsilon, info.epsilon_spent, at_ms, absorbed)
        except ConfigError as exc:
            raise MessageError(f"{rec['action']} refused: {exc}") from exc
        self.sites[site] = SiteInfo(info.n_samples, info.histograms, epsilon)
        event = SiteReinstated(
            site, epsilon, why, at_ms, str(rec["note"]), rec["message_id"], absorbed
        )
        return Effects(changed=True, events=[event])

    # ----------------------------------------------------------------- timers
    def tick(self) -> Effects:
        """Expire chunk sets and deadlines."""
        fx = Effects(
            dead=[
                DeadLetterItem(
                    f"chunk set {e.payload_id} ({e.payload_schema}) from {e.sender!r} "
                    f"incomplete after {e.age_s:.0f}s: {e.have}/{e.count} chunks",
                    "ChunkSetExpired",
                )
                for e in self.reader.expire()
            ]
        )
        if self.hist is not None and self.phase is Phase.GATHERING:
            if self.hist.stage is None:
                fx.merge(self._open_histogram_cohort())
            else:
                fx.merge(self._histogram_effects(self.hist.tick(self.wall_clock())))
        if self.coordinator is not None and self.phase is Phase.TRAINING:
            if self.coordinator.stage is None:
                fx.merge(self._open_cohort())
            else:
                fx.merge(self._cohort_effects(self.coordinator.tick(self.wall_clock())))
        now = self.clock()
        if (
            self.phase is Phase.GATHERING
            and self.sites
            and self.hist is None
            and now - self.started > self.settings.hello_timeout_s
        ):
            log.warning(
                "hello deadline passed with %d/%d sites; starting with those",
                len(self.sites),
                len(self.settings.sites),
            )
            fx.merge(self._sites_gathered())
        elif (
            self.phase is Phase.TRAINING
            and self.state is not None
            and self.coordinator is None  # secure cohorts have their own deadlines
            and now - self.version_started > self.settings.round_timeout_s
        ):
            self.version_started = now
            fx.merge(self._step(RoundTimeout(self.state.model_version)))
        return fx

    # ----------------------------------------------------------------- training
    def _sites_gathered(self) -> Effects:
        """Every roster site said hello (or the deadline passed): sum their DP histograms."""
        if self.settings.mode == "secure" and self.settings.secure_histograms:
            return self._open_histogram_cohort()
        total = Histograms.zeros(self.schema)
        for info in self.sites.values():
            if info.histograms:
                vec = np.frombuffer(info.histograms, dtype="<f4").astype(np.float64)
                total = total + Histograms.from_vector(self.schema, vec)
        return self._start_training(total)

    def _open_histogram_cohort(self) -> Effects:
        """Secure mode: the DP histograms are summed in a SecAgg+ cohort of their own, so the
        aggregator learns only their sum, never one site's histogram."""
        if self.hist is None:
            size = len(self.sites)
            self.hist = CohortCoordinator(
                CohortConfig(
                    federation_id=self.settings.federation_id,
                    spec=FixedPointSpec(clip=self.settings.histogram_clip, levels=1 << 20),
                    vector_length=len(Histograms.zeros(self.schema).to_vector()),
                    buffer_size=size,
                    min_members=max(2, size - 1) if size > 2 else size,
                    join_deadline_s=self.settings.join_deadline_s,
                    input_deadline_s=self.settings.input_deadline_s,
                    share_deadline_s=self.settings.input_deadline_s,
                    unmask_deadline_s=self.settings.input_deadline_s,
                )
            )
        if self.hist.stage is not None:
            return Effects()
        out = self.hist.open_cohort(0, self.wall_clock())
        log.info("histogram cohort %s open for %s", self.hist.cohort_id, sorted(self.sites))
        return self._histogram_effects(out)

    def _histogram_effects(self, out: CoordinatorOutput) -> Effects:
        assert self.hist is not None  # noqa: S101
        terms = json.dumps(self.hist.config.site_terms(), sort_keys=True)
        sends = [
            (
                name,
                {**fields, "purpose": "histograms", "terms": terms}
                if name == "CohortOpen"
                else fields,
            )
            for name, fields in out.sends
        ]
        fx = Effects(changed=bool(sends))
        if sends:
            msgs = tuple(self.factory.build(name, fields) for name, fields in sends)
            fx.sends.append(Send(self.topics["control"], self.settings.federation_id, msgs))
        fx.dead += [DeadLetterItem(reason, "CohortRejected") for reason in out.rejections]
        if out.failed:
            log.warning("histogram cohort failed (%s); opening another", out.failed)
        if out.event is not None:
            total = Histograms.from_vector(self.schema, np.asarray(out.event.weighted_delta_sum))
            log.info("histograms of %s summed securely", ", ".join(out.event.contributors))
            self.hist_cohort = out.event.cohort_id
            fx.merge(self._start_training(total))
        elif out.finished or out.failed:
            fx.merge(self._open_histogram_cohort())
        return fx

    def _start_training(self, total: Histograms) -> Effects:
        encoder = FeatureEncoder.from_histograms(self.schema, total)
        config = DiffusionConfig(
            hidden=self.settings.hidden,
            n_timesteps=self.settings.n_timesteps,
            embed_dim=self.settings.embed_dim,
            lr=self.settings.lr,
            lr_anneal=self.settings.lr_anneal,
            numeric_skip=self.settings.numeric_skip,
            guidance_scale=self.settings.guidance_scale,
        )
        n_parameters = ModelSpec(encoder, config, self.settings.seed).build().n_parameters
        terms = None
        if self.settings.mode == "secure":
            self.coordinator = CohortCoordinator(self._cohort_config(n_parameters), self.ledgers)
            terms = self.coordinator.config.site_terms()
        self.spec = ModelSpec(encoder, config, self.settings.seed, terms)
        params = self.spec.build().flat_parameters()
        self._make_engine(len(params))
        assert self.engine is not None  # noqa: S101 - set just above
        self.state = self.engine.initial_state(params, frozenset(self.sites))
        self.phase = Phase.TRAINING
        log.info("training starts with %s; %d parameters", sorted(self.sites), len(params))
        fx = self._publish(self.state.model_version, self.state.params, ())
        # version 0 is made here, not by an engine step: its event for the audit chain too
        fx.events.append(GlobalVersionPublished(self.state.model_version, self.state.params, ()))
        if self.coordinator is not None:
            fx.merge(self._open_cohort())
        return fx

    # ----------------------------------------------------------------- secure cohorts
    def _cohort_config(self, n_parameters: int) -> CohortConfig:
        s = self.settings
        size = s.cohort_size or len(self.sites)
        return CohortConfig(
            federation_id=s.federation_id,
            spec=FixedPointSpec(clip=s.secure_clip, max_weight=float(s.secure_max_weight)),
            vector_length=n_parameters,
            buffer_size=size,
            min_members=min(size, max(2, size - 1)),
            join_deadline_s=s.join_deadline_s,
            input_deadline_s=s.input_deadline_s,
            share_deadline_s=s.input_deadline_s,
            unmask_deadline_s=s.input_deadline_s,
            max_staleness=s.max_staleness,
        )

    def _open_cohort(self) -> Effects:
        assert self.coordinator is not None and self.state is not None  # noqa: S101
        if self.phase is not Phase.TRAINING or self.coordinator.stage is not None:
            return Effects()
        out = self.coordinator.open_cohort(self.state.model_version, self.wall_clock())
        log.info(
            "cohort %s open for version %d", self.coordinator.cohort_id, self.state.model_version
        )
        return self._cohort_effects(out)

    def _cohort_effects(self, out: CoordinatorOutput) -> Effects:
        fx = Effects(changed=out.changed)
        if out.sends:
            msgs = tuple(self.factory.build(name, fields) for name, fields in out.sends)
            fx.sends.append(Send(self.topics["control"], self.settings.federation_id, msgs))
        fx.dead += [DeadLetterItem(reason, "CohortRejected") for reason in out.rejections]
        if out.failed:
            log.warning("cohort failed: %s", out.failed)
        if out.event is not None:
            fx.merge(self._step(out.event))
        if (out.finished or out.failed) and self.phase is Phase.TRAINING:
            fx.merge(self._open_cohort())
        return fx

    def _make_engine(self, n_parameters: int) -> None:
        default: dict[str, Any] = {"name": "fedavg", "sites_per_round": len(self.sites)}
        if self.settings.mode == "secure":  # cohort results are applied as FedBuff steps
            size = self.settings.cohort_size or len(self.sites)
            default = {"name": "fedbuff", "buffer_size": size}
        raw = self.settings.strategy or default
        strategy = build_strategy(StrategyConfig.model_validate(raw))
        self.engine = AggregatorEngine(
            strategy,
            EngineConfig(
                n_parameters=n_parameters,
                max_staleness=self.settings.max_staleness,
                max_norm=self.settings.max_norm,
            ),
        )

    def _step(self, event: Any) -> Effects:
        assert self.engine is not None and self.state is not None  # noqa: S101
        return self._take(*self.engine.step(self.state, event))

    def _take(self, state: EngineState, out: list[OutEvent]) -> Effects:
        """Adopt an engine step's new state and act on its out events."""
        self.state = state
        fx = Effects(changed=True, events=list(out))
        for ev in out:
            if isinstance(ev, Rejected):
                fx.dead.append(
                    DeadLetterItem(f"{ev.reason.reason_code}: {ev.reason.detail}", "UpdateRejected")
                )
            elif isinstance(ev, GlobalVersionPublished):
                self.version_started = self.clock()
                fx.merge(self._publish(ev.version, ev.vector, ev.contributors))
            elif isinstance(ev, Applied):
                log.info(
                    "applied %s (staleness %d, weight %.3g)", ev.update_id, ev.staleness, ev.weight
                )
        return fx

    def epsilon_by_site(self) -> dict[str, float]:
        """The privacy each site reported spending, as a global version's provenance gives it:
        the largest epsilon it reported, or infinity for a suspended site (once two ledgers
        spent its privacy, no report bounds it; :mod:`aggregator.ledgers`)."""
        return {
            s: math.inf if self.ledgers.suspended(s) is not None else i.epsilon_spent
            for s, i in self.sites.items()
        }

    def _publish(self, version: int, vector: np.ndarray, contributors: tuple[str, ...]) -> Effects:
        """The records that publish a version (its ``GlobalVersionPublished`` event, which the
        app records in the audit chain, is the caller's: an engine step's out event, or version
        0's)."""
        assert self.spec is not None  # noqa: S101
        final = version >= self.settings.rounds
        if final:
            self.phase = Phase.DONE
            if self.coordinator is not None:
                self.coordinator.close(f"the run ended with the final version {version}")
        data, _ = encode_vector(np.asarray(vector, np.float32), MODEL_CODEC, self.rng)
        fields = {
            "model_name": self.schema.name,
            "version": version,
            "vector": data,
            "codec": MODEL_CODEC,
            "n_parameters": int(np.asarray(vector).size),
            "encoder": self.spec.to_bytes(),
            "contributors": list(contributors),
            "epsilon_by_site": self.epsilon_by_site(),
            "final": final,
        }
        chunks = self.factory.build_chunked("GlobalModel", fields)
        notice = self.factory.build(
            "GlobalVersionNotice",
            {
                "model_name": self.schema.name,
                "version": version,
                "n_parameters": int(np.asarray(vector).size),
            },
        )
        log.info(
            "published global version %d%s (contributors %s)",
            version,
            " (final)" if final else "",
            ", ".join(contributors) or "-",
        )
        return Effects(
            changed=True,
            sends=[
                Send(self.topics["global-model"], self.schema.name, tuple(chunks)),
                Send(self.topics["control"], self.settings.federation_id, (notice,)),
            ],
        )

    # ----------------------------------------------------------------- checkpoint
    def extra_state(self) -> dict[str, Any]:
        """JSON-ready state beside the engine's, for the checkpoint."""
        return {
            "phase": str(self.phase),
            "spec": base64.b64encode(self.spec.to_bytes()).decode() if self.spec else None,
            "sites": {
                s: [i.n_samples, base64.b64encode(i.histograms).decode(), i.epsilon_spent]
                for s, i in self.sites.items()
            },
            "cohorts": self.coordinator.to_state() if self.coordinator is not None else None,
            "histogram_cohort": self.hist_cohort,
            "privacy_ledgers": self.ledgers.to_state(),
        }

    @staticmethod
    def reinstated(
        extra: Mapping[str, Any], site: str, epsilon: float, at_ms: int | None = None,
        absorbed_write: str | None = None,
    ) -> tuple[dict[str, Any], str]:
        """:meth:`extra_state` output with ``site``'s suspension lifted at ``epsilon``
        (:meth:`PrivacyLedgers.reinstate`), and why the site had been suspended. Later versions'
        provenance gives the site's epsilon as ``epsilon`` until it reports more.

        Raises:
            ConfigError: the site is not in the federation or not suspended, or ``epsilon`` is
                not larger than every epsilon it reported.
        """
        sites = dict(extra["sites"])
        if site not in sites:
            raise ConfigError(f"site {site!r} is not in this federation's checkpoint")
        ledgers = PrivacyLedgers.from_state(extra.get("privacy_ledgers"))
        n, hist, reported = sites[site]
        why = ledgers.reinstate(site, epsilon, float(reported), at_ms, absorbed_write)
        sites[site] = [n, hist, epsilon]
        return {**extra, "sites": sites, "privacy_ledgers": ledgers.to_state()}, why

    def restart_deadlines(self, paused_s: float | None = None) -> None:
        """Once consuming again: after a restart (``paused_s`` None) the open cohort's stage gets
        its whole time; after a pause of ``paused_s`` seconds within the run, that much more
        (:meth:`CohortCoordinator.restart_stage_clock`)."""
        if self.coordinator is not None:
            self.coordinator.restart_stage_clock(self.wall_clock(), paused_s)

    def extra_arrays(self) -> dict[str, np.ndarray]:
        """Arrays beside :meth:`extra_state` (an open cohort's masked running sum)."""
        if self.coordinator is None:
            return {}
        return {f"cohort.{k}": v for k, v in self.coordinator.state_arrays().items()}

    def restore(
        self,
        state: EngineState,
        extra: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Resume from a checkpoint taken in the training or done phase; an open secure cohort
        goes on where it was (call :meth:`restart_deadlines` once consuming again)."""
        self.phase = Phase(extra["phase"])
        self.spec = ModelSpec.from_bytes(base64.b64decode(extra["spec"]))
        self.sites = {
            s: SiteInfo(int(n), base64.b64decode(h), float(e))
            for s, (n, h, e) in extra["sites"].items()
        }
        self._make_engine(int(np.asarray(state.params).size))
        self.state = state
        self.hist_cohort = extra.get("histogram_cohort")  # absent in older checkpoints
        self.ledgers = PrivacyLedgers.from_state(extra.get("privacy_ledgers"))  # (so are these)
        if extra.get("cohorts") is not None:
            config = self._cohort_config(int(np.asarray(state.params).size))
            cohort_arrays = {
                k.removeprefix("cohort."): v
                for k, v in (arrays or {}).items()
                if k.startswith("cohort.")
            }
            self.coordinator = CohortCoordinator.from_state(
                config, extra["cohorts"], cohort_arrays, self.ledgers
            )
        self.version_started = self.clock()
