"""What ``bench.aggregate``'s ingest paths (plain, and secure in :mod:`bench.secure_ingest`) share:
the pure part on the worker threads and the ordered part on the engine thread, as the aggregator
app runs them, with the time each takes summed over a run (seconds)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from aggregator.service import Prepared, prepare
from fedsynth.codec.chunk import Complete, Reassembler
from fedsynth.messages import VIEWED, Inbound, MessageReader, Rejection
from schemas.codec import decode
from schemas.signing import KeyRing, verify_message

__all__ = [
    "BARE_NOCRC", "HANDOFF_ROW", "IDLE_ROW", "ReadSplit", "Run", "TimedPath", "group_cpu_s",
    "read_split",
]

BARE_NOCRC = "bare aiokafka, CRC check off as the aggregator's"
"""The row of the bare consumer read as the aggregator reads (``AggregatorSettings.check_crcs``)."""
IDLE_ROW = "ordered part idle between records (wall): waiting, hand-overs"
HANDOFF_ROW = "  of which from the event loop's hand-over to the step's start"
"""The per-update rows of :attr:`TimedPath.idle_s` and :attr:`TimedPath.handoff_s`."""


@dataclass(frozen=True, slots=True)
class Run:
    """One timed consumer run.

    Attributes:
        wall_s: Wall seconds.
        cpu_s: CPU seconds of this process over the run, all threads.
        broker_cpu_s: CPU seconds of the broker's processes over the same interval; None when
            the broker is not one this process started (``--bootstrap``).
    """

    wall_s: float
    cpu_s: float
    broker_cpu_s: float | None


def group_cpu_s(pgid: int) -> float:
    """CPU seconds of every live process in process group ``pgid``, all threads (Linux
    ``/proc``: the scheduler's nanosecond run time of each task; the embedded broker runs in a
    session of its own)."""
    ns = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii") as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) != pgid:  # state, ppid, pgrp
                    continue
            for task in os.scandir(f"/proc/{entry.name}/task"):
                with open(f"{task.path}/schedstat", encoding="ascii") as f:
                    ns += int(f.read().split()[0])
        except OSError:  # gone meanwhile
            continue
    return ns / 1e9


@dataclass(slots=True, kw_only=True)
class TimedPath:
    """Subclasses give :meth:`_ordered`, the work done on each record in consumption order.

    Attributes:
        reader: verifies on the workers (pure) and reassembles in order.
        prepare_s: CPU time of :func:`aggregator.service.prepare` on the workers.
        accept_s: wall time of :meth:`MessageReader.accept` in the ordered part (reassembly,
            replay; for a payload of several chunks also its signature and decoding, where
            the set was not joined on a worker).
        ordered_s: wall time of the ordered part.
        idle_s: wall time between one ordered step's end and the next one's start: the ordered
            part waiting for a record to be fetched and prepared, and for the hand-overs
            between its thread and the event loop. With :attr:`ordered_s` it spans the run, so
            the two show which of them the run's wall time goes to.
        handoff_s: of :attr:`idle_s`, the part from the event loop handing a prepared record
            over (:meth:`handle` called) until the ordered step starts on its thread.
        engine_cpu_s: CPU time of the thread that ran the ordered part.
        loop_cpu_s: CPU time of the event loop's thread (set by the consumer).
        applied: updates the ordered part took.
        rejected: reasons for refused records.
        engine_thread: the one thread the ordered part runs on (None: in line).
    """

    reader: MessageReader
    prepare_s: float = 0.0
    accept_s: float = 0.0
    ordered_s: float = 0.0
    idle_s: float = 0.0
    handoff_s: float = 0.0
    engine_cpu_s: float = 0.0
    loop_cpu_s: float = 0.0
    applied: int = 0
    rejected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    engine_thread: Executor | None = None
    _last_end: float | None = field(default=None, init=False, repr=False)
    _handed: float = field(default=0.0, init=False, repr=False)

    def prepare(self, value: bytes) -> Prepared:
        """The pure part, on a worker thread (CPU time of that thread)."""
        t0 = time.thread_time()
        out = prepare(self.reader, value)
        with self.lock:
            self.prepare_s += time.thread_time() - t0
        return out

    def ordered(self, prepared: Prepared) -> None:
        """:meth:`_ordered`, timed (wall, and its thread's CPU whatever the outcome)."""
        c0, t0 = time.thread_time(), time.perf_counter()
        if self._last_end is not None:
            self.idle_s += t0 - self._last_end
            self.handoff_s += t0 - self._handed
        try:
            self._ordered(prepared)
        finally:
            self.engine_cpu_s += time.thread_time() - c0
            self._last_end = time.perf_counter()
            self.ordered_s += self._last_end - t0

    def _ordered(self, prepared: Prepared) -> None:
        raise NotImplementedError

    def _accept(self, prepared: Prepared) -> Inbound | None:
        """The reader's ordered step, timed; a refused record's reason is kept."""
        t0 = time.perf_counter()
        msg = self.reader.accept(prepared)
        self.accept_s += time.perf_counter() - t0
        if isinstance(msg, Rejection):
            self.rejected.append(msg.reason)
        return msg if isinstance(msg, Inbound) else None

    async def handle(self, value: bytes, prepared: Prepared) -> None:
        """:meth:`ordered` on the engine thread, as the app runs it: the event loop stays free
        to fetch while the engine works (one thread, so the order is kept)."""
        self._handed = time.perf_counter()
        if self.engine_thread is None:
            self.ordered(prepared)
            return
        await asyncio.get_running_loop().run_in_executor(self.engine_thread, self.ordered, prepared)


@dataclass(slots=True)
class ReadSplit:
    """Offline seconds for each part of reading records once, in order, on one thread."""

    chunk_signatures: float = 0.0
    chunk_avro: float = 0.0
    join: float = 0.0
    payload_signature: float = 0.0
    payload_avro: float = 0.0


def read_split(
    records: Iterable[tuple[bytes, bytes]],
    keys: KeyRing,
    on_payload: Callable[[str, dict[str, Any]], None] | None = None,
) -> ReadSplit:
    """Read ``(key, value)`` records as :class:`MessageReader` does, timing each part apart
    (a chunked payload is checked against the digest its signed chunks carry, not hashed again).

    Args:
        records: Signed messages in consumption order: chunks, or payloads sent whole.
        keys: The senders' public keys.
        on_payload: Called (untimed) with each reassembled payload's schema name and record.
    """
    split = ReadSplit()
    reassembler = Reassembler(120.0, time.monotonic, digest=None)
    for _, value in records:
        t0 = time.perf_counter()
        verify_message(value, keys)
        t1 = time.perf_counter()
        name, chunk = decode(value, views=VIEWED)
        t2 = time.perf_counter()
        if name != "Chunk":  # a payload sent whole: its one signature and decoding
            split.payload_signature += t1 - t0
            split.payload_avro += t2 - t1
            if on_payload is not None:
                on_payload(name, chunk)
            continue
        event = reassembler.add(chunk)
        t3 = time.perf_counter()
        split.chunk_signatures += t1 - t0
        split.chunk_avro += t2 - t1
        split.join += t3 - t2
        if not isinstance(event, Complete):
            continue
        t4 = time.perf_counter()
        verify_message(event.payload, keys, sha256=event.sha256)
        t5 = time.perf_counter()
        name, record = decode(event.payload, views=VIEWED)
        split.payload_signature += t5 - t4
        split.payload_avro += time.perf_counter() - t5
        if on_payload is not None:
            on_payload(name, record)
    return split
