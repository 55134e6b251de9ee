"""Primitives of secure aggregation: Shamir, key agreement, masks, share encryption, graph, fixed
point, and a chi-square test that one masked vector looks uniform."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedsynth.secagg import shamir
from fedsynth.secagg.crypto import (
    Keystream,
    agree,
    bind,
    decrypt_share,
    encrypt_share,
    expand_mask,
    generate_keypair,
    public_from_private,
)
from fedsynth.secagg.errors import RecoveryError, ShareAuthenticationError, UnsafeParametersError
from fedsynth.secagg.fixedpoint import (
    FixedPointSpec,
    check_modulus,
    decode_sum,
    encode_weighted,
    required_modulus_bits,
)
from fedsynth.secagg.graph import check_threshold, neighbour_graph
from fedsynth.secagg.masking import add_masks, reduce_modulus


def test_shamir_any_threshold_subset_reconstructs() -> None:
    secret = os.urandom(32)
    points = list(range(1, 7))
    shares = list(zip(points, shamir.split(secret, 4, points), strict=True))
    for subset in itertools.combinations(shares, 4):
        assert shamir.combine(subset, 4) == secret


def test_shamir_too_few_shares_refused_and_fewer_do_not_reveal() -> None:
    secret = os.urandom(32)
    shares = list(zip([1, 2, 3], shamir.split(secret, 3, [1, 2, 3]), strict=True))
    with pytest.raises(RecoveryError):
        shamir.combine(shares[:2], 3)
    # interpolating two shares as if t were 2 gives a different value (or an out-of-range one)
    try:
        assert shamir.combine(shares[:2], 2) != secret
    except RecoveryError:
        pass


def test_shamir_share_serialization_checks_length_and_field() -> None:
    value = shamir.split(b"\x01" * 32, 2, [1, 2])[0]
    assert shamir.decode_share(shamir.encode_share(value)) == value
    with pytest.raises(RecoveryError):
        shamir.decode_share(b"\x00" * 10)
    with pytest.raises(RecoveryError):
        shamir.decode_share(b"\xff" * shamir.SHARE_BYTES)


def test_agree_symmetric_and_bound_to_info() -> None:
    a, b = generate_keypair(), generate_keypair()
    assert agree(a.private, b.public, b"x") == agree(b.private, a.public, b"x")
    assert agree(a.private, b.public, b"x") != agree(a.private, b.public, b"y")
    assert public_from_private(a.private) == a.public


def test_expand_mask_deterministic_and_seed_dependent() -> None:
    seed = os.urandom(32)
    first = expand_mask(seed, 1000, np.uint32)
    assert np.array_equal(first, expand_mask(seed, 1000, np.uint32))
    assert not np.array_equal(first, expand_mask(os.urandom(32), 1000, np.uint32))
    assert expand_mask(seed, 10, np.uint64).dtype == np.uint64


def test_a_keystream_read_in_pieces_is_the_keystream_read_whole() -> None:
    seed = os.urandom(32)
    whole = expand_mask(seed, 1000, np.uint32).tobytes()
    stream, raw = Keystream(seed), bytearray(4000 + 15)
    pieces = b""
    for size in (16, 5, 11, 1000, 2968):  # not all multiples of the AES block
        stream.read_into(raw, size)
        pieces += bytes(raw[:size])
    assert pieces == whole


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(0, 3000),
    wide=st.booleans(),
    signs=st.lists(st.sampled_from([1, -1]), max_size=4),
    blocks=st.integers(1, 64),
    seed=st.integers(0, 2**32 - 1),
)
def test_masks_added_block_by_block_equal_whole_masks_added(
    length: int, wide: bool, signs: list[int], blocks: int, seed: int
) -> None:
    dtype = np.uint64 if wide else np.uint32
    rng = np.random.default_rng(seed)
    vector = rng.integers(0, np.iinfo(dtype).max, length, dtype=dtype, endpoint=True)
    seeds = [(sign, rng.bytes(32)) for sign in signs]
    expected = vector.copy()
    for sign, key in seeds:  # each mask expanded whole, added with wrap-around
        mask = expand_mask(key, length, dtype)
        expected = expected + mask if sign > 0 else expected - mask
    got = add_masks(vector, seeds, block_bytes=16 * blocks)
    assert got.dtype == dtype and np.array_equal(got, expected)
    assert got is not vector


def test_add_masks_refuses_a_block_that_is_not_whole_aes_blocks() -> None:
    for bad in (0, -16, 24):
        with pytest.raises(ValueError, match="multiple of 16"):
            add_masks(np.zeros(4, np.uint32), [(1, os.urandom(32))], block_bytes=bad)
    with pytest.raises(ValueError, match="32 bytes"):
        add_masks(np.zeros(4, np.uint32), [(1, b"short")])


def test_share_encryption_rejects_tamper_and_wrong_binding() -> None:
    key, ad = os.urandom(32), bind("fed", "c1", "a", "b")
    nonce, ct = encrypt_share(key, b"secret share", ad)
    assert decrypt_share(key, nonce, ct, ad) == b"secret share"
    flipped = bytes([ct[0] ^ 1]) + ct[1:]
    for args in ((key, nonce, flipped, ad), (key, nonce, ct, bind("fed", "c2", "a", "b")),
                 (key, nonce, ct, bind("fed", "c1", "a", "c"))):
        with pytest.raises(ShareAuthenticationError):
            decrypt_share(*args)


@pytest.mark.parametrize(("n", "k"), [(5, 2), (6, 3), (10, 4), (9, 8), (7, 20)])
def test_graph_is_regular_symmetric_and_deterministic(n: int, k: int) -> None:
    members = [f"s{i}" for i in range(n)]
    graph = neighbour_graph(members, "c1", k)
    degree = min(k, n - 1)
    assert all(len(nb) == degree and m not in nb for m, nb in graph.items())
    assert all(m in graph[p] for m, nb in graph.items() for p in nb)
    assert graph == neighbour_graph(list(reversed(members)), "c1", k)


def test_graph_refuses_odd_odd_and_depends_on_cohort() -> None:
    members = [f"s{i}" for i in range(9)]
    with pytest.raises(UnsafeParametersError):
        neighbour_graph(members, "c", 3)
    graphs = {tuple(sorted(neighbour_graph(members, f"c{i}", 2)["s0"])) for i in range(8)}
    assert len(graphs) > 1


def test_threshold_bounds() -> None:
    check_threshold(3, 4, 10)
    for t in (2, 6):
        with pytest.raises(UnsafeParametersError):
            check_threshold(t, 4, 10)


def test_modulus_sized_and_unsafe_refused() -> None:
    spec = FixedPointSpec(clip=1.0, levels=1 << 10, max_weight=2.0, weight_levels=1 << 4)
    bits = required_modulus_bits(spec, 100)
    assert 2 ** bits > 2 * 100 * 2 * (1 << 10) >= 2 ** (bits - 1)
    with pytest.raises(UnsafeParametersError):
        check_modulus(spec, 100, bits - 1)
    with pytest.raises(UnsafeParametersError):
        required_modulus_bits(FixedPointSpec(clip=1.0, levels=1 << 40, max_weight=1000.0), 10**6)


def test_extreme_sum_does_not_wrap() -> None:
    spec = FixedPointSpec(clip=1.0, levels=1 << 8, max_weight=3.0, weight_levels=1 << 8)
    n = 7
    bits = required_modulus_bits(spec, n)
    rng = np.random.default_rng(0)
    for sign in (1.0, -1.0):
        enc = [encode_weighted(np.full(4, sign * 5.0), 3.0, spec, bits, rng) for _ in range(n)]
        total = reduce_modulus(np.sum(enc, axis=0, dtype=enc[0].dtype), bits)
        vector, weight = decode_sum(total, spec, bits)
        assert np.allclose(vector, sign * 21.0) and weight == 21.0


def test_weight_above_max_or_nan_update_refused() -> None:
    spec = FixedPointSpec(clip=1.0, max_weight=1.0)
    rng = np.random.default_rng(0)
    with pytest.raises(UnsafeParametersError):
        encode_weighted(np.zeros(3), 1.5, spec, 32, rng)
    with pytest.raises(UnsafeParametersError):
        encode_weighted(np.array([np.nan]), 0.5, spec, 32, rng)


def test_stochastic_rounding_is_unbiased() -> None:
    spec = FixedPointSpec(clip=1.0, levels=4, max_weight=1.0, weight_levels=1)
    rng = np.random.default_rng(3)
    enc = encode_weighted(np.full(20000, 0.1), 1.0, spec, 16, rng)
    vector, _ = decode_sum(enc, spec, 16)
    assert set(np.unique(vector)) == {0.0, 0.25}
    assert abs(vector.mean() - 0.1) < 0.01


@pytest.mark.parametrize("bits", [20, 32])
def test_masked_vector_is_uniform(bits: int) -> None:
    spec = FixedPointSpec(clip=1.0, levels=1 << 8, max_weight=1.0, weight_levels=1 << 8)
    rng = np.random.default_rng(0)
    encoded = encode_weighted(np.zeros(64000), 1.0, spec, bits, rng)  # all-zero: worst case
    masked = reduce_modulus(add_masks(encoded, [(1, os.urandom(32)), (-1, os.urandom(32))]), bits)
    counts = np.bincount((masked >> np.uint32(bits - 4)).astype(np.int64), minlength=16)
    assert stats.chisquare(counts).pvalue > 1e-4
    # the test can fail: the unmasked encoding is far from uniform
    raw = np.bincount((encoded >> np.uint32(bits - 4)).astype(np.int64), minlength=16)
    assert stats.chisquare(raw).pvalue < 1e-4
