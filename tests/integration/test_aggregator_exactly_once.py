"""Issue 5 (b) and (d), against the real aggregator process on a real broker.

(b) an agent that dies in the middle of publishing an update, or is cut off before its sends are
acknowledged, resends from its on-disk outbox: the update is applied exactly once.
(d) a burst of malformed and replayed messages goes to the dead-letter topic while the honest
updates are still applied.
Both compare the final model bit for bit with an undisturbed run on the same inputs.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from agents.outbox import Outbox, OutboxMessage
from tests.integration.feeder import Feeder
from tests.integration.harness import Federation, dump, produce, read_all, start_aggregator, stop
from topics.broker import EmbeddedBroker
from topics.registry import DEAD_LETTER, UPDATES, ensure_topics

ROUNDS = 2


async def _run(feeder: Feeder, fed: Federation) -> tuple[dict[int, np.ndarray], list]:
    async with EmbeddedBroker(record=False) as broker:
        await ensure_topics(broker.bootstrap)
        (fed.run_dir / "aggregator" / "checkpoint.bin").unlink(missing_ok=True)
        proc = start_aggregator(fed, broker.bootstrap, rounds=ROUNDS)
        try:
            versions = await asyncio.wait_for(feeder.run(broker.bootstrap, ROUNDS), 120)
            dead = await read_all(
                broker.bootstrap, DEAD_LETTER.name, DEAD_LETTER.partitions, timeout_s=3
            )
        except TimeoutError:
            raise AssertionError(dump(fed.run_dir / "aggregator.log")) from None
        finally:
            stop(proc)
        return versions, [r for n, r in dead if n == "DeadLetter"]


class CrashingAgent(Feeder):
    """Site A publishes through an outbox and 'dies' after its first chunk each round; the
    restarted agent resends everything pending, and once more after a lost acknowledgement."""

    def __init__(self, fed: Federation, folder: Path) -> None:
        super().__init__(fed, max_chunk=2048)
        self.folder = folder

    async def send_updates(self, bootstrap: str, version: int, n_parameters: int) -> None:
        chunks = self.update("A", version, n_parameters)
        box = Outbox(self.folder)
        for i, value in enumerate(chunks):
            box.put(OutboxMessage(f"{version}-{i}", UPDATES.name, b"A", value))
        await produce(bootstrap, UPDATES.name, chunks[:1], key=b"A")  # then the agent dies
        restarted = Outbox(self.folder)
        pending = [m.value for m in restarted.pending()]
        await produce(bootstrap, UPDATES.name, pending, key=b"A")  # sent, but never acked
        await produce(
            bootstrap, UPDATES.name, [m.value for m in Outbox(self.folder).pending()], key=b"A"
        )
        for m in restarted.pending():
            restarted.ack(m.message_id)
        await produce(bootstrap, UPDATES.name, self.update("B", version, n_parameters), key=b"B")


class Burst(Feeder):
    """Before each round's honest updates: garbage, replays, NaNs, wrong shapes, future bases."""

    async def send_updates(self, bootstrap: str, version: int, n_parameters: int) -> None:
        bad = [b"\x00not an avro message at all", b"\xc3\x01" + b"\xff" * 30]
        if version > 0:
            bad += self.update("A", version - 1, n_parameters)  # a replay of last round's update
        for name, fields in self._malformed(version, n_parameters):
            bad += [c.value for c in self.fed.factory("B").build_chunked(name, fields)]
        await produce(bootstrap, UPDATES.name, bad, key=b"B")
        await super().send_updates(bootstrap, version, n_parameters)

    @staticmethod
    def _malformed(version: int, n: int) -> list[tuple[str, dict[str, object]]]:
        base = {
            "site_id": "B",
            "n_samples": 5,
            "mode": "plain",
            "cohort_id": None,
            "weight": 1.0,
            "codec": "float32",
            "train_loss": 0.0,
            "epsilon_spent": 0.0,
        }
        nan = np.zeros(n, np.float32)
        nan[3] = math.nan
        return [
            (
                "ModelUpdate",
                {
                    **base,
                    "update_id": f"nan-{version}",
                    "base_version": version,
                    "vector": nan.tobytes(),
                    "n_parameters": n,
                },
            ),
            (
                "ModelUpdate",
                {
                    **base,
                    "update_id": f"short-{version}",
                    "base_version": version,
                    "vector": np.zeros(n - 1, np.float32).tobytes(),
                    "n_parameters": n - 1,
                },
            ),
            (
                "ModelUpdate",
                {
                    **base,
                    "update_id": f"future-{version}",
                    "base_version": version + 5,
                    "vector": np.zeros(n, np.float32).tobytes(),
                    "n_parameters": n,
                },
            ),
        ]


@pytest.mark.slow
async def test_updates_applied_exactly_once_despite_crashes_and_bursts(tmp_path: Path) -> None:
    fed = Federation.create(tmp_path, ["A", "B"])
    reference, clean_dead = await _run(Feeder(fed), fed)
    assert clean_dead == []

    crashing = CrashingAgent(fed, tmp_path / "outbox")
    crashing.cache = {}  # small chunks: same deltas, different framing
    crashed, _ = await _run(crashing, fed)
    assert crashed[ROUNDS].tobytes() == reference[ROUNDS].tobytes()

    burst = Burst(fed)
    burst.cache = dict(Feeder(fed).cache)
    attacked, dead = await _run(burst, fed)
    assert attacked[ROUNDS].tobytes() == reference[ROUNDS].tobytes()
    reasons = " | ".join(d["reason"] for d in dead)
    for expected in ("replay: chunk", "non_finite", "bad_shape", "future_base"):
        assert expected in reasons, reasons
    assert {d["error_class"] for d in dead} >= {"BadMarkerError", "UnknownFingerprintError"}
