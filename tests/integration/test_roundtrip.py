"""Signed messages through every registered topic of a real broker, and a 5 MB payload in chunks."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import TopicPartition

from fedsynth.messages import Inbound, MessageFactory, MessageReader, Waiting
from schemas.signing import IdentityKey, KeyRing
from topics.broker import EmbeddedBroker
from topics.clients import make_consumer, make_producer
from topics.registry import ALL_TOPICS, UPDATES, ensure_topics, synthetic_topic

KEY = IdentityKey.generate()
FED = "it-fed"

SAMPLES: dict[str, tuple[str, dict[str, object]]] = {
    "fedsynth.control": (
        "GlobalVersionNotice",
        {"model_name": "m", "version": 3, "n_parameters": 10},
    ),
    "fedsynth.site-events": (
        "Heartbeat",
        {"site_id": "A", "model_version": 1, "status": "ok", "epsilon_spent": 0.5},
    ),
    "fedsynth.share-relay": (
        "EncryptedShare",
        {"cohort_id": "c", "recipient": "B", "nonce": b"n" * 12, "ciphertext": b"x" * 40},
    ),
    "fedsynth.unmask": (
        "UnmaskResponse",
        {"cohort_id": "c", "site_id": "A", "self_mask_shares": [], "key_shares": []},
    ),
    "fedsynth.audit": (
        "AuditEvent",
        {"actor": "A", "action": "x", "detail": "{}", "prev_hash": b"\0" * 32, "hash": b"\1" * 32},
    ),
    "fedsynth.dead-letter": (
        "DeadLetter",
        {
            "origin_topic": "t",
            "origin_partition": 0,
            "origin_offset": 1,
            "key": None,
            "reason": "r",
            "error_class": "E",
            "payload": b"p",
        },
    ),
}


@pytest.fixture
async def fresh() -> AsyncIterator[str]:
    async with EmbeddedBroker(record=False) as broker:
        await ensure_topics(broker.bootstrap, [*ALL_TOPICS, synthetic_topic("heart")])
        yield broker.bootstrap


def _reader() -> MessageReader:
    ring = KeyRing()
    ring.add("A", KEY.public_raw())
    return MessageReader(FED, ring)


async def _drain(bootstrap: str, topic: str, partitions: int, want: int) -> list[bytes]:
    consumer = make_consumer(bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got: list[bytes] = []
        for _ in range(40):
            batch = await consumer.getmany(timeout_ms=250)
            got += [r.value for recs in batch.values() for r in recs]
            if len(got) >= want:
                break
        return got
    finally:
        await consumer.stop()


async def test_every_topic_round_trips_a_signed_message(fresh: str) -> None:
    factory = MessageFactory(FED, "A", KEY)
    samples = dict(SAMPLES)
    samples["fedsynth.synthetic.heart"] = (
        "SyntheticRow",
        {
            "release_id": "r",
            "dataset": "heart",
            "row_index": 0,
            "values": {"age": 50.0, "sex": "Male", "ca": None},
        },
    )
    producer = make_producer(fresh)
    await producer.start()
    sent: dict[str, str] = {}
    try:
        for topic, (name, fields) in samples.items():
            msg = factory.build(name, fields)
            sent[topic] = msg.message_id
            await producer.send_and_wait(topic, msg.value, key=b"A")
    finally:
        await producer.stop()
    specs = {s.name: s for s in ALL_TOPICS}
    for topic, (name, fields) in samples.items():
        parts = specs[topic].partitions if topic in specs else 3
        (raw,) = await _drain(fresh, topic, parts, 1)
        got = _reader().read(raw)
        assert isinstance(got, Inbound) and got.name == name
        assert got.record["message_id"] == sent[topic]
        assert {k: got.record[k] for k in fields} == fields


async def test_five_megabyte_update_travels_in_chunks(fresh: str) -> None:
    vector = os.urandom(5 * 1024 * 1024)
    fields = {
        "update_id": str(uuid.uuid4()),
        "site_id": "A",
        "base_version": 0,
        "n_samples": 1,
        "mode": "plain",
        "cohort_id": None,
        "weight": 1.0,
        "codec": "float32",
        "vector": vector,
        "n_parameters": len(vector) // 4,
        "train_loss": 0.0,
        "epsilon_spent": 0.0,
    }
    chunks = MessageFactory(FED, "A", KEY).build_chunked("ModelUpdate", fields)
    assert len(chunks) == 6
    producer = make_producer(fresh)
    await producer.start()
    try:
        for c in chunks:
            await producer.send_and_wait(UPDATES.name, c.value, key=b"A")
    finally:
        await producer.stop()
    raws = await _drain(fresh, UPDATES.name, UPDATES.partitions, len(chunks))
    reader = _reader()
    results = [reader.read(r) for r in raws]
    assert all(isinstance(r, Waiting) for r in results[:-1])
    assert isinstance(results[-1], Inbound) and results[-1].record["vector"] == vector
