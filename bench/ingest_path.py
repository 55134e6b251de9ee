"""What ``bench.aggregate``'s ingest paths (plain, and secure in :mod:`bench.secure_ingest`) share:
the pure part on the worker threads and the ordered part on the engine thread, as the aggregator
app runs them, with the time each takes summed over a run (seconds)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

from aggregator.service import Prepared, prepare
from fedsynth.messages import MessageReader

__all__ = ["BARE_NOCRC", "TimedPath"]

BARE_NOCRC = "bare aiokafka, CRC check off as the aggregator's"
"""The row of the bare consumer read as the aggregator reads (``AggregatorSettings.check_crcs``)."""


@dataclass(slots=True, kw_only=True)
class TimedPath:
    """Subclasses give :meth:`_ordered`, the work done on each record in consumption order.

    Attributes:
        reader: verifies on the workers (pure) and reassembles in order.
        prepare_s: CPU time of :func:`aggregator.service.prepare` on the workers.
        ordered_s: wall time of the ordered part.
        engine_cpu_s: CPU time of the thread that ran the ordered part.
        loop_cpu_s: CPU time of the event loop's thread (set by the consumer).
        applied: updates the ordered part took.
        rejected: reasons for refused records.
        engine_thread: the one thread the ordered part runs on (None: in line).
    """

    reader: MessageReader
    prepare_s: float = 0.0
    ordered_s: float = 0.0
    engine_cpu_s: float = 0.0
    loop_cpu_s: float = 0.0
    applied: int = 0
    rejected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    engine_thread: Executor | None = None

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
        try:
            self._ordered(prepared)
        finally:
            self.engine_cpu_s += time.thread_time() - c0
            self.ordered_s += time.perf_counter() - t0

    def _ordered(self, prepared: Prepared) -> None:
        raise NotImplementedError

    async def handle(self, value: bytes, prepared: Prepared) -> None:
        """:meth:`ordered` on the engine thread, as the app runs it: the event loop stays free
        to fetch while the engine works (one thread, so the order is kept)."""
        if self.engine_thread is None:
            self.ordered(prepared)
            return
        await asyncio.get_running_loop().run_in_executor(self.engine_thread, self.ordered, prepared)
