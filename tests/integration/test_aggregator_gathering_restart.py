"""An aggregator killed while it gathers hellos (before version 0) still starts with every site.

Sites send their hello once. Before version 0 there is no checkpoint, so the aggregator must not
let faust commit the hellos it has read: a restart then reads them again. (Before the fix the
restarted aggregator waited for hellos that had already been committed past.)
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.integration.harness import (
    Federation,
    dump,
    produce,
    read_all,
    start_aggregator,
    stop,
)
from topics.broker import EmbeddedBroker
from topics.registry import GLOBAL_MODEL, SITE_EVENTS, ensure_topics


def _log_says(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


@pytest.mark.slow
async def test_hellos_read_before_a_crash_are_read_again(tmp_path: Path) -> None:
    fed = Federation.create(tmp_path, ["A", "B", "C"])
    log = fed.run_dir / "aggregator.log"
    async with EmbeddedBroker(record=False) as broker:
        await ensure_topics(broker.bootstrap)
        proc = start_aggregator(fed, broker.bootstrap, rounds=1)
        try:
            hellos = [fed.hello(s, seed=i) for i, s in enumerate(fed.sites)]
            await produce(broker.bootstrap, SITE_EVENTS.name, hellos[:2])
            deadline = time.monotonic() + 60
            while not _log_says(log, "2/3 sites") and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert _log_says(log, "2/3 sites"), dump(log)
            await asyncio.sleep(4.0)  # past faust's periodic commit (every 2.8 s)
            stop(proc, signal.SIGKILL)
            proc = start_aggregator(fed, broker.bootstrap, rounds=1)
            await produce(broker.bootstrap, SITE_EVENTS.name, hellos[2:])
            published = await read_all(broker.bootstrap, GLOBAL_MODEL.name, 1, until=bool)
            assert published, dump(log)  # version 0 (any record on the global-model topic)
        finally:
            stop(proc)
    assert "training starts with ['A', 'B', 'C']" in log.read_text(), dump(log)
