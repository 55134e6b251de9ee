"""Messages in and out, without I/O: envelopes, signatures, chunking, verification.

Outbound, :class:`MessageFactory` fills the envelope every message carries (``message_id``,
``federation_id``, ``sender``, ``created_at``), signs with the sender's Ed25519 identity key and,
for large payloads (model updates, global models), signs the payload once and splits it into
signed ``Chunk`` messages of at most 900 KiB. The chunks' ``sha256`` is the digest the payload's
signature signs (:func:`~schemas.signing.unsigned_sha256`). Model updates go out through
:meth:`MessageFactory.build_payload`, which sends a payload that fits in one chunk as itself,
signed once and hashed once (ARCHITECTURE.md draws every update as chunked; a single chunk would
only add a second signature and SHA-256 pass over the same bytes).

A chunked payload is authenticated by its chunks, and every byte of it is hashed once on its way
in: each chunk's signature covers its data, its place in the set (payload id, index, count, total
size) and the set's ``sha256``; the reassembler names a set by its sender and payload id (another
sender's chunks under the same id form a set of their own) and takes its chunks only if they
agree on that digest; and the payload's own signature is verified against the
digest its chunks carry, with the payload's sender the chunks' sender. So the joined bytes are
what the sender signed, chunk by chunk, and are not hashed a second time to compare with the
digest (the reassembler runs with ``digest=None``). What that second pass would still catch is a
sender whose chunks contradict its own payload signature: bytes only that sender could have
signed, which then meet every check an update meets. (An earlier design hashed the joined payload
again: 5.2-5.8 ms of 42 ms of CPU per masked 1M-parameter update, docs/bench-aggregate-history.md.)

Inbound, :class:`MessageReader` checks the signature against the federation's key ring, decodes,
checks the federation id, and feeds chunks to a :class:`~fedsynth.codec.chunk.Reassembler`; a
completed payload is verified and decoded again as the record it carries. Every failure is a
:class:`Rejection` with a reason the adapter sends to the dead-letter topic; nothing raises out of
:meth:`MessageReader.read` for bad input.

Reading is two steps so that the expensive part can run in parallel: :meth:`MessageReader.verify`
(signature, Avro decoding, federation id; for a payload that fits in one chunk, the payload's
signature and decoding as well; for the chunk that completes a set of several, the set joined and
the payload verified and decoded, kept for the reassembly to take)
is safe to call from worker threads, in any order; :meth:`MessageReader.accept` is the stateful
rest (reassembly, replay of chunks), which alone decides what is accepted, and must see the
verified messages in consumption order. ``read(data)`` is ``accept(verify(data))``.

Large ``bytes`` fields of chunks and model updates (:data:`VIEWED`) are decoded as memoryviews of
the message (:class:`~schemas.codec.ViewReader`), not copied: a chunk's data is copied once, into
the joined payload, and an update's vector not at all before it is decoded.

A reader may be given ``derive`` functions, by schema name: pure functions of a verified record
(decoding a plain update's vector, say) that run wherever that record is verified, so on the
worker threads for a message, a payload that fits in one chunk or a set joined ahead; their
result travels as :attr:`Inbound.derived`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedsynth.codec.chunk import (
    MAX_CHUNK,
    SHA256_SIZE,
    Complete,
    Duplicate,
    EarlyJoiner,
    Expired,
    Pending,
    Reassembler,
    Rejected,
    SetStage,
    split,
)
from fedsynth.errors import MessageError
from schemas.codec import decode
from schemas.errors import SchemaError
from schemas.signing import (
    IdentityKey,
    KeyRing,
    decode_verified,
    encode_signed,
    encode_signed_with_digest,
    unsigned_sha256,
)

__all__ = [
    "AGGREGATOR",
    "VIEWED",
    "AuditRecord",
    "Derive",
    "Inbound",
    "MessageFactory",
    "MessageReader",
    "Outgoing",
    "Rejection",
    "Verified",
    "Waiting",
    "read_audit_record",
    "split_signed",
]

Clock = Callable[[], float]

Derive = Callable[[Mapping[str, Any]], object]
"""Work on a verified record done where it is verified (see :class:`MessageReader`); may raise
:class:`~fedsynth.errors.MessageError` for a record it cannot handle (the result is then None)."""

VIEWED = frozenset({"Chunk", "ModelUpdate"})
"""Schemas whose large ``bytes`` fields the reader hands on as memoryviews: every consumer of a
chunk's ``data`` or an update's ``vector`` takes any buffer."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One encoded, signed message ready for a topic."""

    message_id: str
    name: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Inbound:
    """A verified, decoded message (for chunked payloads: the reassembled record).

    Attributes:
        name: The schema's short name.
        record: The decoded record.
        size: Encoded size in bytes.
        derived: What the reader's ``derive`` function for this schema made of the record (None
            when there is none, or it raised :class:`~fedsynth.errors.MessageError`).
    """

    name: str
    record: dict[str, Any]
    size: int
    derived: object = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was refused; goes to the dead-letter topic."""

    reason: str
    error_class: str
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Waiting:
    """A chunk was accepted (or was a harmless duplicate); its payload is not complete yet."""

    payload_id: str
    have: int
    count: int


@dataclass(frozen=True, slots=True)
class Verified:
    """A message whose signature verified and which decoded, not yet checked against any state.

    Attributes:
        name: The schema's short name.
        record: The decoded record.
        size: Encoded size in bytes.
        inner: For a ``Chunk`` that carries a whole payload (count 1) with a well-formed digest:
            the payload, verified against that digest and decoded the same way (an
            :class:`Inbound`, or the :class:`Rejection` it earns); None otherwise.
        derived: As :attr:`Inbound.derived`.
    """

    name: str
    record: dict[str, Any]
    size: int
    inner: Inbound | Rejection | None = None
    derived: object = None


class MessageFactory:
    """Builds signed messages for one sender of one federation."""

    def __init__(
        self, federation_id: str, sender: str, key: IdentityKey, clock: Clock = time.time
    ) -> None:
        self.federation_id = federation_id
        self.sender = sender
        self.key = key
        self.clock = clock

    def envelope(self, message_id: str | None = None) -> dict[str, Any]:
        """The envelope fields of a new message (signature filled in at encoding)."""
        return {
            "message_id": message_id or str(uuid.uuid4()),
            "federation_id": self.federation_id,
            "sender": self.sender,
            "created_at": int(self.clock() * 1000),
            "signature": b"",
        }

    def build(self, name: str, fields: dict[str, Any], message_id: str | None = None) -> Outgoing:
        """Encode and sign one message of schema ``name``."""
        record = {**self.envelope(message_id), **fields}
        return Outgoing(record["message_id"], name, encode_signed(name, record, self.key))

    def build_chunked(
        self, name: str, fields: dict[str, Any], max_chunk: int = MAX_CHUNK
    ) -> list[Outgoing]:
        """Sign the payload once, then split it into signed Chunk messages.

        The payload's own ``message_id`` doubles as the chunks' ``payload_id``, and the digest
        its signature signs is the chunks' ``sha256`` (computed once, while signing).
        """
        record = {**self.envelope(), **fields}
        value, sha256 = encode_signed_with_digest(name, record, self.key)
        return self._chunks(name, record["message_id"], value, sha256, max_chunk)

    def build_payload(
        self, name: str, fields: dict[str, Any], max_chunk: int = MAX_CHUNK
    ) -> list[Outgoing]:
        """A large payload as one signed message if it fits in ``max_chunk`` bytes, else as
        signed chunks (:meth:`build_chunked`).

        A payload that fits is sent as itself rather than wrapped in a single chunk: its reader
        then checks one signature over one SHA-256 pass of its bytes, not the chunk's signature
        and then the payload's (two passes, and an Ed25519 check and an Avro decoding more).
        """
        record = {**self.envelope(), **fields}
        value, sha256 = encode_signed_with_digest(name, record, self.key)
        if len(value) <= max_chunk:
            return [Outgoing(record["message_id"], name, value)]
        return self._chunks(name, record["message_id"], value, sha256, max_chunk)

    def _chunks(
        self, name: str, payload_id: str, value: bytes, sha256: bytes, max_chunk: int
    ) -> list[Outgoing]:
        return [
            self.build("Chunk", chunk)
            for chunk in split(value, name, max_chunk, payload_id, sha256=sha256)
        ]


def split_signed(
    payload: bytes, name: str, max_chunk: int = MAX_CHUNK, payload_id: str | None = None
) -> list[dict[str, Any]]:
    """Chunk records of a signed, encoded payload, carrying the digest its signature signs.

    Args:
        payload: One signed single-object encoded message (see :class:`MessageFactory`).
        name: Its schema's short name.
        max_chunk: Most data bytes per chunk.
        payload_id: Id shared by the chunks (the payload's ``message_id``); random by default.

    Raises:
        MessageError: ``payload`` has no signed envelope to digest.
    """
    return split(payload, name, max_chunk, payload_id, sha256=_payload_digest(payload))


class MessageReader:
    """Verifies and decodes inbound messages of one federation, reassembling chunks.

    Args:
        federation_id: Messages of other federations are refused.
        keys: The senders' public keys.
        chunk_timeout_s: How long an incomplete chunk set is kept.
        clock: Monotonic seconds, for the chunk timeout.
        derive: By schema name, a :data:`Derive` run on each verified record of that schema
            where it is verified (worker threads, when the reader is used so); it must be pure
            and thread-safe.
    """

    def __init__(
        self,
        federation_id: str,
        keys: KeyRing,
        *,
        chunk_timeout_s: float = 120.0,
        clock: Clock = time.monotonic,
        derive: Mapping[str, Derive] | None = None,
    ) -> None:
        self.federation_id = federation_id
        self.keys = keys
        self.derive: Mapping[str, Derive] = dict(derive or {})
        # Each chunk is signed over its data and the set's digest (see the module's docstring).
        self.reassembler = Reassembler(chunk_timeout_s, clock, digest=None)
        self._early: EarlyJoiner[Inbound | Rejection] = EarlyJoiner(chunk_timeout_s, clock)

    def read(self, data: bytes) -> Inbound | Waiting | Rejection:
        """Verify and decode ``data``; for a chunk, return the payload when it completes."""
        return self.accept(self.verify(data))

    def verify(self, data: bytes) -> Verified | Rejection:
        """The parallel part of :meth:`read`: signature, decoding, federation id.

        Thread-safe (the key ring is only read, and the cache of chunk sets joined ahead is
        locked), so a consumer may verify several messages at once on worker threads;
        ``hashlib``, Ed25519 and Avro decoding spend most of their time outside the GIL or in C.
        A chunk that carries a whole payload gets the payload verified and decoded here too
        (:attr:`Verified.inner`); the chunk that completes a set of several has the set joined
        and the payload verified and decoded here, for :meth:`accept` to take
        when it completes the same set (:class:`~fedsynth.codec.chunk.EarlyJoiner`). What is
        accepted is decided by :meth:`accept` alone, in consumption order.
        """
        got = self._verify_one(data)
        if isinstance(got, Rejection) or got.name != "Chunk":
            return got
        rec = got.record
        payload = rec.get("data")
        lone = rec.get("count") == 1 and rec.get("index") == 0
        if lone and isinstance(payload, bytes | memoryview):
            inner = self._finish_payload(payload, rec.get("sha256"))
            if inner is not None:
                return Verified(got.name, rec, got.size, inner)
            return got
        self._early.offer(rec, self._finish_payload)
        return got

    def _finish_payload(
        self, payload: bytes | memoryview, sha256: object
    ) -> Inbound | Rejection | None:
        """The payload of signed chunks verified against the digest they carry, and decoded
        (None for a malformed digest: the reassembler rejects the chunk with the reason)."""
        if not isinstance(sha256, bytes) or len(sha256) != SHA256_SIZE:
            return None
        return self._verify_payload(payload, sha256)

    def _verify_payload(self, payload: bytes | memoryview, sha256: bytes) -> Inbound | Rejection:
        got = _as_inbound(self._verify_one(payload, sha256))
        if isinstance(got, Rejection) and got.error_class == "BadSignatureError":
            return Rejection(
                f"{got.reason}, checked against the digest its chunks carry (a payload other "
                "than the one signed, or a forged signature)",
                got.error_class,
                got.message_id,
            )
        return got

    def _verify_one(
        self, data: bytes | memoryview, sha256: bytes | None = None
    ) -> Verified | Rejection:
        try:
            name, record = decode_verified(data, self.keys, sha256=sha256, views=VIEWED)
        except SchemaError as exc:
            return Rejection(str(exc), type(exc).__name__)
        if record["federation_id"] != self.federation_id:
            return Rejection(
                f"{name} belongs to federation {record['federation_id']!r}, "
                f"not {self.federation_id!r}",
                "ForeignFederation",
                record["message_id"],
            )
        return Verified(name, record, len(data), derived=self._derived(name, record))

    def _derived(self, name: str, record: dict[str, Any]) -> object:
        fn = self.derive.get(name)
        if fn is None:
            return None
        try:
            return fn(record)
        except MessageError:
            return None  # whoever reads the record meets the same error and reports it

    def accept(self, verified: Verified | Rejection) -> Inbound | Waiting | Rejection:
        """The stateful part of :meth:`read`, in consumption order: chunk reassembly and replay."""
        if isinstance(verified, Rejection):
            return verified
        if verified.name != "Chunk":
            return Inbound(verified.name, verified.record, verified.size, verified.derived)
        return self._chunk(verified)

    def _chunk(self, verified: Verified) -> Inbound | Waiting | Rejection:
        record = verified.record
        pid, sender = record.get("payload_id"), record["sender"]
        early = self._early.ready(pid, sender) if isinstance(pid, str) else None
        event = self.reassembler.add(record, joined=None if early is None else early[0])
        if isinstance(event, Complete | Rejected) and (
            self.reassembler.stage(event.payload_id, sender) is not SetStage.COLLECTING
        ):  # a malformed chunk, refused alone, leaves its set as it was
            self._early.forget(event.payload_id, sender)
        if isinstance(event, Complete):
            inner = verified.inner
            if inner is None and early is not None and event.payload is early[0].payload:
                inner = early[1]  # the set joined ahead was taken
            if inner is None:
                inner = self._verify_payload(event.payload, event.sha256)
            if isinstance(inner, Inbound) and inner.name == "Chunk":
                return Rejection("a chunk payload is itself a chunk", "NestedChunk")
            if isinstance(inner, Inbound) and inner.record["sender"] != record["sender"]:
                return Rejection(
                    f"payload signed by {inner.record['sender']!r} arrived in chunks from "
                    f"{record['sender']!r}",
                    "SenderMismatch",
                    inner.record["message_id"],
                )
            return inner
        if isinstance(event, Rejected):
            return Rejection(
                f"chunk set {event.payload_id}: {event.reason}: {event.detail}",
                "ChunkRejected",
                record["message_id"],
            )
        if isinstance(event, Pending):
            return Waiting(event.payload_id, event.have, event.count)
        if isinstance(event, Duplicate):
            if self.reassembler.stage(event.payload_id, sender) is SetStage.COMPLETE:
                return Rejection(
                    f"replay: chunk {event.index} of payload {event.payload_id}, which was "
                    "already complete (a resend, or a replayed message)",
                    "Replay",
                    record["message_id"],
                )
            return Waiting(event.payload_id, -1, -1)
        raise TypeError(f"unexpected reassembly event {event!r}")  # pragma: no cover

    def expire(self) -> list[Expired]:
        """Chunk sets that timed out incomplete (the adapter dead-letters them)."""
        return self.reassembler.expire()



def _payload_digest(payload: bytes | memoryview) -> bytes:
    """The digest a chunked payload's chunks carry: what the payload's signature signs."""
    try:
        return unsigned_sha256(payload)
    except SchemaError as exc:
        raise MessageError(f"no signed envelope to digest: {exc}") from exc


def _as_inbound(got: Verified | Rejection) -> Inbound | Rejection:
    if isinstance(got, Verified):
        return Inbound(got.name, got.record, got.size, got.derived)
    return got


AGGREGATOR = "aggregator"
"""The sender id of a federation's aggregator: the one sender of its global versions, cohort
control messages and audit events (its key is on every roster under this id)."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One record of the audit topic as :func:`read_audit_record` reads it (one field is set).

    Attributes:
        detail: The aggregator's event, as the JSON object its ``detail`` field holds.
        foreign: A record of another federation (the topic serves them all): not checked,
            since its aggregator's key is not on this reader's ring.
        waiting: A chunk whose payload is not complete yet.
        problem: Why the record is not an event of the chain: it does not decode or verify,
            it is not an ``AuditEvent``, it is signed by anyone but the aggregator, or its
            ``detail`` is not a JSON object.
    """

    detail: dict[str, Any] | None = None
    foreign: bool = False
    waiting: bool = False
    problem: str | None = None


def read_audit_record(reader: MessageReader, value: bytes) -> AuditRecord:
    """Read one record of the audit topic with ``reader`` (its federation and key ring), as
    both the agents (following the chain) and ``fedsynth audit`` (checking it) read them.
    Turning :attr:`AuditRecord.detail` into an event is the caller's (``observability``)."""
    try:
        _, envelope = decode(value)
    except SchemaError as exc:
        return AuditRecord(problem=f"not a message: {exc}")
    if envelope.get("federation_id") != reader.federation_id:
        return AuditRecord(foreign=True)
    got = reader.read(value)
    if isinstance(got, Rejection):
        return AuditRecord(problem=got.reason)
    if isinstance(got, Waiting):
        return AuditRecord(waiting=True)
    if got.name != "AuditEvent":
        return AuditRecord(problem=f"a {got.name} on the audit topic")
    sender = got.record["sender"]
    if sender != AGGREGATOR:
        return AuditRecord(problem=f"signed by {sender!r}, not the {AGGREGATOR}")
    try:
        detail = json.loads(got.record["detail"])
    except (KeyError, TypeError, ValueError) as exc:
        return AuditRecord(problem=f"the event does not read: {exc!r}")
    if not isinstance(detail, dict):
        return AuditRecord(problem=f"the event is a JSON {type(detail).__name__}, not an object")
    return AuditRecord(detail=detail)
