"""Property tests of chunking: any size, any arrival order, duplicates; damage is caught."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.codec.chunk import (
    Complete,
    Duplicate,
    Pending,
    Reassembler,
    Rejected,
    RejectReason,
    split,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000), st.integers(1, 700), st.randoms(use_true_random=False), st.data())
def test_any_order_with_duplicates_reassembles(
    payload: bytes, max_chunk: int, rng: Any, data: Any
) -> None:
    chunks = split(payload, "ModelUpdate", max_chunk=max_chunk)
    extra = data.draw(st.lists(st.sampled_from(chunks), max_size=5))
    arrivals = chunks + extra
    rng.shuffle(arrivals)
    r = Reassembler(timeout_s=60, clock=Clock())
    events = [r.add(c) for c in arrivals]
    complete = [e for e in events if isinstance(e, Complete)]
    assert len(complete) == 1 and complete[0].payload == payload
    assert all(isinstance(e, Pending | Duplicate | Complete) for e in events)
    assert sum(isinstance(e, Duplicate) for e in events) == len(extra)
    assert r.pending_bytes == 0


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=2, max_size=3000), st.integers(1, 500), st.data())
def test_a_missing_chunk_never_completes_and_expires(
    payload: bytes, max_chunk: int, data: Any
) -> None:
    chunks = split(payload, "ModelUpdate", max_chunk=max_chunk)
    if len(chunks) < 2:
        chunks = split(payload, "ModelUpdate", max_chunk=len(payload) - 1)
    missing = data.draw(st.integers(0, len(chunks) - 1))
    clock = Clock()
    r = Reassembler(timeout_s=5, clock=clock)
    events = [r.add(c) for i, c in enumerate(chunks) if i != missing]
    assert all(isinstance(e, Pending) for e in events)
    clock.now = 5.0
    (expired,) = r.expire()
    assert (expired.have, expired.count) == (len(chunks) - 1, len(chunks))
    assert r.pending_bytes == 0


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.integers(1, 500), st.data())
def test_any_flipped_bit_in_the_data_is_caught(payload: bytes, max_chunk: int, data: Any) -> None:
    chunks = split(payload, "ModelUpdate", max_chunk=max_chunk)
    which = data.draw(st.integers(0, len(chunks) - 1))
    bit = data.draw(st.integers(0, len(chunks[which]["data"]) * 8 - 1))
    damaged = bytearray(chunks[which]["data"])
    damaged[bit // 8] ^= 1 << (bit % 8)
    chunks[which] = {**chunks[which], "data": bytes(damaged)}
    r = Reassembler(timeout_s=60, clock=Clock())
    last = [r.add(c) for c in chunks][-1]
    assert isinstance(last, Rejected) and last.reason is RejectReason.CHECKSUM_MISMATCH
