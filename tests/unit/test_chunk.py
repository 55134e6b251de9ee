"""Chunking and the sans-I/O reassembler: order, duplicates, corruption, expiry, memory bound."""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from typing import Any

import pytest

from fedsynth.codec.chunk import (
    ALLOWED_TRANSITIONS,
    MAX_CHUNK,
    ChunkError,
    Complete,
    Duplicate,
    EarlyJoiner,
    Expired,
    Pending,
    Reassembler,
    Rejected,
    RejectReason,
    SetStage,
    split,
)
from fedsynth.errors import ConfigError, MessageError
from schemas.codec import decode, encode


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reassembler(**kwargs: Any) -> tuple[Reassembler, FakeClock]:
    clock = FakeClock()
    return Reassembler(timeout_s=kwargs.pop("timeout_s", 30.0), clock=clock, **kwargs), clock


def test_split_fields() -> None:
    payload = bytes(range(256)) * 10  # 2560 bytes
    chunks = split(payload, "ModelUpdate", max_chunk=1000, payload_id="p")
    assert [len(c["data"]) for c in chunks] == [1000, 1000, 560]
    assert [c["index"] for c in chunks] == [0, 1, 2]
    assert {c["count"] for c in chunks} == {3} and {c["total_size"] for c in chunks} == {2560}
    assert {c["sha256"] for c in chunks} == {hashlib.sha256(payload).digest()}
    assert b"".join(c["data"] for c in chunks) == payload


def test_split_edges_and_errors() -> None:
    (only,) = split(b"", "GlobalModel")
    assert only["count"] == 1 and only["data"] == b"" and only["total_size"] == 0
    assert len(split(b"x" * MAX_CHUNK, "ModelUpdate")) == 1
    assert len(split(b"x" * (MAX_CHUNK + 1), "ModelUpdate")) == 2
    assert uuid.UUID(split(b"x", "ModelUpdate")[0]["payload_id"])
    with pytest.raises(ConfigError, match="max_chunk must be positive"):
        split(b"x", "ModelUpdate", max_chunk=0)
    with pytest.raises(ChunkError, match="payload must be bytes"):
        split("text", "ModelUpdate")  # type: ignore[arg-type]
    assert issubclass(ChunkError, MessageError)


def test_reassembles_out_of_order_and_ignores_duplicates() -> None:
    payload = os.urandom(5000)
    chunks = split(payload, "ModelUpdate", max_chunk=1024, payload_id="p")
    r, _ = reassembler()
    order = [4, 0, 2, 0, 3, 2]
    events = [r.add(chunks[i]) for i in order]
    assert events == [
        Pending("p", 1, 5),
        Pending("p", 2, 5),
        Pending("p", 3, 5),
        Duplicate("p", 0),
        Pending("p", 4, 5),
        Duplicate("p", 2),
    ]
    assert r.pending_bytes == 1024 * 3 + (5000 - 4096)
    assert r.add(chunks[1]) == Complete("p", "ModelUpdate", payload)
    assert r.pending_bytes == 0 and r.pending_payloads == 0
    assert r.add(chunks[3]) == Duplicate("p", 3)  # late copy after completion
    assert r.stage("p") is SetStage.COMPLETE


def test_chunks_survive_avro_encoding_with_envelope() -> None:
    payload = os.urandom(3000)
    r, _ = reassembler()
    events = []
    for c in split(payload, "GlobalModel", max_chunk=1000):
        envelope = {
            "message_id": str(uuid.uuid4()),
            "federation_id": "f",
            "sender": "aggregator",
            "created_at": 0,
            "signature": b"",
        }
        _, record = decode(encode("Chunk", {**envelope, **c}))
        events.append(r.add(record))
    assert isinstance(events[-1], Complete) and events[-1].payload == payload


def test_corrupted_chunk_fails_the_checksum() -> None:
    chunks = split(b"a" * 3000, "ModelUpdate", max_chunk=1000, payload_id="p")
    chunks[1] = {**chunks[1], "data": b"a" * 999 + b"b"}
    r, _ = reassembler()
    events = [r.add(c) for c in chunks]
    assert isinstance(events[-1], Rejected)
    assert events[-1].reason is RejectReason.CHECKSUM_MISMATCH
    assert r.pending_bytes == 0
    assert r.add(chunks[0]) == Rejected(
        "p", RejectReason.ALREADY_REJECTED, "payload p was already rejected"
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"count": 4}, RejectReason.INCONSISTENT),
        ({"total_size": 3001}, RejectReason.INCONSISTENT),
        ({"sha256": b"\x00" * 32}, RejectReason.INCONSISTENT),
        ({"payload_schema": "GlobalModel"}, RejectReason.INCONSISTENT),
        ({"index": 0, "data": b"z" * 1000}, RejectReason.CONFLICTING_DUPLICATE),
    ],
    ids=["count", "size", "sha", "schema", "conflicting-duplicate"],
)
def test_inconsistent_sets_are_rejected(change: dict[str, Any], reason: RejectReason) -> None:
    chunks = split(b"a" * 3000, "ModelUpdate", max_chunk=1000, payload_id="p")
    r, _ = reassembler()
    assert isinstance(r.add(chunks[0]), Pending)
    event = r.add({**chunks[1], **change})
    assert isinstance(event, Rejected) and event.reason is reason and event.payload_id == "p"
    assert r.pending_payloads == 0 and r.pending_bytes == 0


def test_sizes_that_do_not_add_up_are_rejected() -> None:
    chunks = split(b"a" * 3000, "ModelUpdate", max_chunk=1000, payload_id="p")
    r, _ = reassembler()
    r.add(chunks[0])
    r.add({**chunks[1], "data": b"a" * 1500})
    event = r.add({**chunks[2], "data": b"a" * 600})
    assert isinstance(event, Rejected) and event.reason is RejectReason.SIZE_MISMATCH
    r2, _ = reassembler()
    r2.add(chunks[0])
    r2.add(chunks[1])
    short = r2.add({**chunks[2], "data": b"a" * 10})
    assert isinstance(short, Rejected) and short.reason is RejectReason.SIZE_MISMATCH
    assert "hold 2010 bytes, total_size says 3000" in short.detail


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        ({"payload_id": ""}, "payload_id"),
        ({"index": 3}, "index 3 outside"),
        ({"index": -1}, "index -1 outside"),
        ({"count": 0}, "outside"),
        ({"sha256": b"short"}, "sha256 must be 32 bytes"),
        ({"data": "text"}, "data must be bytes"),
        ({"index": True}, "must be ints"),
        ({"count": 10_000}, "sizes do not add up"),
    ],
)
def test_malformed_chunks_are_rejected_alone(change: dict[str, Any], cause: str) -> None:
    chunks = split(b"a" * 3000, "ModelUpdate", max_chunk=1000, payload_id="p")
    r, _ = reassembler()
    r.add(chunks[0])
    event = r.add({**chunks[1], **change})
    assert isinstance(event, Rejected) and event.reason is RejectReason.MALFORMED
    assert cause in event.detail
    assert r.add(chunks[1]) == Pending("p", 2, 3)  # the set itself is intact


def test_expiry_with_a_fake_clock() -> None:
    r, clock = reassembler(timeout_s=30.0)
    a = split(b"a" * 3000, "ModelUpdate", max_chunk=1000, payload_id="a")
    b = split(b"b" * 2000, "GlobalModel", max_chunk=1000, payload_id="b")
    r.add(a[0])
    clock.now += 10
    r.add(b[1])
    clock.now += 19.5
    assert r.expire() == []
    clock.now += 0.5
    assert r.expire() == [Expired("a", "ModelUpdate", 1, 3, 30.0)]
    assert r.pending_bytes == 1000 and r.stage("a") is SetStage.EXPIRED
    late = r.add(a[1])
    assert isinstance(late, Rejected) and late.reason is RejectReason.ALREADY_EXPIRED
    assert r.expire(now=clock.now + 10) == [Expired("b", "GlobalModel", 1, 2, 30.0)]
    assert r.pending_payloads == 0 and r.pending_bytes == 0


def test_memory_bound() -> None:
    r, _ = reassembler(max_pending_bytes=2500)
    too_big = split(b"x" * 3000, "ModelUpdate", max_chunk=1000, payload_id="big")
    event = r.add(too_big[0])
    assert isinstance(event, Rejected) and event.reason is RejectReason.OVER_MEMORY_LIMIT
    assert "payload of 3000 bytes exceeds the reassembly limit of 2500 bytes" in event.detail
    one = split(b"1" * 2000, "ModelUpdate", max_chunk=1000, payload_id="one")
    two = split(b"2" * 2000, "ModelUpdate", max_chunk=1000, payload_id="two")
    r.add(one[0])
    r.add(two[0])
    full = r.add(one[1])
    assert isinstance(full, Rejected) and full.reason is RejectReason.OVER_MEMORY_LIMIT
    assert "reassembly buffer full: 2000 bytes pending" in full.detail
    assert r.pending_bytes == 1000  # the rejected set freed its memory
    assert isinstance(r.add(two[1]), Complete)


def test_finished_ids_are_remembered_within_bounds() -> None:
    r, _ = reassembler(remember=2)
    for pid in ("a", "b", "c"):
        assert isinstance(r.add(split(b"x", "ModelUpdate", payload_id=pid)[0]), Complete)
    assert r.stage("a") is None and r.stage("c") is SetStage.COMPLETE


def test_transition_table() -> None:
    assert ALLOWED_TRANSITIONS[SetStage.COLLECTING] == {
        SetStage.COMPLETE,
        SetStage.REJECTED,
        SetStage.EXPIRED,
    }
    for terminal in (SetStage.COMPLETE, SetStage.REJECTED, SetStage.EXPIRED):
        assert ALLOWED_TRANSITIONS[terminal] == frozenset()


def test_constructor_validates_limits() -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        Reassembler(timeout_s=0, clock=FakeClock())
    with pytest.raises(ConfigError, match="must be positive"):
        Reassembler(timeout_s=1, clock=FakeClock(), max_pending_bytes=0)


def test_five_megabyte_payload_round_trip_shuffled() -> None:
    payload = os.urandom(5 * 1024 * 1024)
    chunks = split(payload, "GlobalModel")
    assert len(chunks) == 6 and all(len(c["data"]) <= 900 * 1024 for c in chunks)
    random.Random(7).shuffle(chunks)
    r, _ = reassembler()
    events = [r.add(c) for c in chunks]
    assert all(isinstance(e, Pending) for e in events[:-1])
    assert isinstance(events[-1], Complete) and events[-1].payload == payload


def test_a_set_joined_ahead_is_taken_only_from_the_same_chunk_objects() -> None:
    payload = os.urandom(5000)
    chunks = split(payload, "ModelUpdate", max_chunk=1024, payload_id="p")
    early: EarlyJoiner[str] = EarlyJoiner(30.0, FakeClock())
    calls: list[bytes] = []

    def finish(joined: bytes, sha256: bytes) -> str | None:
        calls.append(sha256)
        return "verified" if hashlib.sha256(joined).digest() == sha256 else None

    for c in reversed(chunks):  # any order; the last one offered joins the set
        assert early.ready("p") is None
        early.offer(c, finish)
    ready = early.ready("p")
    assert ready is not None and ready[0].payload == payload and ready[1] == "verified"
    assert len(calls) == 1 and early.held_bytes == 5000
    early.offer(chunks[0], finish)  # a resend adds nothing and joins nothing again
    assert len(calls) == 1

    r, _ = reassembler(digest=lambda _: pytest.fail("digested again"))
    events = [r.add(c, joined=ready[0]) for c in chunks]
    assert events[-1] == Complete("p", "ModelUpdate", payload)
    assert events[-1].payload is ready[0].payload  # taken, not joined again
    early.forget("p")
    assert early.ready("p") is None and early.held_bytes == 0

    other, _ = reassembler()  # equal bytes in other objects: joined and digested itself
    copies = [{**c, "data": bytes(bytearray(c["data"]))} for c in chunks]
    done = [other.add(c, joined=ready[0]) for c in copies][-1]
    assert done == Complete("p", "ModelUpdate", payload) and done.payload is not ready[0].payload


def test_an_early_set_whose_digest_fails_or_that_times_out_is_not_offered() -> None:
    clock = FakeClock()
    early: EarlyJoiner[str] = EarlyJoiner(30.0, clock)
    bad = [{**c, "sha256": bytes(32)} for c in split(os.urandom(3000), "ModelUpdate",
                                                      max_chunk=1024, payload_id="bad")]
    for c in bad:
        early.offer(c, lambda joined, sha256: None)
    assert early.ready("bad") is None
    half = split(os.urandom(3000), "ModelUpdate", max_chunk=1024, payload_id="half")
    early.offer(half[0], lambda joined, sha256: "x")
    clock.now += 31
    early.offer(split(b"abc" * 500, "ModelUpdate", max_chunk=1024, payload_id="new")[0],
                lambda joined, sha256: "x")
    assert early.payload_ids == {"new"}  # the old sets were forgotten
    early.offer({"payload_id": "m", "index": 0, "count": 2}, lambda joined, sha256: "x")
    assert early.payload_ids == {"new"}  # malformed chunks are left to the reassembler


def test_another_senders_chunks_under_a_payload_id_form_a_set_of_their_own() -> None:
    payload = os.urandom(3000)
    chunks = [
        {**c, "sender": "Cleveland"}
        for c in split(payload, "ModelUpdate", max_chunk=1024, payload_id="p")
    ]
    forged = {**chunks[1], "sender": "Hungary", "data": os.urandom(1024)}
    r, clock = reassembler()
    assert r.add(forged) == Pending("p", 1, 3)  # first, and still it changes nothing
    events = [r.add(c) for c in chunks]
    assert events[-1] == Complete("p", "ModelUpdate", payload)
    assert r.stage("p", "Cleveland") is SetStage.COMPLETE
    assert r.stage("p", "Hungary") is SetStage.COLLECTING and r.stage("p") is None
    assert r.pending_keys == {("Hungary", "p")} and r.pending_bytes == 1024
    assert isinstance(r.add({**chunks[0], "sender": 7}), Rejected)  # a sender must be a string
    clock.now += 31
    (expired,) = r.expire()
    assert (expired.payload_id, expired.sender, expired.have) == ("p", "Hungary", 1)

    early: EarlyJoiner[str] = EarlyJoiner(30.0, FakeClock())
    early.offer(forged, lambda joined, sha256: pytest.fail("joined a foreign chunk"))
    for c in chunks:
        early.offer(c, lambda joined, sha256: "joined")
    assert early.ready("p") is None and early.ready("p", "Hungary") is None
    ready = early.ready("p", "Cleveland")
    assert ready is not None and ready[0].payload == payload
    early.forget("p", "Cleveland")
    assert early.payload_ids == {"p"} and early.held_bytes == 1024  # the other set is held


def test_without_a_digest_the_joined_payload_is_not_hashed() -> None:
    """For chunks the caller authenticated one by one (messages.MessageReader)."""
    payload = os.urandom(3000)
    chunks = split(payload, "ModelUpdate", max_chunk=1024, payload_id="p", sha256=bytes(32))
    r, _ = reassembler(digest=None)
    done = [r.add(c) for c in reversed(chunks)][-1]
    assert done == Complete("p", "ModelUpdate", payload) and done.sha256 == bytes(32)
    # Every other check stays: the chunks must agree on the digest, sizes must add up.
    again = split(payload, "ModelUpdate", max_chunk=1024, payload_id="q")
    r.add(again[0])
    refused = r.add({**again[1], "sha256": bytes(32)})
    assert isinstance(refused, Rejected) and refused.reason is RejectReason.INCONSISTENT
