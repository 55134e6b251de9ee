"""A tamper-evident audit log: events chained by SHA-256 hashes (pure, no I/O).

Each event's hash is ``SHA-256(prev_hash || canonical_json(body))`` where ``prev_hash`` is the
previous event's hash as 32 raw bytes (all zeros for the first event) and the body holds
``seq``, ``actor``, ``action``, ``at`` and ``details``. Canonical JSON is UTF-8 with sorted keys,
no whitespace and no NaN/Infinity, so every reader recomputes the same bytes. Changing, removing,
inserting or reordering any event breaks the chain from that point on, which
:func:`verify_chain` reports. (Sending events to ``fedsynth.audit`` is the caller's job.)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "GENESIS_HASH",
    "AuditChain",
    "AuditEvent",
    "ChainVerification",
    "canonical_json",
    "event_hash",
    "verify_chain",
]

GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, compact separators, UTF-8, finite numbers only.

    Raises:
        ValueError: On NaN/Infinity; TypeError on values JSON cannot represent.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def event_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the previous hash (raw bytes) followed by the canonical body."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_json(body)).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One link of the chain.

    Attributes:
        seq: Position in the chain, from 0.
        actor: Who acted (site id, ``aggregator``, ``gateway``); also the Kafka key.
        action: What happened (``round.applied``, ``release.created``, ...).
        at: Unix time in seconds, from the chain's clock.
        details: JSON-serialisable facts of the event.
        prev_hash: Hash of the previous event (:data:`GENESIS_HASH` for the first).
        hash: This event's hash.
    """

    seq: int
    actor: str
    action: str
    at: float
    details: Mapping[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    def body(self) -> dict[str, Any]:
        """The hashed part of the event."""
        return {"seq": self.seq, "actor": self.actor, "action": self.action, "at": self.at,
                "details": dict(self.details)}

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what is published on ``fedsynth.audit``)."""
        return {**self.body(), "prev_hash": self.prev_hash, "hash": self.hash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        """Inverse of :meth:`to_dict`.

        Raises:
            KeyError, TypeError, ValueError: If a field is missing or of the wrong type.
        """
        return cls(int(data["seq"]), str(data["actor"]), str(data["action"]), float(data["at"]),
                   MappingProxyType(dict(data["details"])), str(data["prev_hash"]),
                   str(data["hash"]))


@dataclass(frozen=True, slots=True)
class ChainVerification:
    """Result of :func:`verify_chain`: ``ok``, events checked, first bad index and why."""

    ok: bool
    checked: int
    bad_index: int | None = None
    reason: str = ""


class AuditChain:
    """Builds the chain: each :meth:`append` links a new event to the previous one.

    Args:
        clock: Returns the current Unix time in seconds (passed in for tests and replay).
        head: The last event of an existing chain to continue from (e.g. after a restart).
    """

    def __init__(self, clock: Callable[[], float] = time.time, head: AuditEvent | None = None):
        self._clock = clock
        self._next_seq = 0 if head is None else head.seq + 1
        self._prev_hash = GENESIS_HASH if head is None else head.hash

    @property
    def head_hash(self) -> str:
        """Hash of the last event appended (:data:`GENESIS_HASH` when empty)."""
        return self._prev_hash

    def append(
        self, actor: str, action: str, details: Mapping[str, Any] | None = None
    ) -> AuditEvent:
        """Create the next event, linked to the previous one.

        Raises:
            ValueError: If ``details`` holds NaN/Infinity; TypeError if not JSON-serialisable.
        """
        draft = AuditEvent(self._next_seq, actor, action, float(self._clock()),
                           MappingProxyType(dict(details or {})), self._prev_hash)
        digest = event_hash(self._prev_hash, draft.body())
        event = AuditEvent(draft.seq, actor, action, draft.at, draft.details, self._prev_hash,
                           digest)
        self._next_seq += 1
        self._prev_hash = digest
        return event


def verify_chain(
    events: Iterable[AuditEvent | Mapping[str, Any]], start_hash: str = GENESIS_HASH
) -> ChainVerification:
    """Check every link of a chain, in order.

    Args:
        events: Events (or their dict form) in chain order.
        start_hash: Hash the first event must link to (the genesis hash for a whole chain).

    Returns:
        ``ok=True`` when every sequence number follows the previous one, every ``prev_hash``
        names the previous event and every hash matches its content; otherwise the index of the
        first bad event and the reason.
    """
    prev_hash, index = start_hash, -1
    expected_seq: int | None = 0 if start_hash == GENESIS_HASH else None
    for index, raw in enumerate(events):
        try:
            event = raw if isinstance(raw, AuditEvent) else AuditEvent.from_dict(raw)
            problem = _link_problem(event, prev_hash, expected_seq)
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"malformed event: {exc!r}"
        if problem:
            return ChainVerification(False, index, index, problem)
        prev_hash, expected_seq = event.hash, event.seq + 1
    return ChainVerification(True, index + 1)


def _link_problem(event: AuditEvent, prev_hash: str, expected_seq: int | None) -> str:
    """Why ``event`` does not follow a link ending in ``prev_hash`` ('' when it does)."""
    if expected_seq is not None and event.seq != expected_seq:
        return f"seq {event.seq}, expected {expected_seq}"
    if event.prev_hash != prev_hash:
        return "prev_hash does not match the previous event"
    if event_hash(prev_hash, event.body()) != event.hash:
        return "hash does not match the content"
    return ""
