"""Issue 5 (a): kill -9 the aggregator at random points; the final model is bit-identical.

The inputs are byte-identical in every run (see :mod:`tests.integration.feeder`). Four sites on
the four partitions of the updates topic arrive in a different order in every run; FedAvg combines
each round in canonical (site, update id) order, so the only thing that differs between runs is
where the aggregator died and how it resumed from its encrypted checkpoint. Each trial is its
own test item, so that parallel test processes share the trials (each process that runs one makes
its own undisturbed reference run).
"""

from __future__ import annotations

import asyncio
import random
import signal
from dataclasses import dataclass

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
            stop(proc, signal.SIGKILL)  # crash-only: nothing is lost by not stopping gracefully


@dataclass
class Reference:
    """The federation, its byte-identical inputs, and the undisturbed run's versions."""

    fed: Federation
    feeder: Feeder
    versions: dict[int, np.ndarray]


@pytest.fixture(scope="module")
async def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """One undisturbed run, shared by the trials (of one test process)."""
    fed = Federation.create(tmp_path_factory.mktemp("recovery"), ["A", "B", "C", "D"])
    feeder = Feeder(fed)
    versions = await _run(fed, feeder, kill_after=[])
    assert sorted(versions) == list(range(ROUNDS + 1))
    return Reference(fed, feeder, versions)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(TRIALS))
async def test_killed_aggregator_resumes_bit_for_bit(reference: Reference, trial: int) -> None:
    rng = random.Random(5 * 1000 + trial)
    # kill during start-up, mid-round or between rounds of a run of a few seconds
    delays = [rng.uniform(1.0, 6.0)] + ([rng.uniform(1.0, 4.0)] if trial % 3 == 0 else [])
    disturbed = await _run(reference.fed, reference.feeder, kill_after=delays)
    final = disturbed[ROUNDS]
    assert final.tobytes() == reference.versions[ROUNDS].tobytes(), f"delays {delays}"
