"""Issue 5 (a) for FedBuff: kill -9 the aggregator at random points; no version is ever
published with two different models.

Which updates share a FedBuff buffer depends on the order they arrive in across partitions, so
a run cannot be compared bit for bit with an undisturbed one. What must hold is that a decision
the aggregator made visible is never remade differently after a restart: every global version
number, wherever it was read, carries the same model. (The aggregator checkpoints the state and
the messages of a new version before it sends them, and sends them again after a restart.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.feeder import Feeder
from tests.integration.harness import Federation, dump, start_aggregator, stop
from topics.broker import EmbeddedBroker
from topics.registry import ensure_topics

VERSIONS = 6
TRIALS = 6
STRATEGY = ("--strategy", json.dumps({"name": "fedbuff", "buffer_size": 2}))


class RecordingFeeder(Feeder):
    """A feeder that remembers the digest of every copy of every version it reads, and kills
    the aggregator the moment it reads the first copy of a version in ``kill_at``: right after
    the aggregator sent it, when its checkpoint may not be written yet."""

    def __init__(self, fed: Federation, kill_at: set[int], restart: Any) -> None:
        super().__init__(fed)
        self.seen: dict[int, set[str]] = {}
        self.kill_at = kill_at
        self.restart = restart

    async def _on_version(
        self, bootstrap: str, rec: dict[str, Any], versions: dict[int, np.ndarray], sent: set[int]
    ) -> None:
        v = int(rec["version"])
        digest = hashlib.sha256(bytes(rec["vector"])).hexdigest()
        if v in self.kill_at and v not in self.seen:
            self.restart()
        self.seen.setdefault(v, set()).add(digest)
        await super()._on_version(bootstrap, rec, versions, sent)


async def _run(fed: Federation, kill_at: set[int], kill_after: list[float]) -> RecordingFeeder:
    """One run on a fresh broker; kill -9 the aggregator when a version in ``kill_at`` appears
    and after each delay in ``kill_after``, restarting it each time."""
    async with EmbeddedBroker(record=False) as broker:
        await ensure_topics(broker.bootstrap)
        (fed.run_dir / "aggregator" / "checkpoint.bin").unlink(missing_ok=True)
        procs = [start_aggregator(fed, broker.bootstrap, rounds=VERSIONS, extra=STRATEGY)]

        def restart() -> None:
            stop(procs[-1], signal.SIGKILL)
            procs.append(start_aggregator(fed, broker.bootstrap, rounds=VERSIONS, extra=STRATEGY))

        feeder = RecordingFeeder(fed, kill_at, restart)
        feeding = asyncio.create_task(feeder.run(broker.bootstrap, VERSIONS, sent=set()))
        try:
            for delay in kill_after:
                done, _ = await asyncio.wait({feeding}, timeout=delay)
                if done:
                    break
                restart()
            await asyncio.wait_for(feeding, timeout=120)
        except TimeoutError:
            raise AssertionError(dump(fed.run_dir / "aggregator.log")) from None
        finally:
            feeding.cancel()
            for proc in procs:
                stop(proc, signal.SIGKILL)  # crash-only: nothing is lost by not stopping gracefully
        return feeder


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(TRIALS))
async def test_a_restarted_fedbuff_aggregator_never_republishes_a_version_differently(
    tmp_path: Path, trial: int
) -> None:
    fed = Federation.create(tmp_path, ["A", "B", "C", "D"])
    rng = random.Random(11 * 1000 + trial)
    kill_at = set(rng.sample(range(1, VERSIONS), 2))
    delays = [rng.uniform(1.0, 5.0)] if trial % 2 else []
    feeder = await _run(fed, kill_at, delays)
    assert sorted(feeder.seen) == list(range(VERSIONS + 1)), feeder.seen
    conflicting = {v: d for v, d in feeder.seen.items() if len(d) > 1}
    assert not conflicting, (
        f"killed at versions {sorted(kill_at)} and after {delays} s: "
        f"versions published with different models: {conflicting}"
    )
