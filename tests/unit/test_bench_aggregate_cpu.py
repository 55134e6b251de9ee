"""bench.aggregate's accounting: the broker's process-group CPU and the bound that CPU puts on
the ingest's ratio (no broker: a child process stands in for it), and the ordered part's idle
time between records."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest
from rich.console import Console

import bench.aggregate as agg
from aggregator.service import Prepared
from bench.ingest_path import Run, TimedPath, group_cpu_s
from fedsynth.messages import MessageReader
from schemas.signing import KeyRing

BUSY = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n" \
       "time.sleep(30)\n"


def test_group_cpu_counts_every_thread_of_a_process_group() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while group_cpu_s(child.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0.3 <= group_cpu_s(child.pid) < 5.0
        assert group_cpu_s(os.getpgid(0)) > 0  # this test's own group
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert group_cpu_s(child.pid) == 0.0  # nothing left in the group


def test_the_cpu_table_bounds_each_mode_by_the_cpu_it_spent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agg.os, "sched_getaffinity", lambda _pid: {0, 1})
    timings = agg.Timings()
    assert timings.keep(agg.PLAIN_BARE, Run(0.5, 0.2, 0.2))
    assert timings.keep(agg.PLAIN_BARE, Run(0.4, 0.2, 0.2))  # the faster run is kept
    assert not timings.keep(agg.PLAIN_BARE, Run(0.9, 0.2, 0.2))
    timings.keep(agg.PLAIN_NOCRC, Run(0.3, 0.1, 0.1))  # timed for its row, not in the CPU table
    timings.keep(agg.PLAIN_INGEST, Run(1.0, 1.2, 0.4))  # (1.2 + 0.4) / 2 cores = 0.8 s at least
    timings.keep(agg.SECURE_BARE, Run(3.0, 1.0, None))  # a broker not ours: no bound
    timings.keep(agg.SECURE_INGEST, Run(4.0, 5.0, None))
    console = Console(record=True, width=200)
    agg.report_cpu(console, timings, dict.fromkeys(timings.runs, 4))
    text = console.export_text()
    assert timings.bare_s == 0.4 and timings.bare_nocrc_s == 0.3
    assert "no CRC" not in text
    assert "2 cores" in text and "n/a" in text
    assert "plain 0.50x" in text and "secure" not in text.split("bound its ratio")[1]
    assert "200.00" in text  # the plain ingest's bound per update: 0.8 s / 4 updates, in ms


class _Sleepy(TimedPath):
    """An ordered step that takes a known time and counts its calls."""

    def _ordered(self, prepared: Prepared) -> None:
        time.sleep(0.02)
        self.applied += 1


def test_the_ordered_part_s_idle_time_is_what_lies_between_its_steps() -> None:
    path = _Sleepy(reader=MessageReader("f", KeyRing({})))

    async def run() -> None:
        with ThreadPoolExecutor(1) as engine:
            path.engine_thread = engine
            for _ in range(3):
                await path.handle(b"", cast(Prepared, None))
                await asyncio.sleep(0.05)  # nothing to hand over: the ordered part waits

    start = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - start
    assert path.applied == 3
    assert path.ordered_s >= 3 * 0.02
    assert 2 * 0.05 <= path.idle_s  # between the three steps only, not before the first
    assert path.ordered_s + path.idle_s <= wall
    assert 0.0 <= path.handoff_s < path.idle_s  # handed over after the wait, started soon after
