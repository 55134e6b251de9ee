"""The registry on the embedded broker: `fedsynth topics`; a keyed round trip through each topic."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from topics.clients import make_consumer, make_producer
from topics.registry import ALL_TOPICS, ensure_topics, synthetic_topic

ROOT = Path(__file__).resolve().parents[2]
DATASET = "heart_disease_uci"


async def _partitions(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def test_cli_topics_creates_the_registry(broker: str) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "fedsynth.cli",
            "topics",
            "--bootstrap",
            broker,
            "--dataset",
            DATASET,
            "--wait",
            "5",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    specs = [*ALL_TOPICS, synthetic_topic(DATASET)]
    assert await _partitions(broker, [s.name for s in specs]) == {
        s.name: s.partitions for s in specs
    }
    assert "fedsynth.global-model" in done.stdout and "compact" in done.stdout


async def test_keyed_round_trip_through_every_topic(broker: str) -> None:
    specs = [*ALL_TOPICS, synthetic_topic(DATASET)]
    await ensure_topics(broker, specs)
    producer = make_producer(broker)
    sent: dict[str, tuple[bytes, bytes, int]] = {}
    await producer.start()
    try:
        for spec in specs:
            key, value = spec.name.encode(), f"round-trip {spec.name}".encode()
            meta = await producer.send_and_wait(
                spec.name, value, key=key, headers=[("message_id", key)]
            )
            sent[spec.name] = (key, value, meta.partition)
    finally:
        await producer.stop()
    consumer = make_consumer(broker, *sent, group_id="test-round-trip")
    got: dict[str, tuple[bytes | None, bytes | None, int, tuple]] = {}
    await consumer.start()
    try:
        for _ in range(60):
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for r in records:
                    if r.value == sent[tp.topic][1]:
                        got[tp.topic] = (r.key, r.value, tp.partition, tuple(r.headers))
            if len(got) == len(sent):
                break
        await consumer.commit()
    finally:
        await consumer.stop()
    assert set(got) == set(sent)
    for name, (key, value, partition) in sent.items():
        assert got[name] == (key, value, partition, (("message_id", key),))
