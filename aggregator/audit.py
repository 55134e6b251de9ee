"""The aggregator's audit records: one chain event as the signed record it sends to
``fedsynth.audit`` (the chain itself is :mod:`observability.audit`), and reading them back.

Reading is split as elsewhere: :func:`read_audit` (I/O) fetches the topic and checks each
record's signature; :func:`assemble_chains` (pure) puts the aggregator's events back into
chains and :func:`audit_findings` says what is wrong with them, so that ``fedsynth audit`` can
show an operator or an auditor the trail and whether it holds.

What the topic holds for one federation: the events of one chain per run of its aggregator
(a fresh state folder starts a new chain at ``seq`` 0), in order, each once, except that an
aggregator restarted from its checkpoint sends its outbox again, so an event may come a second
time, byte for byte the same. Anything else is a finding: an event that differs from the one
read before with the same ``seq`` in its chain, a break in a chain (an event missing, changed,
inserted or out of order: :func:`~observability.audit.verify_chain`), a record of the
federation that is not validly signed, or one signed by anyone but the aggregator.

A chain's links cannot show that events were cut off its end. The global-model topic can:
the aggregator sends each version there before the ``publish_version`` event that records it,
so the newest version it holds (:func:`read_versions`, whole and signed by the aggregator)
must be recorded in the trail (:func:`publication_findings`). The trail may be ahead of what
was read of the global-model topic (a version published since), never behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from aggregator.checkpoint import OutboxRecord
from fedsynth.messages import (
    AGGREGATOR,
    Inbound,
    MessageFactory,
    MessageReader,
    read_audit_record,
)
from observability import AuditEvent, verify_chain
from schemas.signing import KeyRing
from topics.clients import make_consumer
from topics.registry import AUDIT, GLOBAL_MODEL

__all__ = [
    "AuditRead",
    "Publication",
    "assemble_chains",
    "audit_findings",
    "audit_record",
    "publication_findings",
    "read_audit",
    "read_global_versions",
    "read_records",
    "read_versions",
]


def audit_record(factory: MessageFactory, entry: AuditEvent) -> OutboxRecord:
    """``entry`` as an ``AuditEvent`` message signed by ``factory``'s sender, keyed by its actor."""
    msg = factory.build(
        "AuditEvent",
        {
            "actor": entry.actor,
            "action": entry.action,
            "detail": json.dumps(entry.to_dict(), sort_keys=True),
            "prev_hash": bytes.fromhex(entry.prev_hash),
            "hash": bytes.fromhex(entry.hash),
        },
    )
    return OutboxRecord(AUDIT.name, entry.actor.encode(), msg.value)


@dataclass(slots=True)
class AuditRead:
    """The audit topic as read for one federation.

    Attributes:
        events: ``(offset, event)`` of each validly signed record of the aggregator, in topic
            order (resent ones included).
        refused: ``(offset, why)`` of each record of the federation that is not.
        others: records of other federations (skipped: one topic serves every federation).
    """

    events: list[tuple[int, AuditEvent]] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    others: int = 0


def assemble_chains(
    events: Iterable[tuple[int, AuditEvent]],
) -> tuple[list[list[AuditEvent]], int, list[str]]:
    """Put the aggregator's events, in topic order, back into its chains.

    A ``seq`` 0 event other than the current chain's first starts a new chain; an event whose
    ``seq`` the current chain holds already is a resend when it is the same event, and a
    finding when it is not (kept out of the chain).

    Returns:
        The chains, oldest first, each event once, in the order read; the number of resends;
        the findings, each naming the record's offset.
    """
    chains: list[list[AuditEvent]] = []
    held: dict[int, AuditEvent] = {}
    resent = 0
    findings: list[str] = []
    for offset, event in events:
        if not chains or (event.seq == 0 and held.get(0, event).hash != event.hash):
            chains.append([])
            held = {}
        before = held.get(event.seq)
        if before is None:
            held[event.seq] = event
            chains[-1].append(event)
        elif before.hash == event.hash:
            resent += 1
        else:
            findings.append(
                f"offset {offset}: event seq {event.seq} ({event.action}) differs from the one "
                f"read before with that seq ({before.action}, hash {before.hash[:12]})"
            )
    return chains, resent, findings


def audit_findings(read: AuditRead) -> tuple[list[list[AuditEvent]], int, list[str]]:
    """:func:`assemble_chains` of ``read``, with every finding: records refused, events that
    differ from the one read before, and each chain's first break.

    Returns:
        The chains, the number of resends, and the findings (none: the trail holds).
    """
    chains, resent, findings = assemble_chains(read.events)
    findings = [f"offset {offset}: {why}" for offset, why in read.refused] + findings
    for number, chain in enumerate(chains, 1):
        verdict = verify_chain(chain)
        if not verdict.ok:
            assert verdict.bad_index is not None  # noqa: S101 - verify_chain sets it when not ok
            bad = chain[verdict.bad_index]
            findings.append(
                f"chain {number} breaks at its event seq {bad.seq} ({bad.action}): "
                f"{verdict.reason}"
            )
    return chains, resent, findings


def read_records(
    records: Sequence[tuple[int, bytes]], federation_id: str, keys: KeyRing
) -> AuditRead:
    """Sort ``(offset, value)`` records of the audit topic: the aggregator's validly signed
    events of ``federation_id``, its records that are not, and other federations' records."""
    reader = MessageReader(federation_id, keys)
    read = AuditRead()
    for offset, value in records:
        got = read_audit_record(reader, value)
        if got.foreign:
            read.others += 1
        elif got.waiting:  # the aggregator never chunks its events
            read.refused.append((offset, "a chunk on the audit topic"))
        elif got.detail is None:
            read.refused.append((offset, str(got.problem)))
        else:
            try:
                event = AuditEvent.from_dict(got.detail)
            except (KeyError, TypeError, ValueError) as exc:
                read.refused.append((offset, f"the event does not read: {exc!r}"))
                continue
            read.events.append((offset, event))
    return read


@dataclass(frozen=True, slots=True)
class Publication:
    """A global version as the global-model topic holds it.

    Attributes:
        offset: Offset of the record that completed the version (its last chunk).
        version: The version's number.
    """

    offset: int
    version: int


def read_versions(
    records: Sequence[tuple[int, bytes]], federation_id: str, keys: KeyRing
) -> list[Publication]:
    """The global versions of ``federation_id`` among ``(offset, value)`` records of the
    global-model topic, in topic order: each whole (every chunk read) and validly signed by
    the aggregator; anything else is skipped (agents skip it too). A version sent again after
    an aggregator's restart (the same message) counts once, where it was first read whole."""
    reader = MessageReader(federation_id, keys)  # (it refuses other federations' records)
    found: list[Publication] = []
    for offset, value in records:
        got = reader.read(value)
        if (isinstance(got, Inbound) and got.name == "GlobalModel"
                and got.record["sender"] == AGGREGATOR):
            found.append(Publication(offset, int(got.record["version"])))
    return found


def publication_findings(
    chains: Sequence[Sequence[AuditEvent]],
    versions: Sequence[Publication],
    topic: str = GLOBAL_MODEL.name,
) -> list[str]:
    """Whether the trail records the newest global version the global-model topic holds.

    It must be among the ``publish_version`` events of the last chain that has any (a fresh
    aggregator state starts a chain that publishes nothing before its version 0, and publishes
    from 0 again). A trail behind the topic was cut short, or the aggregator has not sent the
    event (it crashed between sending the version and its event, and sends both again when
    restarted). Not seen: a cut that takes away every publication of a newer chain whose newest
    version an older chain also published.

    Args:
        chains: The trail's chains (:func:`audit_findings`).
        versions: The global versions read from ``topic`` (:func:`read_versions`).
        topic: The global-model topic they were read from, for the finding's text.

    Returns:
        One finding, or none.
    """
    if not versions:
        return []
    newest = versions[-1]
    published: list[int] = []
    for chain in reversed(chains):
        published = [_int_or(e.details.get("version")) for e in chain
                     if e.action == "publish_version"]
        if published:
            break
    if newest.version in published:
        return []
    last = (f"the last it records is version {max(published)}" if published
            else "it records none")
    return [
        f"{topic} holds global version {newest.version} (offset {newest.offset}), "
        f"but the trail does not record its publication ({last}): the trail was cut short, or "
        "the aggregator has not sent that event yet (a crash between sending the version and "
        "its event; a restart sends both again)"
    ]


def _int_or(value: object, default: int = -1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


async def _read_topic(bootstrap: str, topic: str, quiet_s: float) -> list[tuple[int, bytes]]:
    """``(offset, value)`` of every record of ``topic``'s partition 0, from its beginning,
    read until no record came for ``quiet_s`` seconds (the embedded broker's end offsets are
    not to be trusted: ``topics.clients``); none if the topic does not exist."""
    consumer = make_consumer(bootstrap, group_id=None)
    await consumer.start()
    records: list[tuple[int, bytes]] = []
    try:
        if topic not in await consumer.topics():
            return records  # reading it would have the broker create it, not as the registry says
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        while True:
            batch = await consumer.getmany(timeout_ms=int(quiet_s * 1000))
            if not batch:
                break
            records += [(r.offset, r.value) for rs in batch.values() for r in rs if r.value]
    finally:
        await consumer.stop()
    return records


async def read_audit(
    bootstrap: str, federation_id: str, keys: KeyRing, topic: str = AUDIT.name,
    quiet_s: float = 2.0,
) -> AuditRead:
    """Every record of the audit topic, from its beginning, sorted by :func:`read_records`."""
    return read_records(await _read_topic(bootstrap, topic, quiet_s), federation_id, keys)


async def read_global_versions(
    bootstrap: str, federation_id: str, keys: KeyRing, topic: str = GLOBAL_MODEL.name,
    quiet_s: float = 2.0,
) -> list[Publication]:
    """The global versions the global-model topic holds (:func:`read_versions`)."""
    return read_versions(await _read_topic(bootstrap, topic, quiet_s), federation_id, keys)
