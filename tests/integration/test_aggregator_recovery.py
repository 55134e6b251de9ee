"""Issue 5 (a): kill -9 the aggregator at random points; the final model is bit-identical.

The inputs are byte-identical in every run (see :mod:`tests.integration.feeder`). Four sites on
the four partitions of the updates topic arrive in a different order in every run; FedAvg combines
each round in canonical (site, update id) order, so the only thing that differs between runs is
where the aggregator died and how it resumed from its encrypted checkpoint.
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.integration.feeder import Feeder
from tests.integration.harness import Federation, dump, start_aggregator, stop
from topics.broker import EmbeddedBroker
from topics.registry import ensure_topics

ROUNDS = 3
TRIALS = 10


async def _run(fed: Federation, feeder: Feeder, kill_after: list[float]) -> dict[int, np.ndarray]:
    """One run on a fresh broker; kill -9 the aggregator after each delay in ``kill_after``."""
    async with EmbeddedBroker(record=False) as broker:
        await ensure_topics(broker.bootstrap)
        ckpt = fed.run_dir / "aggregator" / "checkpoint.bin"
        ckpt.unlink(missing_ok=True)
        proc = start_aggregator(fed, broker.bootstrap, rounds=ROUNDS)
        feeding = asyncio.create_task(feeder.run(broker.bootstrap, ROUNDS, sent=set()))
        try:
            for delay in kill_after:
                done, _ = await asyncio.wait({feeding}, timeout=delay)
                if done:
                    break
                stop(proc, signal.SIGKILL)
                proc = start_aggregator(fed, broker.bootstrap, rounds=ROUNDS)
            return await asyncio.wait_for(feeding, timeout=120)
        except TimeoutError:
            raise AssertionError(dump(fed.run_dir / "aggregator.log")) from None
        finally:
            feeding.cancel()
            stop(proc)


@pytest.mark.slow
async def test_killed_aggregator_resumes_bit_for_bit(tmp_path: Path) -> None:
    fed = Federation.create(tmp_path, ["A", "B", "C", "D"])
    feeder = Feeder(fed)
    reference = await _run(fed, feeder, kill_after=[])
    assert sorted(reference) == list(range(ROUNDS + 1))
    rng = random.Random(5)
    for trial in range(TRIALS):
        # kill during start-up, mid-round or between rounds of a run of a few seconds
        delays = [rng.uniform(1.0, 6.0)] + ([rng.uniform(1.0, 4.0)] if trial % 3 == 0 else [])
        disturbed = await _run(fed, feeder, kill_after=delays)
        final = disturbed[ROUNDS]
        assert final.tobytes() == reference[ROUNDS].tobytes(), f"trial {trial} delays {delays}"
