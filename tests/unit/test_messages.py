"""Envelope, signing and chunking of fedsynth.messages, without a broker."""

from __future__ import annotations

import os
import random

from fedsynth.messages import Inbound, MessageFactory, MessageReader, Rejection, Waiting
from schemas.signing import IdentityKey, KeyRing

SITE = IdentityKey.generate()
OTHER = IdentityKey.generate()


def _reader(fed: str = "fed1") -> MessageReader:
    ring = KeyRing()
    ring.add("Cleveland", SITE.public_raw())
    ring.add("Hungary", OTHER.public_raw())
    return MessageReader(fed, ring)


def _update(vector: bytes) -> dict[str, object]:
    return {
        "update_id": "u1",
        "site_id": "Cleveland",
        "base_version": 3,
        "n_samples": 300,
        "mode": "plain",
        "cohort_id": None,
        "weight": 1.0,
        "codec": "raw",
        "vector": vector,
        "n_parameters": len(vector) // 4,
        "train_loss": 0.5,
        "epsilon_spent": 1.25,
    }


def test_small_message_round_trip() -> None:
    out = MessageFactory("fed1", "Cleveland", SITE).build(
        "Heartbeat",
        {"site_id": "Cleveland", "model_version": 2, "status": "idle", "epsilon_spent": 0.5},
    )
    got = _reader().read(out.value)
    assert isinstance(got, Inbound) and got.name == "Heartbeat"
    assert got.record["message_id"] == out.message_id and got.record["model_version"] == 2


def test_five_megabyte_update_in_shuffled_chunks() -> None:
    vector = os.urandom(5 * 1024 * 1024)
    chunks = MessageFactory("fed1", "Cleveland", SITE).build_chunked("ModelUpdate", _update(vector))
    assert len(chunks) == 6 and all(len(c.value) < 1024 * 1024 for c in chunks)
    random.Random(4).shuffle(chunks)
    reader = _reader()
    results = [reader.read(c.value) for c in chunks]
    assert all(isinstance(r, Waiting) for r in results[:-1])
    done = results[-1]
    assert isinstance(done, Inbound) and done.name == "ModelUpdate"
    assert done.record["vector"] == vector and done.record["base_version"] == 3


def test_bad_messages_are_rejections_with_reasons() -> None:
    factory = MessageFactory("fed1", "Cleveland", SITE)
    good = factory.build(
        "Heartbeat",
        {"site_id": "Cleveland", "model_version": 1, "status": "x", "epsilon_spent": 0.0},
    ).value
    tampered = bytearray(good)
    tampered[-1] ^= 1
    foreign = (
        MessageFactory("fed2", "Cleveland", SITE)
        .build(
            "Heartbeat",
            {"site_id": "Cleveland", "model_version": 1, "status": "x", "epsilon_spent": 0.0},
        )
        .value
    )
    impostor = (
        MessageFactory("fed1", "Cleveland", OTHER)
        .build(
            "Heartbeat",
            {"site_id": "Cleveland", "model_version": 1, "status": "x", "epsilon_spent": 0.0},
        )
        .value
    )
    unknown = (
        MessageFactory("fed1", "Basel", OTHER)
        .build(
            "Heartbeat",
            {"site_id": "Basel", "model_version": 1, "status": "x", "epsilon_spent": 0.0},
        )
        .value
    )
    reader = _reader()
    reasons = {
        k: reader.read(v)
        for k, v in {
            "tampered": bytes(tampered),
            "foreign": foreign,
            "impostor": impostor,
            "unknown": unknown,
            "garbage": b"\x00\x01junk",
        }.items()
    }
    assert all(isinstance(r, Rejection) for r in reasons.values())
    assert "fed2" in reasons["foreign"].reason  # type: ignore[union-attr]
    assert reasons["impostor"].error_class == "BadSignatureError"  # type: ignore[union-attr]
    assert reasons["unknown"].error_class == "UnknownSenderError"  # type: ignore[union-attr]


def test_payload_relayed_by_another_sender_is_rejected() -> None:
    inner = MessageFactory("fed1", "Cleveland", SITE).build("ModelUpdate", _update(b"\0" * 8))
    from fedsynth.codec.chunk import split

    relay = MessageFactory("fed1", "Hungary", OTHER)
    (chunk,) = [relay.build("Chunk", c) for c in split(inner.value, "ModelUpdate")]
    got = _reader().read(chunk.value)
    assert isinstance(got, Rejection) and got.error_class == "SenderMismatch"


def test_a_chunk_of_a_completed_payload_is_a_replay() -> None:
    chunks = MessageFactory("fed1", "Cleveland", SITE).build_chunked(
        "ModelUpdate", _update(b"\0" * 4000), max_chunk=1000
    )
    reader = _reader()
    results = [reader.read(c.value) for c in chunks]
    assert isinstance(results[-1], Inbound)
    again = reader.read(chunks[0].value)
    assert isinstance(again, Rejection) and again.error_class == "Replay"
    fresh = _reader()
    fresh.read(chunks[0].value)
    assert isinstance(fresh.read(chunks[0].value), Waiting)  # a resend while still collecting


def _mixed_stream() -> list[bytes]:
    """Single-chunk and multi-chunk payloads, a replay, a relayed payload and garbage."""
    from fedsynth.codec.chunk import split

    site = MessageFactory("fed1", "Cleveland", SITE)
    single = site.build_chunked("ModelUpdate", _update(os.urandom(4000)))
    multi = site.build_chunked("ModelUpdate", _update(os.urandom(4000)), max_chunk=1500)
    inner = site.build("ModelUpdate", _update(b"\0" * 8))
    relayed = [
        MessageFactory("fed1", "Hungary", OTHER).build("Chunk", c).value
        for c in split(inner.value, "ModelUpdate")
    ]
    nested = [
        site.build("Chunk", c).value
        for c in split(single[0].value, "Chunk", payload_id="nested-1")
    ]
    beat = site.build(
        "Heartbeat",
        {"site_id": "Cleveland", "model_version": 1, "status": "x", "epsilon_spent": 0.0},
    ).value
    values = [c.value for c in single] + [c.value for c in multi] + relayed + nested
    return values + [single[0].value, multi[1].value, beat, b"\x00\x01junk"]


def test_verify_then_accept_equals_read_and_verify_is_pure() -> None:
    values = _mixed_stream()
    reader = _reader()
    sequential = [reader.read(v) for v in values]
    split_reader = _reader()
    verified = [split_reader.verify(v) for v in values]
    assert split_reader.reassembler.pending_payloads == 0  # verify touched no state
    assert [split_reader.verify(v) for v in values] == verified  # and is deterministic
    assert [split_reader.accept(v) for v in verified] == sequential
    kinds = [type(r).__name__ + ":" + getattr(r, "error_class", "") for r in sequential]
    assert kinds == [
        "Inbound:", "Waiting:", "Waiting:", "Inbound:", "Rejection:SenderMismatch",
        "Rejection:NestedChunk", "Rejection:Replay", "Rejection:Replay", "Inbound:",
        "Rejection:TruncatedMessageError",
    ]


def test_single_chunk_payload_is_verified_up_front_and_a_bad_digest_is_still_caught() -> None:
    from fedsynth.codec.chunk import split

    site = MessageFactory("fed1", "Cleveland", SITE)
    inner = site.build("ModelUpdate", _update(b"\1" * 64))
    (good,) = split(inner.value, "ModelUpdate")
    got = _reader().verify(site.build("Chunk", good).value)
    assert not isinstance(got, Rejection) and isinstance(got.inner, Inbound)
    assert got.inner.record["message_id"] == inner.message_id
    bad = site.build("Chunk", {**good, "sha256": bytes(32)}).value
    checked = _reader().verify(bad)
    assert not isinstance(checked, Rejection) and checked.inner is None
    result = _reader().accept(checked)
    assert isinstance(result, Rejection) and "checksum" in result.reason.lower()
