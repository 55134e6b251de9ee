"""The aggregator's audit records: one chain event as the signed record it sends to
``fedsynth.audit`` (the chain itself is :mod:`observability.audit`)."""

from __future__ import annotations

import json

from aggregator.checkpoint import OutboxRecord
from fedsynth.messages import MessageFactory
from observability import AuditEvent
from topics.registry import AUDIT

__all__ = ["audit_record"]


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
