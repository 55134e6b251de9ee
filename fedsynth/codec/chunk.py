"""Chunking: payloads larger than one Kafka message travel as numbered pieces (sans-I/O).

Apache Kafka refuses messages over 1 MiB by default, so an encoded model update or global model is
cut into ``Chunk`` records of at most 900 KiB of data each (room is left for the envelope). Every
chunk carries the payload's id, chunk count, total size and a SHA-256 digest of the payload: by
default of its bytes; a reader may name another SHA-256 over them (signed payloads carry the digest
their signature signs: :mod:`fedsynth.messages`). :class:`Reassembler` collects them in any order,
ignores duplicates, rejects inconsistent or corrupt sets, bounds the memory held by incomplete
sets, and reports sets that stayed incomplete past a timeout so that the adapter can send them to
the dead-letter topic. A set is named by its sender and payload id (:data:`SetKey`; the sender is
the envelope's ``sender`` when the records carry one): chunks of another sender under the same
payload id form a set of their own, so they can neither change a set nor block it. A reader whose
chunks are each signed over their data and the set's digest need not hash the joined payload
again (``digest=None``). It does no I/O and reads time only from the clock it is given.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Self, TypeVar

from fedsynth.errors import ConfigError, MessageError, ProtocolError

__all__ = [
    "ALLOWED_TRANSITIONS",
    "DEFAULT_MAX_PENDING_BYTES",
    "MAX_CHUNK",
    "ChunkError",
    "Complete",
    "Duplicate",
    "EarlyJoiner",
    "Expired",
    "Joined",
    "Pending",
    "ReassemblyEvent",
    "Reassembler",
    "RejectReason",
    "Rejected",
    "SHA256_SIZE",
    "SetKey",
    "SetStage",
    "split",
]

MAX_CHUNK = 900 * 1024
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024
SHA256_SIZE = 32
"""Bytes of the SHA-256 digest every chunk carries."""
_AVRO_INT_MAX = 2**31 - 1
R = TypeVar("R")
SetKey = tuple[str | None, str]
"""A chunk set's name: its sender (None for records without an envelope) and payload id."""


def _sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


class ChunkError(MessageError):
    """A payload cannot be split (wrong type or arguments)."""


class SetStage(StrEnum):
    """Life of one payload's chunk set."""

    COLLECTING = "collecting"
    COMPLETE = "complete"
    REJECTED = "rejected"
    EXPIRED = "expired"


ALLOWED_TRANSITIONS: Mapping[SetStage, frozenset[SetStage]] = {
    SetStage.COLLECTING: frozenset({SetStage.COMPLETE, SetStage.REJECTED, SetStage.EXPIRED}),
    SetStage.COMPLETE: frozenset(),
    SetStage.REJECTED: frozenset(),
    SetStage.EXPIRED: frozenset(),
}


class RejectReason(StrEnum):
    """Why a chunk (and, unless MALFORMED, its whole set) was rejected."""

    MALFORMED = "malformed"
    INCONSISTENT = "inconsistent"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    SIZE_MISMATCH = "size_mismatch"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    OVER_MEMORY_LIMIT = "over_memory_limit"
    ALREADY_REJECTED = "already_rejected"
    ALREADY_EXPIRED = "already_expired"


@dataclass(frozen=True, slots=True)
class Complete:
    """Every chunk arrived (and the payload's digest matches, where the reassembler checks it)."""

    payload_id: str
    payload_schema: str
    payload: bytes | memoryview
    """The joined chunks; a lone chunk's data as it came (a memoryview when the chunk was
    decoded with views, see :class:`schemas.codec.ViewReader`)."""
    sha256: bytes = field(default=b"", compare=False)
    """The chunks' ``sha256`` (checked against the payload unless the reassembler was made
    with ``digest=None``)."""


@dataclass(frozen=True, slots=True)
class Pending:
    """The chunk was stored; ``have`` of ``count`` chunks are in."""

    payload_id: str
    have: int
    count: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The same chunk again (or a chunk of a completed payload); ignored."""

    payload_id: str
    index: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The chunk was refused; unless ``reason`` is MALFORMED its set was dropped too."""

    payload_id: str
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class Expired:
    """An incomplete set older than the timeout was dropped."""

    payload_id: str
    payload_schema: str
    have: int
    count: int
    age_s: float
    sender: str | None = None


ReassemblyEvent = Complete | Pending | Duplicate | Rejected


def split(
    payload: bytes,
    payload_schema: str,
    max_chunk: int = MAX_CHUNK,
    payload_id: str | None = None,
    sha256: bytes | None = None,
) -> list[dict[str, Any]]:
    """Cut ``payload`` into Chunk records (without envelope fields; the adapter adds those).

    Args:
        payload: The encoded payload; an empty payload gives one empty chunk.
        payload_schema: Name of the payload's schema, e.g. ``"ModelUpdate"``.
        max_chunk: Most data bytes per chunk.
        payload_id: Id shared by the chunks; a random UUID by default.
        sha256: The digest the chunks carry, computed by the reader's ``digest`` function (see
            :class:`Reassembler`); SHA-256 of ``payload`` by default.

    Returns:
        ``count`` records: payload_id, payload_schema, index, count, total_size, sha256, data.

    Raises:
        ChunkError: ``payload`` is not bytes, the schema name is empty, or ``sha256`` is not 32
            bytes.
        ConfigError: ``max_chunk`` is not positive, or the payload needs over 2**31-1 chunks.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ChunkError(f"payload must be bytes, not {type(payload).__name__}")
    if not payload_schema:
        raise ChunkError("payload_schema must name the payload's schema")
    if max_chunk < 1:
        raise ConfigError(f"max_chunk must be positive, got {max_chunk}")
    if sha256 is not None and len(sha256) != SHA256_SIZE:
        raise ChunkError(f"sha256 must be {SHA256_SIZE} bytes, got {len(sha256)}")
    data = bytes(payload)
    count = max(1, -(-len(data) // max_chunk))
    if count > _AVRO_INT_MAX:
        raise ConfigError(f"{len(data)} bytes in chunks of {max_chunk} needs too many chunks")
    pid = payload_id if payload_id is not None else str(uuid.uuid4())
    digest = sha256 if sha256 is not None else hashlib.sha256(data).digest()
    return [
        {
            "payload_id": pid,
            "payload_schema": payload_schema,
            "index": i,
            "count": count,
            "total_size": len(data),
            "sha256": digest,
            "data": data[i * max_chunk : (i + 1) * max_chunk],
        }
        for i in range(count)
    ]


@dataclass(frozen=True, slots=True)
class _ChunkView:
    payload_id: str
    payload_schema: str
    index: int
    count: int
    total_size: int
    sha256: bytes
    data: bytes | memoryview
    sender: str | None = None

    @property
    def key(self) -> SetKey:
        return (self.sender, self.payload_id)


@dataclass(frozen=True, slots=True)
class Joined:
    """A chunk set's payload joined (and its digest checked) outside the reassembler.

    Attributes:
        payload: The joined bytes.
        parts: The chunk data objects it was joined from, by index.
    """

    payload: bytes
    parts: tuple[bytes | memoryview, ...]

    def made_of(self, parts: Mapping[int, bytes | memoryview]) -> bool:
        """Whether ``parts`` are exactly these objects (identity, not equal bytes)."""
        return len(parts) == len(self.parts) and all(
            parts.get(i) is part for i, part in enumerate(self.parts)
        )


@dataclass(slots=True)
class _PartialSet:
    payload_schema: str
    count: int
    total_size: int
    sha256: bytes
    started_at: float
    parts: dict[int, bytes | memoryview] = field(default_factory=dict)
    size: int = 0

    @classmethod
    def opened_by(cls, view: _ChunkView, started_at: float) -> Self:
        """A set whose first chunk is ``view``."""
        return cls(view.payload_schema, view.count, view.total_size, view.sha256, started_at)

    def agrees_with(self, view: _ChunkView) -> bool:
        """Whether the chunk names the same schema, count, size and digest as the set."""
        return (view.payload_schema, view.count, view.total_size, view.sha256) == (
            self.payload_schema, self.count, self.total_size, self.sha256
        )


def _parse(chunk: Mapping[str, Any]) -> _ChunkView | str:
    """The chunk's fields, or the reason it is malformed."""
    pid, schema, index, count = (
        chunk.get(k) for k in ("payload_id", "payload_schema", "index", "count")
    )
    total, digest, data = chunk.get("total_size"), chunk.get("sha256"), chunk.get("data")
    sender = chunk.get("sender")
    if not isinstance(pid, str) or not pid:
        return "payload_id missing or empty"
    if sender is not None and not isinstance(sender, str):
        return "sender must be a string"
    if not isinstance(schema, str) or not schema:
        return "payload_schema missing or empty"
    if (
        not isinstance(index, int)
        or not isinstance(count, int)
        or not isinstance(total, int)
        or any(isinstance(v, bool) for v in (index, count, total))
    ):
        return "index, count and total_size must be ints"
    if not isinstance(digest, bytes) or len(digest) != SHA256_SIZE:
        return "sha256 must be 32 bytes"
    if not isinstance(data, bytes | memoryview):
        return "data must be bytes"
    if count < 1 or not 0 <= index < count:
        return f"index {index} outside 0..count-1 (count {count})"
    if total < 0 or len(data) > total or count > max(1, total):
        return f"sizes do not add up: total_size {total}, count {count}, chunk {len(data)} bytes"
    return _ChunkView(pid, schema, index, count, total, digest, data, sender)


class Reassembler:
    """Collects chunks into payloads (sans-I/O state machine, one :class:`SetStage` per payload).

    Example::

        r = Reassembler(timeout_s=120.0, clock=time.monotonic)
        for chunk in chunks:
            event = r.add(chunk)          # Complete | Pending | Duplicate | Rejected
        for expired in r.expire():        # incomplete sets past the timeout
            ...                           # the adapter sends them to the dead-letter topic
    """

    def __init__(
        self,
        timeout_s: float,
        clock: Callable[[], float],
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        remember: int = 10_000,
        digest: Callable[[bytes | memoryview], bytes] | None = _sha256,
    ) -> None:
        """Configure the reassembler.

        Args:
            timeout_s: Seconds after a set's first chunk at which an incomplete set expires.
            clock: Monotonic seconds, e.g. ``time.monotonic``.
            max_pending_bytes: Most chunk bytes held in incomplete sets together.
            remember: How many finished payload ids are kept to classify late chunks.
            digest: What a complete payload must hash to (the chunks' ``sha256``); SHA-256 of
                its bytes by default. It may raise :class:`MessageError` for a payload it cannot
                digest, which rejects the set. None: the joined payload is not hashed, for a
                caller that has authenticated every chunk, its data and its ``sha256`` field
                included, as its sender's (a set holds chunks of one sender, and they must agree
                on ``sha256``; the caller checks the payload against that digest, say by the
                signature that signs it).

        Raises:
            ConfigError: A limit is not positive.
        """
        if timeout_s <= 0 or max_pending_bytes <= 0 or remember < 1:
            raise ConfigError(
                f"timeout_s ({timeout_s}), max_pending_bytes ({max_pending_bytes}) and "
                f"remember ({remember}) must be positive"
            )
        self._timeout_s = timeout_s
        self._clock = clock
        self._digest = digest
        self._max_pending_bytes = max_pending_bytes
        self._remember = remember
        self._pending: dict[SetKey, _PartialSet] = {}
        self._finished: OrderedDict[SetKey, SetStage] = OrderedDict()
        self._pending_bytes = 0

    @property
    def pending_bytes(self) -> int:
        """Chunk bytes held in incomplete sets."""
        return self._pending_bytes

    @property
    def pending_payloads(self) -> int:
        """Number of incomplete sets."""
        return len(self._pending)

    @property
    def pending_keys(self) -> frozenset[SetKey]:
        """The incomplete sets (an adapter keeps their first offsets)."""
        return frozenset(self._pending)

    def stage(self, payload_id: str, sender: str | None = None) -> SetStage | None:
        """The stage of a sender's payload, or None when unseen (or long forgotten)."""
        key = (sender, payload_id)
        if key in self._pending:
            return SetStage.COLLECTING
        return self._finished.get(key)

    def add(
        self,
        chunk: Mapping[str, Any],
        *,
        joined: Joined | None = None,
    ) -> ReassemblyEvent:
        """Take one Chunk record (of its envelope fields, if present, only ``sender`` is read).

        Args:
            chunk: The decoded Chunk record.
            joined: The caller has already joined this chunk's set from these very chunk data
                objects and checked the digest of the result: when the set completes with
                exactly those objects (by identity), that payload is the result, not joined or
                digested again; otherwise it is ignored.
        """
        view = _parse(chunk)
        if isinstance(view, str):
            pid = chunk.get("payload_id")
            return Rejected(pid if isinstance(pid, str) else "", RejectReason.MALFORMED, view)
        done = self._finished.get(view.key)
        if done is not None:
            return self._late(view, done)
        partial = self._pending.get(view.key)
        if partial is None:
            if view.total_size > self._max_pending_bytes:
                return self._reject(
                    view.key,
                    RejectReason.OVER_MEMORY_LIMIT,
                    f"payload of {view.total_size} bytes exceeds the reassembly limit of "
                    f"{self._max_pending_bytes} bytes",
                )
            partial = _PartialSet.opened_by(view, self._clock())
            self._pending[view.key] = partial
        return self._store(view, partial, joined)

    def _late(self, view: _ChunkView, done: SetStage) -> ReassemblyEvent:
        if done is SetStage.COMPLETE:
            return Duplicate(view.payload_id, view.index)
        expired = done is SetStage.EXPIRED
        reason = RejectReason.ALREADY_EXPIRED if expired else RejectReason.ALREADY_REJECTED
        return Rejected(view.payload_id, reason, f"payload {view.payload_id} was already {done}")

    def _store(
        self,
        view: _ChunkView,
        partial: _PartialSet,
        joined: Joined | None = None,
    ) -> ReassemblyEvent:
        key, pid = view.key, view.payload_id
        if not partial.agrees_with(view):
            return self._reject(
                key,
                RejectReason.INCONSISTENT,
                f"chunk {view.index} disagrees with earlier chunks on schema, count, size or hash",
            )
        held = partial.parts.get(view.index)
        if held is not None:
            if held == view.data:
                return Duplicate(pid, view.index)
            return self._reject(
                key,
                RejectReason.CONFLICTING_DUPLICATE,
                f"chunk {view.index} arrived with other data",
            )
        if partial.size + len(view.data) > partial.total_size:
            return self._reject(
                key,
                RejectReason.SIZE_MISMATCH,
                f"chunks hold more than total_size {view.total_size}",
            )
        if self._pending_bytes + len(view.data) > self._max_pending_bytes:
            return self._reject(
                key,
                RejectReason.OVER_MEMORY_LIMIT,
                f"reassembly buffer full: {self._pending_bytes} bytes pending + {len(view.data)} "
                f"exceeds the limit of {self._max_pending_bytes} bytes",
            )
        partial.parts[view.index] = view.data
        partial.size += len(view.data)
        self._pending_bytes += len(view.data)
        if len(partial.parts) < partial.count:
            return Pending(pid, len(partial.parts), partial.count)
        if joined is not None and joined.made_of(partial.parts):
            return self._complete(key, partial, True, joined.payload)
        return self._complete(key, partial)

    def _complete(
        self,
        key: SetKey,
        partial: _PartialSet,
        digest_checked: bool = False,
        payload: bytes | memoryview | None = None,
    ) -> ReassemblyEvent:
        if payload is None:
            payload = (
                partial.parts[0]
                if partial.count == 1
                else b"".join(partial.parts[i] for i in range(partial.count))
            )
        if len(payload) != partial.total_size:
            return self._reject(
                key,
                RejectReason.SIZE_MISMATCH,
                f"chunks hold {len(payload)} bytes, total_size says {partial.total_size}",
            )
        if not digest_checked and self._digest is not None:
            try:
                matches = self._digest(payload) == partial.sha256
            except MessageError as exc:
                return self._reject(
                    key, RejectReason.CHECKSUM_MISMATCH, f"the reassembled payload: {exc}"
                )
            if not matches:
                return self._reject(
                    key, RejectReason.CHECKSUM_MISMATCH, "digest of the reassembled payload differs"
                )
        self._finish(key, SetStage.COMPLETE)
        return Complete(key[1], partial.payload_schema, payload, partial.sha256)

    def _reject(self, key: SetKey, reason: RejectReason, detail: str) -> Rejected:
        self._finish(key, SetStage.REJECTED)
        return Rejected(key[1], reason, detail)

    def _finish(self, key: SetKey, stage: SetStage) -> None:
        """Leave COLLECTING for ``stage``: free the set's memory and remember the outcome."""
        # A set refused on its first chunk (over the memory limit) was never pending: COLLECTING.
        current = self._finished.get(key, SetStage.COLLECTING)
        if stage not in ALLOWED_TRANSITIONS[current]:
            raise ProtocolError(f"payload {key[1]}: no transition from {current} to {stage}")
        partial = self._pending.pop(key, None)
        if partial is not None:
            self._pending_bytes -= partial.size
        self._finished[key] = stage
        while len(self._finished) > self._remember:
            self._finished.popitem(last=False)

    def expire(self, now: float | None = None) -> list[Expired]:
        """Drop incomplete sets whose first chunk is ``timeout_s`` or more old.

        Args:
            now: The clock reading to compare with; the clock's current reading by default.

        Returns:
            One event per dropped set, oldest first.
        """
        t = self._clock() if now is None else now
        old = sorted(
            ((k, p) for k, p in self._pending.items() if t - p.started_at >= self._timeout_s),
            key=lambda item: item[1].started_at,
        )
        events = []
        for key, partial in old:
            events.append(
                Expired(
                    key[1], partial.payload_schema, len(partial.parts), partial.count,
                    t - partial.started_at, key[0],
                )
            )
            self._finish(key, SetStage.EXPIRED)
        return events


@dataclass(slots=True)
class _EarlySet(_PartialSet):
    joining: bool = False
    done: tuple[Joined, Any] | None = None


class EarlyJoiner(Generic[R]):
    """Chunk sets joined ahead of the in-order :class:`Reassembler`, from any thread.

    A reader that verifies chunks on worker threads offers each one here; the call that brings a
    set's last missing chunk joins the set and runs ``finish(payload, sha256)`` (checking the
    payload against the digest, verifying and decoding it: whatever the caller needs) on its own
    thread. Sets are named as the reassembler names them (:data:`SetKey`). When
    the in-order reassembly later completes the same set, it passes :meth:`ready`'s
    :class:`Joined` to :meth:`Reassembler.add`, which takes that payload only if the set holds
    exactly the same chunk objects; so this is a cache, and nothing here decides what is
    accepted. A result that is not ready, or a ``finish`` that returns None (a digest that
    does not match), leaves the reassembler to do the work as without it. Sets are forgotten
    after ``timeout_s``; at most ``max_pending_bytes`` of chunk data are held. Thread-safe.
    """

    def __init__(
        self,
        timeout_s: float,
        clock: Callable[[], float],
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> None:
        self._timeout_s = timeout_s
        self._clock = clock
        self._max_bytes = max_pending_bytes
        self._lock = threading.Lock()
        self._sets: dict[SetKey, _EarlySet] = {}
        self._bytes = 0

    def offer(
        self, chunk: Mapping[str, Any], finish: Callable[[bytes, bytes], R | None]
    ) -> None:
        """Take a verified chunk; join and ``finish`` its set when this completes it."""
        view = _parse(chunk)
        if isinstance(view, str) or view.count < 2:
            return  # malformed (the reassembler says why), or a lone chunk
        with self._lock:
            self._prune()
            entry = self._sets.get(view.key)
            if entry is None:
                entry = _EarlySet.opened_by(view, self._clock())
                self._sets[view.key] = entry
            if not entry.agrees_with(view):
                return
            if view.index in entry.parts or self._bytes + len(view.data) > self._max_bytes:
                return
            entry.parts[view.index] = view.data
            entry.size += len(view.data)
            self._bytes += len(view.data)
            if len(entry.parts) < entry.count or entry.joining:
                return
            entry.joining = True
            parts = tuple(entry.parts[i] for i in range(entry.count))
        payload = b"".join(parts)
        result = finish(payload, view.sha256) if len(payload) == view.total_size else None
        if result is None:
            return
        with self._lock:
            if self._sets.get(view.key) is entry:
                entry.done = (Joined(payload, parts), result)

    def ready(self, payload_id: str, sender: str | None = None) -> tuple[Joined, R] | None:
        """The set's joined payload and ``finish`` result, once there."""
        with self._lock:
            entry = self._sets.get((sender, payload_id))
            return None if entry is None else entry.done

    def forget(self, payload_id: str, sender: str | None = None) -> None:
        """Drop a set the reassembler has finished with (complete or rejected)."""
        with self._lock:
            entry = self._sets.pop((sender, payload_id), None)
            if entry is not None:
                self._bytes -= entry.size

    @property
    def held_bytes(self) -> int:
        """Chunk data held for sets not yet forgotten."""
        return self._bytes

    @property
    def payload_ids(self) -> frozenset[str]:
        """The payload ids of the sets held."""
        with self._lock:
            return frozenset(pid for _, pid in self._sets)

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._sets.items() if now - e.started_at >= self._timeout_s]:
            self._bytes -= self._sets.pop(key).size
