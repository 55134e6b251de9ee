"""The one registry of fedsynth topics, and their explicit creation.

Every topic name used anywhere in fedsynth comes from here. Each topic is declared once as a
frozen :class:`TopicSpec` with its partitions, what its key holds, the Avro record names its
values may carry, and its configs (retention, cleanup policy, maximum message size).

Partition choices (every topic is keyed, so per-key order holds within a partition):

* ``fedsynth.control``, ``fedsynth.global-model``, ``fedsynth.audit``: **1** partition. Control
  messages and model versions need one total order; the audit log is a hash chain, which is only
  verifiable in a single order.
* every other topic (``site-events``, ``share-relay``, ``updates``, ``unmask``, ``dead-letter``,
  ``synthetic.<dataset>``): **3** partitions (:data:`DEFAULT_PARTITIONS`). A handful of sites and
  one aggregator need no more; the key (site id, recipient, origin topic, dataset) keeps all chunks
  of one update on one partition, in order. 3 also differs from the 4 partitions the embedded
  broker gives an auto-created topic, so a topic that was auto-created by mistake is detected by
  :func:`ensure_topics`.

Sizes: update and model payloads travel in chunks of at most 900 KiB (Apache Kafka's default
``max.message.bytes`` is 1 MiB), so the chunked topics and the dead-letter topic (which carries
rejected chunks plus a reason) allow 2 MiB per message; the rest allow 1 MiB.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from fedsynth.errors import ConfigError, TransportError

__all__ = [
    "ALL_TOPICS",
    "AUDIT",
    "CONTROL",
    "DEAD_LETTER",
    "DEFAULT_PARTITIONS",
    "GLOBAL_MODEL",
    "SHARE_RELAY",
    "SITE_EVENTS",
    "TOPICS_BY_NAME",
    "UNMASK",
    "UPDATES",
    "CleanupPolicy",
    "TopicSpec",
    "ensure_topics",
    "synthetic_topic",
]

log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * KIB
DAY_MS = 24 * 3600 * 1000
FOREVER = -1
DEFAULT_PARTITIONS = 3
_TOPIC_ALREADY_EXISTS = 36
_DATASET_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


class CleanupPolicy(StrEnum):
    """Kafka ``cleanup.policy`` values we use."""

    DELETE = "delete"
    COMPACT = "compact"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: its name, layout and configs.

    Attributes:
        name: Full topic name (``fedsynth.*``).
        partitions: Partition count, created explicitly (never auto-created).
        key: What the message key holds (documentation; producers must set it).
        value_schemas: Names of the Avro records a value on this topic may carry.
        retention_ms: ``retention.ms``; -1 keeps messages forever.
        cleanup_policy: ``cleanup.policy``.
        max_message_bytes: ``max.message.bytes`` (largest record batch the topic accepts).
    """

    name: str
    partitions: int
    key: str
    value_schemas: tuple[str, ...]
    retention_ms: int
    cleanup_policy: CleanupPolicy = CleanupPolicy.DELETE
    max_message_bytes: int = 1 * MIB

    def __post_init__(self) -> None:
        if not self.name.startswith("fedsynth."):
            raise ConfigError(f"topic {self.name!r} must start with 'fedsynth.'")
        if self.partitions < 1:
            raise ConfigError(f"topic {self.name}: partitions must be >= 1")
        if self.retention_ms < FOREVER or self.retention_ms == 0:
            raise ConfigError(f"topic {self.name}: retention_ms must be -1 or positive")

    def configs(self) -> dict[str, str]:
        """The topic configs passed to CreateTopics, as Kafka expects them (strings)."""
        return {
            "cleanup.policy": str(self.cleanup_policy),
            "retention.ms": str(self.retention_ms),
            "max.message.bytes": str(self.max_message_bytes),
        }


CONTROL = TopicSpec(
    "fedsynth.control",
    1,
    "federation_id",
    (
        "RoundOpen",
        "CohortOpen",
        "CohortRoster",
        "MaskRequest",
        "UnmaskRequest",
        "GlobalVersionNotice",
    ),
    7 * DAY_MS,
)
SITE_EVENTS = TopicSpec(
    "fedsynth.site-events",
    DEFAULT_PARTITIONS,
    "site_id",
    ("SiteHello", "Heartbeat", "CohortJoin", "OperatorCommand"),
    7 * DAY_MS,
)
SHARE_RELAY = TopicSpec(
    "fedsynth.share-relay",
    DEFAULT_PARTITIONS,
    "recipient site_id",
    ("EncryptedShare",),
    1 * DAY_MS,
)
UPDATES = TopicSpec(
    "fedsynth.updates",
    DEFAULT_PARTITIONS,
    "site_id",
    ("ModelUpdate", "Chunk"),  # an update that fits in one chunk goes whole, a larger one chunked
    3 * DAY_MS,
    max_message_bytes=2 * MIB,
)
UNMASK = TopicSpec(
    "fedsynth.unmask",
    DEFAULT_PARTITIONS,
    "site_id",
    ("UnmaskResponse",),
    1 * DAY_MS,
)
GLOBAL_MODEL = TopicSpec(
    "fedsynth.global-model",
    1,
    "model name/chunk index (one key per chunk index, so compaction keeps a whole version)",
    ("Chunk",),
    FOREVER,
    CleanupPolicy.COMPACT,
    max_message_bytes=2 * MIB,
)
AUDIT = TopicSpec(
    "fedsynth.audit",
    1,
    "actor",
    ("AuditEvent",),
    FOREVER,
)
DEAD_LETTER = TopicSpec(
    "fedsynth.dead-letter",
    DEFAULT_PARTITIONS,
    "origin topic",
    ("DeadLetter",),
    30 * DAY_MS,
    max_message_bytes=2 * MIB,
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    CONTROL,
    SITE_EVENTS,
    SHARE_RELAY,
    UPDATES,
    UNMASK,
    GLOBAL_MODEL,
    AUDIT,
    DEAD_LETTER,
)
TOPICS_BY_NAME: Mapping[str, TopicSpec] = {spec.name: spec for spec in ALL_TOPICS}


def synthetic_topic(dataset: str) -> TopicSpec:
    """The topic on which the gateway publishes synthetic rows of ``dataset``.

    Args:
        dataset: Dataset id (letters, digits, ``_`` and ``-``).

    Returns:
        The spec of ``fedsynth.synthetic.<dataset>``, keyed by dataset id.

    Raises:
        ConfigError: If the dataset id is not a valid topic name part.
    """
    if not _DATASET_RE.match(dataset):
        raise ConfigError(f"dataset id {dataset!r} is not usable in a topic name")
    return TopicSpec(
        f"fedsynth.synthetic.{dataset}",
        DEFAULT_PARTITIONS,
        "dataset id",
        ("SyntheticRow",),
        7 * DAY_MS,
    )


async def ensure_topics(
    bootstrap: str, specs: Iterable[TopicSpec] = ALL_TOPICS, *, timeout_s: float = 30.0
) -> dict[str, int]:
    """Create every topic in ``specs`` explicitly, then check each has its partition count.

    Existing topics are left as they are (TopicAlreadyExists is not an error), but a topic that
    exists with a different partition count (for instance one auto-created with the broker's
    default) is reported, since faust and keyed ordering depend on it.

    Args:
        bootstrap: ``host:port[,host:port]`` of the cluster.
        specs: The topics to create.
        timeout_s: Request timeout.

    Returns:
        Partition count per topic name, as the cluster reports it after creation.

    Raises:
        TransportError: If the cluster cannot be reached or refuses a creation.
        ConfigError: If a topic exists with another partition count than its spec.
    """
    wanted = {spec.name: spec for spec in specs}
    if not wanted:
        return {}
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await admin.start()
        await _create(admin, wanted.values(), timeout_s)
        actual = await _partition_counts(admin, list(wanted))
    except KafkaError as exc:
        raise TransportError(f"cannot create topics on {bootstrap}: {exc!r}") from exc
    finally:
        await admin.close()
    wrong = {n: (c, wanted[n].partitions) for n, c in actual.items() if c != wanted[n].partitions}
    if wrong:
        detail = ", ".join(
            f"{n} has {c} partitions, registry says {w}" for n, (c, w) in wrong.items()
        )
        raise ConfigError(f"topic layout differs from the registry: {detail}")
    return actual


async def _create(admin: AIOKafkaAdminClient, specs: Iterable[TopicSpec], timeout_s: float) -> None:
    new = [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs()) for s in specs]
    response = await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
    for topic, code, *rest in response.topic_errors:
        if code == _TOPIC_ALREADY_EXISTS:
            log.debug("topic %s already exists", topic)
        elif code != 0:
            message = rest[0] if rest else ""
            raise TransportError(f"creating topic {topic} failed: error {code} {message}")
        else:
            log.info("created topic %s", topic)


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    described = await admin.describe_topics(names)
    counts: dict[str, int] = {}
    for entry in described:
        if entry["error_code"] != 0:
            raise TransportError(f"topic {entry['topic']} missing after creation")
        counts[entry["topic"]] = len(entry["partitions"])
    return counts
