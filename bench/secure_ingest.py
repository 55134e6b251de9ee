"""Secure-mode part of ``bench.aggregate``: SecAgg+ cohorts of masked 1M-word updates.

In secure mode (the default) a site's update reaches the aggregator as a masked ``ModelUpdate``:
the vector is the little-endian masked words (``masked-u32`` or ``masked-u64`` by the cohort's
modulus), so a 1M-parameter update is 4-8 MB and travels as several signed chunks. The aggregator
reassembles and verifies them, adds the words to the cohort's running sum, and once every member's
input is in asks for the unmasking shares; the ``UnmaskResponse`` records it then reads recover the
self masks, and the unmasked sum is applied to the model as one FedBuff step.

:func:`build_workload` plays whole cohorts in memory (real :class:`SecureSite` clients, a real
:class:`CohortCoordinator`, every record signed and read back through :class:`MessageReader`) and
keeps, per cohort, the records the aggregator consumes after the mask request, in the order it
got them (the members' masked-input chunks, then their unmask responses), and the coordinator's
checkpointed state at that point. :class:`SecureIngestPath` is the aggregator's ingest of those
records: :func:`aggregator.service.prepare` on the workers, then in order
:meth:`MessageReader.accept`, :meth:`CohortCoordinator.on_record` and, when a cohort's sum is out,
:meth:`AggregatorEngine.step`. Cohorts run back to back in the app, with joins and shares in
between; here the coordinator is restored from its state at the mask request when the next
cohort's first record arrives (that restore is counted in the ordered part). The run must make
the same model, bit for bit, as the in-memory play.

With :class:`AppCheckpoints`, the path also writes the app's checkpoints as the app's group
commit does (``aggregator/app.py``): one before each new version (write-ahead), and one per
group of messages handled back to back, by the app's rule (a group ends after
``checkpoint_every`` messages that changed state, ``UNACKED_PER_CHANGE`` times as many
messages, or at the checkpoint written ahead of a version) or by an earlier one
(:class:`GroupRule`).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from agents.secure import PendingUpdate, SecureSite, SecureSiteConfig
from aggregator.checkpoint import Checkpoint, CheckpointStore
from aggregator.cohorts import CohortConfig, CohortCoordinator
from aggregator.engine import AggregatorEngine, CohortAggregated, EngineConfig, EngineState
from aggregator.pipeline import GroupCommit
from aggregator.service import Prepared
from aggregator.settings import AggregatorSettings
from aggregator.strategies import StrategyConfig, build_strategy
from bench.ingest_path import BARE_NOCRC, HANDOFF_ROW, IDLE_ROW, ReadSplit, TimedPath, read_split
from fedsynth.errors import MessageError
from fedsynth.messages import Inbound, MessageFactory, MessageReader, Rejection
from fedsynth.secagg.fixedpoint import FixedPointSpec
from schemas.signing import IdentityKey, KeyRing

__all__ = ["SecureIngestPath", "SecureWorkload", "build_workload", "report"]

AGGREGATOR = "aggregator"
CLIP = 0.5  # the aggregator's default ``secure_clip``
MAX_WEIGHT = 10_000.0  # its default ``secure_max_weight``
NOW = 1.8e9  # a fixed clock: the play and the timed run see no deadline pass


@dataclass(frozen=True, slots=True)
class SecureWorkload:
    """The records of ``cohorts`` cohorts as the aggregator consumes them after each mask request.

    Attributes:
        records: ``(key, value)`` in consumption order.
        snapshots: per cohort id, the coordinator's state and arrays at its mask request.
        config: the cohort terms (shared by the coordinator and the sites).
        keys: every party's public key.
        updates: masked inputs among ``records``.
        payload_bytes: bytes of all records.
        final: the model the in-memory play made.
    """

    records: list[tuple[bytes, bytes]]
    snapshots: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]]
    config: CohortConfig
    keys: KeyRing
    updates: int
    payload_bytes: int
    final: np.ndarray


def _engine(params: int, members: int) -> AggregatorEngine:
    strategy = build_strategy(
        StrategyConfig.model_validate({"name": "fedbuff", "buffer_size": members})
    )
    return AggregatorEngine(strategy, EngineConfig(n_parameters=params))


def _initial(engine: AggregatorEngine, params: int, sites: list[str]) -> EngineState:
    return engine.initial_state(np.zeros(params, np.float32), frozenset(sites))


class _Play:
    """Sites and coordinator exchanging signed records through FIFO queues, in memory."""

    def __init__(self, config: CohortConfig, sites: list[str], seed: int) -> None:
        parties = [AGGREGATOR, *sites]
        identities = {p: IdentityKey.generate() for p in parties}
        self.keys = KeyRing({p: k.public_key for p, k in identities.items()})
        self.factories = {
            p: MessageFactory(config.federation_id, p, identities[p], clock=lambda: NOW)
            for p in parties
        }
        self.readers = {p: MessageReader(config.federation_id, self.keys) for p in parties}
        spec, staleness = config.spec, config.staleness()
        self.sites = {
            s: SecureSite(
                SecureSiteConfig(config.federation_id, s, spec, staleness),
                np.random.default_rng(seed + i),
            )
            for i, s in enumerate(sites)
        }
        self.coord = CohortCoordinator(config)
        self.queue: deque[tuple[str, bytes]] = deque()
        self.kept: list[tuple[bytes, bytes]] = []  # what the aggregator reads after MaskRequest
        self.snapshot: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None

    def send(self, sender: str, sends: list[tuple[str, dict[str, Any]]]) -> None:
        factory = self.factories[sender]
        for name, fields in sends:
            if sender == AGGREGATOR:
                value = factory.build(name, fields).value
                self.queue.extend((s, value) for s in self.sites)
                continue
            if name == "ModelUpdate":
                if self.snapshot is None:  # the first masked input: the coordinator as it is
                    state = json.loads(json.dumps(self.coord.to_state()))
                    arrays = {k: v.copy() for k, v in self.coord.state_arrays().items()}
                    self.snapshot = (state, arrays)
                values = [out.value for out in factory.build_payload(name, fields)]
            else:
                values = [factory.build(name, fields).value]
            if name in ("ModelUpdate", "UnmaskResponse"):
                self.kept += [(sender.encode(), v) for v in values]
            self.queue.extend((AGGREGATOR, v) for v in values)
            if name == "EncryptedShare":
                self.queue.extend((str(fields["recipient"]), v) for v in values)

    def run(self) -> CohortAggregated | None:
        """Deliver until the queues are empty; the cohort's engine event, if it made one."""
        event: CohortAggregated | None = None
        while self.queue:
            receiver, value = self.queue.popleft()
            got = self.readers[receiver].read(value)
            if not isinstance(got, Inbound):
                if isinstance(got, Rejection):
                    raise MessageError(f"{receiver} refused a record: {got.reason}")
                continue
            if receiver == AGGREGATOR:
                out = self.coord.on_record(got.name, got.record, NOW)
                if out.rejections:
                    raise MessageError(f"coordinator refused: {out.rejections}")
                self.send(AGGREGATOR, out.sends)
                event = out.event or event
            else:
                self.send(receiver, self.sites[receiver].on_record(got.name, got.record, NOW))
        return event


def build_workload(params: int, cohorts: int, members: int, seed: int = 0) -> SecureWorkload:
    """Play ``cohorts`` cohorts of ``members`` sites in memory, with N(0, 0.01) deltas of
    ``params`` values."""
    sites = [f"site{i}" for i in range(members)]
    config = CohortConfig(
        federation_id="bench-aggregate-secure",
        spec=FixedPointSpec(clip=CLIP, max_weight=MAX_WEIGHT),
        vector_length=params,
        buffer_size=members,
        min_members=max(2, members - 1),
    )
    play = _Play(config, sites, seed)
    engine = _engine(params, members)
    state = _initial(engine, params, sites)
    rng = np.random.default_rng(seed)
    snapshots = {}
    for c in range(cohorts):
        play.snapshot = None
        version = state.model_version
        play.send(AGGREGATOR, play.coord.open_cohort(version, NOW).sends)
        for i, site in enumerate(sites):
            delta = rng.normal(0.0, 0.01, params).astype(np.float32)
            update = PendingUpdate(f"u{c}-{site}", delta, 100 + i, version)
            play.send(site, play.sites[site].submit(update, NOW))
        event = play.run()
        if event is None or play.snapshot is None:
            raise MessageError(f"cohort {c} made no sum in the in-memory play")
        snapshots[str(event.cohort_id)] = play.snapshot
        state, _ = engine.step(state, event)
    return SecureWorkload(
        records=play.kept,
        snapshots=snapshots,
        config=config,
        keys=play.keys,
        updates=cohorts * members,
        payload_bytes=sum(len(v) for _, v in play.kept),
        final=np.asarray(state.params).copy(),
    )


class GroupRule(StrEnum):
    """How :class:`AppCheckpoints` ends a group of messages that share a checkpoint."""

    MESSAGES = "messages"  # after checkpoint_every messages, changed or not (the first rule)
    CHANGES = "changes"  # after checkpoint_every changes of state or unacked_limit messages
    APP = "app"  # the app's: as CHANGES, and also at a checkpoint written ahead of a version


@dataclass(slots=True)
class AppCheckpoints:
    """The app's checkpoints, for the bench (see the module docstring).

    Attributes:
        store: Where they go (a temporary folder).
        group: When a group of messages ends.
        rule: Which rule ``group`` follows.
        saves: Checkpoints written.
        sums: Of those, the ones that wrote an open cohort's running sum (8 bytes a word).
        save_s: Seconds spent writing them (on the engine thread, as in the app).
    """

    store: CheckpointStore
    group: GroupCommit
    rule: GroupRule
    dirty: bool = False
    saves: int = 0
    sums: int = 0
    save_s: float = 0.0

    @classmethod
    def by_rule(cls, store: CheckpointStore, rule: GroupRule) -> AppCheckpoints:
        """Checkpoints grouped by ``rule``, with the app's settings."""
        settings = AggregatorSettings(sites=("-",))
        messages = rule is GroupRule.MESSAGES
        limit = settings.checkpoint_every if messages else settings.unacked_limit
        return cls(store, GroupCommit(settings.checkpoint_every, limit), rule)

    def handled(self, path: SecureIngestPath, changed: bool, published: bool) -> None:
        """One message handled; ``published``: it made a new version (sent write-ahead; once
        sent, the app clears its outbox, so its next checkpoint is due again). The bench's
        consumer is never idle, so no group ends for want of messages."""
        self.dirty = self.dirty or changed
        if published:
            self._save(path)
            self.dirty = True
        ahead = published and self.rule is GroupRule.APP
        if self.group.ends(changed, backlog=1, checkpointed=ahead) and self.dirty:
            self._save(path)

    def _save(self, path: SecureIngestPath) -> None:
        cohort = {} if path.coord is None else path.coord.state_arrays()
        arrays = {f"cohort.{k}": v for k, v in cohort.items()}  # as the service names them
        self.sums += any(self.store.known_name(a) is None for a in arrays.values())
        start = time.perf_counter()
        self.store.save(Checkpoint(path.state, arrays=arrays))
        self.save_s += time.perf_counter() - start
        self.saves += 1
        self.dirty = False


@dataclass(slots=True, kw_only=True)
class SecureIngestPath(TimedPath):
    """The aggregator's secure ingest of a :class:`SecureWorkload`."""

    workload: SecureWorkload
    engine: AggregatorEngine
    state: EngineState
    coord: CohortCoordinator | None = None
    started: set[str] = field(default_factory=set)
    sum_s: float = 0.0  # the coordinator taking a masked input into its sum
    unmask_s: float = 0.0  # the coordinator taking unmask responses (unmasking at the last)
    step_s: float = 0.0  # the FedBuff step on the unmasked sum
    restore_s: float = 0.0  # the coordinator restored at each cohort's first record
    commit: AppCheckpoints | None = None  # the app's checkpoints too

    @classmethod
    def fresh(cls, workload: SecureWorkload) -> SecureIngestPath:
        params = workload.config.vector_length
        members = workload.config.buffer_size
        engine = _engine(params, members)
        sites = [f"site{i}" for i in range(members)]
        return cls(
            reader=MessageReader(workload.config.federation_id, workload.keys),
            workload=workload,
            engine=engine,
            state=_initial(engine, params, sites),
        )

    def _ordered(self, prepared: Prepared) -> None:
        version = self.state.model_version
        changed = self._take(prepared)
        if self.commit is not None:
            self.commit.handled(self, changed, self.state.model_version != version)

    def _take(self, prepared: Prepared) -> bool:
        """The app's ordered step for one record; says whether it changed state."""
        msg = self._accept(prepared)
        if msg is None:
            return False
        t1 = time.perf_counter()
        cohort_id = str(msg.record["cohort_id"])
        if cohort_id not in self.started:  # the app's coordinator gets here by joins and shares
            self.started.add(cohort_id)
            state, arrays = self.workload.snapshots[cohort_id]
            self.coord = CohortCoordinator.from_state(self.workload.config, state, arrays)
        coord = self.coord
        if coord is None:  # pragma: no cover - set above for the first record
            return False
        t2 = time.perf_counter()
        self.restore_s += t2 - t1
        out = coord.on_record(msg.name, msg.record, NOW)
        t3 = time.perf_counter()
        self.rejected += out.rejections
        if msg.name == "ModelUpdate":
            self.applied += 1
            self.sum_s += t3 - t2
        else:
            self.unmask_s += t3 - t2
        if out.event is not None:
            self.state, _ = self.engine.step(self.state, out.event)
            self.step_s += time.perf_counter() - t3
        return True

    def check(self) -> None:
        """Every masked input was taken, nothing refused, and the model is the in-memory play's.

        Raises:
            MessageError: The ingest differs from the play.
        """
        w = self.workload
        if self.rejected or self.applied != w.updates:
            raise MessageError(
                f"secure ingest took {self.applied}/{w.updates} inputs: {self.rejected[:3]}"
            )
        if not np.array_equal(np.asarray(self.state.params), w.final):
            raise MessageError("secure ingest made a different model than the in-memory play")


def read_and_sum(workload: SecureWorkload) -> tuple[ReadSplit, float]:
    """The offline read split of the records, and the seconds of a raw numpy sum of the masked
    inputs' words as the coordinator sums them (uint64, wrapping), each added once decoded."""
    total: list[np.ndarray] = []
    seconds = 0.0

    def add(name: str, record: dict[str, Any]) -> None:
        nonlocal seconds
        if name != "ModelUpdate":
            return
        words = np.frombuffer(record["vector"], "<u8")
        if not total:
            total.append(np.zeros(words.size, np.uint64))
        t = time.perf_counter()
        np.add(total[0], words, out=total[0])
        seconds += time.perf_counter() - t

    split = read_split(workload.records, workload.keys, add)
    return split, seconds


def report(console: Console, workload: SecureWorkload, bare: tuple[float, float],
           path: SecureIngestPath, ingest_s: float, workers: int,
           committed: Sequence[tuple[str, float]] = ()) -> float:
    """Print the secure-mode rate table and per-update CPU; returns the ingest-vs-bare ratio.

    ``bare`` is the bare consumer's best wall time with aiokafka's CRC check (the default) and
    without it (as the aggregator reads); ``committed``: rows of the ingest with checkpoints
    (:class:`AppCheckpoints`), label and best wall time, shown but not in the ratio.
    """
    bare_s, bare_nocrc_s = bare
    n, mib = workload.updates, workload.payload_bytes / 2**20
    params = workload.config.vector_length
    title = (f"secure mode: {n} masked updates x {params:,} params in "
             f"{n // workload.config.buffer_size} cohort(s), {len(workload.records)} records "
             f"(chunks and unmask responses), {mib:.1f} MiB")
    rates = Table(title=title)
    for col in ("consumer", "wall s", "updates/s", "MiB/s", "vs bare"):
        rates.add_column(col, justify="right")
    for label, secs in (
        ("bare aiokafka", bare_s),
        (BARE_NOCRC, bare_nocrc_s),
        (f"secure ingest ({workers} workers + engine thread)", ingest_s),
        *committed,
    ):
        rates.add_row(label, f"{secs:.3f}", f"{n / secs:.1f}", f"{mib / secs:.1f}",
                      f"{bare_s / secs:.2f}x")
    console.print(rates)
    if committed:
        settings = AggregatorSettings(sites=("-",))
        console.print(
            "+ checkpoints: the same ingest writing the app's checkpoints (not in the ratio): one "
            "before each new version (write-ahead), one after it is sent (its outbox cleared) "
            "and one per group of messages handled back to back that changed state; the app's "
            f"group ends after {settings.checkpoint_every} changes of state, "
            f"{settings.unacked_limit} messages or at a version's checkpoint (\"with a sum\": "
            "checkpoints that wrote an open cohort's running sum)",
            highlight=False,
        )
    parts = Table(title="secure mode, per masked update, ms")
    parts.add_column("part")
    parts.add_column("ms/update", justify="right")
    split, numpy_s = read_and_sum(workload)
    for label, secs in (
        ("prepare on workers: chunk signatures, Avro; join, payload", path.prepare_s),
        ("ordered: reassembly (the payload comes joined and verified, wall)", path.accept_s),
        ("ordered: masked sum (coordinator, wall)", path.sum_s),
        ("ordered: unmask responses and unmasking (coordinator, wall)", path.unmask_s),
        ("ordered: FedBuff step (wall)", path.step_s),
        ("ordered: coordinator restore, bench only (wall)", path.restore_s),
        ("ordered part (wall)", path.ordered_s),
        ("ordered part, CPU of its thread", path.engine_cpu_s),
        (IDLE_ROW, path.idle_s),
        (HANDOFF_ROW, path.handoff_s),
        ("event-loop thread CPU (fetch, hand-over)", path.loop_cpu_s),
        ("bare fetch (wall)", bare_s),
        ("read offline, one thread: chunk signatures", split.chunk_signatures),
        ("  chunk Avro decode", split.chunk_avro),
        ("  joining the chunks", split.join),
        ("  payload signature from the digest its chunks carry", split.payload_signature),
        ("  payload Avro decode", split.payload_avro),
        ("raw numpy sum of the same masked words (uint64)", numpy_s),
    ):
        parts.add_row(label, f"{1000 * secs / n:.2f}")
    console.print(parts)
    console.print(
        f"not in the ratio: the app's encrypted checkpoint after a masked input joins the "
        f"cohort's running sum {1000 * checkpoint_write(path):.1f} ms (the {params:,}-word sum "
        "is written whole each time it changes)",
        highlight=False,
    )
    return bare_s / ingest_s


def checkpoint_write(path: SecureIngestPath, saves: int = 5) -> float:
    """Median seconds of the app's checkpoint (:class:`CheckpointStore`) after a masked input
    joined the open cohort: the engine state is saved already, so the write is the cohort's new
    running sum (a fresh array each time, as the SecAgg+ server makes it) and the manifest."""
    words = path.workload.config.vector_length + 1
    rng = np.random.default_rng(0)
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(Path(tmp) / "checkpoint.bin", bytes(range(32)), "bench")
        store.save(Checkpoint(path.state))
        for i in range(saves):
            total = rng.integers(0, 2**63, words, dtype=np.uint64)
            start = time.perf_counter()
            store.save(Checkpoint(path.state, {("updates", 0): i}, arrays={"cohort.total": total}))
            times.append(time.perf_counter() - start)
    return statistics.median(times)
