"""The site agent: validates local data, says hello, trains on each new global version, sends.

Everything it sends goes through the on-disk outbox first (a crash resends the same bytes with
the same ``message_id``). Connection losses are retried with exponential backoff; the global
model topic is re-read from the beginning after a reconnect (versions are identified by number,
so re-reading is harmless). Raw rows never leave this process: only DP histograms (once) and
DP-SGD model deltas do.

The site's DP histograms are drawn once, charged to the ledger, and kept in the site directory
(``histograms.npy``) before the hello goes out: an agent restarted while the federation is still
gathering sites submits the same released counts to the histogram cohort, instead of being left
out of the sum (or drawing, and spending on, a second release).

One agent at a time works on a site's folder (:class:`~fedsynth.durable.StateLock`, taken by
:meth:`SiteAgent.run`): a second one, started by mistake beside a running one, would spend the same
privacy budget again and overwrite the ledger's record of it. One on another host, with a copy of
the folder, keeps a second ledger; the aggregator then suspends the site
(:mod:`aggregator.ledgers`), records that in its audit chain, and every later global version gives
the site's epsilon as infinite. The agent reads the audit topic too (:mod:`agents.suspension`; it
keeps in ``state.json`` where it read up to and what it read, and a restart goes on from there): it
stops with :data:`EXIT_SUSPENDED` and an error saying why as soon as it reads its site's
suspension, instead of training for updates that would all be refused until the next version told
it. An agent training with DP also stops at a version that gives its site's epsilon as infinite
(should that come first), unless the audit chain shows the site reinstated after that version was
published. It notes in ``state.json`` that it stopped, and for which suspension event. Started
again after that (once the operator has added the other ledger to this one and reinstated the site,
README "When something fails"), it trains on nothing while the chain still shows that suspension;
once the reinstatement is in the chain it goes on from the version it finds (made before the
reinstatement, its infinite epsilon is old news). Without the reinstatement in the chain, it waits
on the versions it found published and takes the first later one that gives its site a bounded
epsilon; a later one that still gives it as unbounded, or a later version while the chain still
shows the site suspended, stops it again.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from agents.outbox import Outbox, OutboxMessage
from agents.pending import PendingStore
from agents.secure import PendingUpdate, SecureSite, SecureSiteConfig
from agents.settings import AgentSettings
from agents.suspension import SuspensionWatch
from agents.training import LocalTrainer, site_batch_size
from fedsynth.data.preprocess import accounted_histograms
from fedsynth.data.schema import DatasetSchema
from fedsynth.data.validate import load_site_file
from fedsynth.durable import StateLock, write_atomic
from fedsynth.errors import BudgetExceededError, ConfigError, FedSynthError, TransportError
from fedsynth.federation import UPDATE_CODEC, ModelSpec, decode_vector, encode_vector
from fedsynth.messages import (
    AGGREGATOR,
    Inbound,
    MessageFactory,
    MessageReader,
    Rejection,
    read_audit_record,
)
from fedsynth.privacy import PrivacyBudget, SiteLedger, noise_for_budget
from fedsynth.secagg.fixedpoint import FixedPointSpec
from fedsynth.staleness import make_staleness
from observability import extract_context, inject_headers, setup_telemetry
from observability.audit import AuditEvent
from schemas.signing import IdentityKey, KeyRing
from topics.clients import make_consumer, make_producer
from topics.gaps import GapGuard, Verdict
from topics.registry import (
    AUDIT,
    CONTROL,
    GLOBAL_MODEL,
    SHARE_RELAY,
    SITE_EVENTS,
    UNMASK,
    UPDATES,
)

__all__ = ["GlobalVersion", "SiteAgent"]

log = logging.getLogger(__name__)
EXIT_SUSPENDED = 3
"""The agent's exit code when the federation reports the site's privacy as unbounded."""
_COHORT_RECORDS = frozenset(
    {"CohortOpen", "CohortRoster", "MaskRequest", "UnmaskRequest", "EncryptedShare"}
)


@dataclass(frozen=True, slots=True)
class GlobalVersion:
    """A verified global model version as the agent sees it."""

    version: int
    params: np.ndarray
    spec: ModelSpec
    final: bool
    traceparent: list[tuple[str, bytes]]
    site_epsilon: float = 0.0  # the site's epsilon in the version's provenance


class SiteAgent:
    """One hospital's agent (see the module docstring)."""

    def __init__(self, settings: AgentSettings, bootstrap: str) -> None:
        self.s = settings
        self.bootstrap = bootstrap
        self.schema = _load_schema(settings.dataset)
        settings.site_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = settings.site_dir / "state.json"
        self.histograms_path = settings.site_dir / "histograms.npy"
        self.lock = StateLock(settings.site_dir, f"the agent of site {settings.site}")
        self.state: dict[str, Any]
        self.outbox: Outbox
        self._read_local_state()
        self.pending_store = PendingStore(settings.site_dir / "pending-update.npz")
        identity = IdentityKey.load(settings.keys_dir, settings.site)
        self.factory = MessageFactory(settings.federation_id, settings.site, identity)
        # the roster's public keys: the aggregator's (control, models) and the sites' (shares)
        self.keys = KeyRing.from_dir(settings.keys_dir)
        self.secure: SecureSite | None = None
        self.hist_site: SecureSite | None = None
        self.hist_cohorts: set[str] = set()
        self.histograms: np.ndarray | None = None
        self.early: list[tuple[str, dict[str, Any]]] = []
        self.rng = np.random.default_rng(settings.seed)
        self.tracer = setup_telemetry(f"fedsynth-agent-{settings.site}", settings.run_dir).tracer(
            "fedsynth.agent"
        )
        self.latest: GlobalVersion | None = None
        self.found_version: int | None = None  # the newest version there when this process began
        self.epsilon_spent = 0.0
        self.rows = 0
        self.trainer: LocalTrainer | None = None
        self.ledger: SiteLedger | None = None
        self.budget: PrivacyBudget | None = None

    # ------------------------------------------------------------------ setup
    def _read_local_state(self) -> None:
        """Read the site's progress (:attr:`state`) and its outbox's folder from disk."""
        self.state = _read_json(self.state_path) or {
            "hello_sent": False,
            "trained_version": -1,
            "trained_before": False,
        }
        self.outbox = Outbox(self.s.site_dir / "outbox")
        self._restore_audit_position()

    def _restore_audit_position(self) -> None:
        """The audit chain as read so far (:attr:`suspensions`, from the aggregator's chain)
        and where: ``state["audit"]`` holds the offset of the last event taken and the watch's
        state after it; absent, or unreadable, the topic is read from its beginning."""
        self.suspensions = SuspensionWatch(self.s.site)
        self.audit_at: int | None = None  # offset of the last audit event taken
        self.audit_check: str | None = None  # the hash the first event read must have
        saved = self.state.get("audit")
        if saved is None:
            return
        try:
            watch = SuspensionWatch.from_dict(self.s.site, saved["watch"])
            offset = saved["offset"]
            if not isinstance(offset, int) or offset < 0 or watch.last_hash is None:
                raise ValueError(f"offset {offset!r} with last event {watch.last_hash!r}")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "state.json's audit position does not read (%s); reading the audit topic from "
                "its beginning", exc,
            )
            del self.state["audit"]
            return
        self.suspensions, self.audit_at = watch, offset

    def prepare(self) -> None:
        """Validate the site's data (errors name row and column; nothing is sent yet) and open
        the privacy ledger. The encoder arrives later, with global version 0."""
        frame = load_site_file(self.s.data, self.schema)
        self.rows = len(frame)
        ledger: SiteLedger | None = None
        budget: PrivacyBudget | None = None
        if self.s.dp:
            ledger = SiteLedger.open_or_create(
                self.s.site_dir / "ledger.json",
                site_id=self.s.site,
                delta=self.s.delta,
                trained_before=bool(self.state["trained_before"]),
            )
            budget = PrivacyBudget(self.s.epsilon, self.s.delta)  # histograms + DP-SGD
            if not self.state["hello_sent"]:  # refuse a budget the histograms alone exceed
                noise_for_budget(
                    budget.epsilon,
                    budget.delta,
                    site_batch_size(self.s.batch_size, self.rows) / max(self.rows, 2),
                    self.s.planned_rounds * self.s.steps_per_round,
                    prior=((self.s.histogram_noise, 1.0, 1),),
                )
        else:
            log.warning(
                "DP-SGD is OFF for site %s: its updates are not differentially private", self.s.site
            )
        self.frame = frame
        self.ledger, self.budget = ledger, budget
        if self.state["hello_sent"]:
            self.histograms = load_released_histograms(self.histograms_path)
            if self.histograms is None:
                log.warning(
                    "site %s: the hello was sent but %s is missing; this site's histograms "
                    "cannot join a histogram cohort after this restart",
                    self.s.site,
                    self.histograms_path,
                )

    # ------------------------------------------------------------------ main loop
    async def run(self) -> int:
        """Run until the federation's final version arrives; returns an exit code.

        Raises:
            StateInUseError: another agent works on this site's folder (it would spend the
                same privacy budget).
        """
        with self.lock:
            # read again under the lock: another agent may have moved on since __init__
            self._read_local_state()
            torch.set_num_threads(self.s.threads)
            self.prepare()
            backoff = 1.0
            while True:
                try:
                    return await self._session()
                except (KafkaError, TransportError, OSError) as exc:
                    log.warning("connection lost (%s); retrying in %.0fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)

    async def _session(self) -> int:
        producer = make_producer(self.bootstrap, client_id=f"agent-{self.s.site}")
        consumer = make_consumer(self.bootstrap, group_id=None, client_id=f"agent-{self.s.site}")
        await producer.start()
        try:
            await consumer.start()
            await self._assign(consumer)
            self.producer = producer
            await self._flush_outbox()
            if not self.state["hello_sent"]:
                await self._hello()
            return await self._follow(consumer)
        finally:
            await consumer.stop()
            await producer.stop()

    async def _assign(self, consumer: Any) -> None:
        """Assign the topics this agent follows, each read from its beginning except the audit
        topic after a restart: from the event taken last (:attr:`audit_at`), which is read
        again and must be the same (:meth:`_on_audit_message`)."""
        tps = [
            TopicPartition(GLOBAL_MODEL.name, 0),
            TopicPartition(CONTROL.name, 0),
            TopicPartition(AUDIT.name, 0),
            *(TopicPartition(SHARE_RELAY.name, p) for p in range(SHARE_RELAY.partitions)),
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        if self.audit_at is None:
            return
        audit = TopicPartition(AUDIT.name, 0)
        first = (await consumer.beginning_offsets([audit]))[audit]
        end = (await consumer.end_offsets([audit]))[audit]
        if first <= self.audit_at < end:
            consumer.seek(audit, self.audit_at)
            self.audit_check = self.suspensions.last_hash
        else:  # the embedded broker answers a fetch past the end with nothing, not an error;
            # its end offset may fall short (topics.clients): then this reads more than needed
            log.warning(
                "the audit topic holds offsets %d to %d, not %d where this agent read the "
                "event it took last: reading it from its beginning", first, end - 1, self.audit_at,
            )

    async def _follow(self, consumer: Any) -> int:
        reader = MessageReader(self.s.federation_id, self.keys)
        gaps = GapGuard()  # cohort records this consumer was never handed are read again
        last_beat = 0.0
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=64)
            for tp, records in batch.items():
                for rec in records:
                    if tp.topic == GLOBAL_MODEL.name:  # compacted: gaps are normal there
                        self._on_model_message(reader, rec.value, list(rec.headers or []))
                        continue
                    verdict = gaps.check((tp.topic, tp.partition), rec.offset)
                    if verdict.handle and tp.topic == AUDIT.name:
                        if not self._on_audit_message(reader, rec.value, rec.offset):
                            await consumer.seek_to_beginning(tp)  # (the rest comes again)
                            gaps.positioned((tp.topic, tp.partition), await consumer.position(tp))
                            break
                    elif verdict.handle:
                        await self._on_cohort_message(reader, rec.value)
                    self._on_gap(consumer, tp, verdict)
            if time.monotonic() - last_beat > self.s.heartbeat_s:
                await self._heartbeat("training" if self.latest else "waiting")
                last_beat = time.monotonic()
            if batch:
                continue  # drain what is there before training on the newest version
            if self.secure is not None and self.early:
                early, self.early = self.early, []
                for name, record in early:
                    await self._send_secure(self.secure.on_record(name, record, time.time()))
                self._sync_store(self.secure)
            if self.secure is not None and self.secure.waits_for_the_topic:
                if await _read_to_end(consumer, TopicPartition(CONTROL.name, 0)):
                    self.secure.caught_up()  # later cohort opens are new ones
                    self._sync_store(self.secure)
            latest = self.latest
            if self.found_version is None:  # the first pass here: what was there is read
                self.found_version = -1 if latest is None else latest.version
            suspension = self.suspensions.suspended
            if suspension is not None:
                at = -1 if latest is None else latest.version
                if self.state.get("suspended_by") != suspension.event_hash:
                    return await self._stop_suspended(
                        at, "site %s is suspended at global version %d (audit event %d: %s): "
                        "a second agent of it with its own state folder, or this folder "
                        "restored from a backup, kept a second privacy ledger",
                        self.s.site, at, suspension.seq, suspension.reason,
                    )
                if latest is None or latest.version <= self.found_version:
                    continue  # stopped for it and started again: wait for the reinstatement
                return await self._stop_suspended(  # a later version, still suspended
                    at, "site %s is still suspended at global version %d (audit event %d: %s)",
                    self.s.site, at, suspension.seq, suspension.reason,
                )
            if (
                latest is not None
                and self.s.dp
                and not math.isfinite(latest.site_epsilon)
                and not self.suspensions.lifted_since(latest.version)  # else from before it
            ):
                if "suspended_at" in self.state and latest.version <= self.found_version:
                    continue  # from before a reinstatement, maybe: wait for a later version
                return await self._stop_suspended(
                    latest.version, "global version %d gives site %s's privacy as unbounded: "
                    "the aggregator suspended the site (a second agent of it with its own state "
                    "folder, or this folder restored from a backup) or another agent of it "
                    "trains without DP", latest.version, self.s.site,
                )
            if latest is None or latest.version <= self.state["trained_version"]:
                continue
            if self.secure is not None and not latest.final:
                if self.secure.has_pending_update:
                    continue  # one update at a time waits for its cohort
                if latest.version < self.secure.train_from:
                    continue  # wait for the version that holds this site's spent update
            if latest.final:
                log.info("final version %d received; site %s is done", latest.version, self.s.site)
                await self._heartbeat("done")
                return 0
            if not await self._train_and_send(latest):
                await self._heartbeat("budget-exhausted")
                return 0

    async def _stop_suspended(self, version: int, why: str, *args: object) -> int:
        """Log why the site is out and what to do, note it in ``state.json``, report it and
        return :data:`EXIT_SUSPENDED`."""
        log.error(
            "%s; this agent stops. Stop the site's other agents, add their ledgers to this one "
            "(`fedsynth ledger absorb`) and have the aggregator reinstate the site (`fedsynth "
            "aggregator --reinstate`), then start this agent again; or run one agent per site "
            "with its whole state folder in a new run.",
            why % args,
        )
        self.state["suspended_at"] = version
        suspension = self.suspensions.suspended
        if suspension is not None:
            self.state["suspended_by"] = suspension.event_hash
        _write_json(self.state_path, self.state)
        await self._heartbeat("suspended")
        return EXIT_SUSPENDED

    def _on_audit_message(
        self, reader: MessageReader, value: bytes, offset: int | None = None
    ) -> bool:
        """Feed an event of the aggregator's audit chain, read at ``offset`` (None: not from
        the topic; it is then not noted as a position to go on from), to :attr:`suspensions`.
        Records of other federations (the topic serves them all) are skipped quietly; others'
        records, and ones that do not read, are logged and skipped.

        Returns False when this agent went on from a saved position (:attr:`audit_at`) and the
        first event read there is not the one it took last: the topic changed since (a broker
        that lost its topics, a trail cut short), and the caller reads it from its beginning.
        The watch is kept: events it took already are skipped again, and another chain's
        first event starts over."""
        got = read_audit_record(reader, value)
        if got.problem is not None:
            log.warning("ignoring an audit record: %s", got.problem)
        if got.detail is None:  # (another federation's records go by quietly)
            return True
        try:
            event = AuditEvent.from_dict(got.detail)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring an audit record whose event does not read: %s", exc)
            return True
        if self.audit_check is not None:
            expected, self.audit_check = self.audit_check, None
            if event.hash != expected:
                log.warning(
                    "the audit topic holds event %d (%s...) at offset %s, where this agent read "
                    "event %d (%s...) before: reading the topic from its beginning",
                    event.seq, event.hash[:12], offset, self.suspensions.last_seq,
                    expected[:12],
                )
                return False
        self.suspensions.observe(event)
        if offset is not None and event.hash == self.suspensions.last_hash:
            # taken now, or the one taken last read again: where to go on from
            self.audit_at = offset
            self.state["audit"] = {"offset": offset, "watch": self.suspensions.to_dict()}
        return True

    def _on_gap(self, consumer: Any, tp: TopicPartition, verdict: Verdict) -> None:
        """Seek back to cohort records the consumer skipped (:mod:`topics.gaps`)."""
        report = verdict.report(f"site {self.s.site}: {tp.topic}[{tp.partition}]")
        if report is not None:
            log.log(*report)
        if verdict.seek_to is not None:
            consumer.seek(tp, verdict.seek_to)

    def _on_model_message(
        self, reader: MessageReader, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        got = reader.read(value)
        if isinstance(got, Rejection):
            log.warning("ignoring global-model message: %s", got.reason)
        if not isinstance(got, Inbound):
            return
        rec = got.record
        if got.name != "GlobalModel" or rec["sender"] != AGGREGATOR:
            log.warning("ignoring %s from %s on the global-model topic", got.name, rec["sender"])
            return
        if self.latest is not None and rec["version"] <= self.latest.version:
            return
        try:
            spec = ModelSpec.from_bytes(rec["encoder"])
            params = decode_vector(rec["vector"], rec["codec"], int(rec["n_parameters"]))
        except FedSynthError as exc:
            log.warning("ignoring global version %s: %s", rec["version"], exc)
            return
        self.latest = GlobalVersion(
            int(rec["version"]), params, spec, bool(rec.get("final")), headers,
            float(rec["epsilon_by_site"].get(self.s.site, 0.0)),
        )
        if spec.secure_terms is not None and self.secure is None:
            self._start_secure(spec.secure_terms)

    # ------------------------------------------------------------------ training
    async def _train_and_send(self, gv: GlobalVersion) -> bool:
        if self.trainer is None:
            encoded = gv.spec.encoder.encode(self.frame)
            cond = gv.spec.encoder.encode_condition(self.frame)
            self.trainer = LocalTrainer(
                encoded,
                cond,
                ledger=self.ledger,
                budget=self.budget,
                prior=((self.s.histogram_noise, 1.0, 1),),
                planned_steps=self.s.planned_rounds * self.s.steps_per_round,
                batch_size=self.s.batch_size,
                max_grad_norm=self.s.max_grad_norm,
                noise_multiplicity=self.s.noise_multiplicity,
                steps_done=int(self.state.get("steps_trained", 0)),
            )
        with self.tracer.start_as_current_span(
            "agent.local_round",
            context=extract_context(gv.traceparent),
            attributes={"fedsynth.site": self.s.site, "fedsynth.base_version": gv.version},
        ) as span:
            try:
                limit = self.s.max_minutes_per_update
                steps = self.trainer.steps_within(
                    self.s.steps_per_round, limit * 60 if limit is not None else None
                )
                result = await asyncio.to_thread(
                    self.trainer.train_round, gv.spec, gv.params, steps, self.rng
                )
            except BudgetExceededError as exc:
                log.warning("site %s stops training: %s", self.s.site, exc)
                return False
            self.state["trained_before"] = True
            self.state["steps_trained"] = self.trainer.steps_done
            self.epsilon_spent = result.epsilon_spent if self.s.dp else float("inf")
            span.set_attribute("fedsynth.epsilon_spent", self.epsilon_spent)
            span.set_attribute("fedsynth.train_loss", result.report.final_loss)
            if self.secure is not None:
                update = PendingUpdate(
                    str(uuid.uuid4()),
                    result.delta,
                    self.rows,
                    gv.version,
                    result.report.final_loss,
                    self.epsilon_spent,
                    result.ledger_sequence,
                    result.ledger_writes,
                )
                self.pending_store.save(update)  # survives a crash until it is masked
                await self._send_secure(self.secure.submit(update, time.time()))
                self.state["trained_version"] = gv.version
                _write_json(self.state_path, self.state)
                log.info(
                    "site %s: update from version %d waits for a secure cohort",
                    self.s.site,
                    gv.version,
                )
                return True
            vector, raw = encode_vector(result.delta, UPDATE_CODEC, self.rng)
            fields = {
                "update_id": str(uuid.uuid4()),
                "site_id": self.s.site,
                "base_version": gv.version,
                "n_samples": self.rows,
                "mode": "plain",
                "cohort_id": None,
                "weight": 1.0,
                "codec": UPDATE_CODEC,
                "vector": vector,
                "n_parameters": int(result.delta.size),
                "train_loss": result.report.final_loss,
                "epsilon_spent": self.epsilon_spent,
                "ledger_sequence": result.ledger_sequence,
                "ledger_writes": _as_list(result.ledger_writes),
            }
            headers: list[tuple[str, bytes]] = []
            inject_headers(headers)
            for out in self.factory.build_payload("ModelUpdate", fields):
                self.outbox.put(
                    OutboxMessage(
                        out.message_id,
                        UPDATES.name,
                        self.s.site.encode(),
                        out.value,
                        tuple(headers),
                    )
                )
        self.state["trained_version"] = gv.version
        _write_json(self.state_path, self.state)
        log.info(
            "site %s: update from version %d sent (%d -> %d bytes, loss %.3f, eps %.2f)",
            self.s.site,
            gv.version,
            raw,
            len(vector),
            result.report.final_loss,
            self.epsilon_spent,
        )
        await self._flush_outbox()
        return True

    # ------------------------------------------------------------------ secure mode
    def _start_secure(self, terms: dict[str, Any]) -> None:
        """Join secure mode with the federation's terms (they come with version 0), taking back
        what a crash left: the wait for a spent cohort's version, and a saved update with the
        cohort its masked input went to, if it went out (:mod:`agents.pending`)."""
        self.secure = self._secure_site(terms)
        wait = self.state.get("awaiting")
        if wait is not None:  # spent in a cohort before a restart: wait for its version
            self.secure.resume_wait(str(wait[0]), int(wait[1]))
            log.info(
                "site %s: its last update was spent in cohort %s; it trains next from "
                "version %d",
                self.s.site,
                wait[0],
                int(wait[1]),
            )
        spent = self.ledger.spent() if self.ledger is not None else None
        restored = self.pending_store.restore(self.secure, spent)  # trained before a crash
        if restored is None:
            return
        masked_in = self.secure.masked_in  # set: it waits to learn whether that cohort counted it
        log.info(
            "site %s: update %s from version %d survived a restart; it waits for a "
            "secure cohort%s",
            self.s.site,
            restored.update_id,
            restored.base_version,
            "" if masked_in is None else f" (and for the end of cohort {masked_in}, its last)",
        )

    def _secure_site(self, terms: dict[str, Any]) -> SecureSite:
        spec = FixedPointSpec(
            clip=float(terms["clip"]),
            levels=int(terms["levels"]),
            max_weight=float(terms["max_weight"]),
            weight_levels=int(terms["weight_levels"]),
        )
        st = terms["staleness"]
        config = SecureSiteConfig(
            self.s.federation_id,
            self.s.site,
            spec,
            staleness=make_staleness(st["kind"], st.get("a", 0.0), st.get("b", 0.0)),
            max_staleness=terms.get("max_staleness"),
        )
        log.info("site %s: secure aggregation (SecAgg+) with clip %.3g", self.s.site, spec.clip)
        return SecureSite(config, self.rng)

    async def _on_cohort_message(self, reader: MessageReader, value: bytes) -> None:
        got = reader.read(value)
        if not isinstance(got, Inbound):
            return
        if got.name not in _COHORT_RECORDS:
            return  # version notices and other control records are not cohort business
        if got.name == "EncryptedShare" and got.record.get("recipient") != self.s.site:
            return  # someone else's (encrypted) share
        if got.name == "CohortOpen" and got.record.get("purpose") == "histograms":
            await self._join_histogram_cohort(got.record)
            return
        if self.hist_site is not None and got.record.get("cohort_id") in self.hist_cohorts:
            site = self.hist_site
        elif self.secure is None:
            self.early.append((got.name, got.record))  # the secure terms come with version 0
            return
        else:
            site = self.secure
        await self._send_secure(site.on_record(got.name, got.record, time.time()))
        if site is self.secure:
            self._sync_store(site)
        for reason in site.drain_rejections():
            log.warning("site %s refused a cohort message: %s", self.s.site, reason)

    def _sync_store(self, site: SecureSite) -> None:
        """Bring the disk in line with ``site``: the pending update is deleted once spent or
        dropped, its masked-input mark once its cohort ended without counting it
        (:mod:`agents.pending`); the wait for a spent cohort's version is kept in ``state.json``
        when it changes, so that a restarted agent does not train from an older version
        (:meth:`SecureSite.resume_wait`)."""
        self.pending_store.follow(site)
        wait = None if site.awaiting is None else list(site.awaiting)
        if self.state.get("awaiting") != wait:
            self.state["awaiting"] = wait
            _write_json(self.state_path, self.state)

    async def _join_histogram_cohort(self, record: dict[str, Any]) -> None:
        """Submit this site's DP histograms to a secure histogram cohort (before version 0)."""
        if self.latest is not None or self.histograms is None:
            return  # training has started: the histograms were summed already
        if record["join_deadline_ms"] / 1000 < time.time():
            return  # an old cohort read back from the topic
        if self.hist_site is None:
            self.hist_site = self._secure_site(json.loads(record["terms"]))
        self.hist_cohorts.add(record["cohort_id"])
        pending = PendingUpdate(
            str(uuid.uuid4()), self.histograms, 1, int(record["target_version"])
        )
        sends = [] if self.hist_site.in_cohort else self.hist_site.submit(pending, time.time())
        sends += self.hist_site.on_record("CohortOpen", record, time.time())
        await self._send_secure(sends)

    async def _send_secure(self, sends: list[tuple[str, dict[str, Any]]]) -> None:
        """Cohort messages are tied to in-memory keys: a crash makes this site a dropout.

        The saved pending update is deleted before its masked input goes out: from then on it
        may be counted in a sum, so it must never be resubmitted (``agents/pending.py``).
        """
        routes = {"CohortJoin": SITE_EVENTS.name, "UnmaskResponse": UNMASK.name}
        for name, fields in sends:
            self.pending_store.before_send(name, fields)
            if name == "ModelUpdate":
                for out in self.factory.build_payload(name, fields):
                    await self.producer.send_and_wait(
                        UPDATES.name, out.value, key=self.s.site.encode()
                    )
                continue
            out = self.factory.build(name, fields)
            topic = SHARE_RELAY.name if name == "EncryptedShare" else routes[name]
            key = fields["recipient"] if name == "EncryptedShare" else self.s.site
            await self.producer.send_and_wait(topic, out.value, key=key.encode())

    # ------------------------------------------------------------------ sending
    async def _hello(self) -> None:
        # DP either way; in secure mode the histograms travel only masked, in their own cohort.
        # The release is charged to the ledger first (a crash before sending over-counts).
        z = self.s.histogram_noise
        if self.ledger is not None:
            self.ledger.record(z, 1.0, 1, budget=self.budget)
        hist = accounted_histograms(self.frame, self.schema, z, self.rng)
        self.histograms = hist.to_vector().astype(np.float32)
        save_released_histograms(self.histograms_path, self.histograms)
        out = self.factory.build(
            "SiteHello",
            {
                "site_id": self.s.site,
                "dataset": self.schema.name,
                "schema_hash": self.schema.schema_hash(),
                "consent": self.s.consent,
                "identity_public_key": self.factory.key.public_raw(),
                "n_samples": self.rows,
                "histograms": None if self.s.secure else self.histograms.astype("<f4").tobytes(),
            },
        )
        self.outbox.put(
            OutboxMessage(out.message_id, SITE_EVENTS.name, self.s.site.encode(), out.value)
        )
        self.state["hello_sent"] = True
        _write_json(self.state_path, self.state)
        await self._flush_outbox()
        log.info(
            "site %s: hello sent (%d rows, DP histograms with noise multiplier %.2f; epsilon "
            "spent %.2f)",
            self.s.site,
            self.rows,
            z,
            self.ledger.spent() if self.ledger is not None else float("inf"),
        )

    async def _heartbeat(self, status: str) -> None:
        out = self.factory.build(
            "Heartbeat",
            {
                "site_id": self.s.site,
                "status": status,
                "epsilon_spent": self.epsilon_spent,
                "model_version": self.latest.version if self.latest else -1,
            },
        )
        await self.producer.send_and_wait(SITE_EVENTS.name, out.value, key=self.s.site.encode())

    async def _flush_outbox(self) -> None:
        for msg in self.outbox.pending():
            await self.producer.send_and_wait(
                msg.topic, msg.value, key=msg.key, headers=list(msg.headers)
            )
            self.outbox.ack(msg.message_id)


def _as_list(items: tuple[str, ...] | None) -> list[str] | None:
    return None if items is None else list(items)


def _load_schema(name_or_path: str) -> DatasetSchema:
    return (
        DatasetSchema.load(name_or_path)
        if name_or_path.endswith(".json")
        else DatasetSchema.load_named(name_or_path)
    )


def save_released_histograms(path: Path, vector: np.ndarray) -> None:
    """Keep a site's released (DP) histogram vector durably (:func:`write_atomic`)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vector, dtype="<f4"), allow_pickle=False)
    write_atomic(path, buffer.getvalue())


def load_released_histograms(path: Path) -> np.ndarray | None:
    """The vector :func:`save_released_histograms` kept, or None when there is none.

    Raises:
        ConfigError: The file is not a one-dimensional float32 vector.
    """
    try:
        vector: np.ndarray = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the site's released histograms {path}: {exc}") from exc
    if vector.dtype != np.float32 or vector.ndim != 1:
        raise ConfigError(f"{path} holds {vector.dtype} {vector.shape}, not a float32 vector")
    return vector


async def _read_to_end(consumer: Any, tp: TopicPartition) -> bool:
    """The consumer has read ``tp`` up to the high watermark its last fetch reported."""
    highwater = consumer.highwater(tp)
    return highwater is not None and await consumer.position(tp) >= highwater


def _read_json(path: os.PathLike[str]) -> dict[str, Any] | None:
    try:
        with open(path) as fh:
            data: dict[str, Any] = json.load(fh)
            return data
    except FileNotFoundError:
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data).encode())
