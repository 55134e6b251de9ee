"""Avro single-object encoding of our messages.

Layout (Avro specification, "Single-object encoding")::

    C3 01 | CRC-64-AVRO fingerprint of the schema, 8 bytes little-endian | Avro binary body

so any consumer knows the schema of a message from its first ten bytes, without a schema registry.
Timestamps (``created_at``) are ints of milliseconds since the Unix epoch when decoded; ``encode``
accepts such ints or timezone-aware datetimes.
"""

from __future__ import annotations

import uuid
from collections.abc import Container
from io import BytesIO
from typing import IO, Any, cast

from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

from schemas.errors import (
    BadMarkerError,
    SchemaError,
    SchemaMismatchError,
    TruncatedMessageError,
)
from schemas.registry import SchemaEntry, SchemaRegistry, default_registry

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "VIEW_MIN_BYTES",
    "ViewReader",
    "decode",
    "decode_as",
    "encode",
    "peek_schema",
]

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10
VIEW_MIN_BYTES = 64 * 1024


class ViewReader:
    """A read-only file over a buffer for fastavro: reads of ``view_min`` bytes or more return
    memoryviews of the buffer, shorter ones bytes.

    fastavro reads an Avro ``bytes`` field with one ``read(n)``; from a ``BytesIO`` that is a copy
    of the field (8 MB for a masked update of 1M parameters, made while holding the GIL). Through
    this reader a large field is a view of the message instead, and the message stays alive as
    long as the view does. Wrapping a memoryview copies nothing (``BytesIO`` would copy it whole).
    """

    __slots__ = ("_pos", "_view", "_view_min")

    def __init__(self, data: bytes | memoryview, view_min: int = VIEW_MIN_BYTES) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0
        self._view_min = view_min

    def read(self, size: int = -1) -> bytes | memoryview:
        """Up to ``size`` bytes from the current position (all that is left when negative)."""
        start = self._pos
        stop = len(self._view) if size < 0 else min(start + size, len(self._view))
        self._pos = stop
        piece = self._view[start:stop]
        return piece if stop - start >= self._view_min else piece.tobytes()

    def tell(self) -> int:
        """The current position."""
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move to ``offset`` from the start (``whence`` 0), the position (1) or the end (2)."""
        base = (0, self._pos, len(self._view))[whence]
        self._pos = max(0, base + offset)
        return self._pos


def _registry(registry: SchemaRegistry | None) -> SchemaRegistry:
    return default_registry() if registry is None else registry


_MAX_DETAIL = 300


def _mismatch_detail(entry: SchemaEntry, record: dict[str, Any], exc: Exception) -> str:
    """The most precise reason we can give: missing or extra fields, else fastavro's validator."""
    fields = entry.raw["fields"]
    names = {f["name"] for f in fields}
    missing = [f["name"] for f in fields if f["name"] not in record and "default" not in f]
    extra = sorted(str(k) for k in record if k not in names)
    if missing or extra:
        return f"missing fields {missing}, unknown fields {extra}"
    return _validator_detail(entry, record, exc)[:_MAX_DETAIL]


def _validator_detail(entry: SchemaEntry, record: dict[str, Any], exc: Exception) -> str:
    try:
        validate(record, entry.writer, raise_errors=True, strict=True)
    except ValidationError as verr:
        return "; ".join(str(e) for e in verr.errors) or str(exc)
    except Exception:  # noqa: BLE001 - the validator itself choked; keep the writer's reason
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _check_envelope(entry: SchemaEntry, record: Any) -> None:
    if not isinstance(record, dict):
        kind = type(record).__name__
        raise SchemaMismatchError(f"{entry.name}: record must be a dict, not {kind}")
    message_id = record.get("message_id")
    try:
        uuid.UUID(message_id)
    except (TypeError, ValueError, AttributeError):
        raise SchemaMismatchError(
            f"{entry.name}: message_id must be a UUID string, got {message_id!r}"
        ) from None


def encode(name: str, record: dict[str, Any], registry: SchemaRegistry | None = None) -> bytes:
    """Encode ``record`` under the schema ``name`` in Avro single-object encoding.

    Args:
        name: Short or full schema name, e.g. ``"Heartbeat"``.
        record: Every field of the schema (fields with a default may be left out); no extra keys.
        registry: Schemas to use; the package's own by default.

    Returns:
        Header and body.

    Raises:
        UnknownSchemaError: ``name`` is not a known schema.
        SchemaMismatchError: The record does not match the schema (the message names the field).
    """
    entry = _registry(registry).by_name(name)
    _check_envelope(entry, record)
    buf = BytesIO()
    buf.write(entry.header)
    if entry.defaults and not entry.defaults.keys() <= record.keys():
        record = {**entry.defaults, **record}
    try:
        schemaless_writer(buf, entry.writer, record, strict=True)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        detail = _mismatch_detail(entry, record, exc)
        raise SchemaMismatchError(f"{entry.name}: record does not match schema: {detail}") from exc
    return buf.getvalue()


def peek_schema(
    data: bytes | memoryview, registry: SchemaRegistry | None = None
) -> SchemaEntry:
    """The schema a message names in its header, without decoding the body.

    Raises:
        TruncatedMessageError: Fewer than 10 bytes.
        BadMarkerError: The first two bytes are not ``C3 01``.
        UnknownFingerprintError: No local schema has the fingerprint.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SchemaMismatchError(f"a message must be bytes, not {type(data).__name__}")
    if len(data) < HEADER_SIZE:
        raise TruncatedMessageError(
            f"message of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header"
        )
    if bytes(data[:2]) != MAGIC:
        raise BadMarkerError(
            f"bad marker {bytes(data[:2]).hex()}: not Avro single-object encoding (expected c301)"
        )
    return _registry(registry).by_fingerprint(bytes(data[2:HEADER_SIZE]))


def _read_body(
    entry: SchemaEntry, data: bytes | memoryview, view_min: int | None = None
) -> dict[str, Any]:
    """The record after the header; with ``view_min``, read through a :class:`ViewReader`.

    fastavro decodes a ``string`` through the same ``read(n)`` as ``bytes`` and needs bytes for
    it, so a string of ``view_min`` bytes or more fails a viewed read. A viewed read that fails
    for any reason is done again with copies, whose outcome (a record or the error) stands; no
    honest message of the schemas read with views has a string that long.
    """
    if view_min is not None:
        try:
            return _read_body_from(entry, data, cast(IO[bytes], ViewReader(data, view_min)))
        except SchemaError:
            return _read_body(entry, bytes(data))
    return _read_body_from(entry, data, BytesIO(data))


def _read_body_from(entry: SchemaEntry, data: bytes | memoryview, buf: IO[bytes]) -> dict[str, Any]:
    buf.seek(HEADER_SIZE)
    try:
        record = schemaless_reader(buf, entry.reader, entry.resolved)
    except (EOFError, IndexError) as exc:
        raise TruncatedMessageError(
            f"{entry.name}: body of {len(data) - HEADER_SIZE} bytes ends early ({exc or 'EOF'})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - fastavro raises many types on corrupt input
        raise SchemaMismatchError(
            f"{entry.name}: body does not decode under the schema: {type(exc).__name__}: {exc}"
        ) from exc
    extra = len(data) - buf.tell()
    if extra:
        raise SchemaMismatchError(f"{entry.name}: {extra} trailing bytes after the record")
    if not isinstance(record, dict):
        raise SchemaMismatchError(f"{entry.name}: body did not decode to a record")
    return record


def decode(
    data: bytes | memoryview,
    registry: SchemaRegistry | None = None,
    *,
    views: Container[str] = (),
    view_min: int = VIEW_MIN_BYTES,
) -> tuple[str, dict[str, Any]]:
    """Decode a single-object encoded message.

    Args:
        data: The bytes of one message.
        registry: Schemas to use; the package's own by default.
        views: Names of schemas whose ``bytes`` fields of ``view_min`` bytes or more come back
            as read-only memoryviews of ``data`` instead of copies (:class:`ViewReader`), for
            the large payloads of a hot path whose consumers take any buffer.
        view_min: The smallest field handed on as a view.

    Returns:
        The schema's short name and the record.

    Raises:
        TruncatedMessageError: The header or body ends early.
        BadMarkerError: Not single-object encoding.
        UnknownFingerprintError: The fingerprint names no local schema.
        SchemaMismatchError: The body does not decode under the schema, or bytes trail it.
    """
    entry = peek_schema(data, registry)
    if entry.name in views:
        return entry.name, _read_body(entry, data, view_min)
    return entry.name, _read_body(entry, bytes(data))


def decode_as(name: str, data: bytes, registry: SchemaRegistry | None = None) -> dict[str, Any]:
    """Decode a message that must be of schema ``name``; raises SchemaMismatchError otherwise."""
    expected = _registry(registry).by_name(name)
    entry = peek_schema(data, registry)
    if entry.name != expected.name:  # the current version or an older one
        raise SchemaMismatchError(f"expected a {expected.name} message, got {entry.name}")
    return _read_body(entry, bytes(data))
