"""Kafka producer/consumer factories and faust settings that work on Tansu and on Apache Kafka.

Every setting below that differs from the client default works around a measured behaviour of the
embedded broker (ARCHITECTURE.md, "The embedded broker"); each has an integration test in
``tests/integration/test_broker_quirks.py`` (faust: ``test_broker_faust.py``; restart:
``test_broker_quirks.py::test_restart_loses_every_topic``) that shows the behaviour:

* **Large messages** -- aiokafka's producer refuses any record over ``max_request_size`` (1 MiB by
  default) before sending it. Model chunks are up to 900 KiB plus envelope, and a dead-letter record
  carries a whole rejected chunk, so the producer allows :data:`MAX_REQUEST_BYTES` (4 MiB) and the
  consumer fetches up to :data:`MAX_FETCH_BYTES` per partition. Tansu does not enforce a topic's
  ``max.message.bytes``; Apache Kafka does (1 MiB by default), hence the 900 KiB chunk limit and the
  raised ``message.max.bytes`` in docker-compose.yml.
* **No idempotent or transactional producer** -- Tansu answers InitProducerId with UnknownError, so
  the producer starts with ``enable_idempotence=False`` and no ``transactional_id``, and
  :func:`make_producer` refuses both. Exactly-once effects come from idempotent consumers that
  deduplicate by ``message_id``. ``acks='all'`` still asks for a durable write.
* **end_offsets() is wrong after a multi-record batch** -- Tansu reports the high watermark as
  the base offset of the last batch plus one, so ``end_offsets()`` undercounts when a batch holds
  several records. Never use it to decide "caught up": consume until the wanted message is
  seen. A faust Table rebuilt from its changelog stops early and loses data, so durable state
  lives in our own checkpoints and faust runs with no table standby replicas
  (:func:`faust_settings`).
* **AlterConfigs and list_consumer_group_offsets unsupported; auto-created topics get 4 partitions**
  -- topics are created explicitly with their configs by ``topics.registry.ensure_topics``, faust
  may not declare topics (``topic_allow_declare=False``) and its default partition count matches
  the registry (``topic_partitions``). Consumers commit offsets explicitly (auto commit off).
* **faust joins a group in about half of ``broker_session_timeout``** -- set to 10 s (measured:
  first record after 2.0 s / 3.1 s / 4.0 s / 6.0 s for timeouts of 2 / 4 / 6 / 10 s).
* **Restart loses every topic (memory storage)** -- ``ensure_topics`` runs at every start.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from fedsynth.errors import ConfigError
from topics.registry import DEFAULT_PARTITIONS

__all__ = [
    "FAUST_SETTINGS",
    "MAX_FETCH_BYTES",
    "MAX_REQUEST_BYTES",
    "PRODUCER_DEFAULTS",
    "consumer_settings",
    "faust_settings",
    "make_consumer",
    "make_producer",
]

MIB = 1024 * 1024
MAX_REQUEST_BYTES = 4 * MIB
MAX_FETCH_BYTES = 4 * MIB
_FORBIDDEN_PRODUCER = ("enable_idempotence", "transactional_id")

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": False,
    "max_request_size": MAX_REQUEST_BYTES,
    "linger_ms": 5,
    "compression_type": None,  # payloads are zstd-compressed by our codec already
    "request_timeout_ms": 30_000,
}


def make_producer(bootstrap: str, **overrides: Any) -> AIOKafkaProducer:
    """An (unstarted) producer with the settings large messages need.

    Must be called inside a running event loop (aiokafka binds to it).

    Args:
        bootstrap: ``host:port[,host:port]``.
        **overrides: Any other ``AIOKafkaProducer`` argument (serializers, client_id, ...).

    Raises:
        ConfigError: If idempotence or transactions are requested (the embedded broker fails
            InitProducerId; see the module docstring).
    """
    for name in _FORBIDDEN_PRODUCER:
        if overrides.get(name):
            raise ConfigError(
                f"{name} is not supported: the embedded broker fails InitProducerId; "
                "deduplicate by message_id in the consumer instead"
            )
    settings = {**PRODUCER_DEFAULTS, **overrides, "bootstrap_servers": bootstrap}
    return AIOKafkaProducer(**settings)


def consumer_settings(group_id: str | None) -> dict[str, Any]:
    """The consumer settings :func:`make_consumer` uses, before overrides."""
    return {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_bytes": 4 * MAX_FETCH_BYTES,
        "max_partition_fetch_bytes": MAX_FETCH_BYTES,
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 3_000,
    }


def make_consumer(
    bootstrap: str, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """An (unstarted) consumer: large fetches, manual commits, reading from the earliest offset.

    Must be called inside a running event loop.

    Args:
        bootstrap: ``host:port[,host:port]``.
        *topics: Topics to subscribe to (none: call ``assign`` yourself).
        group_id: Consumer group; None for a group-less consumer (no commits).
        **overrides: Any other ``AIOKafkaConsumer`` argument.
    """
    settings = {**consumer_settings(group_id), **overrides, "bootstrap_servers": bootstrap}
    return AIOKafkaConsumer(*topics, **settings)


def faust_settings(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``faust.App`` (besides id and broker) that work on the embedded broker.

    Args:
        **overrides: Settings that replace the defaults below.
    """
    settings: dict[str, Any] = {
        "broker_session_timeout": 10.0,  # faust joins in ~half of it
        "broker_heartbeat_interval": 1.0,
        "topic_partitions": DEFAULT_PARTITIONS,  # == registry; Tansu auto-creates 4
        "topic_replication_factor": 1,
        "topic_allow_declare": False,  # topics come from the registry only
        "topic_disable_leader": True,  # no extra leader-election topic
        "table_standby_replicas": 0,  # no reliance on changelogs (end_offsets quirk)
        "processing_guarantee": "at_least_once",  # exactly_once needs transactions
        "producer_max_request_size": MAX_REQUEST_BYTES,
        "producer_acks": -1,
        "consumer_max_fetch_size": MAX_FETCH_BYTES,
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": False,
    }
    settings.update(overrides)
    return settings


FAUST_SETTINGS: dict[str, Any] = faust_settings()
