"""Properties of the reader: verifying chunks ahead, in any order, never changes what it
accepts; chunks signed by another roster member neither change a payload nor block it."""

from __future__ import annotations

import os
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.messages import Inbound, MessageFactory, MessageReader, Rejection, Waiting
from schemas.signing import IdentityKey, KeyRing

SITE = IdentityKey.generate()
FACTORY = MessageFactory("fed1", "Cleveland", SITE)
INTRUDER = IdentityKey.generate()


def _reader() -> MessageReader:
    ring = KeyRing()
    ring.add("Cleveland", SITE.public_raw())
    ring.add("Hungary", INTRUDER.public_raw())
    return MessageReader("fed1", ring)


def _update(i: int, size: int) -> dict[str, object]:
    vector = os.urandom(size)
    return {"update_id": f"u{i}", "site_id": "Cleveland", "base_version": 0, "n_samples": 1,
            "mode": "plain", "cohort_id": None, "weight": 1.0, "codec": "raw", "vector": vector,
            "n_parameters": size // 4, "train_loss": 0.0, "epsilon_spent": 0.0}


def _record(value: bytes) -> dict[str, Any]:
    got = _reader().verify(value)
    assert not isinstance(got, Rejection), got
    return got.record


def _summary(got: Inbound | Waiting | Rejection) -> tuple[Any, ...]:
    if isinstance(got, Inbound):
        return ("in", got.name, got.record["update_id"], bytes(got.record["vector"]))
    if isinstance(got, Rejection):
        return ("no", got.error_class)
    return ("wait", got.payload_id, got.have, got.count)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 40_000), min_size=1, max_size=3),
    st.integers(2_000, 30_000),
    st.randoms(use_true_random=False),
    st.data(),
)
def test_accepting_in_order_gives_what_reading_in_order_gives(
    sizes: list[int], max_chunk: int, rng: random.Random, data: Any
) -> None:
    """Chunks of a few updates, some sent twice, consumed in one order: each is verified in
    another order (as prefetch workers finish) and accepted in the consumed order; every result
    equals what a reader that reads each record in turn returns."""
    values = [
        m.value
        for i, size in enumerate(sizes)
        for m in FACTORY.build_chunked("ModelUpdate", _update(i, 4 * size), max_chunk=max_chunk)
    ]
    values += data.draw(st.lists(st.sampled_from(values), max_size=3))  # resends
    rng.shuffle(values)  # the consumed order
    expected = [_summary(r) for r in map(_reader().read, values)]
    reader = _reader()
    order = list(range(len(values)))
    rng.shuffle(order)  # the order the workers verify them in
    verified: dict[int, Any] = {i: reader.verify(values[i]) for i in order}
    got = [_summary(reader.accept(verified[i])) for i in range(len(values))]
    assert got == expected


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 6),
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3_999)), max_size=4),
    st.randoms(use_true_random=False),
    st.booleans(),
)
def test_chunks_of_another_sender_neither_change_nor_block_a_payload(
    count: int, forged: list[tuple[int, int]], rng: random.Random, threaded_order: bool
) -> None:
    """Another roster member signs chunks under a set's payload id and digest, each the same
    size as the sender's chunk of that index with one byte changed (the joined payload is not
    hashed again: each chunk is authenticated on its own). In any consumed order, the payload
    comes out once, as its sender built it; never mixed, never held back."""
    size = 4 * 1000 * count
    update = _update(0, size)
    chunks = FACTORY.build_chunked("ModelUpdate", update, max_chunk=-(-(size + 200) // count))
    assert len(chunks) == count
    records = [_record(c.value) for c in chunks]
    fields = {k: v for k, v in records[0].items() if k not in FACTORY.envelope()}
    intruder = MessageFactory("fed1", "Hungary", INTRUDER)
    parts = [bytes(r["data"]) for r in records]

    def altered(index: int, at: int) -> bytes:
        data = bytearray(parts[index])
        data[at % len(data)] ^= 0xFF
        return bytes(data)

    values = [c.value for c in chunks] + [
        intruder.build(
            "Chunk", {**fields, "index": i % count, "data": altered(i % count, at)}
        ).value
        for i, at in forged
    ]
    rng.shuffle(values)
    reader = _reader()
    verified = [reader.verify(v) for v in (reversed(values) if threaded_order else values)]
    got = [reader.accept(v) for v in (reversed(verified) if threaded_order else verified)]
    (payload,) = [g for g in got if isinstance(g, Inbound)]
    assert payload.record["sender"] == "Cleveland"
    assert bytes(payload.record["vector"]) == update["vector"]
