"""A consumer-group rebalance in the middle of a run: another member joins the aggregator's
group, takes some of its partitions, reads and commits records there, and leaves; the final model
is still bit-identical to an undisturbed run's.

This is what a second aggregator started by mistake on another host, or (on Apache Kafka) an
aggregator stalled past its session timeout, does to the group. faust lets records go by at a
rebalance: its streams skip (and ack) the events fetched under the old generation, and its
recovery seeks to the group's committed offsets, which the other member moved. The aggregator
must read each of those records again (it seeks every partition it is assigned to its last
checkpoint's offset, or to the beginning when it has handled nothing there) and count none twice
(the high-water mark, replay ids). The embedded broker does not evict a member that stops
heartbeating (tested in test_broker_quirks), so the test has a member join instead of stalling
the aggregator. The inputs and the comparison are those of test_aggregator_recovery.
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.integration.feeder import Feeder
from tests.integration.harness import FED, Federation, dump, start_aggregator, stop
from tests.integration.intruder import start_intruder
from topics.broker import EmbeddedBroker
from topics.registry import ensure_topics

ROUNDS = 3
TRIALS = 3
ENV = {"FEDSYNTH_SESSION_TIMEOUT_S": "3"}


async def _logged(path: Path, text: str, timeout_s: float) -> None:
    """Wait until ``text`` is in the log at ``path`` (or ``timeout_s`` passed: the test's
    assertions then say what is missing). Under load a faust worker takes seconds to start."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        await asyncio.sleep(0.2)


class IntrudedFeeder(Feeder):
    """Before sending the updates for version ``at``, starts a second member in the
    aggregator's group and waits until the aggregator sees it; stops it (it leaves the group)
    once it has read what its partitions got and had time to commit."""

    def __init__(self, fed: Federation, at: int | None, bootstrap: str) -> None:
        super().__init__(fed)
        self.at = at
        self.bootstrap = bootstrap
        self.intruder_log = fed.run_dir / "intruder.log"

    async def send_updates(self, bootstrap: str, version: int, n_parameters: int) -> None:
        if version != self.at:
            return await super().send_updates(bootstrap, version, n_parameters)
        intruder = start_intruder(self.bootstrap, self.fed.run_dir, FED)
        try:
            # it joins: the group rebalances, and the aggregator holds only some partitions
            await _logged(self.fed.run_dir / "aggregator.log", "a second aggregator?", 60)
            await super().send_updates(bootstrap, version, n_parameters)
            await _logged(self.intruder_log, "read", 20)  # it reads what its partitions got
            await asyncio.sleep(2.0)  # and commits it (every 0.5 s)
        finally:
            stop(intruder)  # SIGTERM: it leaves the group, another rebalance
        return None


async def _run(fed: Federation, at: int | None) -> tuple[dict[int, np.ndarray], str, str]:
    """One run on a fresh broker: the versions, the aggregator's log and the intruder's."""
    async with EmbeddedBroker(record=False) as broker:
        await ensure_topics(broker.bootstrap)
        (fed.run_dir / "aggregator" / "checkpoint.bin").unlink(missing_ok=True)
        for name in ("aggregator.log", "intruder.log"):
            (fed.run_dir / name).unlink(missing_ok=True)
        proc = start_aggregator(fed, broker.bootstrap, rounds=ROUNDS, env=ENV)
        feeder = IntrudedFeeder(fed, at, broker.bootstrap)
        try:
            versions = await asyncio.wait_for(feeder.run(broker.bootstrap, ROUNDS), timeout=150)
        except TimeoutError:
            raise AssertionError(
                dump(fed.run_dir / "aggregator.log") + dump(feeder.intruder_log)
            ) from None
        finally:
            stop(proc, signal.SIGKILL)
        intruded = feeder.intruder_log.read_text() if feeder.intruder_log.exists() else ""
        return versions, (fed.run_dir / "aggregator.log").read_text(errors="replace"), intruded


@pytest.fixture(scope="module")
async def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Federation, bytes]:
    fed = Federation.create(tmp_path_factory.mktemp("group"), ["A", "B", "C", "D"])
    versions, log, _ = await _run(fed, at=None)
    assert sorted(versions) == list(range(ROUNDS + 1))
    assert "consumer-group rebalance" not in log
    return fed, versions[ROUNDS].tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(TRIALS))
async def test_a_rebalance_mid_run_loses_nothing_and_counts_nothing_twice(
    reference: tuple[Federation, bytes], trial: int
) -> None:
    fed, expected = reference
    at = random.Random(7 * 1000 + trial).randrange(ROUNDS)
    versions, log, intruded = await _run(fed, at)
    assert versions[ROUNDS].tobytes() == expected, f"intruded at version {at}\n{log[-4000:]}"
    assert "consumer-group rebalance" in log, log[-4000:]
    # while the other member held some partitions, this one handled nothing and published nothing
    shared = log[log.index("a second aggregator?") : log.index("every inbound partition assigned")]
    assert "applied" not in shared and "published" not in shared, shared
    assert "read" in intruded, intruded[-2000:]  # it did take records from the aggregator
