"""Benchmark: the aggregator's ingest rate against a bare Kafka consumer on the same broker.

``python -m bench.aggregate [--quick] [--bootstrap HOST:PORT]``. Signed ``ModelUpdate`` messages of
1M float32 deltas (``quantize8|zstd``, about 0.84 MB) are built as site agents build them
(:meth:`~fedsynth.messages.MessageFactory.build_payload`: one signed message each, as it fits in
a chunk; larger payloads go as signed chunks) and produced once onto a fresh topic
of an embedded broker. Then, alternating, (a) a bare aiokafka consumer only fetches every record
and (b) the aggregator's ingest path consumes the same records the way the aggregator app does:
:func:`aggregator.service.prepare` (signature verification, Avro decoding, zstd, reading the
quantization levels) runs on a thread pool ahead of the consumer through
:class:`~aggregator.pipeline.OrderedPrefetch`, and in consumption order, on one engine thread,
:meth:`MessageReader.accept` (chunk reassembly, replay) and :class:`AggregatorEngine` with FedBuff
(K=4) fed ``UpdateReceived`` events as ``aggregator.service`` builds them. Three more rows show the
same work on one thread, with the ordered part on the event loop (the previous design), and with
the workers' part done before the run (:class:`PreparedPath`: a bound on moving it elsewhere). Both
consumers are group-less, assigned every partition and seeked to the beginning; the fastest of
the repeats of each is kept. The ingest path reads as the aggregator app does, without aiokafka's
CRC-32C check of each batch (``AggregatorSettings.check_crcs``: its records are signed over SHA-256
of their bytes, so the CRC would be a second pass); the bare consumer of the ratio keeps the check
(aiokafka's default), and a second bare row without it shows what it costs. ``--workers N``
sets the pool (default: one per core). BLAS runs single-threaded (``threadpoolctl``), as an
aggregator on a shared host should. The ratio is ``rate(b) / rate(a)``; the target is >= 0.8
(the aggregator is never the bottleneck).

A per-update CPU breakdown follows, measured with ``time.perf_counter`` around each part of the
path (``thread_time`` on the workers, and the CPU time of the engine and event-loop threads; the
split of the workers' part into signature, Avro, reassembly, and zstd with the levels comes from
a second, offline pass over the same bytes), next to a raw numpy summation of the same updates,
as float32 arrays and from their levels. Two rows follow the ordered part along the run: its
wall time, and the wall time it sat idle between records (waiting for the next record to be
fetched and prepared, and for the hand-overs between its thread and the event loop). Together
they span the run: the ordered part runs one record at a time, so its busy and idle time is the
run's critical path.

Secure mode (the default) is measured the same way on its own records (:mod:`bench.secure_ingest`):
SecAgg+ cohorts of 4 sites whose masked 1M-word updates (8 MB, 9 chunks each) and unmask responses
are consumed by the aggregator's path (chunk verification on the workers; reassembly, payload
signature, the coordinator's masked sum, unmasking and the FedBuff step on the engine thread) and
by a bare consumer, alternating; its per-update table splits the ordered part live (reassembly
with the payload's signature and decoding; the masked sum; unmasking; the FedBuff step) and
reading offline (chunk signatures, Avro, joining, the payload's signature against the digest its
chunks carry), next to a raw numpy uint64 sum of the same masked words. Below it, outside the
ratio as for plain mode, the app's encrypted checkpoint after a masked input joins the open
cohort (its whole running sum, written each time it changes).

Last, the fastest run of each kind as CPU per update: this process's (every thread) and the
embedded broker's (its process group, from ``/proc``), over the same interval. Spent over ``c``
cores, that CPU bounds the run's wall time from below, so it bounds the ingest's ratio from
above: a ratio far below that bound means time lost to waiting (the GIL, the fetch chain), one
close to it means there are not enough cores for the work. The plain ingest on one thread
(no hand-overs between threads, so the least CPU the work takes) gives a second bound: the best
ratio these cores allow the plain path, were its threads free. The last line is
``RESULT ingest_vs_bare=<x> target=0.8 met=yes|no`` with the smaller of the two modes' ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from aggregator.checkpoint import Checkpoint, CheckpointStore, save_checkpoint
from aggregator.engine import AggregatorEngine, EngineConfig, EngineState, Rejected, UpdateReceived
from aggregator.pipeline import OrderedPrefetch
from aggregator.service import DERIVE, Prepared, prepare
from aggregator.settings import AggregatorSettings
from aggregator.strategies import ClientUpdate, StrategyConfig, build_strategy
from bench.ingest_path import (
    BARE_NOCRC,
    HANDOFF_ROW,
    IDLE_ROW,
    Run,
    TimedPath,
    group_cpu_s,
    read_split,
)
from bench.secure_ingest import AppCheckpoints, GroupRule, SecureIngestPath, SecureWorkload
from bench.secure_ingest import build_workload as build_secure_workload
from bench.secure_ingest import report as report_secure
from fedsynth.codec.quantize import QuantizedVector
from fedsynth.errors import ConfigError, MessageError
from fedsynth.federation import UPDATE_CODEC, decode_delta, decode_vector, encode_vector
from fedsynth.messages import MessageFactory, MessageReader
from schemas.signing import IdentityKey, KeyRing
from topics.broker import EmbeddedBroker
from topics.clients import make_consumer, make_producer
from topics.registry import UPDATES, TopicSpec, ensure_topics

__all__ = ["Size", "main"]

TARGET = 0.8
FEDERATION = "bench-aggregate"
BUFFER_SIZE = 4
PREFETCH_DEPTH = 8
APP_CHECK_CRCS: bool = AggregatorSettings.model_fields["check_crcs"].default
PLAIN_BARE, PLAIN_INGEST = "plain: bare aiokafka", "plain: aggregator ingest"
SECURE_BARE, SECURE_INGEST = "secure: bare aiokafka", "secure: aggregator ingest"
PLAIN_NOCRC, SECURE_NOCRC = "plain: bare, no CRC", "secure: bare, no CRC"
SECURE_COMMIT = "secure: ingest + the app's checkpoints"
SECURE_COMMIT_CHANGES = "secure: ingest + checkpoints, groups of changes"
SECURE_COMMIT_OLD = "secure: ingest + checkpoints, groups of messages"
EVERY: int = AggregatorSettings.model_fields["checkpoint_every"].default
COMMIT_ROWS = (
    (SECURE_COMMIT_OLD, GroupRule.MESSAGES, f"+ checkpoints, {EVERY} messages a group"),
    (SECURE_COMMIT_CHANGES, GroupRule.CHANGES, f"+ checkpoints, {EVERY} changes a group"),
    (SECURE_COMMIT, GroupRule.APP, "+ checkpoints, the app's group rule"),
)
"""The secure ingest writing the app's checkpoints, under the app's group rule and earlier ones
(kind, rule, label); not in the ratio."""
PLAIN_SERIAL, PLAIN_ON_LOOP = "plain: ingest, one thread", "plain: engine on the event loop"
PLAIN_PREPARED = "plain: ordered part only, prepared beforehand"
CPU_KINDS = (PLAIN_BARE, PLAIN_SERIAL, PLAIN_INGEST, SECURE_BARE, SECURE_INGEST)
"""The runs whose CPU :func:`report_cpu` prints (the others are timed for their rows only)."""


@dataclass(frozen=True, slots=True)
class Size:
    """Benchmark size: parameters per update, updates, sites, repeats of each consumer."""

    params: int
    updates: int
    sites: int
    repeats: int
    cohorts: int  # secure mode: cohorts of ``sites`` members


FULL = Size(params=1_000_000, updates=48, sites=4, repeats=3, cohorts=12)
QUICK = Size(params=100_000, updates=4, sites=2, repeats=1, cohorts=1)


@dataclass(frozen=True, slots=True)
class Workload:
    """What was produced: the encoded records, the key ring, the decoded deltas and the wire
    bytes (``UPDATE_CODEC``) each was decoded from."""

    records: list[tuple[bytes, bytes]]
    keys: KeyRing
    deltas: list[np.ndarray]
    payload_bytes: int
    vectors: list[bytes]


@dataclass(slots=True, kw_only=True)
class IngestPath(TimedPath):
    """The aggregator's plain per-record work, timed per part (seconds, summed over the run)."""

    engine: AggregatorEngine
    state: EngineState
    codec_s: float = 0.0
    engine_s: float = 0.0

    def _ordered(self, prepared: Prepared) -> None:
        """Reassembly and replay, then the engine, as the service does it."""
        msg = self._accept(prepared)
        if msg is None:
            return
        t1 = time.perf_counter()
        rec = msg.record
        delta = msg.derived
        if not isinstance(delta, np.ndarray | QuantizedVector):  # no worker decoded it: here
            delta = decode_delta(rec["vector"], rec["codec"], int(rec["n_parameters"]))
        t2 = time.perf_counter()
        update = ClientUpdate(
            update_id=rec["update_id"], site_id=rec["site_id"],
            base_version=int(rec["base_version"]), n_samples=int(rec["n_samples"]),
            delta=delta, weight_hint=float(rec["weight"]),
        )
        self.state, out = self.engine.step(self.state, UpdateReceived(update, rec["message_id"]))
        t3 = time.perf_counter()
        self.codec_s += t2 - t1
        self.engine_s += t3 - t2
        self.applied += 1
        self.rejected += [str(e.reason) for e in out if isinstance(e, Rejected)]


@dataclass(slots=True, kw_only=True)
class PreparedPath(IngestPath):
    """The plain ingest with the workers' part already done: :meth:`prepare` looks up what
    :func:`aggregator.service.prepare` made of the record before the run (by its last ``TAIL``
    bytes, the end of the payload with its compressed vector; the table is checked to hold one
    entry per record), so the run is the fetch, the hand-overs and the ordered part alone. It
    bounds what moving the pure part elsewhere (worker processes, other machines) could gain on
    the same cores."""

    table: dict[bytes, Prepared]

    TAIL = 64

    def prepare(self, value: bytes) -> Prepared:
        return self.table[value[-self.TAIL:]]

    @classmethod
    def beforehand(cls, workload: Workload, size: Size) -> PreparedPath:
        """A fresh path (as :func:`new_path`) whose records are all prepared now."""
        path = new_path(workload, size)
        table = {value[-cls.TAIL:]: prepare(path.reader, value) for _, value in workload.records}
        if len(table) != len(workload.records):
            raise MessageError("two records end in the same bytes; cannot tell them apart")
        return cls(reader=path.reader, engine=path.engine, state=path.state, table=table)


def build_workload(size: Size, seed: int = 0) -> Workload:
    """Signed, chunked ModelUpdates of ``size.params`` deltas, round-robin over the sites."""
    rng = np.random.default_rng(seed)
    sites = [f"site{i}" for i in range(size.sites)]
    identities = {s: IdentityKey.generate() for s in sites}
    keys = KeyRing({s: k.public_key for s, k in identities.items()})
    records: list[tuple[bytes, bytes]] = []
    deltas: list[np.ndarray] = []
    vectors: list[bytes] = []
    payload = 0
    for i in range(size.updates):
        site = sites[i % size.sites]
        delta = rng.normal(0.0, 0.01, size.params).astype(np.float32)
        vector, _ = encode_vector(delta, UPDATE_CODEC, rng)
        deltas.append(decode_vector(vector, UPDATE_CODEC, size.params))
        vectors.append(vector)
        fields = {
            "update_id": str(uuid.uuid4()), "site_id": site, "base_version": 0,
            "n_samples": 100 + i, "mode": "plain", "cohort_id": None, "weight": 1.0,
            "codec": UPDATE_CODEC, "vector": vector, "n_parameters": size.params,
            "train_loss": 0.5, "epsilon_spent": 0.1,
        }
        factory = MessageFactory(FEDERATION, site, identities[site])
        chunks = factory.build_payload("ModelUpdate", fields)
        records += [(site.encode(), c.value) for c in chunks]
        payload += sum(len(c.value) for c in chunks)
    return Workload(records, keys, deltas, payload, vectors)


def new_path(workload: Workload, size: Size) -> IngestPath:
    """A fresh reader and FedBuff engine at version 0 with every bench site on the roster."""
    strategy = build_strategy(
        StrategyConfig.model_validate({"name": "fedbuff", "buffer_size": BUFFER_SIZE})
    )
    engine = AggregatorEngine(strategy, EngineConfig(n_parameters=size.params))
    sites = frozenset(workload.keys.senders)
    state = engine.initial_state(np.zeros(size.params, np.float32), sites)
    reader = MessageReader(FEDERATION, workload.keys, derive=DERIVE)
    return IngestPath(reader=reader, engine=engine, state=state)


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Send every record (keyed by site, so a payload's chunks share a partition) and flush."""
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def consume(
    bootstrap: str,
    spec: TopicSpec,
    total: int,
    path: TimedPath | None,
    pool: Executor | None,
    check_crcs: bool = APP_CHECK_CRCS,
    broker: int | None = None,
) -> Run:
    """Fetch ``total`` records from the beginning (and, with ``path``, ingest them), timed.

    ``check_crcs`` defaults to the aggregator's own setting (off: its records are signed);
    ``broker``: the process group whose CPU time is taken over the same interval.
    """
    consumer = make_consumer(bootstrap, group_id=None, check_crcs=check_crcs)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(spec.name, p) for p in range(spec.partitions)])
        await consumer.seek_to_beginning()
        broker0 = None if broker is None else group_cpu_s(broker)
        cpu0, start = time.process_time(), time.perf_counter()
        await _fetch(consumer, total, path, pool)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
        broker_s = None if broker is None or broker0 is None else group_cpu_s(broker) - broker0
        return Run(wall, cpu, broker_s)
    finally:
        await consumer.stop()


async def _fetch(
    consumer: AIOKafkaConsumer, total: int, path: TimedPath | None, pool: Executor | None
) -> None:
    seen = 0
    if path is None:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000)
            seen += sum(len(records) for records in batches.values())
        return
    if pool is None:  # one thread: prepare in line, then the ordered part
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                seen += len(records)
                for record in records:
                    await path.handle(record.value, path.prepare(record.value))
        return
    cpu0 = time.thread_time()
    async with OrderedPrefetch(path.prepare, path.handle, pool, PREFETCH_DEPTH) as pipe:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                seen += len(records)
                for record in records:
                    await pipe.put(record.value)
    path.loop_cpu_s = time.thread_time() - cpu0


def checkpoint_write(workload: Workload, size: Size) -> tuple[float, float]:
    """Seconds per checkpoint after an update joins a FedBuff buffer: the app's
    :class:`CheckpointStore` (only the new delta, as the quantization levels it is buffered as,
    and a manifest are written) and, for comparison, one self-contained file with the model and
    every buffered delta (:func:`save_checkpoint`), at the fullest buffer (K-1 updates).

    The aggregator app writes one after every message that changes state (before the offset is
    committed); it is not part of the ingest path measured above, so it is reported on its own.
    """
    path = new_path(workload, size)
    key = bytes(range(32))
    store_s: list[float] = []
    whole_s = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(Path(tmp) / "checkpoint.bin", key, FEDERATION)
        store.save(Checkpoint(path.state))
        buffers = max(1, min(3, size.updates // BUFFER_SIZE))
        for i in range(buffers * BUFFER_SIZE):
            version = path.state.model_version
            delta = decode_delta(workload.vectors[i], UPDATE_CODEC, size.params)  # as the app
            update = ClientUpdate(f"ckpt-{i}", f"site{i % size.sites}", version, 100, delta)
            path.state, _ = path.engine.step(path.state, UpdateReceived(update, f"ckpt-m{i}"))
            start = time.perf_counter()
            store.save(Checkpoint(path.state, {("updates", 0): i + 1}, {}))
            if path.state.model_version == version:  # buffered, not a new version
                store_s.append(time.perf_counter() - start)
        for i in range(BUFFER_SIZE - 1):  # the fullest buffer, for the whole-file comparison
            update = ClientUpdate(
                f"ckpt-w{i}", f"site{i % size.sites}", path.state.model_version, 100,
                decode_delta(workload.vectors[i], UPDATE_CODEC, size.params),
            )
            path.state, _ = path.engine.step(path.state, UpdateReceived(update, f"ckpt-w{i}"))
        for _ in range(3):
            start = time.perf_counter()
            save_checkpoint(Path(tmp) / "whole.bin", Checkpoint(path.state), key, FEDERATION)
            whole_s = min(whole_s, time.perf_counter() - start)
    return statistics.median(store_s), whole_s


def decode_levels(vectors: list[bytes], n: int) -> float:
    """Seconds to decode the updates' vectors as a worker does (zstd, then a view of the
    quantization levels), one after another on this thread."""
    start = time.perf_counter()
    for vector in vectors:
        decode_delta(vector, UPDATE_CODEC, n)
    return time.perf_counter() - start


def numpy_sum(deltas: list[np.ndarray]) -> float:
    """Seconds to sum the float32 arrays into a float64 accumulator with plain numpy."""
    total = np.zeros(deltas[0].size, np.float64)
    start = time.perf_counter()
    for d in deltas:
        np.add(total, d, out=total)
    return time.perf_counter() - start


def numpy_levels_sum(vectors: list[bytes], n: int) -> float:
    """Seconds to sum the same updates' values from their levels into a float64 accumulator with
    plain numpy, one whole-vector expression each (``low + level * step``, as the FedBuff step
    does it block by block), the frames read from the wire bytes beforehand."""
    levels = [decode_delta(v, UPDATE_CODEC, n) for v in vectors]
    total = np.zeros(n, np.float64)
    start = time.perf_counter()
    for q in levels:
        assert isinstance(q, QuantizedVector)
        total += q.levels * q.step
        total += q.low
    return time.perf_counter() - start


@dataclass(slots=True)
class Timings:
    """The fastest run of each kind, and the ingest paths (per-part sums) of the fastest ingests."""

    runs: dict[str, Run] = dataclasses.field(default_factory=dict)
    saves: dict[str, tuple[int, int, float]] = dataclasses.field(default_factory=dict)
    """By kind, in its fastest run: checkpoints written, how many of them wrote an open
    cohort's running sum, and the seconds spent writing them."""
    best: IngestPath | None = None
    secure_best: SecureIngestPath | None = None

    def keep(self, kind: str, run: Run) -> bool:
        """Keep ``run`` if it is the fastest of its ``kind`` so far; says whether it is."""
        if kind in self.runs and run.wall_s >= self.runs[kind].wall_s:
            return False
        self.runs[kind] = run
        return True

    def wall(self, kind: str) -> float:
        """The fastest ``kind`` run's wall seconds (infinite before any)."""
        run = self.runs.get(kind)
        return float("inf") if run is None else run.wall_s

    bare_s = property(lambda self: self.wall(PLAIN_BARE))
    bare_nocrc_s = property(lambda self: self.wall(PLAIN_NOCRC))
    serial_s = property(lambda self: self.wall(PLAIN_SERIAL))
    on_loop_s = property(lambda self: self.wall(PLAIN_ON_LOOP))
    ingest_s = property(lambda self: self.wall(PLAIN_INGEST))
    secure_bare_s = property(lambda self: self.wall(SECURE_BARE))
    secure_bare_nocrc_s = property(lambda self: self.wall(SECURE_NOCRC))
    secure_s = property(lambda self: self.wall(SECURE_INGEST))


async def measure(
    bootstrap: str,
    size: Size,
    workload: Workload,
    secure: SecureWorkload,
    workers: int,
    broker: int | None = None,
) -> Timings:
    """Produce once, then alternate bare and ingest consumers ``size.repeats`` times; then the
    same for secure mode. ``broker``: the broker's process group, whose CPU time is taken."""
    spec = dataclasses.replace(UPDATES, name=f"fedsynth.bench-updates.{uuid.uuid4().hex[:8]}")
    await ensure_topics(bootstrap, [spec])
    await produce(bootstrap, spec.name, workload.records)
    total = len(workload.records)
    timings = Timings()
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="ingest") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="engine") as engine_thread,
    ):
        for _ in range(size.repeats):
            bare = await consume(bootstrap, spec, total, None, pool, True, broker)
            timings.keep(PLAIN_BARE, bare)
            timings.keep(PLAIN_NOCRC, await consume(bootstrap, spec, total, None, pool, False))
            serial = new_path(workload, size)
            timings.keep(
                PLAIN_SERIAL, await consume(bootstrap, spec, total, serial, None, broker=broker)
            )
            if serial.applied != size.updates:
                raise MessageError(f"serial ingest applied {serial.applied}/{size.updates}")
            on_loop = new_path(workload, size)
            timings.keep(PLAIN_ON_LOOP, await consume(bootstrap, spec, total, on_loop, pool))
            if on_loop.applied != size.updates:
                raise MessageError(f"ingest applied {on_loop.applied}/{size.updates}")
            path = new_path(workload, size)
            path.engine_thread = engine_thread
            run = await consume(bootstrap, spec, total, path, pool, broker=broker)
            if path.rejected or path.applied != size.updates:
                raise MessageError(
                    f"ingest applied {path.applied}/{size.updates}: {path.rejected[:3]}"
                )
            if timings.keep(PLAIN_INGEST, run):
                timings.best = path
            ready = PreparedPath.beforehand(workload, size)
            ready.engine_thread = engine_thread
            timings.keep(PLAIN_PREPARED, await consume(bootstrap, spec, total, ready, pool))
            if ready.rejected or ready.applied != size.updates:
                raise MessageError(f"prepared ingest applied {ready.applied}/{size.updates}")
        await measure_secure(bootstrap, secure, size, timings, pool, engine_thread, broker)
    return timings


async def measure_secure(
    bootstrap: str,
    workload: SecureWorkload,
    size: Size,
    timings: Timings,
    pool: Executor,
    engine_thread: Executor,
    broker: int | None = None,
) -> None:
    """Secure mode (:mod:`bench.secure_ingest`): bare and secure ingest, alternating, on one
    partition (a cohort's records must reach the coordinator in the order it got them)."""
    spec = dataclasses.replace(
        UPDATES, name=f"fedsynth.bench-secure.{uuid.uuid4().hex[:8]}", partitions=1
    )
    await ensure_topics(bootstrap, [spec])
    await produce(bootstrap, spec.name, workload.records)
    total = len(workload.records)
    for _ in range(size.repeats):
        bare = await consume(bootstrap, spec, total, None, pool, True, broker)
        timings.keep(SECURE_BARE, bare)
        timings.keep(SECURE_NOCRC, await consume(bootstrap, spec, total, None, pool, False))
        path = SecureIngestPath.fresh(workload)
        path.engine_thread = engine_thread
        run = await consume(bootstrap, spec, total, path, pool, broker=broker)
        path.check()
        if timings.keep(SECURE_INGEST, run):
            timings.secure_best = path
        for kind, rule, _ in COMMIT_ROWS:
            with tempfile.TemporaryDirectory() as tmp:
                path = SecureIngestPath.fresh(workload)
                path.engine_thread = engine_thread
                store = CheckpointStore(Path(tmp) / "checkpoint.bin", bytes(32), FEDERATION)
                path.commit = AppCheckpoints.by_rule(store, rule)
                run = await consume(bootstrap, spec, total, path, pool)
                path.check()
                if timings.keep(kind, run):
                    commit = path.commit
                    timings.saves[kind] = (commit.saves, commit.sums, commit.save_s)


def report(
    console: Console, size: Size, workload: Workload, timings: Timings, workers: int
) -> float:
    """Print the rate and breakdown tables; returns the ingest-vs-bare ratio."""
    n, mib = size.updates, workload.payload_bytes / 2**20
    ratio = timings.bare_s / timings.ingest_s
    rates = Table(title=f"{n} updates x {size.params:,} params, {len(workload.records)} records, "
                        f"{mib:.1f} MiB")
    for col in ("consumer", "wall s", "updates/s", "MiB/s", "vs bare"):
        rates.add_column(col, justify="right")
    for label, secs in (
        ("bare aiokafka", timings.bare_s),
        (BARE_NOCRC, timings.bare_nocrc_s),
        ("ingest, one thread", timings.serial_s),
        (f"{workers} workers, engine on the event loop", timings.on_loop_s),
        (f"aggregator ingest ({workers} workers + engine thread)", timings.ingest_s),
        ("the same, workers' part done beforehand (bound)", timings.wall(PLAIN_PREPARED)),
    ):
        rates.add_row(label, f"{secs:.3f}", f"{n / secs:.1f}", f"{mib / secs:.1f}",
                      f"{timings.bare_s / secs:.2f}x")
    console.print(rates)
    path = timings.best
    if path is None:
        raise ConfigError("no ingest run was measured (repeats must be >= 1)")
    split = read_split(workload.records, workload.keys)
    parts = Table(title="per-update CPU, ms")
    parts.add_column("part")
    parts.add_column("ms/update", justify="right")
    for label, secs in (
        ("prepare on workers: verify, decode, zstd, levels", path.prepare_s),
        ("  signature checks: each message's; a chunked payload's from its digest (offline)",
         split.chunk_signatures + split.payload_signature),
        ("  Avro decode (offline)", split.chunk_avro + split.payload_avro),
        ("  reassembly (offline)", split.join),
        ("  zstd and reading the quantization levels (offline)",
         decode_levels(workload.vectors, size.params)),
        ("ordered: accept (reassembly, replay)", path.accept_s),
        ("ordered: decode, where no worker did it", path.codec_s),
        ("ordered: engine step (validation + FedBuff)", path.engine_s),
        ("ordered part (wall)", path.ordered_s),
        ("ordered part, CPU of its thread", path.engine_cpu_s),
        (IDLE_ROW, path.idle_s),
        (HANDOFF_ROW, path.handoff_s),
        ("event-loop thread CPU (fetch, hand-over)", path.loop_cpu_s),
        ("ingest CPU total (live run)", path.prepare_s + path.accept_s + path.codec_s
         + path.engine_s),
        ("bare fetch (wall)", timings.bare_s),
        ("raw numpy sum of the same arrays (float32 values)", numpy_sum(workload.deltas)),
        ("raw numpy sum of the same levels (low + level * step)",
         numpy_levels_sum(workload.vectors, size.params)),
    ):
        parts.add_row(label, f"{1000 * secs / n:.2f}")
    console.print(parts)
    store_s, whole_s = checkpoint_write(workload, size)
    console.print(
        f"not in the ratio: the app's encrypted checkpoint after each buffered update "
        f"{1000 * store_s:.1f} ms (one file with the model and {BUFFER_SIZE - 1} buffered "
        f"deltas: {1000 * whole_s:.1f} ms)",
        highlight=False,
    )
    return ratio


def report_cpu(console: Console, timings: Timings, updates: dict[str, int]) -> None:
    """Print each kind's fastest run as CPU per update, this process's and the broker's, and
    the bound they put on the ingest: on ``c`` cores a run that burns ``C`` CPU seconds takes
    at least ``C / c`` seconds, so the ingest's ratio cannot exceed the bare wall time over that
    (``updates``: updates per run, by kind)."""
    cores = len(os.sched_getaffinity(0))
    table = Table(title=f"CPU per update, ms (fastest run of each kind; {cores} cores)")
    for col in ("run", "wall", "this process", "broker", "both / cores"):
        table.add_column(col, justify="right")
    bounds: dict[str, float] = {}
    for kind in (k for k in CPU_KINDS if k in timings.runs):
        run, n = timings.runs[kind], updates[kind]
        row = [kind, f"{1000 * run.wall_s / n:.2f}", f"{1000 * run.cpu_s / n:.2f}"]
        if run.broker_cpu_s is None:
            table.add_row(*row, "n/a", "n/a")
            continue
        bounds[kind] = (run.cpu_s + run.broker_cpu_s) / cores
        table.add_row(*row, f"{1000 * run.broker_cpu_s / n:.2f}", f"{1000 * bounds[kind] / n:.2f}")
    console.print(table)
    ceilings = [
        f"{mode} {timings.runs[bare].wall_s / bounds[ingest]:.2f}x"
        for mode, bare, ingest in (("plain", PLAIN_BARE, PLAIN_INGEST),
                                   ("plain at one thread's CPU", PLAIN_BARE, PLAIN_SERIAL),
                                   ("secure", SECURE_BARE, SECURE_INGEST))
        if ingest in bounds and bare in timings.runs
    ]
    if ceilings:
        console.print(
            f"on {cores} cores, the ingest's own CPU and the broker's bound its ratio to the bare "
            f"consumer at: {', '.join(ceilings)} (the CPU it spent, spread over every core)",
            highlight=False,
        )


async def run(
    size: Size, bootstrap: str | None, workers: int
) -> tuple[Workload, SecureWorkload, Timings]:
    """Build the workloads and measure, on ``bootstrap`` or on a fresh embedded broker."""
    workload = build_workload(size)
    secure = build_secure_workload(size.params, size.cohorts, size.sites)
    if bootstrap is not None:
        return workload, secure, await measure(bootstrap, size, workload, secure, workers)
    async with EmbeddedBroker(record=False) as broker:
        timings = await measure(broker.bootstrap, size, workload, secure, workers, broker.pid)
    return workload, secure, timings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; prints the tables and the RESULT line."""
    parser = argparse.ArgumentParser(prog="python -m bench.aggregate", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100k parameters, 4 updates")
    parser.add_argument("--bootstrap", help="use this broker instead of starting an embedded one")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="prepare threads (default: one per core)")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    console = Console(width=110)
    with threadpool_limits(limits=1, user_api="blas"):  # see the module docstring
        workload, secure, timings = asyncio.run(run(size, args.bootstrap, args.workers))
    plain = report(console, size, workload, timings, args.workers)
    if timings.secure_best is None:
        raise ConfigError("no secure ingest run was measured (repeats must be >= 1)")
    committed = [
        (f"{label}: {saves} ({sums} with a sum) in {save_s:.3f} s", timings.wall(kind))
        for kind, _, label in COMMIT_ROWS
        if kind in timings.saves
        for saves, sums, save_s in [timings.saves[kind]]
    ]
    masked = report_secure(
        console, secure, (timings.secure_bare_s, timings.secure_bare_nocrc_s),
        timings.secure_best, timings.secure_s, args.workers, committed,
    )
    per_run = {kind: secure.updates if kind.startswith("secure") else size.updates
               for kind in CPU_KINDS}
    report_cpu(console, timings, per_run)
    ratio = min(plain, masked)
    console.print(
        f"plain {plain:.2f}x, secure {masked:.2f}x of the bare consumer; the result is the "
        "smaller (the aggregator must keep up in either mode). The aggregator reads without "
        "aiokafka's CRC check (its records are signed over SHA-256 of their bytes; see "
        f"AggregatorSettings.check_crcs); against a bare consumer without it too: plain "
        f"{timings.bare_nocrc_s / timings.ingest_s:.2f}x, secure "
        f"{timings.secure_bare_nocrc_s / timings.secure_s:.2f}x",
        highlight=False,
    )
    met = "yes" if ratio >= TARGET else "no"
    console.print(f"RESULT ingest_vs_bare={ratio:.2f} target={TARGET} met={met}", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
