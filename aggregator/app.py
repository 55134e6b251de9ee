"""The aggregator as a faust-streaming app: decode, call the core, send, checkpoint.

Wiring is declared in :func:`build_app`; the agents stay short and hand each message to
:class:`AggregatorRuntime`, which calls the I/O-free :class:`~aggregator.service.AggregatorService`
and then does the I/O it asks for, in this order: when it has messages to send (a new global
version and its audit event, cohort control messages), write the encrypted checkpoint with those
messages in its outbox, then send them; dead-letter the rejected ones; and only after a checkpoint
that covers the event ack it, so that faust may commit its offset. Checkpoints are
group-committed: messages handled back to back share one checkpoint, written before any of them is
acked, until ``checkpoint_every`` of them changed state (chunks of a payload not yet whole change
none: a masked input of 9 chunks is one change), :data:`~aggregator.settings.UNACKED_PER_CHANGE`
times as many were handled, no prefetched message waits, or a message's handling wrote a
checkpoint ahead of its records (a new version: that checkpoint covers the group, so a secure
cohort's group ends with the cohort, where no running sum is open)
(:class:`~aggregator.pipeline.GroupCommit`); a crash before it replays them, and since nothing
they decided was sent yet, replaying them may decide afresh. (Counting every message made an
open secure cohort's checkpoint write its 8 MB running sum about twice per cohort of four;
``bench.aggregate`` prints the secure ingest under each rule.)
Before version 0 there is no checkpoint (the gathered hellos and the histogram cohort are not
checkpointed), so nothing is acked until the first one: an aggregator restarted while gathering
reads every hello again (sites send theirs once).

Why write-ahead for sends: which updates share a FedBuff buffer depends on the order they arrive
in across partitions, so replaying messages after a restart may group them differently. A
decision that other parties may have seen must therefore be durable before it is sent: a restart
then finds the version already made and sends the checkpoint's outbox again (receivers drop the
duplicate by its message id), instead of making a different model under the same version number.

Each agent reads ahead: the pure part of reading (:func:`aggregator.service.prepare`: signatures,
Avro decoding, zstd, reading a quantized delta's levels, joining a completed chunk set and verifying
its payload) runs on a thread pool for the next ``prefetch_depth`` messages through
:class:`~aggregator.pipeline.OrderedPrefetch`, while the stateful part runs in consumption order;
events are consumed with manual acks, so an event read ahead is not committed before it was handled
and checkpointed.

The stateful part (:meth:`AggregatorService.handle` and ``tick``) and the checkpoint write run on
one dedicated *engine thread*, always under :attr:`AggregatorRuntime.lock`, so exactly one of them
runs at a time and in the order the lock was taken, while the event loop goes on fetching (the
aggregation's numpy work and the checkpoint's fsyncs release the GIL). Nothing on the loop reads
the service's state while a call is in flight: every such read happens under the same lock.

Durable state is our checkpoint, never a faust table (ARCHITECTURE.md: the embedded broker's
``end_offsets()`` breaks changelog recovery).

Resume offsets: the checkpoint stores, for each partition, the offset to start from after a
restart: the first chunk of any payload still being reassembled, else the next unread message.
After every assignment (at start, and after a rebalance mid-run) the consumer seeks there, and
to the beginning of a partition the checkpoint has no offset for (:meth:`AggregatorRuntime.
reposition`, run right after faust's own seek to the group's committed offsets, so that it wins).
Those committed offsets are never trusted: at a rebalance faust skips, and acks, the events it
fetched under the old generation, and another member of the group (a second aggregator started
by mistake) may move them past records this one never handled; both lost records before (tested
in tests/integration/test_aggregator_rebalance.py). Messages re-read below the high-water mark
were already handled (applied, or dead-lettered), so they are skipped quietly; the engine's
replay protection (message and update ids in the checkpoint) makes a second application
impossible anyway.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import faust
from faust.types import TP, EventT
from opentelemetry import trace
from opentelemetry.context import Context

from aggregator.audit import audit_record
from aggregator.checkpoint import Checkpoint, CheckpointStore, OutboxRecord
from aggregator.pipeline import GroupCommit, OrderedPrefetch
from aggregator.service import (
    DERIVE,
    AggregatorService,
    DeadLetterItem,
    Effects,
    Prepared,
    Send,
    SiteReinstated,
    SiteSuspended,
    prepare,
)
from aggregator.settings import OPERATOR, AggregatorSettings
from fedsynth.codec.chunk import SetKey
from fedsynth.data.schema import DatasetSchema
from fedsynth.federation import load_model_code
from fedsynth.messages import MessageFactory, MessageReader
from observability import AuditChain, AuditEvent, extract_context, inject_headers, setup_telemetry
from schemas.signing import IdentityKey, KeyRing
from topics.clients import faust_settings
from topics.gaps import GapGuard, Verdict, VerdictKind
from topics.registry import (
    CONTROL,
    DEAD_LETTER,
    GLOBAL_MODEL,
    SHARE_RELAY,
    SITE_EVENTS,
    UNMASK,
    UPDATES,
)

__all__ = ["AggregatorRuntime", "build_app", "consumer_group", "load_dataset_schema"]

INBOUND = (SITE_EVENTS, UPDATES, SHARE_RELAY, UNMASK)
INBOUND_PARTITIONS = frozenset((spec.name, p) for spec in INBOUND for p in range(spec.partitions))

log = logging.getLogger(__name__)
R = TypeVar("R")
TOPICS = {"global-model": GLOBAL_MODEL.name, "control": CONTROL.name}
Headers = list[tuple[str, bytes]]


def load_dataset_schema(name_or_path: str) -> DatasetSchema:
    """A dataset schema by packaged name (``heart_disease_uci``) or by file path."""
    path = Path(name_or_path)
    return (
        DatasetSchema.load(path)
        if path.suffix == ".json"
        else DatasetSchema.load_named(name_or_path)
    )


@dataclass(frozen=True, slots=True)
class Handled:
    """What handling one consumed message did, for :class:`GroupCommit`.

    Attributes:
        changed: It changed the state a checkpoint holds.
        checkpointed: A checkpoint was written while handling it (ahead of the records it
            made, a new version's), covering every message handled so far.
    """

    changed: bool
    checkpointed: bool = False


class AggregatorRuntime:
    """The I/O around the service: producer, checkpoint, offsets, audit, traces."""

    def __init__(self, app: faust.App, settings: AggregatorSettings, key: bytes) -> None:
        self.app = app
        self.settings = settings
        self.lock = asyncio.Lock()
        keys = KeyRing.from_dir(settings.keys_dir)
        identity = IdentityKey.load(settings.keys_dir, "aggregator")
        self.factory = MessageFactory(settings.federation_id, "aggregator", identity)
        reader = MessageReader(
            settings.federation_id, keys, chunk_timeout_s=settings.chunk_timeout_s, derive=DERIVE
        )
        self.checkpoints = CheckpointStore(
            settings.state_dir / "checkpoint.bin", key, settings.federation_id
        )
        self.service = AggregatorService(
            settings,
            load_dataset_schema(settings.dataset),
            reader,
            self.factory,
            TOPICS,
            note_encoded=self.checkpoints.note_encoded,
        )
        self.telemetry = setup_telemetry("fedsynth-aggregator", settings.run_dir)
        self.tracer = self.telemetry.tracer("fedsynth.aggregator")
        self.audit = AuditChain()
        self.audit_last: AuditEvent | None = None
        self.next_offset: dict[tuple[str, int], int] = {}
        self.gaps = GapGuard()  # records the consumer was never handed are read again
        self.high_water: dict[tuple[str, int], int] = {}
        self.chunk_start: dict[tuple[str, int], dict[SetKey, int]] = {}
        self.resume: dict[tuple[str, int], int] = {}
        self.pool = ThreadPoolExecutor(settings.ingest_workers, thread_name_prefix="ingest")
        self.engine_thread = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.dirty = False  # state changed since the last checkpoint
        self.outbox: tuple[OutboxRecord, ...] = ()  # decided, checkpointed, maybe not yet sent
        self.consuming = False  # every inbound partition was held at least once
        self.paused_at: float | None = None  # when handling stopped for a rebalance (wall clock)
        # set while this aggregator holds every inbound partition (see on_assigned)
        self.whole = asyncio.Event()
        self.warming: Future[None] | None = None  # the model's code, loading ahead (fresh start)
        self._restore()

    # ---------------------------------------------------------------- restore
    def _restore(self) -> None:
        ckpt = self.checkpoints.load()
        if ckpt is None:  # version 0 will build a model: load torch while the sites gather
            self.warming = self.pool.submit(load_model_code)
            return
        self.service.restore(ckpt.state, ckpt.extra["service"], ckpt.arrays)
        self.resume = dict(ckpt.offsets)
        self.outbox = ckpt.outbox
        self.high_water = {(t, int(p)): int(o) for t, p, o in ckpt.extra.get("high_water", [])}
        head = ckpt.extra.get("audit_head")
        if head:
            self.audit_last = AuditEvent.from_dict(head)
            self.audit = AuditChain(head=self.audit_last)
        log.info(
            "resumed from checkpoint at version %d (%s)",
            ckpt.state.model_version,
            self.service.phase,
        )

    async def on_revoked(self, revoked: Iterable[TP]) -> None:
        """A consumer-group rebalance took partitions away: the aggregator stalled past its
        session timeout, or another member joined its group. faust drops the events it fetched
        before; after the assignment that follows they are read again (:meth:`reposition`)."""
        names = sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked)
        if names:
            self._pause()
        if names and self.consuming:
            log.warning(
                "consumer-group rebalance: %d partitions revoked (%s); a stall past the session "
                "timeout or another member of group %s; records fetched before it are read again",
                len(names),
                ", ".join(names),
                self.app.conf.id,
            )

    async def on_assigned(self, assigned: Iterable[TP]) -> None:
        """Once this aggregator holds every inbound partition: send what the checkpoint's
        outbox holds, give an open cohort's stage its whole time again, and let the agents
        handle records again (:attr:`whole`). Positions are set afterwards, by
        :meth:`reposition`.

        Holding only some of them means another member is in the group: a second aggregator
        started by mistake on another host, with state of its own. Both would publish versions,
        different models under the same numbers; so this one handles nothing, sends nothing
        and runs no deadline until it holds them all again (the other, holding the rest, does
        the same), and says so as an error.
        """
        held = {(tp.topic, tp.partition) for tp in assigned}
        missing = sorted(INBOUND_PARTITIONS - held)
        if missing:
            self._pause()
            log.error(
                "holding %d of the %d inbound partitions: another member of consumer group %s "
                "holds %s (a second aggregator?); handling nothing until this one holds them all",
                len(INBOUND_PARTITIONS) - len(missing),
                len(INBOUND_PARTITIONS),
                self.app.conf.id,
                ", ".join(f"{t}[{p}]" for t, p in missing),
            )
            return
        if self.consuming:
            log.warning("every inbound partition assigned again after a rebalance")
        async with self.lock:
            if self.outbox:
                log.info("sending %d records again from the checkpoint's outbox", len(self.outbox))
                try:
                    await self._send_outbox()
                except Exception:
                    log.exception("resending the outbox failed; exiting")
                    logging.shutdown()
                    os._exit(70)
            # the open cohort's stage gets its whole time from now on at the first assignment
            # (after a restart), and the time the pause took after a rebalance
            paused = None if self.paused_at is None else self.service.wall_clock() - self.paused_at
            await self.on_engine(self.service.restart_deadlines, paused)
            self.consuming, self.paused_at = True, None
        self.whole.set()

    def _pause(self) -> None:
        """Stop handling records until every inbound partition is held again; from the first
        pause after consuming, the open cohort's stage clock stops (:meth:`on_assigned`)."""
        self.whole.clear()
        if self.consuming and self.paused_at is None:
            self.paused_at = self.service.wall_clock()

    async def reposition(self) -> None:
        """Seek every assigned partition to its resume offset: the last checkpoint's, or the
        beginning where nothing was handled before it (a rebalance mid-run reads again from
        there; what was handled since is skipped by its high-water mark).

        Run right after faust's own seek to the group's committed offsets, which its recovery
        makes after every assignment (after the assignment signal), so that this one counts:
        those offsets cover records faust skipped at a rebalance, and another member of the
        group may have moved them past records this aggregator never handled.
        """
        for tp in sorted(self.app.consumer.assignment()):
            offset = self.resume.get((tp.topic, tp.partition), 0)
            await self.app.consumer.seek(tp, offset)
            self.gaps.positioned((tp.topic, tp.partition), offset)
            if offset:
                log.info("seek %s[%d] -> %d", tp.topic, tp.partition, offset)

    async def on_engine(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` on the engine thread, in the caller's context (the current span).

        Call it with :attr:`lock` held: the lock, not the thread, is what keeps the service's
        state from being read on the loop while a call runs.
        """
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self.engine_thread, call)

    # ---------------------------------------------------------------- messages
    def prepare(self, value: bytes) -> Prepared:
        """The pure part of reading a message (runs on :attr:`pool`)."""
        return prepare(self.service.reader, value)

    async def on_message(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        prepared: Prepared | None = None,
    ) -> Handled:
        """Handle one consumed message end to end (``prepared``: its :meth:`prepare` result);
        says whether it changed the state a checkpoint holds and whether a checkpoint was
        written on the way (:class:`GroupCommit`)."""
        async with self.lock:
            tp = (topic, partition)
            verdict = self.gaps.check(tp, offset)
            if not verdict.handle:
                await self._on_gap(topic, partition, verdict)
                return Handled(changed=False)
            # a re-read after a restart; a gap's record is new although below the high-water mark
            replayed = verdict.kind is not VerdictKind.FILL and offset < self.high_water.get(tp, -1)
            with self.tracer.start_as_current_span(
                f"aggregator.consume {topic}",
                context=extract_context(headers),
                attributes={
                    "messaging.kafka.offset": offset,
                    "messaging.kafka.partition": partition,
                    "messaging.destination": topic,
                },
            ):
                try:
                    fx = await self.on_engine(
                        self.service.handle, value if prepared is None else prepared
                    )
                except Exception as exc:  # a bug must not stop the federation: keep the evidence
                    log.exception("internal error on %s[%d]@%d", topic, partition, offset)
                    fx = Effects(dead=[DeadLetterItem(f"internal error: {exc!r}", "InternalError")])
                self._track_chunks(tp, offset, value, fx)
                self.next_offset[tp] = max(self.next_offset.get(tp, 0), offset + 1)
                self.high_water[tp] = max(self.high_water.get(tp, 0), offset + 1)
                if replayed:
                    fx.dead.clear()
                ahead = await self._apply_or_die(fx, origin=(topic, partition, offset, key, value))
            if verdict.kind is VerdictKind.GAP:
                await self._on_gap(topic, partition, verdict)
            return Handled(fx.changed and self.service.state is not None, ahead)

    async def _on_gap(self, topic: str, partition: int, verdict: Verdict) -> None:
        """Seek back to records the consumer was never handed (:mod:`topics.gaps`)."""
        report = verdict.report(f"{topic}[{partition}]")
        if report is not None:
            log.log(*report)
        if verdict.seek_to is not None:
            await self.app.consumer.seek(TP(topic, partition), verdict.seek_to)

    def _track_chunks(self, tp: tuple[str, int], offset: int, value: bytes, fx: Effects) -> None:
        pending = self.service.reader.reassembler.pending_keys
        starts = self.chunk_start.setdefault(tp, {})
        for key in pending - set(starts):
            starts[key] = offset
        for key in set(starts) - pending:
            del starts[key]

    async def on_tick(self) -> None:
        """Deadlines and chunk expiry (none before the first assignment: nothing is consumed
        yet, and a restored cohort's deadlines must not run out before its records are read;
        none while another member holds some of the inbound partitions)."""
        if not self.whole.is_set():
            return
        async with self.lock:
            await self._apply_or_die(await self.on_engine(self.service.tick), origin=None)
            await self.on_engine(self._flush_locked)

    async def _apply_or_die(
        self, fx: Effects, origin: tuple[str, int, int, bytes | None, bytes] | None
    ) -> bool:
        """Do the I/O; if it fails, exit so a restart resumes from the last checkpoint. Says
        whether a checkpoint was written (ahead of records to send).

        Crash-only by design: a half-done send/checkpoint sequence must not be continued from
        memory, and a faust agent that crashed would otherwise stop consuming silently.
        """
        try:
            return await self._apply(fx, origin)
        except Exception:
            log.exception("aggregator I/O failed; exiting so that a restart resumes exactly")
            logging.shutdown()
            os._exit(70)

    async def _apply(
        self, fx: Effects, origin: tuple[str, int, int, bytes | None, bytes] | None
    ) -> bool:
        if fx.changed and self.service.state is not None:
            self.dirty = True
        records = self._outbound(fx)
        if records:
            # write-ahead: the state that decided these records, and the records, first
            self.outbox = records
            self.dirty = True
            await self.on_engine(self._flush_locked)
            await self._send_outbox()
        for item in fx.dead:
            await self._dead_letter(item.reason, item.error_class, origin)
        return bool(records) and self.service.state is not None  # none before version 0

    async def _send_outbox(self) -> None:
        for record in self.outbox:
            await self._produce(record.topic, record.key, record.value, list(record.headers))
        self.outbox = ()
        self.dirty = True  # the next checkpoint no longer needs them

    async def flush(self) -> bool:
        """Write the checkpoint if state changed since the last one (exit if the write fails).

        Returns:
            Whether a checkpoint now covers what was handled, so its events may be acked.
            Before version 0 there is none (the service's state is the hellos gathered so far,
            which are not checkpointed): those events stay unacked, so that a restart before
            training starts reads them again instead of waiting for hellos sites sent once.
        """
        async with self.lock:
            await self.on_engine(self._flush_locked)
            return self.service.state is not None

    def _flush_locked(self) -> None:
        if not self.dirty or self.service.state is None:
            return
        try:
            self._checkpoint()
        except Exception:
            log.exception("checkpoint failed; exiting so that a restart resumes exactly")
            logging.shutdown()
            os._exit(70)
        self.dirty = False

    async def _produce(
        self, topic: str, key: bytes, value: bytes, headers: Headers | None = None
    ) -> None:
        await self.app.producer.send_and_wait(topic, key, value, None, None, headers or [])

    def _outbound(self, fx: Effects) -> tuple[OutboxRecord, ...]:
        """The records ``fx`` asks to send, with trace headers, and the audit events of the
        versions it publishes (appended to the audit chain here, before the checkpoint)."""
        records: list[OutboxRecord] = []
        for send in fx.sends:
            if send.topic == GLOBAL_MODEL.name:
                # each global version starts the trace of the round it opens, linked to its cause
                cause = trace.get_current_span().get_span_context()
                with self.tracer.start_as_current_span(
                    "fedsynth.round",
                    context=Context(),
                    links=[trace.Link(cause)],
                    attributes={"fedsynth.model": send.key},
                ):
                    records += self._records(send)
            else:
                records += self._records(send)
        records += self._audit_records(fx)
        return tuple(records)

    def _records(self, send: Send) -> list[OutboxRecord]:
        out = []
        for i, msg in enumerate(send.messages):
            headers: Headers = []
            inject_headers(headers)
            key = f"{send.key}/{i}" if send.topic == GLOBAL_MODEL.name else send.key
            out.append(OutboxRecord(send.topic, key.encode(), msg.value, tuple(headers)))
        return out

    async def _dead_letter(
        self,
        reason: str,
        error_class: str,
        origin: tuple[str, int, int, bytes | None, bytes] | None,
    ) -> None:
        topic, partition, offset, key, value = origin or ("(timer)", -1, -1, None, b"")
        log.warning("dead-letter %s[%d]@%d: %s", topic, partition, offset, reason)
        msg = self.factory.build(
            "DeadLetter",
            {
                "origin_topic": topic,
                "origin_partition": partition,
                "origin_offset": offset,
                "key": key,
                "reason": reason[:4000],
                "error_class": error_class,
                "payload": value,
            },
        )
        await self._produce(DEAD_LETTER.name, topic.encode(), msg.value)

    def _audit_records(self, fx: Effects) -> list[OutboxRecord]:
        out = []
        for ev in fx.events:
            detail: dict[str, Any]
            if isinstance(ev, SiteReinstated):
                actor, action, detail = OPERATOR, "reinstate_site", ev.audit_detail()
            elif isinstance(ev, SiteSuspended):
                actor, action, detail = "aggregator", "suspend_site", ev.audit_detail()
            elif type(ev).__name__ == "GlobalVersionPublished":
                actor, action = "aggregator", "publish_version"
                detail = {
                    "version": ev.version,
                    "contributors": list(ev.contributors),
                    "phase": str(self.service.phase),
                }
            else:
                continue
            entry = self.audit.append(actor, action, detail)
            self.audit_last = entry
            out.append(audit_record(self.factory, entry))
        return out

    def _checkpoint(self) -> None:
        assert self.service.state is not None  # noqa: S101 - checked by the caller
        offsets = dict(self.next_offset)
        for tp, starts in self.chunk_start.items():
            if starts:
                offsets[tp] = min(starts.values())
        for tp in offsets:
            hole = self.gaps.first_open(tp)
            if hole is not None:
                offsets[tp] = min(offsets[tp], hole)  # a restart reads the gap again
        extra: dict[str, Any] = {
            "service": self.service.extra_state(),
            "high_water": [[t, p, o] for (t, p), o in self.high_water.items()],
            "audit_head": self.audit_head(),
        }
        arrays = self.service.extra_arrays()
        self.checkpoints.save(Checkpoint(self.service.state, offsets, extra, self.outbox, arrays))
        self.resume = offsets  # where a re-assignment after a rebalance reads from

    def audit_head(self) -> dict[str, Any] | None:
        return self.audit_last.to_dict() if self.audit_last is not None else None


def consumer_group(federation_id: str) -> str:
    """The faust app id of a federation's aggregator: its consumer group."""
    return f"fedsynth-aggregator-{federation_id}"


def build_app(settings: AggregatorSettings, bootstrap: str, checkpoint_key: bytes) -> faust.App:
    """The faust app: one agent per inbound topic and a timer; all logic in the runtime."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        consumer_group(settings.federation_id),
        broker=f"kafka://{bootstrap}",
        datadir=str(settings.state_dir / "faust"),
        **faust_settings(
            broker_session_timeout=settings.session_timeout_s,
            broker_check_crcs=settings.check_crcs,
            # faust would hold a rebalance (and a stop) until every event read is acked; this
            # app acks only after a checkpoint, and keeps the hellos before version 0 unacked,
            # so the rebalance would wait forever for events it stops delivering. Not waiting
            # is safe: after the rebalance the app reads again from its checkpoint
            # (reposition) and skips what it handled (the high-water mark, replay ids).
            stream_wait_empty=False,
        ),
    )
    runtime = AggregatorRuntime(app, settings, checkpoint_key)
    app.fedsynth_runtime = runtime  # type: ignore[attr-defined]

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        await runtime.on_assigned(assigned)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        await runtime.on_revoked(revoked)

    consumer = app.consumer
    seek_to_committed = consumer.perform_seek

    async def perform_seek() -> None:  # faust's seek to committed offsets, then ours
        try:
            await seek_to_committed()
        finally:
            await runtime.reposition()

    consumer.perform_seek = perform_seek  # type: ignore[method-assign]

    for spec in INBOUND:
        _consume(app, runtime, spec.name)

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def _tick() -> None:
        await runtime.on_tick()

    return app


def _consume(app: faust.App, runtime: AggregatorRuntime, name: str) -> None:
    topic = app.topic(name, value_serializer="raw", key_serializer="raw")

    def prepare(event: EventT[bytes]) -> Prepared:
        return runtime.prepare(event.value)

    unacked: list[EventT[bytes]] = []
    pipes: list[OrderedPrefetch[EventT[bytes], Prepared]] = []
    group = GroupCommit(runtime.settings.checkpoint_every, runtime.settings.unacked_limit)

    async def handle(event: EventT[bytes], prepared: Prepared) -> None:
        await runtime.whole.wait()  # not while another member holds some inbound partitions
        msg = event.message
        handled = await runtime.on_message(
            msg.topic,
            msg.partition,
            msg.offset,
            msg.key,
            event.value,
            _headers(msg.headers),
            prepared,
        )
        unacked.append(event)
        # group commit: one checkpoint for the messages handled back to back, then their acks
        if group.ends(handled.changed, pipes[0].backlog, handled.checkpointed):
            if not await runtime.flush():
                return  # nothing may be committed before the first checkpoint
            for done in unacked:
                done.ack()  # only now may faust commit these offsets
            unacked.clear()

    async def consume(stream: faust.StreamT[bytes]) -> None:
        depth = runtime.settings.prefetch_depth
        async with OrderedPrefetch(prepare, handle, runtime.pool, depth) as pipe:
            pipes[:] = [pipe]
            manual_acks = cast("faust.Stream[bytes]", stream).noack()
            async for event in manual_acks.events():
                await pipe.put(event)

    app.agent(topic, name=f"consume-{name}")(consume)


def _headers(raw: Any) -> Headers:
    """faust gives headers as a list of pairs or a mapping; normalise to pairs."""
    if not raw:
        return []
    items = raw.items() if hasattr(raw, "items") else raw
    return [(str(k), bytes(v)) for k, v in items]
