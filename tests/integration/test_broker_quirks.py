"""One test per measured quirk of the embedded Tansu broker (ARCHITECTURE.md), each showing the
broker behaviour and that the setting in ``topics/`` works around it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError, MessageSizeTooLargeError

from fedsynth.errors import ConfigError
from topics.broker import EmbeddedBroker
from topics.clients import make_consumer, make_producer
from topics.registry import TopicSpec, ensure_topics

TWO_MB = 2_000_000


async def _create(bootstrap: str, name: str, partitions: int = 1, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


async def _consume_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = make_consumer(bootstrap, group_id=None)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        values: list[bytes] = []
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=500)
            values += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
            if len(values) >= expected:
                break
        return values
    finally:
        await consumer.stop()


async def test_large_message_needs_raised_max_request_size(
    broker: str, unique_topic: Callable[[str], str]
) -> None:
    topic = unique_topic("big")
    await _create(broker, topic, **{"max.message.bytes": str(1024 * 1024)})
    payload = bytes(range(256)) * (TWO_MB // 256)
    default = AIOKafkaProducer(bootstrap_servers=broker)
    await default.start()
    try:
        with pytest.raises(MessageSizeTooLargeError):
            await default.send_and_wait(topic, payload, key=b"site")
    finally:
        await default.stop()
    ours = make_producer(broker)
    await ours.start()
    try:
        meta = await ours.send_and_wait(topic, payload, key=b"site")
    finally:
        await ours.stop()
    assert meta.offset == 0
    # Tansu does not enforce the topic's 1 MiB max.message.bytes (Apache Kafka would).
    assert await _consume_all(broker, topic, 1) == [payload]


async def test_idempotent_producer_fails_init_producer_id(broker: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=True)
    try:
        with pytest.raises(KafkaError) as info:
            await asyncio.wait_for(producer.start(), timeout=30)
        assert type(info.value).__name__ == "UnknownError"
    finally:
        await producer.stop()
    with pytest.raises(ConfigError, match="InitProducerId"):
        make_producer(broker, enable_idempotence=True)


async def test_end_offsets_undercounts_a_multi_record_batch(
    broker: str, unique_topic: Callable[[str], str]
) -> None:
    topic = unique_topic("eo")
    await _create(broker, topic)
    producer = make_producer(broker, linger_ms=300)  # one batch for the five records
    await producer.start()
    try:
        futures = [await producer.send(topic, f"v{i}".encode(), key=b"k") for i in range(5)]
        offsets = [m.offset for m in await asyncio.gather(*futures)]
    finally:
        await producer.stop()
    assert offsets == [0, 1, 2, 3, 4]
    consumer = make_consumer(broker, group_id=None)
    await consumer.start()
    try:
        end = (await consumer.end_offsets([TopicPartition(topic, 0)]))[TopicPartition(topic, 0)]
    finally:
        await consumer.stop()
    consumed = await _consume_all(broker, topic, 5)
    assert len(consumed) == 5
    assert end == 1  # base offset of the last batch + 1, not 5


async def test_auto_created_topic_gets_four_partitions(
    broker: str, unique_topic: Callable[[str], str]
) -> None:
    auto, explicit = unique_topic("auto"), f"fedsynth.{unique_topic('explicit')}"
    producer = make_producer(broker)
    await producer.start()
    try:
        await producer.send_and_wait(auto, b"x", key=b"k")
        auto_partitions = producer.client.cluster.partitions_for_topic(auto)
    finally:
        await producer.stop()
    assert auto_partitions == {0, 1, 2, 3}
    spec = TopicSpec(explicit, 3, "k", ("X",), 60_000)
    assert await ensure_topics(broker, [spec]) == {explicit: 3}
    wrong = TopicSpec(f"fedsynth.{auto}", 3, "k", ("X",), 60_000)
    await _create(broker, wrong.name, 4)  # same layout as an auto-created topic
    with pytest.raises(ConfigError, match="has 4 partitions, registry says 3"):
        await ensure_topics(broker, [wrong])


async def test_restart_loses_every_topic() -> None:
    broker = EmbeddedBroker(record=False)
    async with broker:
        port = broker.port
        await _create(broker.bootstrap, "fedsynth.kept", 1)
        assert "fedsynth.kept" in await _topics(broker.bootstrap)
    async with EmbeddedBroker(port, record=False) as again:
        assert "fedsynth.kept" not in await _topics(again.bootstrap)


async def _topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def test_alter_configs_unsupported_so_configs_are_set_at_creation(
    broker: str, unique_topic: Callable[[str], str]
) -> None:
    name = f"fedsynth.{unique_topic('cfg')}"
    spec = TopicSpec(name, 1, "k", ("X",), 123_000)
    await ensure_topics(broker, [spec])
    resource = ConfigResource(ConfigResourceType.TOPIC, name)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        with pytest.raises(IncompatibleBrokerVersion):
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, configs={"retention.ms": "1"})]
            )
        described = await admin.describe_configs([resource])
    finally:
        await admin.close()
    entries = {e[0]: e[1] for e in described[0].resources[0][4]}
    assert entries["retention.ms"] == "123000"
    assert entries["cleanup.policy"] == "delete"


async def test_list_consumer_group_offsets_unsupported(broker: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        with pytest.raises(KafkaError):
            await asyncio.wait_for(admin.list_consumer_group_offsets("fedsynth-g"), timeout=30)
    finally:
        await admin.close()


async def test_a_member_that_stops_heartbeating_is_not_evicted_but_a_joining_one_rebalances(
    broker: str,
) -> None:
    """A group member silent for well past its session timeout keeps its generation (Apache
    Kafka would evict it and rebalance); a second member joining does rebalance the group. So
    test_aggregator_rebalance has a member join rather than stalling the aggregator."""
    name = "fedsynth.quirk-session"
    await ensure_topics(broker, [TopicSpec(name, 2, "k", ("X",), 60_000)])
    timing = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}
    first = make_consumer(broker, name, group_id="quirk-g", **timing)
    second = make_consumer(broker, name, group_id="quirk-g", **timing)
    await first.start()
    try:
        for _ in range(40):  # joined: it holds both partitions
            await first.getmany(timeout_ms=200)
            if len(first.assignment()) == 2:
                break
        generation = first._coordinator.generation  # noqa: SLF001 - no public accessor
        time.sleep(6.0)  # blocks the loop: no heartbeat for twice the session timeout
        for _ in range(10):
            await first.getmany(timeout_ms=200)
        assert first._coordinator.generation == generation  # noqa: SLF001
        assert len(first.assignment()) == 2
        await second.start()
        for _ in range(100):
            await asyncio.gather(first.getmany(timeout_ms=200), second.getmany(timeout_ms=200))
            if len(second.assignment()) == 1:
                break
        assert first._coordinator.generation > generation  # noqa: SLF001
        assert len(first.assignment()) == 1 and len(second.assignment()) == 1
    finally:
        await second.stop()
        await first.stop()
