"""Known answers: modulus sizes, Lagrange reconstruction of a hand-made polynomial, RFC 7748 X25519
through our HKDF wrapper, and the dequantized value of a fixed encoding."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedsynth.secagg import shamir
from fedsynth.secagg.crypto import agree, public_from_private
from fedsynth.secagg.fixedpoint import FixedPointSpec, decode_sum, required_modulus_bits


@pytest.mark.parametrize(
    ("n", "levels", "max_weight", "bits"),
    [(10, 1 << 16, 1.0, 21), (50, 1 << 21, 1.0, 28), (1000, 1 << 16, 4.0, 29), (2, 1, 1.0, 3)],
)
def test_modulus_bits(n: int, levels: int, max_weight: float, bits: int) -> None:
    spec = FixedPointSpec(clip=1.0, levels=levels, max_weight=max_weight, weight_levels=levels)
    assert required_modulus_bits(spec, n) == bits


def test_lagrange_of_known_polynomial() -> None:
    # f(x) = 42 + 5x + 7x^2: shares at 1, 2, 3 are 54, 80, 120
    assert shamir.combine([(1, 54), (2, 80), (3, 120)], 3) == (42).to_bytes(32, "big")
    assert shamir.combine([(3, 120), (1, 54), (2, 80)], 3) == (42).to_bytes(32, "big")


def test_x25519_rfc7748_vector_through_agree() -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert public_from_private(alice) == bytes.fromhex(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"i").derive(shared)
    assert agree(alice, bob_public, b"i") == expected


def test_decode_fixed_encoding() -> None:
    spec = FixedPointSpec(clip=2.0, levels=4, max_weight=1.0, weight_levels=8)
    # 20-bit modulus: -3 is 2^20 - 3; weight 12/8
    total = np.array([(1 << 20) - 3, 5, 12], dtype=np.uint32)
    vector, weight = decode_sum(total, spec, 20)
    assert vector.tolist() == [-1.5, 2.5] and weight == 1.5
