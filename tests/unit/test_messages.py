"""Envelope, signing and chunking of fedsynth.messages, without a broker."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from fedsynth.errors import MessageError
from fedsynth.messages import (
    AGGREGATOR,
    Inbound,
    MessageFactory,
    MessageReader,
    Rejection,
    Verified,
    Waiting,
    read_audit_record,
    split_signed,
)
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
    # neither the chunks' data nor the update's vector is copied out of its message by Avro
    assert isinstance(done.record["vector"], memoryview)
    payload = done.record["vector"].obj
    assert isinstance(payload, bytes) and len(payload) == done.size


def test_a_lone_chunk_update_is_decoded_in_place() -> None:
    vector = os.urandom(512 * 1024)
    (chunk,) = MessageFactory("fed1", "Cleveland", SITE).build_chunked(
        "ModelUpdate", _update(vector)
    )
    for got in (_reader().read(chunk.value), _reader().read(memoryview(chunk.value))):
        assert isinstance(got, Inbound) and got.record["vector"] == vector
        assert isinstance(got.record["vector"], memoryview)
        assert got.record["vector"].obj is chunk.value  # a view of the chunk as consumed


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
    relay = MessageFactory("fed1", "Hungary", OTHER)
    (chunk,) = [relay.build("Chunk", c) for c in split_signed(inner.value, "ModelUpdate")]
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
    site = MessageFactory("fed1", "Cleveland", SITE)
    single = site.build_chunked("ModelUpdate", _update(os.urandom(4000)))
    multi = site.build_chunked("ModelUpdate", _update(os.urandom(4000)), max_chunk=1500)
    inner = site.build("ModelUpdate", _update(b"\0" * 8))
    relayed = [
        MessageFactory("fed1", "Hungary", OTHER).build("Chunk", c).value
        for c in split_signed(inner.value, "ModelUpdate")
    ]
    nested = [
        site.build("Chunk", c).value
        for c in split_signed(single[0].value, "Chunk", payload_id="nested-1")
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
    site = MessageFactory("fed1", "Cleveland", SITE)
    inner = site.build("ModelUpdate", _update(b"\1" * 64))
    (good,) = split_signed(inner.value, "ModelUpdate")
    got = _reader().verify(site.build("Chunk", good).value)
    assert not isinstance(got, Rejection) and isinstance(got.inner, Inbound)
    assert got.inner.record["message_id"] == inner.message_id
    bad = site.build("Chunk", {**good, "sha256": bytes(32)}).value
    checked = _reader().verify(bad)
    assert not isinstance(checked, Rejection) and isinstance(checked.inner, Rejection)
    result = _reader().accept(checked)
    assert isinstance(result, Rejection) and result.error_class == "BadSignatureError"
    assert "digest its chunks carry" in result.reason
    short = site.build("Chunk", {**good, "sha256": b"x"}).value
    refused = _reader().read(short)
    assert isinstance(refused, Rejection) and "sha256 must be 32 bytes" in refused.reason


def test_chunks_carry_the_digest_the_payload_signature_signs() -> None:
    """The payload's signature is checked against the digest the chunks carry."""
    from fedsynth.codec.chunk import split
    from schemas.signing import unsigned_sha256

    site = MessageFactory("fed1", "Cleveland", SITE)
    chunks = site.build_chunked("ModelUpdate", _update(os.urandom(4000)), max_chunk=1500)
    reader = _reader()
    records = [reader.verify(c.value) for c in chunks]
    payload = b"".join(r.record["data"] for r in records if not isinstance(r, Rejection))
    assert {r.record["sha256"] for r in records if not isinstance(r, Rejection)} == {
        unsigned_sha256(payload)
    }
    assert isinstance([reader.accept(r) for r in records][-1], Inbound)
    # Chunks that carry the SHA-256 of the payload's bytes (not what its signature signs) fail.
    plain = [site.build("Chunk", c).value for c in split(payload, "ModelUpdate", max_chunk=1500)]
    fresh = _reader()
    got = [fresh.read(v) for v in plain][-1]
    assert isinstance(got, Rejection) and got.error_class == "BadSignatureError"


def test_a_matching_digest_does_not_let_a_forged_payload_signature_through() -> None:
    """The sender's chunks name the right digest of a payload whose own signature is forged."""
    forged = MessageFactory("fed1", "Cleveland", OTHER).build("ModelUpdate", _update(b"\2" * 3000))
    site = MessageFactory("fed1", "Cleveland", SITE)
    for max_chunk in (1000, 100_000):  # several chunks, and one (verified up front)
        values = [
            site.build("Chunk", c).value
            for c in split_signed(forged.value, "ModelUpdate", max_chunk=max_chunk)
        ]
        reader = _reader()
        got = [reader.read(v) for v in values][-1]
        assert isinstance(got, Rejection) and got.error_class == "BadSignatureError"


def test_chunks_of_bytes_that_are_no_signed_message_are_rejected_with_the_reason() -> None:
    from fedsynth.codec.chunk import split

    site = MessageFactory("fed1", "Cleveland", SITE)
    for size in (10, 3000):
        junk = b"\xc3\x01" + b"\xff" * size
        values = [
            site.build("Chunk", c).value
            for c in split(junk, "ModelUpdate", max_chunk=1000, sha256=bytes(32))
        ]
        reader = _reader()
        got = [reader.read(v) for v in values][-1]
        assert isinstance(got, Rejection) and got.message_id is None
        assert got.error_class == "UnknownFingerprintError" and "ffffffffffffffff" in got.reason


def _body(record: Mapping[str, object]) -> dict[str, object]:
    """A decoded record's fields without its envelope (for another sender to build on)."""
    envelope = MessageFactory("fed1", "Cleveland", SITE).envelope()
    return {k: v for k, v in record.items() if k not in envelope}


def test_chunks_signed_by_another_site_can_neither_change_nor_block_a_payload() -> None:
    """A roster member copies a set's payload id and digest into chunks of its own."""
    site = MessageFactory("fed1", "Cleveland", SITE)
    intruder = MessageFactory("fed1", "Hungary", OTHER)
    vector = os.urandom(3000)
    chunks = site.build_chunked("ModelUpdate", _update(vector), max_chunk=1500)
    assert len(chunks) > 2
    records = [_reader().verify(c.value) for c in chunks]
    bodies = [_body(r.record) for r in records if not isinstance(r, Rejection)]
    noise = {**bodies[1], "data": os.urandom(len(bytes(bodies[1]["data"])))}
    reader = _reader()
    ahead = reader.read(intruder.build("Chunk", noise).value)  # before the sender's own chunks
    assert isinstance(ahead, Waiting)
    got = [reader.read(c.value) for c in chunks]
    assert isinstance(got[-1], Inbound) and got[-1].record["vector"] == vector
    assert reader.reassembler.pending_keys == {("Hungary", got[-1].record["message_id"])}
    # The sender's very bytes, re-signed chunk by chunk by the intruder: refused as relayed.
    fresh = _reader()
    relayed = [fresh.read(intruder.build("Chunk", b).value) for b in bodies]
    assert isinstance(relayed[-1], Rejection) and relayed[-1].error_class == "SenderMismatch"


def test_a_chunk_refused_alone_leaves_the_set_joined_ahead_to_be_taken() -> None:
    site = MessageFactory("fed1", "Cleveland", SITE)
    chunks = site.build_chunked("ModelUpdate", _update(os.urandom(3000)), max_chunk=1500)
    reader = _reader()
    verified = [reader.verify(c.value) for c in chunks]  # the set is joined ahead
    first = verified[0]
    assert not isinstance(first, Rejection)
    malformed = reader.verify(site.build("Chunk", {**_body(first.record), "index": 99}).value)
    calls = _counting(reader)
    got = [reader.accept(v) for v in (verified[0], malformed, *verified[1:])]
    assert isinstance(got[1], Rejection) and "malformed" in got[1].reason
    assert isinstance(got[-1], Inbound) and calls[0] == 0  # the set joined ahead was taken


def _counting(reader: MessageReader) -> list[int]:
    """Count the payload verifications made after this call (the in-order step's, when every
    chunk was verified before)."""
    calls = [0]
    inner = reader._verify_payload

    def verify(payload: bytes | memoryview, sha256: bytes) -> Inbound | Rejection:
        calls[0] += 1
        return inner(payload, sha256)

    reader._verify_payload = verify  # type: ignore[method-assign]
    return calls


def test_a_set_verified_on_workers_is_joined_there_and_accepted_in_order() -> None:
    vector = os.urandom(600_000)
    chunks = MessageFactory("fed1", "Cleveland", SITE).build_chunked(
        "ModelUpdate", _update(vector), max_chunk=100_000
    )
    assert len(chunks) > 4
    reader = _reader()
    with ThreadPoolExecutor(3) as pool:  # verified in any order, as prefetch workers do
        verified = list(pool.map(reader.verify, [c.value for c in chunks]))
    digests = _counting(reader)
    results = [reader.accept(v) for v in verified]  # accepted in consumption order
    done = results[-1]
    assert all(isinstance(r, Waiting) for r in results[:-1])
    assert isinstance(done, Inbound) and done.record["vector"] == vector
    assert digests[0] == 0  # the in-order step neither joined nor verified the set
    assert reader._early.ready(str(verified[0].record["payload_id"])) is None  # forgotten


def _joined_ahead_then_verified_again(reader: MessageReader) -> list[Verified | Rejection]:
    """A set of chunks verified once (so joined ahead from those objects), then its equal bytes
    verified again as other objects, which is what is returned."""
    chunks = MessageFactory("fed1", "Cleveland", SITE).build_chunked(
        "ModelUpdate", _update(os.urandom(300_000)), max_chunk=100_000
    )
    for c in chunks:
        reader.verify(c.value)
    return [reader.verify(c.value) for c in chunks]


def test_a_set_accepted_from_other_chunk_objects_is_joined_again_not_trusted() -> None:
    reader = _reader()
    again = _joined_ahead_then_verified_again(reader)
    digests = _counting(reader)
    done = [reader.accept(v) for v in again][-1]
    assert isinstance(done, Inbound) and digests[0] == 1  # the reassembler did it itself


def test_a_set_whose_digest_fails_ahead_is_rejected_in_order_with_the_reason() -> None:
    site = MessageFactory("fed1", "Cleveland", SITE)
    good = site.build("ModelUpdate", _update(os.urandom(300_000)))
    parts = split_signed(good.value, "ModelUpdate", max_chunk=100_000)
    values = [site.build("Chunk", {**c, "sha256": bytes(32)}).value for c in parts]
    reader = _reader()
    verified = [reader.verify(v) for v in values]
    got = [reader.accept(v) for v in verified][-1]
    assert isinstance(got, Rejection) and got.error_class == "BadSignatureError"
    assert "digest its chunks carry" in got.reason


def test_sets_joined_ahead_are_forgotten_after_the_chunk_timeout() -> None:
    now = [0.0]
    ring = KeyRing()
    ring.add("Cleveland", SITE.public_raw())
    reader = MessageReader("fed1", ring, chunk_timeout_s=10, clock=lambda: now[0])
    first, *rest = MessageFactory("fed1", "Cleveland", SITE).build_chunked(
        "ModelUpdate", _update(os.urandom(200_000)), max_chunk=100_000
    )
    reader.verify(first.value)  # a set that never completes
    now[0] = 11.0
    other = MessageFactory("fed1", "Cleveland", SITE).build_chunked(
        "ModelUpdate", _update(os.urandom(200_000)), max_chunk=100_000
    )
    kept = reader.verify(other[0].value)
    assert not isinstance(kept, Rejection)
    assert reader._early.payload_ids == {kept.record["payload_id"]}
    assert reader._early.held_bytes == len(kept.record["data"])


class _Derive:
    """A ``derive`` function that records the thread each record was handled on."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.threads: list[int] = []

    def __call__(self, record: Mapping[str, object]) -> object:
        self.threads.append(threading.get_ident())
        if self.fail:
            raise MessageError("cannot use this vector")
        return ("derived", bytes(record["vector"]))  # type: ignore[arg-type]


def _deriving(derive: _Derive) -> MessageReader:
    ring = KeyRing()
    ring.add("Cleveland", SITE.public_raw())
    return MessageReader("fed1", ring, derive={"ModelUpdate": derive})


def test_derive_runs_where_a_record_is_verified_and_travels_with_it() -> None:
    vector = os.urandom(40_000)
    site = MessageFactory("fed1", "Cleveland", SITE)
    whole = site.build("ModelUpdate", _update(vector)).value
    (lone,) = site.build_chunked("ModelUpdate", _update(vector))
    beat = site.build(
        "Heartbeat",
        {"site_id": "Cleveland", "model_version": 2, "status": "idle", "epsilon_spent": 0.5},
    ).value
    derive = _Derive()
    reader = _deriving(derive)
    with ThreadPoolExecutor(1) as pool:
        verified = list(pool.map(reader.verify, [whole, lone.value, beat]))
        worker = pool.submit(threading.get_ident).result()
    got = [reader.accept(v) for v in verified]
    assert derive.threads == [worker, worker]  # the update and the chunk's payload, not in accept
    assert [g.derived for g in got if isinstance(g, Inbound)] == [
        ("derived", vector), ("derived", vector), None,
    ]


def test_derive_of_a_set_of_chunks_runs_on_the_worker_that_completes_it() -> None:
    vector = os.urandom(300_000)
    chunks = MessageFactory("fed1", "Cleveland", SITE).build_chunked(
        "ModelUpdate", _update(vector), max_chunk=100_000
    )
    derive = _Derive()
    reader = _deriving(derive)
    with ThreadPoolExecutor(3) as pool:
        verified = list(pool.map(reader.verify, [c.value for c in chunks]))
    here = threading.get_ident()
    done = [reader.accept(v) for v in verified][-1]
    assert isinstance(done, Inbound) and done.derived == ("derived", vector)
    assert len(derive.threads) == 1 and here not in derive.threads


def test_derive_runs_in_order_when_the_set_is_joined_there() -> None:
    derive = _Derive()
    reader = _deriving(derive)
    again = _joined_ahead_then_verified_again(reader)
    derive.threads.clear()
    done = [reader.accept(v) for v in again][-1]
    assert isinstance(done, Inbound) and done.derived is not None
    assert derive.threads == [threading.get_ident()]  # the reassembler's own join, derived anew


def test_a_derive_that_fails_leaves_the_record_to_its_reader() -> None:
    (lone,) = MessageFactory("fed1", "Cleveland", SITE).build_chunked(
        "ModelUpdate", _update(os.urandom(1_000))
    )
    got = _deriving(_Derive(fail=True)).read(lone.value)
    assert isinstance(got, Inbound) and got.name == "ModelUpdate" and got.derived is None


def test_a_payload_that_fits_goes_whole_and_a_larger_one_in_chunks() -> None:
    site = MessageFactory("fed1", "Cleveland", SITE)
    small, large = os.urandom(30_000), os.urandom(250_000)
    (whole,) = site.build_payload("ModelUpdate", _update(small), max_chunk=100_000)
    assert whole.name == "ModelUpdate" and len(whole.value) <= 100_000
    got = _reader().read(whole.value)
    assert isinstance(got, Inbound) and got.record["vector"] == small
    assert got.record["message_id"] == whole.message_id
    chunks = site.build_payload("ModelUpdate", _update(large), max_chunk=100_000)
    assert len(chunks) == 3 and {c.name for c in chunks} == {"Chunk"}
    reader = _reader()
    done = [reader.read(c.value) for c in chunks][-1]
    assert isinstance(done, Inbound) and done.record["vector"] == large


def test_a_payload_goes_whole_up_to_exactly_the_chunk_size() -> None:
    site = MessageFactory("fed1", "Cleveland", SITE)
    (probe,) = site.build_payload("ModelUpdate", _update(bytes(40_000)), max_chunk=10**6)
    size = len(probe.value)  # same fields, same length whatever the message id and time
    (at,) = site.build_payload("ModelUpdate", _update(bytes(40_000)), max_chunk=size)
    assert at.name == "ModelUpdate"
    below = site.build_payload("ModelUpdate", _update(bytes(40_000)), max_chunk=size - 1)
    assert [c.name for c in below] == ["Chunk", "Chunk"]


AUDITOR = IdentityKey.generate()


def _audit_message(detail: str, *, sender: str = AGGREGATOR, key: IdentityKey = AUDITOR,
                   fed: str = "fed1") -> bytes:
    fields = {"actor": "aggregator", "action": "publish_version", "detail": detail,
              "prev_hash": bytes(32), "hash": bytes(32)}
    return MessageFactory(fed, sender, key).build("AuditEvent", fields).value


def _audit_reader() -> MessageReader:
    reader = _reader()
    reader.keys.add(AGGREGATOR, AUDITOR.public_raw())
    return reader


def test_an_audit_record_reads_as_the_aggregators_event() -> None:
    got = read_audit_record(_audit_reader(), _audit_message('{"seq": 0}'))
    assert got.detail == {"seq": 0} and got.problem is None
    assert not got.foreign and not got.waiting


def test_audit_records_that_are_not_the_aggregators_events_name_why() -> None:
    reader = _audit_reader()
    update = MessageFactory("fed1", "Cleveland", SITE).build("ModelUpdate", _update(b"v"))
    cases = {
        b"not a message": "not a message",
        _audit_message("{}", sender="Cleveland", key=SITE): "signed by 'Cleveland', not the",
        _audit_message("{}", key=OTHER): "signature",  # claims to be the aggregator
        update.value: "a ModelUpdate on the audit topic",
        _audit_message("{not json"): "the event does not read",
        _audit_message("[1, 2]"): "a JSON list, not an object",
    }
    for value, why in cases.items():
        got = read_audit_record(reader, value)
        assert got.detail is None and got.problem is not None and why in got.problem, got


def test_other_federations_audit_records_pass_unchecked() -> None:
    # signed by a key this reader does not know: not a problem, another federation's record
    got = read_audit_record(_audit_reader(), _audit_message("{}", key=OTHER, fed="fed2"))
    assert got.foreign and got.problem is None and got.detail is None
