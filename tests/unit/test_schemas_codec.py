"""Single-object encoding: round trips, and a typed error naming the cause for every bad input."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.codec import (
    HEADER_SIZE,
    MAGIC,
    VIEW_MIN_BYTES,
    ViewReader,
    decode,
    decode_as,
    encode,
    peek_schema,
)
from schemas.compat import example_records
from schemas.errors import (
    BadMarkerError,
    SchemaError,
    SchemaMismatchError,
    TruncatedMessageError,
    UnknownFingerprintError,
    UnknownSchemaError,
)
from schemas.registry import default_registry

ENTRIES = list(default_registry())


def heartbeat(**changes: Any) -> dict[str, Any]:
    record = {
        "message_id": "6f1c2a4e-3b7d-4e0a-9a51-0c2d5e7f8a90",
        "federation_id": "fed-1",
        "sender": "cleveland",
        "created_at": 1_700_000_000_123,
        "signature": b"",
        "site_id": "cleveland",
        "model_version": 7,
        "status": "training",
        "epsilon_spent": 1.25,
    }
    return {**record, **changes}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_schema_round_trips_its_examples(entry: Any) -> None:
    for record in example_records(entry.raw):
        record["message_id"] = str(uuid.UUID(int=len(record)))
        data = encode(entry.name, record)
        assert data[:HEADER_SIZE] == entry.header
        assert decode(data) == (entry.name, record)


def test_known_bytes_of_a_heartbeat() -> None:
    data = encode("Heartbeat", heartbeat())
    assert data[:2] == MAGIC == b"\xc3\x01"
    assert data[2:10] == bytes.fromhex("4a122ef84fa0597f")  # 7f59a04ff82e124a little-endian
    body = data[10:]
    assert body[0] == 72 and body[1:37] == b"6f1c2a4e-3b7d-4e0a-9a51-0c2d5e7f8a90"  # zigzag(36)
    assert body.endswith(b"\x00\x00\x00\x00\x00\x00\xf4?")  # 1.25 as little-endian double


def test_timestamps_accept_datetimes_and_decode_as_millis() -> None:
    when = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    _, record = decode(encode("Heartbeat", heartbeat(created_at=when)))
    assert record["created_at"] == int(when.timestamp() * 1000) == 1_714_564_800_250


def test_optional_fields_may_be_left_out() -> None:
    record = {
        **{k: v for k, v in heartbeat().items() if k in {f[0] for f in _envelope()}},
        "site_id": "va",
        "dataset": "heart",
        "schema_hash": "abc",
        "consent": True,
        "identity_public_key": b"k" * 32,
        "n_samples": 200,
    }
    _, back = decode(encode("SiteHello", record))
    assert back["histograms"] is None and back["n_samples"] == 200


def _envelope() -> list[tuple[str, str]]:
    return [
        (f["name"], f["type"]) for f in default_registry().by_name("Heartbeat").raw["fields"][:5]
    ]


@pytest.mark.parametrize(
    ("record", "cause"),
    [
        (heartbeat(status=3), r"Heartbeat\.status is <3>"),
        ({k: v for k, v in heartbeat().items() if k != "status"}, r"missing fields \['status'\]"),
        (heartbeat(colour="red"), r"unknown fields \['colour'\]"),
        (heartbeat(model_version=2**63), "model_version"),
        (heartbeat(message_id="not-a-uuid"), "message_id must be a UUID"),
        (heartbeat(signature="text"), "signature"),
    ],
    ids=["wrong-type", "missing", "extra", "overflow", "bad-uuid", "str-for-bytes"],
)
def test_encode_names_the_mismatch(record: dict[str, Any], cause: str) -> None:
    with pytest.raises(SchemaMismatchError, match=cause):
        encode("Heartbeat", record)


def test_encode_unknown_schema_name() -> None:
    with pytest.raises(UnknownSchemaError, match="no message schema named 'Hearbeat'"):
        encode("Hearbeat", heartbeat())


def test_decode_errors_name_their_cause() -> None:
    data = encode("Heartbeat", heartbeat())
    with pytest.raises(TruncatedMessageError, match="shorter than the 10-byte header"):
        decode(data[:6])
    with pytest.raises(TruncatedMessageError, match="Heartbeat: body of .* ends early"):
        decode(data[:-3])
    with pytest.raises(BadMarkerError, match="bad marker c302"):
        decode(b"\xc3\x02" + data[2:])
    with pytest.raises(
        UnknownFingerprintError, match="unknown schema fingerprint 0123456789abcdef"
    ):
        decode(MAGIC + (0x0123456789ABCDEF).to_bytes(8, "little") + data[10:])
    with pytest.raises(SchemaMismatchError, match="2 trailing bytes"):
        decode(data + b"\x00\x00")
    with pytest.raises(SchemaMismatchError, match="must be bytes"):
        decode("text")  # type: ignore[arg-type]


def test_invalid_utf8_in_a_string_is_a_mismatch() -> None:
    data = bytearray(encode("Heartbeat", heartbeat()))
    data[11] = 0xFF  # first byte of message_id
    with pytest.raises(SchemaMismatchError, match="does not decode"):
        decode(bytes(data))


def test_errors_are_not_retriable_and_share_one_root() -> None:
    for cls in (
        BadMarkerError,
        TruncatedMessageError,
        UnknownFingerprintError,
        SchemaMismatchError,
    ):
        assert issubclass(cls, SchemaError) and cls.retriable is False


def test_decode_as_and_peek() -> None:
    data = encode("Heartbeat", heartbeat())
    assert peek_schema(data).name == "Heartbeat"
    assert decode_as("Heartbeat", memoryview(data))["status"] == "training"
    with pytest.raises(SchemaMismatchError, match="expected a Chunk message, got Heartbeat"):
        decode_as("Chunk", data)


def chunk(data: bytes) -> dict[str, Any]:
    return {
        "message_id": str(uuid.UUID(int=7)), "federation_id": "fed-1", "sender": "cleveland",
        "created_at": 1, "signature": b"", "payload_id": "p", "payload_schema": "ModelUpdate",
        "index": 0, "count": 1, "total_size": len(data), "sha256": bytes(32), "data": data,
    }


def test_views_hand_large_bytes_fields_on_as_memoryviews_of_the_message() -> None:
    big = bytes(range(256)) * (VIEW_MIN_BYTES // 256 + 1)
    encoded = encode("Chunk", chunk(big))
    name, viewed = decode(encoded, views={"Chunk"})
    assert name == "Chunk" and viewed == decode(encoded)[1]
    assert isinstance(viewed["data"], memoryview) and viewed["data"].obj is encoded
    assert viewed["data"].readonly and viewed["data"] == big
    assert isinstance(viewed["sha256"], bytes)  # short fields stay bytes
    assert isinstance(decode(encoded)[1]["data"], bytes)  # only when asked
    assert isinstance(decode(encoded, views={"ModelUpdate"})[1]["data"], bytes)
    # a memoryview message is read in place too (a BytesIO would copy it whole)
    inner = decode(memoryview(encoded), views={"Chunk"})[1]["data"]
    assert isinstance(inner, memoryview) and inner.obj is encoded


def test_a_viewed_field_cut_short_is_truncated_not_a_short_view() -> None:
    encoded = encode("Chunk", chunk(bytes(VIEW_MIN_BYTES * 2)))
    for cut in (len(encoded) - 1, len(encoded) - VIEW_MIN_BYTES, HEADER_SIZE + 40):
        with pytest.raises(TruncatedMessageError, match="Chunk: body of .* ends early"):
            decode(encoded[:cut], views={"Chunk"})
    with pytest.raises(SchemaMismatchError, match="1 trailing bytes"):
        decode(encoded + b"\x00", views={"Chunk"})


def test_view_reader_reads_seeks_and_tells_like_a_file() -> None:
    reader = ViewReader(b"0123456789", view_min=4)
    assert reader.read(3) == b"012" and isinstance(reader.read(0), bytes)
    piece = reader.read(4)
    assert isinstance(piece, memoryview) and piece == b"3456" and reader.tell() == 7
    assert reader.read(10) == b"789" and reader.read(1) == b"" and reader.tell() == 10
    assert reader.seek(-4, 2) == 6 and reader.read() == b"6789"
    assert reader.seek(2) == 2 and reader.seek(3, 1) == 5 and reader.read(1) == b"5"
