"""aggregator.pipeline.OrderedPrefetch: order, back-pressure, errors (no broker)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from aggregator.pipeline import OrderedPrefetch
from fedsynth.errors import ConfigError


def test_results_are_handled_in_put_order_although_prepared_out_of_order() -> None:
    delays = [random.Random(i).uniform(0, 0.01) for i in range(40)]
    handled: list[tuple[int, int]] = []
    threads: set[str] = set()

    def prepare(i: int) -> int:
        threads.add(threading.current_thread().name)
        time.sleep(delays[i])  # later items often finish first
        return i * i

    async def handle(i: int, squared: int) -> None:
        handled.append((i, squared))

    async def main() -> None:
        with ThreadPoolExecutor(4) as pool:
            async with OrderedPrefetch(prepare, handle, pool, depth=8) as pipe:
                for i in range(40):
                    await pipe.put(i)

    asyncio.run(main())
    assert handled == [(i, i * i) for i in range(40)]
    assert len(threads) > 1 and threading.current_thread().name not in threads


def test_at_most_depth_items_wait_ahead_of_the_handler() -> None:
    in_flight = 0
    most = 0
    lock = threading.Lock()

    def prepare(i: int) -> int:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        return i

    async def handle(i: int, _: int) -> None:
        nonlocal in_flight
        await asyncio.sleep(0.002)
        with lock:
            in_flight -= 1

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            async with OrderedPrefetch(prepare, handle, pool, depth=3) as pipe:
                for i in range(30):
                    await pipe.put(i)

    asyncio.run(main())
    assert in_flight == 0 and most <= 3 + 2  # the queue, one being handled, one being put


def test_a_failing_handler_stops_the_pipeline_and_the_error_surfaces() -> None:
    handled: list[int] = []

    async def handle(i: int, _: int) -> None:
        if i == 5:
            raise ValueError("bad item 5")
        handled.append(i)

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            async with OrderedPrefetch(lambda i: i, handle, pool, depth=2) as pipe:
                for i in range(50):
                    await pipe.put(i)

    with pytest.raises(ValueError, match="bad item 5"):
        asyncio.run(main())
    assert handled == [0, 1, 2, 3, 4]


def test_depth_must_be_positive_and_use_needs_the_block() -> None:
    async def handle(i: int, _: int) -> None:
        return None

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(ConfigError):
            OrderedPrefetch(lambda i: i, handle, pool, depth=0)
        pipe = OrderedPrefetch(lambda i: i, handle, pool, depth=1)
        with pytest.raises(RuntimeError, match="outside"):
            asyncio.run(pipe.put(1))
